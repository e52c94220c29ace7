"""The live workspaces list and workspace page over websockets, on the real channel layer
(Redis): who may connect, what the backfill holds, and which viewer a run change reaches."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from iacplatform.routing import websocket_urlpatterns
from iacplatform.unit_of_work import unit_of_work
from tasks_app.models import AccessLevel, Task
from tasks_app.services.runs import run_create, run_transition
from tasks_app.states import RunStatus
from tests.factories import DEMO_MAIN_TF, grant, make_workspace

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def bob(db, workspace) -> User:
    user = User.objects.create_user("bob", password="bob-password-1")
    grant(user, workspace, AccessLevel.READ, team_name="readers")
    return user


async def connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    return communicator


async def nothing_within(ws: WebsocketCommunicator, seconds: float = 1.0) -> bool:
    return await ws.receive_nothing(timeout=seconds)


def error_run(task_id: int) -> None:
    """A run errors through the one owner of run status, which publishes run.changed after
    commit (the way an agent's failed plan ends)."""
    with unit_of_work() as uow:
        task = Task.objects.select_for_update().get(id=task_id)
        run_transition(task, RunStatus.ERRORED, uow=uow, actor="test", message="boom")


async def test_it_refuses_anonymous_viewers_and_charlie(workspace, charlie):
    for path in ("/ws/workspaces/", f"/ws/workspaces/{workspace.id}/"):
        ws = await connect(path, AnonymousUser())
        connected, code = await ws.connect()
        assert not connected and code == 4401
    ws = await connect(f"/ws/workspaces/{workspace.id}/", charlie)
    connected, code = await ws.connect()
    assert not connected and code == 4404  # as for a workspace that does not exist
    ws = await connect("/ws/workspaces/999999/", charlie)
    connected, code = await ws.connect()
    assert not connected and code == 4404


async def test_it_pushes_the_runs_table_of_bobs_workspace_when_a_run_changes(workspace, bob):
    task = await sync_to_async(run_create)(workspace=workspace, operation="plan", actor="test")
    ws = await connect(f"/ws/workspaces/{workspace.id}/", bob)
    connected, _ = await ws.connect()
    assert connected
    backfill = await ws.receive_from(timeout=5)
    assert backfill.startswith('<div id="workspace-runs" hx-swap-oob="true">')
    assert f"run {task.id}" in backfill

    await sync_to_async(error_run)(task.id)
    html = await ws.receive_from(timeout=5)
    while 'data-status="errored"' not in html:  # run_create's own change may still be on its way
        html = await ws.receive_from(timeout=5)
    assert 'id="workspace-runs" hx-swap-oob="true"' in html
    await ws.disconnect()


async def test_it_sends_a_run_change_only_to_those_who_may_read_its_workspace(pool, workspace, bob, charlie):
    other = await sync_to_async(make_workspace)(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    task = await sync_to_async(run_create)(workspace=workspace, operation="plan", actor="test")
    hidden = await sync_to_async(run_create)(workspace=other, operation="plan", actor="test")

    bobs, charlies = await connect("/ws/workspaces/", bob), await connect("/ws/workspaces/", charlie)
    assert (await bobs.connect())[0] and (await charlies.connect())[0]
    backfill = await bobs.receive_from(timeout=5)
    assert f'id="workspace-row-{workspace.id}" hx-swap-oob="true"' in backfill
    assert f"workspace-row-{other.id}" not in backfill
    assert await charlies.receive_from(timeout=5) == ""  # charlie reads nothing: an empty backfill
    await asyncio.sleep(0.5)  # let run_create's own changes pass
    while not await bobs.receive_nothing(timeout=0.3):
        pass

    await sync_to_async(error_run)(task.id)
    row = await bobs.receive_from(timeout=5)
    assert row.startswith(f'<tr id="workspace-row-{workspace.id}" hx-swap-oob="true">')
    assert 'data-status="errored"' in row
    assert await nothing_within(charlies)

    # A change in a workspace bob cannot read reaches nobody but those who can.
    await sync_to_async(error_run)(hidden.id)
    assert await nothing_within(bobs)
    assert await nothing_within(charlies)
    await bobs.disconnect()
    await charlies.disconnect()


async def test_it_stops_pushing_once_access_is_revoked(workspace, bob):
    task = await sync_to_async(run_create)(workspace=workspace, operation="plan", actor="test")
    ws = await connect(f"/ws/workspaces/{workspace.id}/", bob)
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=5)
    await sync_to_async(lambda: bob.groups.clear())()
    await sync_to_async(error_run)(task.id)
    output = await ws.receive_output(timeout=5)
    while output["type"] == "websocket.send":  # run_create's change may come first, before the revocation
        assert 'data-status="errored"' not in output.get("text", "")
        output = await ws.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4403, "reason": "you no longer have access to this workspace"}
    assert await sync_to_async(lambda: Task.objects.get(id=task.id).status)() == RunStatus.ERRORED


async def test_it_backfills_what_changed_while_the_page_was_disconnected(workspace, bob):
    task = await sync_to_async(run_create)(workspace=workspace, operation="plan", actor="test")
    ws = await connect(f"/ws/workspaces/{workspace.id}/", bob)
    assert (await ws.connect())[0]
    first = await ws.receive_from(timeout=5)
    assert 'data-status="errored"' not in first
    await ws.disconnect()

    await sync_to_async(error_run)(task.id)  # nobody listening

    # htmx's ws extension reconnects by itself; the new socket's backfill is the current table.
    again = await connect(f"/ws/workspaces/{workspace.id}/", bob)
    assert (await again.connect())[0]
    backfill = await again.receive_from(timeout=5)
    assert f'id="run-row-{task.id}"' in backfill and 'data-status="errored"' in backfill
    await again.disconnect()


def _attempt_delivery(workspace_id: int, task_id: int) -> int:
    """A notification delivery of the workspace, and its first attempt failing (500): the
    worker's path (delivery_attempted, the one writer of its status)."""
    from tasks_app.workflows.models import NotificationDelivery, NotificationDestination
    from tasks_app.workflows.notifications import Outcome, delivery_attempted

    destination = NotificationDestination.objects.create(workspace_id=workspace_id, name="ops", kind="webhook",
                                                         url="https://hooks.example.com/x", triggers=["errored"])
    delivery = NotificationDelivery.objects.create(destination=destination, trigger="errored", task_id=task_id,
                                                   event={}, next_attempt_at=None)
    delivery_attempted(delivery_id=delivery.id, outcome=Outcome(ok=False, status_code=500, error="HTTP 500"))
    return destination.id


async def test_it_pushes_a_deliverys_attempt_and_a_drift_checks_health_to_the_workspace_page(workspace, bob):
    from tasks_app.models import Workspace

    task = await sync_to_async(run_create)(workspace=workspace, operation="plan", actor="test")
    ws = await connect(f"/ws/workspaces/{workspace.id}/", bob)
    connected, _ = await ws.connect()
    assert connected
    await ws.receive_from(timeout=5)  # the runs table

    destination_id = await sync_to_async(_attempt_delivery)(workspace.id, task.id)
    html = await ws.receive_from(timeout=5)
    while f'id="deliveries-{destination_id}"' not in html:
        html = await ws.receive_from(timeout=5)
    assert 'hx-swap-oob="true"' in html and "retrying" in html and "500 HTTP 500" in html

    # A drift check's end is a run change: the health comes with the runs table.
    await sync_to_async(Workspace.objects.filter(id=workspace.id).update)(
        health="drifted", health_detail={"run": task.id, "resources": [{"address": "aws_s3_bucket.b",
                                                                         "attributes": ["acl"]}]})
    await sync_to_async(error_run)(task.id)
    html = await ws.receive_from(timeout=5)
    while 'id="workspace-health"' not in html or "Drifted" not in html:
        html = await ws.receive_from(timeout=5)
    assert "aws_s3_bucket.b" in html and "acl" in html
    await ws.disconnect()
