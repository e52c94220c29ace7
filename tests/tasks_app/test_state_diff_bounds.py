"""The state diff page compares states up to IAC_STATE_DIFF_MAX_BYTES only: past it, it says
so on the page instead of parsing, masking and diffing two big states inside the request."""

from __future__ import annotations

import json
from html import unescape

from django.test import Client

from iacplatform import crypto
from tasks_app.models import StateVersion


def add_state(workspace, serial: int, padding: int) -> None:
    data = json.dumps({"version": 4, "serial": serial, "lineage": "l-1", "outputs": {},
                       "resources": [{"mode": "managed", "type": "terraform_data", "name": "big", "instances": [
                           {"attributes": {"id": f"id-{serial}", "input": "x" * padding}}]}]}).encode()
    StateVersion.objects.create(workspace=workspace, serial=serial, lineage="l-1", sha256="0" * 64,
                                size=len(data), encrypted_data=crypto.encrypt(data))


def diff_page(alice, workspace, old: int, new: int) -> tuple[int, str]:
    client = Client()
    client.force_login(alice)
    response = client.get(f"/workspaces/{workspace.id}/state/diff/?from={old}&to={new}")
    return response.status_code, unescape(response.content.decode())


def test_it_refuses_to_diff_states_past_the_limit_with_a_message(settings, alice, workspace):
    settings.IAC_STATE_DIFF_MAX_BYTES = 20_000
    add_state(workspace, 1, 1_000)
    add_state(workspace, 2, 30_000)  # past the limit
    status, html = diff_page(alice, workspace, 1, 2)
    assert status == 400
    assert "too large to compare here" in html and "IAC_STATE_DIFF_MAX_BYTES" in html
    assert '+  "serial": 2,' not in html  # no diff was computed


def test_it_still_diffs_states_within_the_limit(settings, alice, workspace):
    settings.IAC_STATE_DIFF_MAX_BYTES = 20_000
    add_state(workspace, 1, 1_000)
    add_state(workspace, 2, 2_000)
    status, html = diff_page(alice, workspace, 1, 2)
    assert status == 200
    assert '-  "serial": 1,' in html and '+  "serial": 2,' in html
    assert "too large" not in html
