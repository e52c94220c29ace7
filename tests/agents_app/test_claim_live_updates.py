"""The claim answers before its live-page updates are sent: the agent waits for
the answer to start terraform; the run, job and slot updates follow it, in order."""

from __future__ import annotations

import asyncio
import contextvars
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator

from iacplatform import live
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.claim import claim_asgi
from tasks_app.services.runs import run_create
from tests.agents_app.fakes import FakeAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def _listen(group: str) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return channel


def _unit_sends(sends: list) -> None:
    """A unit of work that sends these after its commit (as the claim's units do)."""
    with unit_of_work() as uow:
        uow.send(sends)


async def test_a_requests_units_send_after_the_answer_from_its_outbox():
    layer = get_channel_layer()
    channel = await _listen("run-424242")
    # A second member only for the "nothing sent yet" check: the pub/sub channel layer drops
    # a channel whose receive is cancelled (its consumer is gone), as the timeout below does.
    probe = await _listen("run-424242")

    async def request() -> list:
        outbox = live.open_outbox()  # as the claim app does
        await sync_to_async(_unit_sends)([("run-424242", {"type": "run.changed", "status": "planning"})])
        await sync_to_async(_unit_sends)([("run-424242", {"type": "dispatch.changed", "state": "running"})])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(probe), 0.3)  # nothing sent yet
        await live.close_outbox(outbox)
        return outbox.sends

    assert await asyncio.create_task(request()) == []
    first = await asyncio.wait_for(layer.receive(channel), 5)
    second = await asyncio.wait_for(layer.receive(channel), 5)
    assert (first["type"], second["type"]) == ("run.changed", "dispatch.changed")
    # Outside a request with an outbox, a unit sends at its commit.
    await sync_to_async(_unit_sends)([("run-424242", {"type": "log.appended"})])
    assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "log.appended"


async def test_the_claim_answers_and_then_publishes_the_runs_planning(setup, client):
    agent = await sync_to_async(FakeAgent)(client, setup[1], "a1")
    task = await sync_to_async(run_create)(workspace=setup[2], operation="plan", actor="test")
    channel = await _listen(live.run_group(task.id))
    comm = HttpCommunicator(claim_asgi, "POST", "/agent/v1/claim?wait=1&max=1",
                            headers=[(b"authorization", f"Bearer {agent.token}".encode())])
    response = await comm.get_response(timeout=10)
    assert response["status"] == 200
    assert json.loads(response["body"])["jobs"][0]["task"]["id"] == task.id
    layer = get_channel_layer()
    seen = []
    while not any(m["type"] == "run.changed" and m["status"] == "planning" for m in seen):
        seen.append(await asyncio.wait_for(layer.receive(channel), 5))
    assert any(m["type"] == "dispatch.changed" and m["subject"] == "job" and m["state"] == "running" for m in seen)


async def test_what_a_request_sends_after_its_outbox_went_out_is_sent_at_once():
    """A view's thread can outlive its request (the client went away while it ran): what its
    units send after the request sent its outbox goes out at once, not to a list nobody
    sends any more."""
    from iacplatform import wakeups

    layer = get_channel_layer()
    channel = await _listen("run-434343")
    published: list = []
    outbox = live.open_outbox()
    context = contextvars.copy_context()  # as the view's thread got it
    await live.close_outbox(outbox)  # the request is over

    def late_thread() -> None:
        original = wakeups._best_effort
        wakeups._best_effort = lambda what, call: published.append(what) or original(what, call)
        try:
            with unit_of_work() as uow:
                uow.send([("run-434343", {"type": "run.changed", "status": "late"})])
                uow.publish(wakeups.run_channel(434343), "status:late", "a run wake-up")
        finally:
            wakeups._best_effort = original

    await sync_to_async(context.run)(late_thread)
    assert (await asyncio.wait_for(layer.receive(channel), 5))["status"] == "late"
    assert published == ["a run wake-up"] and outbox.publishes == [] and outbox.sends == []
