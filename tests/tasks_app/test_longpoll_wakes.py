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
        assert events.subscribed, "Redis is needed for this test"

        def send() -> None:
            for what in publish:
                time.sleep(0.2)
                sent.append(what)  # before the publish: it is in the list when next() returns
                wakeups.publish(wakeups.run_channel(task), what)

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


def test_a_status_change_tells_the_long_poll_the_new_status():
    async def wake() -> str | None:
        task = next(_tasks)
        async with RunEvents(task, frozenset({"status"})) as events:
            assert events.subscribed, "Redis is needed for this test"
            threading.Timer(0.2, wakeups.publish, args=(wakeups.run_channel(task), "status:apply_pending")).start()
            return await events.next(time.monotonic() + 10)

    assert asyncio.run(wake()) == "apply_pending"


def test_the_run_detail_long_poll_checks_the_run_only_for_a_status_that_can_answer_it(rf):
    """Waiting for `apply_pending`, the `planning` status change runs no check (each check is
    the whole API view, while the run's terraform starts beside it)."""
    from django.http import JsonResponse

    from tasks_app.api import _status_may_answer, _status_reached
    from tasks_app.longpoll import long_polling

    task = next(_tasks)
    current = ["plan_queued"]  # the run's status, as the view would read it
    checks: list[str] = []

    def view(request, pk):
        checks.append(current[0])
        response = JsonResponse({"id": pk, "status": current[0]})
        response.data = {"id": pk, "status": current[0]}  # as DRF's Response carries it
        return response

    def publish() -> None:
        for status in ("planning", "apply_pending"):
            time.sleep(0.3)
            current[0] = status  # committed, then published
            wakeups.publish(wakeups.run_channel(task), f"status:{status}")

    waiting = long_polling(view, bound=60, ready=_status_reached, wake_on=frozenset({"status"}),
                           may_answer=_status_may_answer)
    threading.Thread(target=publish, daemon=True).start()
    started = time.monotonic()
    response = asyncio.run(waiting(rf.get(f"/api/v1/runs/{task}/?wait=10&until=apply_pending"), pk=task))
    assert response.data["status"] == "apply_pending" and time.monotonic() - started < 5
    assert checks == ["plan_queued", "apply_pending"], "the planning event ran a check"
