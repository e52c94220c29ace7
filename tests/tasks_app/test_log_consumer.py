"""The live run log over a websocket: backfill from the client's offset, then new chunks."""

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from iacplatform.routing import websocket_urlpatterns
from tasks_app.events import run_log_appended
from tasks_app.models import Job, LogChunk, Task
from tasks_app.services.runs import run_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def make_run(workspace) -> tuple[Task, Job]:
    task = run_create(workspace=workspace, operation="plan", actor="test")
    job = Job.objects.get(task=task)
    LogChunk.objects.create(task=task, job=job, seq=1, offset=0, text="first line\n")
    Task.objects.filter(id=task.id).update(log_size=11)
    return task, job


def append(task: Task, job: Job, seq: int, offset: int, text: str) -> None:
    LogChunk.objects.create(task=task, job=job, seq=seq, offset=offset, text=text)
    Task.objects.filter(id=task.id).update(log_size=offset + len(text))
    run_log_appended(task.id)


async def connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    return communicator


async def test_it_streams_the_log_from_the_clients_offset(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/log/?offset=6", alice)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_json_from(timeout=5) == {"text": "line\n", "next_offset": 11}

    await sync_to_async(append)(task, job, 2, 11, "second line\n")
    assert await ws.receive_json_from(timeout=5) == {"text": "second line\n", "next_offset": 23}
    await ws.disconnect()


async def test_it_refuses_anonymous_viewers(workspace):
    task, _ = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/log/", AnonymousUser())
    connected, code = await ws.connect()
    assert not connected and code == 4401
