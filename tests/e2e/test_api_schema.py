"""The published schema tells the truth: schemathesis (`--checks all`, every phase including
the stateful one, a fixed seed) against a real platform with a real agent, as a site admin.
Real objects (a workspace with a configuration, runs waiting for confirmation, a queued run)
are supplied so that confirm, discard and cancel are reached, not only their 404s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks_app.models import AuditEvent
from tests.live import LOG_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.longest, pytest.mark.django_db(transaction=True)]

SEED = 20261128


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


# Rules no schema can express: a name or key already taken, a reference to a pool that does
# not exist, min_replicas above max_replicas. A request that breaks one is schema-valid and
# still a 400 (with the field named); only there is a 400 for valid data accepted.
RULES_ACROSS_OBJECTS = [
    "POST /api/v1/workspaces/", "PATCH /api/v1/workspaces/{id}/",
    "POST /api/v1/workspaces/{workspace_id}/variables/", "PATCH /api/v1/variables/{id}/",
    "POST /api/v1/pools/", "PATCH /api/v1/pools/{id}/",
    # Variable sets: a name or key taken, a team that does not exist, who may own what scope;
    # run triggers and notification destinations: a source that would close a cycle, an
    # address the platform may not call.
    "POST /api/v1/variable-sets/", "PATCH /api/v1/variable-sets/{id}/",
    "POST /api/v1/variable-sets/{set_id}/variables/", "PATCH /api/v1/variable-sets/{set_id}/variables/{id}/",
    "POST /api/v1/workspaces/{workspace_id}/run-triggers/",
    "POST /api/v1/workspaces/{workspace_id}/notification-destinations/",
    "PATCH /api/v1/notification-destinations/{id}/",
    # File names: relative paths inside the configuration ("", "../x" and "/etc/x" are not).
    "POST /api/v1/workspaces/{workspace_id}/configuration-versions/",
    # Freeze windows: which fields a window needs depends on its kind (weekly: weekdays and
    # times; one_off: starts_at before ends_at), and a time zone must be a known IANA name.
    "POST /api/v1/pools/{id}/freeze-windows/", "PATCH /api/v1/pools/{id}/freeze-windows/{window_id}/",
    # VCS connections: a URL must name a usable host, a plain git connection has no webhook
    # secret and only it is polled; a workspace must name an existing connection and a
    # repository path; a held commit must be held. A GitHub App's key must parse as an RSA
    # private key and its id, key and installation id come together, never with a token.
    "POST /api/v1/vcs-connections/", "PATCH /api/v1/vcs-connections/{connection_id}/",
    "PUT /api/v1/workspaces/{workspace_id}/vcs/",
    "POST /api/v1/workspaces/{workspace_id}/vcs/held/",
    # Policy sets: a module must compile, a set's names and packages must differ, a set's name
    # must be free.
    "POST /api/v1/policy-sets/", "PATCH /api/v1/policy-sets/{id}/",
    # An override's reason must say something (not only blanks).
    "POST /api/v1/runs/{id}/override/",
]
POSITIVE_OK = '["2xx", "3xx", 400, 401, 403, 404, 409, 429, "5xx"]'


def _operations(config: list[tuple[str, dict[str, object]]]) -> str:
    out = []
    for name, params in config:
        body = ", ".join(f'"{k}" = {_toml(v)}' for k, v in params.items())
        out.append(f'[[operations]]\ninclude-name = "{name}"\nparameters = {{ {body} }}\n')
    for name in RULES_ACROSS_OBJECTS:
        out.append(f'[[operations]]\ninclude-name = "{name}"\n'
                   f'checks.positive_data_acceptance.expected-statuses = {POSITIVE_OK}\n')
    # No cache of earlier runs (it lives in the working directory): each run starts afresh.
    return "[cache]\nenabled = false\n\n" + "\n".join(out)


def test_schemathesis_finds_no_failure(scenario, tmp_path: Path):
    s = scenario()
    s.agent("a1")
    user = s.user
    ws = s.workspace["id"]
    # One run per action, each in its own workspace (a workspace runs one at a time).
    confirm_ws = user.create_workspace("st-confirm", s.pool.id, {"main.tf": 'resource "terraform_data" "x" {}'})
    discard_ws = user.create_workspace("st-discard", s.pool.id, {"main.tf": 'resource "terraform_data" "x" {}'})
    to_confirm = user.queue(confirm_ws["id"])
    to_discard = user.queue(discard_ws["id"])
    user.wait(to_confirm["id"], "apply_pending")
    user.wait(to_discard["id"], "apply_pending")
    user.request("PATCH", f"/api/v1/workspaces/{ws}/", json={"locked": True}, expect=200)
    to_cancel = user.queue(ws)  # pending behind the lock until cancelled
    var = user.request("GET", f"/api/v1/workspaces/{ws}/variables/", expect=200).json()
    var_id = (var["results"] if isinstance(var, dict) else var)[0]["id"]

    config = tmp_path / "schemathesis.toml"
    config.write_text(_operations([
        ("POST /api/v1/runs/{id}/confirm/", {"id": to_confirm["id"]}),
        ("POST /api/v1/runs/{id}/discard/", {"id": to_discard["id"]}),
        ("POST /api/v1/runs/{id}/cancel/", {"id": to_cancel["id"]}),
        ("POST /api/v1/runs/{id}/prepare/", {"id": to_confirm["id"]}),
        # A short `wait`: the long-poll path is taken, and a case never waits up to 60 s.
        ("GET /api/v1/runs/{id}/", {"id": to_confirm["id"], "wait": 0.1}),
        ("GET /api/v1/runs/{id}/logs/", {"id": to_confirm["id"], "wait": 0.1}),
        ("GET /api/v1/workspaces/{workspace_id}/runs/", {"workspace_id": ws}),
        ("GET /api/v1/workspaces/{workspace_id}/configuration-versions/", {"workspace_id": ws}),
        ("GET /api/v1/workspaces/{workspace_id}/variables/", {"workspace_id": ws}),
        ("GET /api/v1/workspaces/{workspace_id}/state-versions/", {"workspace_id": ws}),
        ("GET /api/v1/workspaces/{workspace_id}/outputs/", {"workspace_id": ws}),
        ("GET /api/v1/workspaces/{id}/", {"id": ws}),
        ("GET /api/v1/variables/{id}/", {"id": var_id}),
    ]))
    report = LOG_DIR / "schemathesis.txt"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{user.base}/api/schema/", "--url", user.base,
        "-H", f"Authorization: {user.s.headers['Authorization']}",
        "--checks", "all", "--seed", str(SEED), "--max-examples", "8",
        "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1",
        "--include-path-regex", "^/api/v1/", "--exclude-path-regex", "/state(/lock)?$|^/api/v1/tokens/",
        "--generation-database", "none", "--request-timeout", "30", "--no-color", "--output-sanitize", "false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"schemathesis failed (full output in {report}):\n{proc.stdout[-8000:]}"
    # The actions were reached with real runs, not only answered 404 (the audit log outlives
    # the runs: the fuzzer may delete their workspaces afterwards, as it should be able to).
    for action, run in [("run.confirm", to_confirm), ("run.discard", to_discard), ("run.cancel", to_cancel)]:
        assert AuditEvent.objects.filter(action=action, object_id=str(run["id"])).exists(), action
