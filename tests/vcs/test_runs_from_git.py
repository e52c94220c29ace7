"""Runs from git, end to end: a real git server (git http-backend on the loopback), webhooks
signed and sent as GitHub sends them, the real platform (Daphne, Celery), real agents and
terraform, and a local GitHub API that checks and records the statuses and comments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from tasks_app.models import Task
from tasks_app.vcs.models import VcsConnection, WebhookDelivery
from tasks_app.vcs.webhooks import delivery_receive
from tests.factories import DEMO_MAIN_TF
from tests.live import wait_for
from tests.vcs.forge import FakeGitHub, pull_request_payload, push_payload, send, sign
from tests.vcs.gitserver import GitHttpServer, Repo

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPO = "org/infra"
CHANGED_TF = DEMO_MAIN_TF.replace('default = "hello"', 'default = "hello again"')


class Vcs:
    """A git server with org/infra, a fake GitHub API, a GitHub connection and a workspace
    (scenario's) following org/infra's main branch, working directory `infra/`."""

    def __init__(self, scenario, tmp_path) -> None:
        self.git = GitHttpServer(tmp_path / "git-root")
        self.forge = FakeGitHub()
        self.repo = Repo(tmp_path / "git-root", REPO, tmp_path / "work")
        self.base_sha = self.repo.commit({"README.md": "# infra\n"}, "Start")
        self.s = scenario()
        self.user = self.s.user
        made = self.user.request("POST", "/api/v1/vcs-connections/", expect=201, json={
            "name": f"gh{self.s.pool.id}", "kind": "github", "url": self.git.url, "api_url": self.forge.url,
            "token": self.forge.state.token}).json()
        self.connection, self.secret = made["name"], made["webhook_secret"]
        self.ws = self.s.workspace
        self.user.request("PUT", f"/api/v1/workspaces/{self.ws['id']}/vcs/", expect=200, json={
            "connection": self.connection, "repository": REPO, "branch": "main", "working_directory": "infra"})
        self.head = self.base_sha

    def push(self, files: dict[str, str], message: str, **kw) -> tuple[str, object]:
        before = self.head
        sha = self.repo.commit(files, message)
        self.head = sha
        names = {"modified" if (self.repo.work / n).exists() else "added": [] for n in files}
        payload = push_payload(REPO, before=before, after=sha, message=message,
                               files={"modified": list(files)} if names else {})
        return sha, send(self.user.base, self.connection, self.secret, "push", payload, **kw)

    def runs(self) -> list[dict]:
        return self.user.request("GET", f"/api/v1/workspaces/{self.ws['id']}/runs/", expect=200).json()["results"]

    def run_for(self, sha: str, timeout: float = 60) -> dict:
        return wait_for(lambda: next((r for r in self.runs() if (r["commit"] or {}).get("sha") == sha), None),
                        timeout, f"a run of commit {sha[:7]}")

    def stop(self) -> None:
        self.git.stop()
        self.forge.stop()


@pytest.fixture
def vcs(scenario, tmp_path):
    v = Vcs(scenario, tmp_path)
    yield v
    v.stop()


def test_it_plans_a_push_waits_for_confirm_and_applies_that_commit(vcs, client, alice):
    vcs.s.agent("a1")
    sha, answer = vcs.push({"infra/main.tf": CHANGED_TF}, "Say hello again\n\nwith a body")
    assert answer.status_code == 202, answer.text

    run = vcs.run_for(sha)
    pending = vcs.user.wait(run["id"], "apply_pending")
    commit = pending["commit"]
    assert commit["repository"] == REPO and commit["branch"] == "main" and commit["sha"] == sha
    assert commit["message"].startswith("Say hello again") and commit["author"] == "dana"
    assert commit["newer_commit"] is None and commit["fetched_by"] == "sha"
    assert vcs.s.applies() == 0
    # The run page and its Confirm dialog say which commit Confirm applies.
    client.force_login(alice)
    page = client.get(f"/runs/{run['id']}/").content.decode()
    assert sha[:12] in page and "Say hello again" in page and REPO in page
    dialog = client.get(f"/runs/{run['id']}/confirm-dialog/").content.decode()
    assert sha[:12] in dialog and "newer commit" not in dialog
    # And the command-line client.
    token = vcs.user.s.headers["Authorization"].split()[1]
    shown = subprocess.run([sys.executable, "-m", "iacplatform.cli", "status", str(run["id"])], capture_output=True,
                           text=True, env={**os.environ, "IAC_URL": vcs.user.base, "IAC_TOKEN": token}, timeout=60)
    assert f"commit {sha[:12]} of {REPO} (main) by dana: Say hello again" in shown.stdout, shown.stdout + shown.stderr

    assert vcs.user.confirm(run["id"]).status_code == 200
    vcs.user.wait(run["id"], "applied")
    assert vcs.s.applies() == 1
    assert "applied hello again" in vcs.s.marker.read_text()
    # The forge was told, per workspace: pending, then success with the change count.
    context = f"iac/{vcs.ws['name']}"
    final = wait_for(lambda: [s for s in vcs.forge.statuses(context) if s.body["state"] == "success"], 30,
                     "the success status")
    assert final[-1].path.endswith(f"/repos/{REPO}/statuses/{sha}")
    assert final[-1].body["description"] == "applied +1 ~0 -0"
    assert final[-1].body["target_url"].endswith(f"/runs/{run['id']}/")
    assert vcs.forge.state.violations == []


def test_it_ignores_a_push_outside_the_trigger_patterns(vcs):
    sha, answer = vcs.push({"docs/notes.md": "nothing to plan\n"}, "Docs only")
    assert answer.status_code == 202
    delivery = wait_for(lambda: WebhookDelivery.objects.filter(processed_at__isnull=False).first(), 30,
                        "the delivery to be processed")
    assert "touches no workspace" in delivery.result
    assert Task.objects.filter(workspace_id=vcs.ws["id"], configuration_version__vcs_sha=sha).count() == 0


def test_it_refuses_forged_webhooks_and_processes_a_redelivery_once(vcs):
    vcs.s.agent("a1")
    sha = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "Change")
    payload = push_payload(REPO, before=vcs.base_sha, after=sha, message="Change",
                           files={"modified": ["infra/main.tf"]})
    unsigned = send(vcs.user.base, vcs.connection, None, "push", payload)
    forged = send(vcs.user.base, vcs.connection, "not-the-secret", "push", payload)
    assert unsigned.status_code == 403 and "X-Hub-Signature-256 is missing" in unsigned.json()["detail"]
    assert forged.status_code == 403 and "does not match" in forged.json()["detail"]
    assert VcsConnection.objects.get(name=vcs.connection).refused_deliveries == 2
    assert not WebhookDelivery.objects.exists(), "nothing unsigned is stored"

    first = send(vcs.user.base, vcs.connection, vcs.secret, "push", payload, delivery="d-1")
    again = send(vcs.user.base, vcs.connection, vcs.secret, "push", payload, delivery="d-1")
    assert first.status_code == 202 and again.status_code == 200
    run = vcs.run_for(sha)
    vcs.user.wait(run["id"], "apply_pending")
    assert len([r for r in vcs.runs() if (r["commit"] or {}).get("sha") == sha]) == 1


def test_it_discards_the_run_waiting_for_confirm_when_a_newer_push_arrives(vcs):
    vcs.s.agent("a1")
    old, _ = vcs.push({"infra/main.tf": CHANGED_TF}, "First change")
    old_run = vcs.run_for(old)
    vcs.user.wait(old_run["id"], "apply_pending")
    new, _ = vcs.push({"infra/main.tf": CHANGED_TF.replace("hello again", "hello thrice")}, "Second change")
    discarded = vcs.user.wait(old_run["id"], "discarded")
    assert f"superseded by commit {new[:7]}" in discarded["message"]
    new_run = vcs.run_for(new)
    vcs.user.wait(new_run["id"], "apply_pending")
    assert vcs.s.applies() == 0


def test_it_keeps_the_waiting_run_when_the_workspace_says_so_and_the_dialog_names_the_newer_commit(
        vcs, client, alice):
    vcs.user.request("PUT", f"/api/v1/workspaces/{vcs.ws['id']}/vcs/", expect=200, json={
        "connection": vcs.connection, "repository": REPO, "working_directory": "infra", "keep_pending_runs": True})
    vcs.s.agent("a1")
    old, _ = vcs.push({"infra/main.tf": CHANGED_TF}, "First change")
    old_run = vcs.run_for(old)
    vcs.user.wait(old_run["id"], "apply_pending")
    new, _ = vcs.push({"infra/main.tf": CHANGED_TF.replace("hello again", "hello thrice")}, "Second change")
    vcs.run_for(new)
    kept = vcs.user.run(old_run["id"])
    assert kept["status"] == "apply_pending" and kept["commit"]["newer_commit"] == new
    client.force_login(alice)
    dialog = client.get(f"/runs/{old_run['id']}/confirm-dialog/").content.decode()
    assert "A newer commit" in dialog and new[:12] in dialog


def test_it_plans_a_pull_request_and_keeps_one_comment_updated(vcs):
    vcs.s.agent("a1")
    head = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "Try a change", branch="feature")
    send(vcs.user.base, vcs.connection, vcs.secret, "pull_request", pull_request_payload(
        REPO, action="opened", number=7, head_sha=head, base_sha=vcs.base_sha, head_ref="feature",
        title="Try a change"))
    run = vcs.run_for(head)
    planned = vcs.user.wait(run["id"], "planned")
    assert planned["operation"] == "plan" and planned["commit"]["pull_request"] == 7
    assert planned["commit"]["speculative"] is True
    context = f"iac/{vcs.ws['name']}"
    wait_for(lambda: any(s.body["state"] == "success" and s.body["description"] == "+1 ~0 -0"
                         for s in vcs.forge.statuses(context)), 30, "the success status")
    comments = wait_for(lambda: dict(vcs.forge.state.comments), 30, "the comment")
    assert len(comments) == 1
    (comment_id, comment), = comments.items()
    assert head[:7] in comment["body"] and "+1 ~0 -0" in comment["body"]

    # A second push to the pull request: planned again, the same comment edited.
    head2 = vcs.repo.commit({"infra/main.tf": CHANGED_TF + "\n# more\n"}, "More", branch="feature")
    send(vcs.user.base, vcs.connection, vcs.secret, "pull_request", pull_request_payload(
        REPO, action="synchronize", number=7, head_sha=head2, base_sha=vcs.base_sha, head_ref="feature",
        title="Try a change"))
    run2 = vcs.run_for(head2)
    vcs.user.wait(run2["id"], "planned")
    wait_for(lambda: head2[:7] in vcs.forge.state.comments[comment_id]["body"], 30, "the comment to be updated")
    assert list(vcs.forge.state.comments) == [comment_id]
    # Nothing of a pull request is applied, nor becomes the workspace's configuration.
    assert vcs.s.applies() == 0
    assert vcs.forge.state.violations == []


def test_it_retries_the_status_when_the_forge_answers_500_and_the_run_goes_on(vcs):
    vcs.s.agent("a1")
    vcs.forge.fail(3)
    sha, _ = vcs.push({"infra/main.tf": CHANGED_TF}, "Change while the forge is down")
    run = vcs.run_for(sha)
    pending = vcs.user.wait(run["id"], "apply_pending")
    assert pending["status"] == "apply_pending", "the forge's failures do not touch the run"
    failed = wait_for(lambda: (vcs.user.run(run["id"])["vcs_report"] or {}).get("last_error") or
                      [s for s in vcs.forge.statuses() if s.body["state"] == "pending"], 30, "a failure shown")
    assert failed
    wait_for(lambda: any(s.body["state"] == "pending" and "waiting for Confirm" in s.body["description"]
                         for s in vcs.forge.statuses()), 60, "the status after the retries")
    assert [s.answered for s in vcs.forge.state.sent][:3] == [500, 500, 500]
    report = vcs.user.run(run["id"])["vcs_report"]
    assert report["last_error"] is None and report["sent_status"] == "apply_pending"


def test_it_holds_a_pull_request_from_a_fork_until_a_writer_allows_it(vcs):
    vcs.s.agent("a1")
    head = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "From a fork", branch="fork-branch")
    send(vcs.user.base, vcs.connection, vcs.secret, "pull_request", pull_request_payload(
        REPO, action="opened", number=9, head_sha=head, base_sha=vcs.base_sha, head_ref="fork-branch",
        title="From a fork", fork_of="mallory/infra", author="mallory"))
    status = wait_for(lambda: vcs.forge.statuses(f"iac/{vcs.ws['name']}"), 30, "the held status")
    assert status[-1].body["state"] == "pending" and "fork" in status[-1].body["description"]
    assert not Task.objects.filter(workspace_id=vcs.ws["id"], configuration_version__vcs_sha=head).exists()

    held = vcs.user.request("GET", f"/api/v1/workspaces/{vcs.ws['id']}/vcs/held/", expect=200).json()
    assert [h["sha"] for h in held] == [head]
    allowed = vcs.user.request("POST", f"/api/v1/workspaces/{vcs.ws['id']}/vcs/held/", expect=201,
                               json={"sha": head}).json()
    vcs.user.wait(allowed["run"], "planned")


def test_it_polls_a_plain_git_server_and_runs_new_commits_that_touch_the_patterns(scenario, tmp_path):
    git_server = GitHttpServer(tmp_path / "git-root")
    try:
        repo = Repo(tmp_path / "git-root", "team/plain", tmp_path / "work")
        repo.commit({"README.md": "# plain\n"}, "Start")
        s = scenario()
        s.agent("a1")
        s.user.request("POST", "/api/v1/vcs-connections/", expect=201, json={
            "name": f"plain{s.pool.id}", "kind": "git", "url": git_server.url, "poll_interval_seconds": 1})
        s.user.request("PUT", f"/api/v1/workspaces/{s.workspace['id']}/vcs/", expect=200, json={
            "connection": f"plain{s.pool.id}", "repository": "team/plain.git", "working_directory": "infra"})
        wait_for(lambda: WebhookDelivery.objects.filter(event="poll", processed_at__isnull=False).exists(), 30,
                 "the first poll")

        sha = repo.commit({"infra/main.tf": CHANGED_TF}, "Add infra")
        run = wait_for(lambda: Task.objects.filter(workspace_id=s.workspace["id"],
                                                   configuration_version__vcs_sha=sha).first(), 30, "the polled run")
        pending = s.user.wait(run.id, "apply_pending")
        assert pending["commit"]["branch"] == "main" and pending["commit"]["message"] == "Add infra"

        docs = repo.commit({"docs/x.md": "docs\n"}, "Docs only")
        wait_for(lambda: WebhookDelivery.objects.filter(event="poll", processed_at__isnull=False,
                                                        payload__after=docs).exists(), 30, "the docs commit polled")
        assert not Task.objects.filter(configuration_version__vcs_sha=docs).exists()
        assert s.user.run(run.id)["commit"]["newer_commit"] == docs
    finally:
        git_server.stop()


def test_it_processes_a_stored_delivery_whose_enqueue_was_lost(vcs):
    """A delivery stored but never handed to a worker (Redis away at the answer, the worker
    restarted): the VCS tick finds it and makes its one run."""
    vcs.s.agent("a1")
    sha = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "Stored, not enqueued")
    payload = push_payload(REPO, before=vcs.base_sha, after=sha, message="Stored, not enqueued",
                           files={"modified": ["infra/main.tf"]})
    body = json.dumps(payload).encode()
    received = delivery_receive(connection_name=vcs.connection, body=body, headers={
        "x-hub-signature-256": sign(vcs.secret, body), "x-github-event": "push", "x-github-delivery": "lost-1"})
    assert received.delivery is not None
    # Stored a while ago: the tick takes a delivery never claimed once it is 5 s old, this one
    # at its next tick rather than the test sitting through those seconds.
    WebhookDelivery.objects.filter(delivery_id="lost-1").update(received_at=timezone.now() - timedelta(seconds=10))
    run = vcs.run_for(sha, timeout=60)
    vcs.user.wait(run["id"], "apply_pending")
    assert WebhookDelivery.objects.get(delivery_id="lost-1").runs == [run["id"]]
