"""A run's long-poll checks the run again only on the events that can change its answer:
the run detail (`?wait=&until=`) on status changes, not on each log append (many a second
while terraform runs); the log follow on both."""

from __future__ import annotations

import asyncio
import threading
import time

from iacplatform import wakeups
from tasks_app.longpoll import RunEvents

_tasks = iter(range(987654321, 987654400))  # no such runs: only their Redis channels are used


async def _wake(kinds: frozenset[str], publish: list[str], wait: float = 10) -> tuple[list[str], float]:
    """RunEvents(kinds).next while `publish` go out 0.2 s apart: what had been sent when it
    returned, and after how long."""
    sent: list[str] = []
    task = next(_tasks)  # a channel of its own: a test's late messages never reach another
    async with RunEvents(task, kinds) as events:
        assert events.pubsub is not None, "Redis is needed for this test"

        def send() -> None:
            for what in publish:
                time.sleep(0.2)
                sent.append(what)  # before the publish: it is in the list when next() returns
                wakeups.wake_run(task, what)

        threading.Thread(target=send, daemon=True).start()
        started = time.monotonic()
        await events.next(started + wait)
        return list(sent), time.monotonic() - started


def test_the_run_detail_long_poll_sleeps_through_log_appends_and_wakes_on_a_status_change():
    sent, _ = asyncio.run(_wake(frozenset({"status"}), ["log", "log", "log", "status"]))
    assert sent == ["log", "log", "log", "status"]


def test_the_log_follow_wakes_on_a_log_append():
    sent, took = asyncio.run(_wake(frozenset({"status", "log"}), ["log", "status"]))
    assert sent == ["log"] and took < 5


def test_without_the_event_it_waits_until_the_deadline():
    _, took = asyncio.run(_wake(frozenset({"status"}), ["log"], wait=0.8))
    assert took >= 0.75
