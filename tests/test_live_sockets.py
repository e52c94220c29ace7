"""What every live page's websocket shares (iacplatform/live_consumer.py), on the real
channel layer (Redis): a viewer who loses access, through any door a person uses (the access
API, Django's user admin), stops getting the page's updates at once and is told why (4403);
one user's sockets are capped (4429, with a reason the page shows)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, User
from django.test import Client

from iacplatform.routing import websocket_urlpatterns
from tasks_app.dispatch.models import Job
from tasks_app.models import AccessLevel, LogChunk, Task
from tasks_app.services.runs import run_create
from tests.factories import grant, make_token, make_workspace
from tests.tasks_app.test_log_consumer import append, receive_fragments

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

RUN_LOST = {"type": "websocket.close", "code": 4403, "reason": "you no longer have access to this run"}


@pytest.fixture
def carol(db, workspace) -> User:
    """Reads the workspace through her team, `viewers`."""
    user = User.objects.create_user("carol", password="carol-password-1")
    grant(user, workspace, AccessLevel.READ, team_name="viewers")
    return user


def make_run(workspace) -> tuple[Task, Job]:
    task = run_create(workspace=workspace, operation="plan", actor="test")
    job = Job.objects.get(task=task)
    LogChunk.objects.create(task=task, job=job, seq=1, offset=0, text="first line\n")
    Task.objects.filter(id=task.id).update(log_size=11)
    return task, job


async def connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    return communicator


async def watch_run(task: Task, user) -> tuple[WebsocketCommunicator, WebsocketCommunicator]:
    """The run page's socket and the JSON log socket, both past their backfill."""
    page = await connect(f"/ws/runs/{task.id}/?offset=11", user)
    assert (await page.connect())[0]
    await receive_fragments(page)
    log = await connect(f"/ws/runs/{task.id}/log/?offset=11", user)
    assert (await log.connect())[0]
    return page, log


async def assert_closed_before(ws: WebsocketCommunicator, secret: str, close: dict) -> None:
    """The socket closes with `close`; nothing it sent before holds `secret`, and nothing after."""
    output = await ws.receive_output(timeout=5)
    while output["type"] == "websocket.send":
        assert secret not in output.get("text", ""), output
        output = await ws.receive_output(timeout=5)
    assert output == close
    assert await ws.receive_nothing(timeout=0.5)


def admin_client(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def edit_user_in_admin(alice: User, user: User, *, active: bool, teams: list[Group]) -> None:
    """What a site admin does in Django's user admin: the change form, saved."""
    user.refresh_from_db()
    data = {
        "username": user.username, "first_name": "", "last_name": "", "email": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"), "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "", "last_login_1": "", "groups": [t.id for t in teams], "user_permissions": [],
    }
    if active:
        data["is_active"] = "on"
    if user.is_staff:
        data["is_staff"] = "on"
    resp = admin_client(alice).post(f"/admin/auth/user/{user.id}/change/", data)
    assert resp.status_code == 302, resp.content.decode()[-2000:]


async def test_it_stops_a_run_log_at_once_when_the_teams_access_is_removed(workspace, alice, carol):
    task, job = await sync_to_async(make_run)(workspace)
    page, log = await watch_run(task, carol)
    api = Client(HTTP_AUTHORIZATION=f"Token {await sync_to_async(make_token)(alice)}")
    # A change of carol's access elsewhere (her team's on another workspace) re-checks her
    # sockets: she keeps this one.
    other = await sync_to_async(make_workspace)(pool=workspace.pool, files={"main.tf": ""})
    await sync_to_async(grant)(carol, other, AccessLevel.WRITE, team_name="viewers")
    assert (await sync_to_async(api.delete)(f"/api/v1/workspaces/{other.id}/access/viewers/")).status_code == 204
    await sync_to_async(append)(task, job, 2, "still allowed\n")
    assert (await log.receive_json_from(timeout=5))["text"] == "still allowed\n"

    # A workspace admin removes the team's access to this one through the API.
    resp = await sync_to_async(api.delete)(f"/api/v1/workspaces/{workspace.id}/access/viewers/")
    assert resp.status_code == 204
    await sync_to_async(append)(task, job, 3, "after the removal\n")

    await assert_closed_before(page, "after the removal", RUN_LOST)
    await assert_closed_before(log, "after the removal", RUN_LOST)


@pytest.mark.parametrize("change", ["removed from the team", "deactivated"])
async def test_it_stops_a_run_log_at_once_when_the_user_changes_in_the_admin(workspace, alice, carol, change):
    task, job = await sync_to_async(make_run)(workspace)
    page, log = await watch_run(task, carol)
    viewers = await sync_to_async(Group.objects.get)(name="viewers")
    if change == "deactivated":
        await sync_to_async(edit_user_in_admin)(alice, carol, active=False, teams=[viewers])
    else:
        await sync_to_async(edit_user_in_admin)(alice, carol, active=True, teams=[])
    await sync_to_async(append)(task, job, 2, "after the change\n")

    await assert_closed_before(page, "after the change", RUN_LOST)
    await assert_closed_before(log, "after the change", RUN_LOST)


async def test_it_closes_the_live_pages_of_a_deactivated_user(workspace, alice, carol):
    listing = await connect("/ws/workspaces/", carol)
    assert (await listing.connect())[0]
    await listing.receive_from(timeout=5)
    detail = await connect(f"/ws/workspaces/{workspace.id}/", carol)
    assert (await detail.connect())[0]
    await detail.receive_from(timeout=5)
    viewers = await sync_to_async(Group.objects.get)(name="viewers")
    await sync_to_async(edit_user_in_admin)(alice, carol, active=False, teams=[viewers])
    await assert_closed_before(listing, "never", {
        "type": "websocket.close", "code": 4403, "reason": "your account no longer has access"})
    await assert_closed_before(detail, "never", {
        "type": "websocket.close", "code": 4403, "reason": "you no longer have access to this workspace"})


async def test_it_closes_the_pool_page_at_once_when_its_viewer_stops_being_a_site_admin(pool, alice):
    dora = await sync_to_async(User.objects.create_user)("dora", password="dora-password-1", is_staff=True)
    ws = await connect(f"/ws/pools/{pool.id}/", dora)
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=5)
    dora.is_staff = False
    await sync_to_async(dora.save)()  # as the user admin saves it
    await assert_closed_before(ws, "never", {
        "type": "websocket.close", "code": 4403, "reason": "you are no longer a site admin"})


async def test_it_caps_the_live_sockets_of_one_user(workspace, alice, carol, settings):
    settings.IAC_WS_MAX_PER_USER = 2
    task, _ = await sync_to_async(make_run)(workspace)
    first = await connect(f"/ws/runs/{task.id}/?offset=11", carol)
    assert (await first.connect())[0]
    second = await connect("/ws/workspaces/", carol)
    assert (await second.connect())[0]

    third = await connect(f"/ws/runs/{task.id}/?offset=11", carol)
    assert (await third.connect())[0]  # accepted, so that the page gets the code and the reason
    assert await third.receive_output(timeout=5) == {
        "type": "websocket.close", "code": 4429,
        "reason": "too many live pages open (2 per user): close some tabs, then reload"}
    await third.disconnect()

    # Someone else is not affected; and a closed tab frees its place.
    other = await connect(f"/ws/runs/{task.id}/?offset=11", alice)
    assert (await other.connect())[0]
    await receive_fragments(other)
    await second.disconnect()
    again = await connect(f"/ws/runs/{task.id}/?offset=11", carol)
    assert (await again.connect())[0]
    await receive_fragments(again)
    for ws in (first, other, again):
        await ws.disconnect()
