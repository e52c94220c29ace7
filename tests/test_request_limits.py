"""Request bodies are limited per route (iacplatform/limits.py): forms and JSON to
IAC_MAX_REQUEST_BYTES everywhere, the upload routes (configurations, state, the agents'
plans and logs) to their configured limits; past its limit a request is answered 413 with a
message, before the CSRF check or the view reads the body."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tarfile

import pytest
from asgiref.testing import ApplicationCommunicator
from django.test import Client

from tasks_app.models import ConfigurationVersion, StateVersion, Variable
from tests.factories import make_token

MiB = 1024 * 1024


def test_it_refuses_a_big_anonymous_login_post_before_reading_it(db):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", data=b"username=a&password=" + b"x" * (2 * MiB),
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413  # not the CSRF check's 403: the body was never parsed
    text = response.content.decode()
    assert "Request body too large" in text and "IAC_MAX_REQUEST_BYTES" in text


def test_it_refuses_a_big_json_body_on_the_api_and_keeps_nothing(api, workspace):
    url = f"/api/v1/workspaces/{workspace.id}/variables/"
    response = api.post(url, {"key": "big", "value": "v" * (2 * MiB)}, format="json")
    assert response.status_code == 413
    assert "IAC_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert not Variable.objects.filter(workspace=workspace, key="big").exists()
    # A body within the limit goes through as before.
    assert api.post(url, {"key": "fine", "value": "v" * (MiB // 2)}, format="json").status_code == 201


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_upload_routes_keep_their_configured_limits(settings, alice, api, workspace):
    settings.IAC_MAX_REQUEST_BYTES = 64 * 1024
    # A configuration bigger than a form may be (random text: gzip does not shrink it).
    noise = base64.b64encode(os.urandom(150 * 1024))
    archive = _targz({"main.tf": b'resource "terraform_data" "x" {}\n# ' + noise + b"\n"})
    assert len(archive) > settings.IAC_MAX_REQUEST_BYTES
    before = ConfigurationVersion.objects.filter(workspace=workspace).count()
    response = api.post(f"/api/v1/workspaces/{workspace.id}/configuration-versions/", data=archive,
                        content_type="application/gzip")
    assert response.status_code == 201, response.content[:300]
    assert ConfigurationVersion.objects.filter(workspace=workspace).count() == before + 1

    # The state backend takes a state up to IAC_MAX_STATE_BYTES.
    state = json.dumps({"version": 4, "serial": 1, "lineage": "lin-1", "outputs": {"blob": {
        "value": noise.decode(), "type": "string"}}, "resources": []}).encode()
    auth = "Basic " + base64.b64encode(f"terraform:{make_token(alice)}".encode()).decode()
    pushed = Client().generic("POST", f"/api/v1/workspaces/{workspace.id}/state", data=state,
                              content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert pushed.status_code in (200, 201), pushed.content[:300]
    assert StateVersion.objects.filter(workspace=workspace, serial=1).exists()

    # ... but a form is still held to the small limit.
    page = Client()
    page.force_login(alice)
    response = page.post(f"/workspaces/{workspace.id}/settings/", data=b"auto_apply=on&x=" + b"y" * 100_000,
                         content_type="application/x-www-form-urlencoded")
    assert response.status_code == 413


def test_it_refuses_a_configuration_past_its_own_limit(settings, api, workspace):
    settings.IAC_MAX_CONFIG_BYTES = 100 * 1024
    body = os.urandom(2 * settings.IAC_MAX_CONFIG_BYTES + settings.IAC_MAX_REQUEST_BYTES + 1)
    response = api.post(f"/api/v1/workspaces/{workspace.id}/configuration-versions/", data=body,
                        content_type="application/gzip")
    assert response.status_code == 413
    assert "IAC_MAX_CONFIG_BYTES" in response.json()["detail"]


# Through the ASGI application, as Daphne calls it: a body sent in chunks with no
# Content-Length (Transfer-Encoding: chunked) is read at most one byte past the limit.


async def _asgi(method: str, path: str, chunks: list[bytes], headers: list | None = None) -> tuple[int, bytes]:
    from iacplatform.asgi import application

    path, _, query = path.partition("?")
    comm = ApplicationCommunicator(application, {
        "type": "http", "method": method, "path": path, "query_string": query.encode(),
        "headers": [(b"host", b"localhost"), *(headers or [])], "scheme": "http", "server": ("127.0.0.1", 8000),
    })
    for i, chunk in enumerate(chunks):
        await comm.send_input({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
    start = await comm.receive_output(30)
    body = []
    while True:
        message = await comm.receive_output(30)
        body.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return start["status"], b"".join(body)


def test_it_refuses_a_chunked_body_past_the_limit(db):
    chunks = [b"username=a&password="] + [b"x" * (256 * 1024)] * 8  # 2 MiB, no Content-Length
    status, body = asyncio.run(_asgi("POST", "/accounts/login/", chunks,
                                     [(b"content-type", b"application/x-www-form-urlencoded")]))
    assert status == 413 and b"Request body too large" in body


@pytest.mark.django_db(transaction=True)
def test_a_chunked_json_body_within_the_limit_is_read_whole(alice, workspace):
    payload = json.dumps({"key": "chunked", "value": "v" * 100_000}).encode()
    chunks = [payload[i:i + 16_384] for i in range(0, len(payload), 16_384)]
    status, body = asyncio.run(_asgi("POST", f"/api/v1/workspaces/{workspace.id}/variables/", chunks, [
        (b"content-type", b"application/json"), (b"authorization", f"Token {make_token(alice)}".encode())]))
    assert status == 201, body[:300]
    assert Variable.objects.get(workspace=workspace, key="chunked").value == "v" * 100_000


def test_it_answers_the_limit_on_a_declared_length_over_asgi(db):
    status, body = asyncio.run(_asgi("POST", "/accounts/login/", [b"x" * (2 * MiB)], [
        (b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", str(2 * MiB).encode())]))
    assert status == 413 and b"IAC_MAX_REQUEST_BYTES" in body
