"""Drift detection through real runs: a file managed by a real (tiny, offline) provider is
changed behind the platform's back; the next drift check (a refresh-only plan on the pool)
says the workspace drifted, with that resource and attribute, shows it on the list (badge and
filter) and notifies "drift detected"."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from agents_app.agent.sandbox import executable_paths
from agents_app.agent.terraform import resolve_terraform
from tests.e2e import drift_provider
from tests.e2e.test_notifications import SECRET, receivers  # noqa: F401  (fixture)
from tests.live import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_finds_a_change_made_behind_terraforms_back_and_notifies(scenario, receivers, alice,  # noqa: F811
                                                                    tmp_path):
    managed = tmp_path / "motd.txt"
    mirror = drift_provider.install(tmp_path / "provider-mirror")
    files = {"main.tf": drift_provider.REQUIRED + f"""
resource "localfile_file" "motd" {{
  path    = "{managed}"
  content = "hello"
}}
"""}
    s = scenario(files=files)
    # The provider is a Python script: the sandbox needs this venv and its Python (read-only).
    binds = [*executable_paths(resolve_terraform(settings.VAR_DIR)), Path(sys.prefix).resolve(),
             Path(sys.base_prefix).resolve()]
    s.agent("a1", env={"IAC_AGENT_PROVIDER_UPSTREAM": str(mirror),
                       "IAC_AGENT_SANDBOX_BIND": os.pathsep.join(str(p) for p in binds)})
    user, ws = s.user, s.workspace["id"]
    run = user.queue(ws)
    user.wait(run["id"], "apply_pending")
    assert user.confirm(run["id"]).status_code == 200
    user.wait(run["id"], "applied", timeout=90)
    assert managed.read_text() == "hello"

    hook = receivers()
    user.request("POST", f"/api/v1/workspaces/{ws}/notification-destinations/", expect=201, json={
        "name": "drift", "kind": "webhook", "url": hook.url, "secret": SECRET, "triggers": ["drift_detected"]})

    # Nothing changed yet: the check says healthy, and notifies nobody.
    check = user.request("POST", f"/api/v1/workspaces/{ws}/drift-check/", expect=201).json()
    assert check["plan_mode"] == "refresh_only"
    user.wait(check["id"], "planned_no_changes")
    assert user.request("GET", f"/api/v1/workspaces/{ws}/", expect=200).json()["health"] == "healthy"

    managed.write_text("edited by hand")
    check = user.request("POST", f"/api/v1/workspaces/{ws}/drift-check/", expect=201).json()
    user.wait(check["id"], "planned")
    workspace = user.request("GET", f"/api/v1/workspaces/{ws}/", expect=200).json()
    assert workspace["health"] == "drifted"
    [drifted] = workspace["health_detail"]["resources"]
    assert drifted["address"] == "localfile_file.motd" and drifted["attributes"] == ["content"]
    assert {"name": "content", "before": '"hello"', "after": '"edited by hand"'} in drifted["diff"]
    # The platform compared the real file, not an edited state: nothing was applied.
    assert managed.read_text() == "edited by hand"

    wait_for(lambda: hook.events() == ["drift_detected"], 20, "the drift notification")
    body = hook.received[0]["body"]
    assert body["drift"] == [{"address": "localfile_file.motd", "attributes": ["content"]}] and hook.bad_signatures == 0

    page = Client()
    page.force_login(alice)
    listed = page.get("/?health=drifted").content.decode()
    assert s.workspace["name"] in listed and "health-badge" in listed
    assert s.workspace["name"] not in page.get("/?health=healthy").content.decode()
    assert [w["name"] for w in user.request("GET", "/api/v1/workspaces/?health=drifted", expect=200).json()] == [
        s.workspace["name"]]
    detail = page.get(f"/workspaces/{ws}/").content.decode()
    assert "Health: Drifted" in detail and "localfile_file.motd" in detail
