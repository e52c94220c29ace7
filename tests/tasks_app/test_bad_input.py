"""Bad input costs little: archive bombs, oversize logs, huge state serials, forged run
messages and bad websocket parameters are refused early and cheaply."""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

import pytest

from iacplatform.errors import Invalid
from tasks_app.models import ConfigurationVersion
from tasks_app.services.configs import archive_read_entries, configuration_create_from_archive

pytestmark = pytest.mark.django_db


# Archives -----------------------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A decompressed tar stream that counts the bytes the service reads from it."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._raw.read(len(buffer))
        self.bytes_read += len(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def header_bomb(headers: int, per_member: int = 4096) -> bytes:
    """A .tar.gz of `headers` empty file entries, built fast: one gzip member holding
    `per_member` tar headers, repeated (concatenated gzip members are one valid stream)."""
    header = tarfile.TarInfo("a.tf").tobuf(format=tarfile.USTAR_FORMAT)
    assert len(header) == tarfile.BLOCKSIZE
    block = gzip.compress(header * per_member, compresslevel=9)
    assert headers % per_member == 0
    return block * (headers // per_member)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_it_stops_reading_a_header_bomb_at_the_member_limit(settings):
    settings.IAC_MAX_CONFIG_FILES = 1000
    bomb = header_bomb(2**21)  # two million entries, 1 GiB unpacked
    stream = CountingReader(gzip.GzipFile(fileobj=io.BytesIO(bomb)))

    with pytest.raises(Invalid) as refused:
        archive_read_entries(io.BufferedReader(stream, buffer_size=tarfile.BLOCKSIZE))

    assert "too many entries: at most 1000" in str(refused.value)
    assert refused.value.fields == {"archive": ["too many entries: at most 1000"]}
    # Every entry is one 512-byte header: the service read the headers of at most limit + 1
    # entries, plus tarfile's read-ahead of one record (20 blocks), out of two million.
    assert stream.bytes_read <= (1000 + 1) * tarfile.BLOCKSIZE + tarfile.RECORDSIZE


def test_it_refuses_a_header_bomb_upload_and_writes_nothing(settings, workspace):
    settings.IAC_MAX_CONFIG_FILES = 50
    before = ConfigurationVersion.objects.count()
    with pytest.raises(Invalid, match="too many entries: at most 50"):
        configuration_create_from_archive(workspace=workspace, data=header_bomb(40_960), actor=None)
    assert ConfigurationVersion.objects.count() == before


def test_it_refuses_a_huge_pax_header_before_unpacking_it(settings, workspace):
    """tarfile reads a pax header whole into memory: the cap on the unpacked stream must stop
    it, not the declared file sizes (a pax header is not a file)."""
    settings.IAC_MAX_CONFIG_BYTES = 100_000
    settings.IAC_MAX_CONFIG_FILES = 10
    info = tarfile.TarInfo("main.tf")
    info.pax_headers = {"comment": "x" * 5_000_000}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    body = buf.getvalue()
    assert len(body) < 100_000

    with pytest.raises(Invalid, match="the archive unpacks to more than"):
        configuration_create_from_archive(workspace=workspace, data=body, actor=None)


def test_it_refuses_files_over_the_unpacked_limit_before_reading_them(settings, workspace):
    settings.IAC_MAX_CONFIG_BYTES = 1000
    body = tar_gz({"main.tf": b"", "big.tf": b"#" * 50_000})
    assert len(body) < 1000
    with pytest.raises(Invalid, match="unpacked size exceeds 1000 bytes"):
        configuration_create_from_archive(workspace=workspace, data=body, actor=None)


def test_it_still_accepts_an_archive_at_the_limits(settings, workspace):
    settings.IAC_MAX_CONFIG_FILES = 3
    body = tar_gz({"main.tf": b'variable "x" {}\n', "a/b.tf": b"", "c.tf": b"# c\n"})
    cv = configuration_create_from_archive(workspace=workspace, data=body, actor=None)
    assert cv.files == ["a/b.tf", "c.tf", "main.tf"]


def test_it_refuses_json_files_over_the_member_limit(settings, workspace):
    from tasks_app.services.configs import configuration_create_from_files

    settings.IAC_MAX_CONFIG_FILES = 2
    with pytest.raises(Invalid, match="too many files: at most 2"):
        configuration_create_from_files(
            workspace=workspace, files={"a.tf": "", "b.tf": "", "c.tf": ""}, actor=None
        )


# Run logs -----------------------------------------------------------------------------------


def _client(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def _planning_run(setup: Any, client: Any) -> tuple[Any, dict]:
    from tasks_app.services.runs import run_create
    from tests.agents_app.fakes import FakeAgent

    agent = FakeAgent(client, setup[1], "a1")
    task = run_create(workspace=setup[2], operation="plan", actor="test")
    return task, {"agent": agent, "job": agent.claim()}


def _post_log(run: dict, seq: int, text: str) -> None:
    job = run["job"]
    response = run["agent"].post(f"/agent/v1/jobs/{job['id']}/logs", {"seq": seq, "text": text}, fence=job["fence"])
    assert response.status_code == 200, response.content


@pytest.mark.django_db(transaction=True)
def test_it_stores_a_log_up_to_its_cap_then_one_marker_line(settings, client):
    from tasks_app.models import LogChunk
    from tasks_app.selectors import run_log_read
    from tests.factories import DEMO_MAIN_TF, make_pool, make_workspace

    pool, token = make_pool()
    setup = (pool, token, make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF}))
    settings.IAC_MAX_LOG_BYTES = 100
    task, run = _planning_run(setup, client)

    _post_log(run, 1, "a" * 59 + "\n")  # 60 bytes: fits
    _post_log(run, 2, "b" * 59 + "\n")  # 40 of its bytes fit
    _post_log(run, 3, "c" * 59 + "\n")  # dropped
    _post_log(run, 4, "d" * 59 + "\n")  # dropped

    text, size = run_log_read(task_id=task.id)
    assert text == "a" * 59 + "\n" + "b" * 40 + "\n[log truncated at 100 bytes: the rest of this run's output was not stored]\n"
    assert "ccc" not in text and text.count("log truncated") == 1
    task.refresh_from_db()
    assert task.log_size == size == len(text.encode())
    assert LogChunk.objects.filter(task=task).count() == 2


def test_it_labels_the_default_cap_in_mib():
    from tasks_app.dispatch.job_output import _size_label

    assert _size_label(50 * 1024 * 1024) == "50 MiB"
    assert _size_label(1000) == "1000 bytes"


def _logged_run(workspace: Any, *chunks: str, final: bool = True) -> Any:
    from agents_app.protocol import JobKind, JobStatus
    from tasks_app.dispatch.models import Job
    from tasks_app.models import LogChunk, Task
    from tasks_app.states import Operation, RunStatus

    task = Task.objects.create(
        workspace=workspace, configuration_version=workspace.configuration_versions.first(),
        operation=Operation.PLAN, status=RunStatus.PLANNED if final else RunStatus.PLANNING,
    )
    job = Job.objects.create(task=task, pool=workspace.pool, kind=JobKind.PLAN, status=JobStatus.SUCCEEDED)
    offset = 0
    for seq, text in enumerate(chunks):
        LogChunk.objects.create(task=task, job=job, seq=seq, offset=offset, text=text)
        offset += len(text.encode())
    Task.objects.filter(id=task.id).update(log_size=offset)
    task.refresh_from_db()
    return task


def test_it_serves_a_long_log_through_the_api_in_bounded_pages(monkeypatch, workspace, alice):
    monkeypatch.setattr("tasks_app.api.LOG_PAGE_BYTES", 10)
    chunks = ["héllo wörld\n", "line two is longer than a page\n", "ünïcödé ëvërÿwhérë\n"]
    task = _logged_run(workspace, *chunks)
    api = _client(alice)

    pages, offset = [], 0
    while True:
        body = api.get(f"/api/v1/runs/{task.id}/logs/", {"offset": offset}).json()
        assert len(body["text"].encode()) <= 10
        assert "\ufffd" not in body["text"]  # a page never splits a character
        pages.append(body["text"])
        offset = body["next_offset"]
        if body["complete"]:
            break
    assert "".join(pages) == "".join(chunks)
    assert offset == task.log_size and len(pages) > 5


def test_it_does_not_call_a_log_complete_before_its_last_page(monkeypatch, workspace, alice):
    monkeypatch.setattr("tasks_app.api.LOG_PAGE_BYTES", 4)
    task = _logged_run(workspace, "0123456789\n")
    first = _client(alice).get(f"/api/v1/runs/{task.id}/logs/").json()
    assert first == {"text": "0123", "next_offset": 4, "complete": False, "status": task.status}


def test_it_refuses_a_log_offset_beyond_64_bits(workspace, alice):
    task = _logged_run(workspace, "x\n")
    response = _client(alice).get(f"/api/v1/runs/{task.id}/logs/", {"offset": str(2**64)})
    assert response.status_code == 400 and "offset" in response.json()["errors"]


def test_it_shows_the_end_of_a_long_log_and_links_the_whole(monkeypatch, client, workspace, alice):
    monkeypatch.setattr("tasks_app.views_runs.LOG_TAIL_BYTES", 30)
    lines = [f"line {i:03d}\n" for i in range(20)]  # 9 bytes each
    task = _logged_run(workspace, *lines)
    client.force_login(alice)

    page = client.get(f"/runs/{task.id}/").content.decode()
    assert "line 019" in page and "line 000" not in page
    assert "Showing the last" in page
    assert f'href="/runs/{task.id}/log.txt"' in page

    download = client.get(f"/runs/{task.id}/log.txt")
    assert download.status_code == 200
    assert download["Content-Type"] == "text/plain; charset=utf-8"
    assert "attachment" in download["Content-Disposition"]
    assert b"".join(download.streaming_content).decode() == "".join(lines)


def test_it_shows_a_short_log_whole_without_a_truncation_note(client, workspace, alice):
    task = _logged_run(workspace, "Initializing...\n", "Plan: 1 to add.\n")
    client.force_login(alice)
    page = client.get(f"/runs/{task.id}/").content.decode()
    assert "Initializing...\nPlan: 1 to add.\n" in page and "Showing the last" not in page


def test_it_hides_the_log_download_of_a_workspace_the_user_cannot_read(client, workspace, charlie):
    task = _logged_run(workspace, "secret output\n")
    client.force_login(charlie)
    response = client.get(f"/runs/{task.id}/log.txt")
    assert response.status_code == 404


# State serials ------------------------------------------------------------------------------


def _state(serial: int | str) -> bytes:
    return b'{"version": 4, "serial": %s, "lineage": "lin-64", "resources": []}' % str(serial).encode()


def test_it_stores_state_serials_beyond_32_bits(workspace):
    from tasks_app.models import StateVersion, Task
    from tasks_app.services.state import state_push

    big = 2**63 - 1
    version, created = state_push(workspace=workspace, data=_state(2**40), lock_id=None, actor=None)
    assert created
    version, created = state_push(workspace=workspace, data=_state(big), lock_id=None, actor=None)
    assert created and StateVersion.objects.get(id=version.id).serial == big

    task = Task.objects.create(workspace=workspace, configuration_version=workspace.configuration_versions.first(),
                               operation="plan", base_state_serial=big)
    task.refresh_from_db()
    assert task.base_state_serial == big


@pytest.mark.parametrize("serial", [2**63, 2**64, "1" + "0" * 5000])
def test_it_refuses_a_state_serial_that_does_not_fit_64_bits(workspace, serial):
    from tasks_app.models import StateVersion
    from tasks_app.services.state import state_push

    with pytest.raises(Invalid) as refused:
        state_push(workspace=workspace, data=_state(serial), lock_id=None, actor=None)
    assert refused.value.status == 400
    assert "64 bits" in str(refused.value) or "not valid JSON" in str(refused.value)
    assert not StateVersion.objects.filter(workspace=workspace).exists()


# Run messages -------------------------------------------------------------------------------


def test_it_ignores_a_message_sent_by_the_client_that_creates_a_run(workspace, alice, django_capture_on_commit_callbacks):
    api = _client(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            f"/api/v1/workspaces/{workspace.id}/runs/", {"operation": "plan", "message": "discarded by admin"},
            format="json",
        )
    assert response.status_code == 201, response.json()
    run = api.get(f"/api/v1/runs/{response.json()['id']}/").json()
    assert "discarded by admin" not in run["message"]
    assert all("discarded by admin" not in event["message"] for event in run["events"])


# Websocket parameters -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["offset=-1", "offset=abc", "offset=1.5", "offset=", "offset=" + "9" * 30])
async def test_it_closes_the_log_socket_on_a_bad_offset(workspace, alice, query):
    from asgiref.sync import sync_to_async
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from iacplatform.routing import websocket_urlpatterns

    task = await sync_to_async(_logged_run)(workspace, "line\n")
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/runs/{task.id}/log/?{query}")
    ws.scope["user"] = alice
    connected, _ = await ws.connect()
    assert connected  # accepted, so that the client gets the code and the reason
    closed = await ws.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4400, "reason": "offset must be a non-negative integer"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_sends_a_long_backfill_over_the_socket_in_pages(monkeypatch, workspace, alice):
    from asgiref.sync import sync_to_async
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from iacplatform.routing import websocket_urlpatterns

    monkeypatch.setattr("tasks_app.consumers.LOG_PAGE_BYTES", 8)
    task = await sync_to_async(_logged_run)(workspace, "0123456789abcdef\n", final=False)
    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/runs/{task.id}/log/?offset=0")
    ws.scope["user"] = alice
    connected, _ = await ws.connect()
    assert connected
    got = [await ws.receive_json_from(timeout=5) for _ in range(3)]
    assert [m["text"] for m in got] == ["01234567", "89abcdef", "\n"]
    assert got[-1]["next_offset"] == 17
    await ws.disconnect()
