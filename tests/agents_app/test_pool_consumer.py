"""The live pool page's websocket: site admins only; the fragments at once, then again on
each change of the pool, coalesced."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from agents_app.models import FreezeWindow
from agents_app.protocol import SlotState
from agents_app.services.freeze_windows import freeze_window_lift
from iacplatform.live import pool_group
from iacplatform.routing import websocket_urlpatterns
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.models import Job, Slot
from tasks_app.dispatch.slots import slot_transition
from tasks_app.services.runs import run_create
from tests.factories import make_agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    return communicator


def start_plan_in_slot(workspace, agent):
    """A plan run taking the agent's slot #0, through the slots' owner (as a claim does)."""
    task = run_create(workspace=workspace, operation="plan", actor="test")
    job = Job.objects.get(task=task)
    with unit_of_work() as uow:
        slot = Slot.objects.select_for_update().select_related("agent").get(agent=agent, index=0)
        slot_transition(slot, SlotState.RUNNING, uow=uow, job=job, task=task, message="claimed")
    return task


async def test_it_refuses_anonymous_users_and_non_admins(pool):
    ws = await connect(f"/ws/pools/{pool.id}/", AnonymousUser())
    connected, code = await ws.connect()
    assert not connected and code == 4401

    bob = await sync_to_async(User.objects.create_user)("bob", password="bob-password-1")
    ws = await connect(f"/ws/pools/{pool.id}/", bob)
    connected, code = await ws.connect()
    assert not connected and code == 4404


async def test_it_refuses_a_pool_that_does_not_exist(alice):
    ws = await connect("/ws/pools/999999/", alice)
    connected, code = await ws.connect()
    assert not connected and code == 4404


async def test_it_pushes_the_slot_grid_when_a_slot_changes(alice, workspace):
    agent, _ = await sync_to_async(make_agent)(pool=workspace.pool, name="agent-live", slots=2)
    ws = await connect(f"/ws/pools/{workspace.pool_id}/", alice)
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_from(timeout=5)  # the backfill: the page's state now
    assert '<section id="pool-slots" hx-swap-oob="true">' in first
    assert first.count('class="slot slot-idle"') == 2

    task = await sync_to_async(start_plan_in_slot)(workspace, agent)
    update = await ws.receive_from(timeout=5)
    grid = update[update.index('<section id="pool-slots"'):]
    grid = grid[:grid.index("</section>")]
    assert 'class="slot slot-running"' in grid and f"run {task.id}" in grid
    assert grid.count('class="slot slot-idle"') == 1
    await ws.disconnect()


async def test_it_coalesces_a_burst_of_changes_into_few_renders(alice, workspace):
    await sync_to_async(make_agent)(pool=workspace.pool, name="agent-burst", slots=1)
    ws = await connect(f"/ws/pools/{workspace.pool_id}/", alice)
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=5)
    layer = get_channel_layer()
    started = time.monotonic()
    await asyncio.gather(*(layer.group_send(pool_group(workspace.pool_id), {
        "type": "dispatch.changed", "pool_id": workspace.pool_id, "subject": "job", "id": i, "state": "queued",
        "task": None}) for i in range(30)))
    burst = time.monotonic() - started
    renders = 0
    # (A receive that times out cancels the consumer: ask whether something is there first.)
    while not await ws.receive_nothing(timeout=0.5):
        assert "pool-slots" in await ws.receive_from(timeout=1)
        renders += 1
    # At most one render per COALESCE_SECONDS while the burst arrives (it arrives over a
    # little longer than it took to send), not one per event.
    assert 1 <= renders <= 10, (renders, burst)
    await ws.disconnect()


async def test_it_pushes_the_freeze_when_a_window_is_lifted(alice, pool):
    now = timezone.now()
    window = await sync_to_async(FreezeWindow.objects.create)(
        pool=pool, name="hold", kind="one_off", starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=1))
    ws = await connect(f"/ws/pools/{pool.id}/", alice)
    assert (await ws.connect())[0]
    assert "frozen until" in await ws.receive_from(timeout=5)

    await sync_to_async(freeze_window_lift)(window_id=window.id, actor=alice, reason="done early")
    update = await ws.receive_from(timeout=5)
    assert "not frozen" in update and "by alice: done early" in update
    await ws.disconnect()


async def test_it_stops_a_live_page_when_its_viewer_is_no_longer_an_admin(pool):
    dora = await sync_to_async(User.objects.create_user)("dora", password="dora-password-1", is_staff=True)
    ws = await connect(f"/ws/pools/{pool.id}/", dora)
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=5)
    await sync_to_async(User.objects.filter(id=dora.id).update)(is_staff=False)
    await get_channel_layer().group_send(pool_group(pool.id), {
        "type": "dispatch.changed", "pool_id": pool.id, "subject": "agent", "id": 1, "state": "online", "task": None})
    assert await ws.receive_output(timeout=5) == {
        "type": "websocket.close", "code": 4403, "reason": "you are no longer a site admin"}
