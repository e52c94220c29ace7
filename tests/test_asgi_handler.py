"""The ASGI application serves sync views the way WSGI does (Django's sync handler, the
whole middleware chain in the request's one thread) and async views (the run long-polls)
on Django's async path: iacplatform/asgi_handler.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.http import HttpRequest
from django.test import RequestFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def _asgi(method: str, path: str, body: bytes = b"", headers: list | None = None) -> tuple[int, dict, bytes]:
    from iacplatform.asgi import application

    path, _, query = path.partition("?")
    comm = ApplicationCommunicator(application, {
        "type": "http", "method": method, "path": path, "query_string": query.encode(),
        "headers": [(b"host", b"localhost"), *(headers or [])], "scheme": "http", "server": ("127.0.0.1", 8000),
    })
    await comm.send_input({"type": "http.request", "body": body})
    start = await comm.receive_output(10)
    chunks = []
    while True:
        message = await comm.receive_output(10)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, b"".join(chunks)


def test_a_page_goes_through_the_whole_middleware_chain_in_one_thread(monkeypatch):
    from iacplatform import asgi
    from iacplatform.middleware import RequestAddressMiddleware

    threads: set[int] = set()
    seen = RequestAddressMiddleware.__call__
    handler = asgi.django_asgi_app.sync_handler
    view = handler._get_response

    def spy(self, request):  # a middleware in the middle of the chain, and (below it) the view
        threads.add(threading.get_ident())
        return seen(self, request)

    def view_spy(request):
        threads.add(threading.get_ident())
        return view(request)

    with monkeypatch.context() as patch:
        patch.setattr(RequestAddressMiddleware, "__call__", spy)
        patch.setattr(handler, "_get_response", view_spy)
        handler.load_middleware(is_async=False)  # the chain again, with the spies in it
        try:
            status, headers, body = asyncio.run(_asgi("GET", "/accounts/login/"))
        finally:
            patch.undo()
            handler.load_middleware(is_async=False)  # the application's own chain again
    assert status == 200 and b"<form" in body
    assert headers["x-frame-options"] == "DENY"  # clickjacking middleware
    assert "csrftoken" in headers.get("set-cookie", "")  # CSRF middleware
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_the_middleware_still_refuses_what_it_refuses():
    status, _, _ = asyncio.run(_asgi("POST", "/accounts/login/", b"username=x&password=y",
                                     [(b"content-type", b"application/x-www-form-urlencoded")]))
    assert status == 403  # no CSRF token


def test_it_tells_sync_views_from_async_ones():
    from iacplatform.asgi_handler import serves_sync

    def request(path: str) -> HttpRequest:
        return RequestFactory().get(path)

    assert serves_sync(request("/accounts/login/"))
    assert serves_sync(request("/api/v1/runs/1/confirm/"))
    assert serves_sync(request("/no/such/page/"))  # the 404 page is sync
    assert not serves_sync(request("/api/v1/runs/1/"))  # the run long-poll
    assert not serves_sync(request("/api/v1/runs/1/logs/"))


def test_an_async_view_answers_through_the_async_path(setup, django_user_model):
    import json

    from tasks_app.services.runs import run_create
    from tests.factories import make_token

    _, _, ws = setup
    user = django_user_model.objects.create_superuser("root", password="pw-root-123456")
    token = make_token(user)
    task = run_create(workspace=ws, operation="plan_and_apply", actor=user)
    auth = [(b"authorization", f"Token {token}".encode())]
    status, _, body = asyncio.run(_asgi("GET", f"/api/v1/runs/{task.id}/?wait=5&until={task.status}", headers=auth))
    assert status == 200 and json.loads(body)["id"] == task.id
    status, _, _ = asyncio.run(_asgi("GET", f"/api/v1/runs/{task.id}/?wait=5&until=applied"))
    assert status == 401  # no token: DRF refused it in the long-poll's first check


def test_a_requests_live_updates_go_out_after_its_response_and_none_is_lost(monkeypatch, alice, workspace):
    """The live pages' group sends and the run's event publishes of a sync request's commits
    wait for its response: queueing a run answers, then its run.changed updates go
    to the workspace's group and its status to the run's channel (the API's long-polls); the
    agents' wake-up (of the pool's agents with an idle slot) does not wait."""
    from iacplatform import live, wakeups
    from iacplatform.asgi import application
    from tests.factories import make_agent, make_token

    token = make_token(alice)
    make_agent(pool=workspace.pool, name="idle")  # its slots are idle: woken to claim the plan
    order: list[str] = []
    send_all = live._group_send_all

    async def spy(layer, sends):
        order.extend(f"group {group} {message.get('status', message['type'])}" for group, message in sends)
        await send_all(layer, sends)

    monkeypatch.setattr(live, "_group_send_all", spy)
    publish_all, best_effort = wakeups.publish_all, wakeups._best_effort

    async def publish_spy(messages, label="t"):
        order.extend(f"publish {channel} {message}" for channel, message in messages)
        order.append(f"published: {await publish_all(messages, label)}")

    def best_effort_spy(what, call):
        order.append(f"at once: {what}")
        return best_effort(what, call)

    monkeypatch.setattr(wakeups, "publish_all", publish_spy)
    monkeypatch.setattr(wakeups, "_best_effort", best_effort_spy)

    async def request() -> int:
        status = 0
        body = json.dumps({"operation": "plan"}).encode()
        inbox = [{"type": "http.request", "body": body}]

        async def receive():
            if inbox:
                return inbox.pop(0)
            await asyncio.sleep(3600)  # (no disconnect: the client waits for the whole answer)

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body"):
                order.append("response")

        scope = {"type": "http", "method": "POST", "path": f"/api/v1/workspaces/{workspace.id}/runs/",
                 "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()),
                             (b"authorization", f"Token {token}".encode())]}
        await asyncio.wait_for(application(scope, receive, send), 30)
        return status

    assert asyncio.run(request()) == 201
    response = order.index("response")
    assert order[:response] == ["at once: a wake-up"], order  # the pool's agents, to claim the plan
    after = order[response + 1:]
    assert f"group workspace-{workspace.id} pending" in after
    assert f"group workspace-{workspace.id} plan_queued" in after
    run = int(next(m for m in after if m.startswith("publish iac:run:")).split()[1].rsplit(":", 1)[1])
    assert f"publish iac:run:{run} status:plan_queued" in after
    assert "published: True" in after  # (in one round trip)


def _web_switch_interval(value: str) -> subprocess.CompletedProcess:
    """Import the web process's application with IAC_WEB_GIL_SWITCH_MS=value; print its switch interval."""
    env = dict(os.environ, IAC_WEB_GIL_SWITCH_MS=value, IAC_SWEEP_FALLBACK_AFTER_SECONDS="0")
    return subprocess.run([sys.executable, "-c", "import sys, iacplatform.asgi; print(sys.getswitchinterval())"],
                          cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_the_web_process_takes_its_gil_switch_interval_from_the_setting_and_refuses_a_bad_one():
    """The event loop that hands Confirm's apply to its agent waits at most this long for a
    view thread that computes (Python's default is 5 ms)."""
    ok = _web_switch_interval("2")
    assert ok.returncode == 0, ok.stderr
    assert float(ok.stdout.strip()) == pytest.approx(0.002)
    bad = _web_switch_interval("0")
    assert bad.returncode != 0 and "IAC_WEB_GIL_SWITCH_MS" in bad.stderr
