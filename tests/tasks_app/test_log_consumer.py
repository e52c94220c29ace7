"""The live run over websockets: the JSON log socket (`/ws/runs/<id>/log/`) and the run
page's socket (`/ws/runs/<id>/`), both against the real channel layer (Redis): backfill from
the client's offset, then the chunks the producer publishes, with no gap and no duplicate,
across a reconnect too; the page's fragments on every run change."""

import html as htmllib
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from iacplatform.live import run_group
from iacplatform.routing import websocket_urlpatterns
from iacplatform.unit_of_work import unit_of_work
from tasks_app.dispatch.models import Job
from tasks_app.events import log_appended_message, run_log_appended
from tasks_app.models import LogChunk, Task
from tasks_app.services.runs import run_cancel, run_create
from tests.factories import grant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

LOG_FRAGMENT = re.compile(
    r'^<div id="run-log" hx-swap-oob="beforeend"><span class="log-chunk" data-end="(\d+)">(.*)</span></div>$', re.S
)


def make_run(workspace) -> tuple[Task, Job]:
    task = run_create(workspace=workspace, operation="plan", actor="test")
    job = Job.objects.get(task=task)
    LogChunk.objects.create(task=task, job=job, seq=1, offset=0, text="first line\n")
    Task.objects.filter(id=task.id).update(log_size=11)
    return task, job


def store(task: Task, job: Job, seq: int, text: str) -> tuple[int, int]:
    """A chunk stored as job_append_log stores it (without publishing): its offsets."""
    start = Task.objects.get(id=task.id).log_size
    LogChunk.objects.create(task=task, job=job, seq=seq, offset=start, text=text)
    end = start + len(text.encode())
    Task.objects.filter(id=task.id).update(log_size=end)
    return start, end


def append(task: Task, job: Job, seq: int, text: str) -> None:
    """Stored and published, as the agent log endpoint does after its commit."""
    start, end = store(task, job, seq, text)
    with unit_of_work() as uow:
        run_log_appended(uow, task.id, start=start, end=end, text=text)


async def connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    return communicator


def log_piece(message: str) -> tuple[int, str]:
    """(offset after it, its text) of a log fragment of the run page."""
    match = LOG_FRAGMENT.match(message)
    assert match, message[:300]
    return int(match[1]), htmllib.unescape(re.sub(r"<[^>]+>", "", match[2]))


async def receive_log(ws: WebsocketCommunicator, timeout: float = 5) -> tuple[int, str]:
    """The next log fragment, skipping the other fragments of the page."""
    while True:
        message = await ws.receive_from(timeout=timeout)
        if message.startswith('<div id="run-log"'):
            return log_piece(message)


async def receive_fragments(ws: WebsocketCommunicator) -> str:
    while True:
        message = await ws.receive_from(timeout=5)
        if 'id="run-status"' in message:
            return message


# The JSON log socket


async def test_it_streams_the_log_from_the_clients_offset(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/log/?offset=6", alice)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_json_from(timeout=5) == {"text": "line\n", "next_offset": 11}

    await sync_to_async(append)(task, job, 2, "second line\n")
    assert await ws.receive_json_from(timeout=5) == {"text": "second line\n", "next_offset": 23}
    # A producer that only says the log grew (no chunk in the message): read from the database.
    await sync_to_async(store)(task, job, 3, "third\n")

    def grew() -> None:
        with unit_of_work() as uow:
            run_log_appended(uow, task.id)

    await sync_to_async(grew)()
    assert await ws.receive_json_from(timeout=5) == {"text": "third\n", "next_offset": 29}
    await ws.disconnect()


async def test_it_gives_the_json_socket_the_log_without_colour_codes(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/log/?offset=11", alice)
    assert (await ws.connect())[0]
    await sync_to_async(append)(task, job, 2, "\x1b[1mPlan:\x1b[0m 1 to add\n")
    assert await ws.receive_json_from(timeout=5) == {"text": "Plan: 1 to add\n", "next_offset": 34}
    await ws.disconnect()


async def test_it_refuses_anonymous_viewers(workspace):
    task, _ = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/log/", AnonymousUser())
    connected, code = await ws.connect()
    assert not connected and code == 4401


# The run page's socket


async def test_it_refuses_the_run_page_socket_to_who_may_not_read_the_run(workspace, charlie):
    task, _ = await sync_to_async(make_run)(workspace)
    anonymous = await connect(f"/ws/runs/{task.id}/", AnonymousUser())
    assert await anonymous.connect() == (False, 4401)
    outsider = await connect(f"/ws/runs/{task.id}/", charlie)
    assert await outsider.connect() == (False, 4404)
    missing = await connect(f"/ws/runs/{task.id + 1000}/", charlie)
    assert await missing.connect() == (False, 4404)


async def test_it_lets_a_reader_of_the_workspace_watch_the_run_page(workspace):
    task, _ = await sync_to_async(make_run)(workspace)
    bob = await sync_to_async(User.objects.create_user)("bob", password="bob-password-1")
    await sync_to_async(grant)(bob, workspace, "read")
    ws = await connect(f"/ws/runs/{task.id}/?offset=0", bob)
    assert (await ws.connect())[0]
    assert await receive_log(ws) == (11, "first line\n")
    fragments = await receive_fragments(ws)
    assert "Confirm" not in fragments  # a reader gets no Confirm dialog
    await ws.disconnect()


async def test_it_backfills_the_page_then_sends_its_fragments(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/?offset=6", alice)
    assert (await ws.connect())[0]
    assert await receive_log(ws) == (11, "line\n")
    fragments = await ws.receive_from(timeout=5)
    for element in ("run-status", "run-waiting", "run-timeline", "run-plan", "run-jobs", "confirm-dialog"):
        assert re.search(rf'id="{element}"[^>]*hx-swap-oob="true"', fragments), element
    await ws.disconnect()


async def test_it_renders_each_chunk_once_for_all_the_viewers_of_a_process(workspace, alice):
    """The group message carries the chunk's text, not markup; the consumers render it once
    per process (a per-process cache), not once per viewer."""
    from tasks_app import consumers

    task, job = await sync_to_async(make_run)(workspace)
    viewers = [await connect(f"/ws/runs/{task.id}/?offset=11", alice) for _ in range(3)]
    for ws in viewers:
        assert (await ws.connect())[0]
        await receive_fragments(ws)
    text = "\x1b[32m+\x1b[0m create (once per process)\n"
    start, end = await sync_to_async(store)(task, job, 2, text)
    message = log_appended_message(start=start, end=end, text=text)
    assert message == {"type": "log.appended", "start": start, "end": end, "text": text}
    renders = consumers._chunk_html.cache_info().misses
    await get_channel_layer().group_send(run_group(task.id), message)
    for ws in viewers:
        raw = await ws.receive_from(timeout=5)
        assert raw == f'<div id="run-log" hx-swap-oob="beforeend"><span class="log-chunk" data-end="{end}">' \
                      '<span class="ansi32">+</span> create (once per process)\n</span></div>'
        await ws.disconnect()
    assert consumers._chunk_html.cache_info().misses == renders + 1


async def test_it_shows_markup_published_onto_the_layer_as_text(workspace, alice):
    """Anyone who can publish to Redis (user code on a shared network) can put a message on a
    run's group: whatever it carries reaches the page as escaped text, never as markup."""
    task, job = await sync_to_async(make_run)(workspace)
    page = await connect(f"/ws/runs/{task.id}/?offset=11", alice)
    assert (await page.connect())[0]
    await receive_fragments(page)
    script = await connect(f"/ws/runs/{task.id}/log/?offset=11", alice)
    assert (await script.connect())[0]
    evil = '<img src=x onerror=alert(1)>'
    start, end = await sync_to_async(store)(task, job, 2, "x\n")
    await get_channel_layer().group_send(run_group(task.id), {
        "type": "log.appended", "start": start, "end": start + len(evil) + 1, "text": evil + "\n", "html": evil})
    raw = await page.receive_from(timeout=5)
    assert "<img" not in raw and "onerror=alert(1)&gt;" in raw
    assert log_piece(raw) == (start + len(evil) + 1, evil + "\n")  # shown as the text it is
    assert await script.receive_json_from(timeout=5) == {"text": evil + "\n", "next_offset": start + len(evil) + 1}
    # An offset that is not a number is not taken into the markup either: the database is read.
    await get_channel_layer().group_send(run_group(task.id), {
        "type": "log.appended", "start": start + len(evil) + 1, "end": '1"><img src=x onerror=alert(2)>',
        "text": "y\n"})
    assert await page.receive_nothing(timeout=1)
    await page.disconnect()
    await script.disconnect()


async def test_it_reads_the_database_on_a_gap_and_drops_what_it_already_sent(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/?offset=11", alice)
    assert (await ws.connect())[0]
    await receive_fragments(ws)
    # Two chunks committed; the second's message arrives first (the first one's was lost or
    # is late): the consumer sees a gap and reads both from the database.
    first = await sync_to_async(store)(task, job, 2, "two\n")
    second = await sync_to_async(store)(task, job, 3, "three\n")
    layer = get_channel_layer()
    await layer.group_send(run_group(task.id), log_appended_message(start=second[0], end=second[1], text="three\n"))
    assert await receive_log(ws) == (second[1], "two\nthree\n")
    await layer.group_send(run_group(task.id), log_appended_message(start=first[0], end=first[1], text="two\n"))
    # A chunk too big for a message travels as offsets only: read from the database.
    big = "x" * (70 * 1024) + "\n"
    start, end = await sync_to_async(store)(task, job, 4, big)
    message = log_appended_message(start=start, end=end, text=big)
    assert "text" not in message
    await layer.group_send(run_group(task.id), message)
    assert await receive_log(ws) == (end, big)  # the late "two\n" was dropped, not repeated
    await ws.disconnect()


async def test_it_loses_and_repeats_nothing_across_a_reconnect(workspace, alice):
    task, job = await sync_to_async(make_run)(workspace)
    received: list[str] = []
    ws = await connect(f"/ws/runs/{task.id}/?offset=0", alice)
    assert (await ws.connect())[0]
    offset, text = await receive_log(ws)
    received.append(text)
    for seq in range(2, 6):
        await sync_to_async(append)(task, job, seq, f"\x1b[1mline {seq}\x1b[0m\n")
        offset, text = await receive_log(ws)
        received.append(text)
    await ws.disconnect()
    # Written while the page was away; then the page reconnects from the offset it has.
    for seq in range(6, 9):
        await sync_to_async(append)(task, job, seq, f"line {seq}\n")
    ws = await connect(f"/ws/runs/{task.id}/?offset={offset}", alice)
    assert (await ws.connect())[0]
    offset, text = await receive_log(ws)
    received.append(text)
    await sync_to_async(append)(task, job, 9, "line 9\n")
    offset, text = await receive_log(ws)
    received.append(text)
    await ws.disconnect()

    expected = "first line\n" + "".join(f"line {n}\n" for n in range(2, 10))
    assert "".join(received) == expected
    assert offset == await sync_to_async(lambda: Task.objects.get(id=task.id).log_size)()


async def test_it_pushes_the_status_and_timeline_on_a_run_change(workspace, alice):
    task, _ = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/?offset=11", alice)
    assert (await ws.connect())[0]
    first = await receive_fragments(ws)
    assert '<span id="run-status" class="status status-plan_queued"' in first
    await sync_to_async(run_cancel)(task_id=task.id, actor=alice)
    changed = await receive_fragments(ws)
    assert '<span id="run-status" class="status status-cancelled"' in changed
    assert "Cancel run" not in changed  # a final run has no cancel button
    timeline = re.search(r'<section id="run-timeline".*?</section>', changed, re.S)[0]
    assert timeline.index("plan_queued") < timeline.index("cancelled")
    await ws.disconnect()


async def test_it_closes_the_page_socket_on_a_bad_offset(workspace, alice):
    task, _ = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/?offset=-5", alice)
    assert (await ws.connect())[0]
    assert await ws.receive_output(timeout=5) == {
        "type": "websocket.close", "code": 4400, "reason": "offset must be a non-negative integer"}


async def test_it_keeps_an_idle_socket_open_past_the_channel_layers_blocking_read(workspace, alice):
    """channels_redis waits for messages with a 5 s blocking pop: an idle viewer must still be
    connected (and get the next chunk) after that, not be dropped by a client read timeout."""
    import asyncio

    task, job = await sync_to_async(make_run)(workspace)
    ws = await connect(f"/ws/runs/{task.id}/?offset=11", alice)
    assert (await ws.connect())[0]
    await receive_fragments(ws)
    await asyncio.sleep(6.5)
    await sync_to_async(append)(task, job, 2, "after a quiet while\n")
    assert await receive_log(ws) == (31, "after a quiet while\n")
    await ws.disconnect()
