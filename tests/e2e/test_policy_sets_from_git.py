"""Policy sets taken from a repository, end to end: a real git server (git http-backend on the
loopback), pushes announced by webhooks signed as GitHub signs them, the real platform
(Daphne, Celery), real agents and terraform. A push syncs the set's policies before the runs
it starts, so the run of that same push is governed by them; a push whose module does not
compile keeps the old policies and says why; site admins can sync on demand; nobody else
can make or sync such a set."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tasks_app.models import AuditEvent, PolicySet, Workspace
from tests.e2e.apiclient import PlatformUser
from tests.e2e.test_policies import ALLOW_ALL, DENY_TERRAFORM_DATA
from tests.factories import DEMO_MAIN_TF, grant, make_token
from tests.live import wait_for
from tests.vcs.forge import FakeGitHub, push_payload, send
from tests.vcs.gitserver import GitHttpServer, Repo

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPO = "org/infra"
POLICIES_HCL = '''policy "no_data" {
  query             = "data.terraform.no_terraform_data.deny"
  enforcement_level = "mandatory"
}

policy "instances" {
  query             = "data.terraform.instances.deny"
  enforcement_level = "advisory"
}
'''
BROKEN = 'package terraform.broken\n\ndeny contains msg if {\n  msg := "x"\n'


class Git:
    """org/infra on a git server, a local GitHub API, a GitHub connection with its webhook
    secret, and scenario's workspace following org/infra's `infra/` on main."""

    def __init__(self, scenario, tmp_path) -> None:
        self.server = GitHttpServer(tmp_path / "git-root")
        self.forge = FakeGitHub()
        self.repo = Repo(tmp_path / "git-root", REPO, tmp_path / "work")
        self.head = self.repo.commit({"README.md": "# infra\n"}, "Start")
        self.s = scenario()
        self.user = self.s.user
        made = self.user.request("POST", "/api/v1/vcs-connections/", expect=201, json={
            "name": f"gh{self.s.pool.id}", "kind": "github", "url": self.server.url, "api_url": self.forge.url,
            "token": self.forge.state.token}).json()
        self.connection, self.secret = made["name"], made["webhook_secret"]
        self.ws = self.s.workspace
        self.user.request("PUT", f"/api/v1/workspaces/{self.ws['id']}/vcs/", expect=200, json={
            "connection": self.connection, "repository": REPO, "branch": "main", "working_directory": "infra"})

    def push(self, files: dict[str, str], message: str) -> str:
        before, self.head = self.head, self.repo.commit(files, message)
        answer = send(self.user.base, self.connection, self.secret, "push", push_payload(
            REPO, before=before, after=self.head, message=message, files={"modified": list(files)}))
        assert answer.status_code == 202, answer.text
        return self.head

    def runs(self) -> list[dict]:
        return self.user.request("GET", f"/api/v1/workspaces/{self.ws['id']}/runs/", expect=200).json()["results"]

    def policy_set(self, set_id: int) -> dict:
        return self.user.request("GET", f"/api/v1/policy-sets/{set_id}/", expect=200).json()

    def stop(self) -> None:
        self.server.stop()
        self.forge.stop()


@pytest.fixture
def git(scenario, tmp_path):
    g = Git(scenario, tmp_path)
    yield g
    g.stop()


def _follow(g: Git, **extra) -> dict:
    return g.user.request("POST", "/api/v1/policy-sets/", expect=201, json={
        "name": "guard", "workspaces": [g.ws["id"]], **extra, "repository": {
            "connection": g.connection, "repository": REPO, "branch": "main", "directory": "policies"}}).json()


def test_a_push_syncs_the_policies_that_govern_its_run_and_a_module_that_does_not_compile_keeps_them(git):
    created = _follow(git)
    # The commit it was made at has no policies/ yet: nothing to take, and it says so.
    repository = created["repository"]
    assert created["source"] == "vcs" and created["policies"] == []
    assert repository["connection"] == git.connection and repository["directory"] == "policies"
    assert "has no directory 'policies'" in repository["sync_error"] and repository["sha"] == ""

    git.s.agent("a1")
    sha = git.push({"policies/no_data.rego": DENY_TERRAFORM_DATA, "policies/instances.rego": ALLOW_ALL,
                    "policies/policies.hcl": POLICIES_HCL, "infra/main.tf": DEMO_MAIN_TF}, "Policies and infra")
    synced = wait_for(lambda: (ps := git.policy_set(created["id"]))["repository"]["sha"] == sha and ps, 60,
                      "the policy set to be synced from the push")
    assert synced["repository"]["sync_error"] == "" and synced["repository"]["synced_at"]
    assert {p["name"]: p["enforcement_level"] for p in synced["policies"]} == {
        "no_data": "soft-mandatory", "instances": "advisory"}

    # The run the same push started is checked against them: HCP's "mandatory" is soft-mandatory.
    run = wait_for(lambda: next((r for r in git.runs() if (r["commit"] or {}).get("sha") == sha), None), 60,
                   "the push's run")  # made after the sync, by the same delivery
    pending = git.user.wait(run["id"], "apply_pending")
    assert pending["policy_status"] == "soft_failed"
    failed = {r["policy"]: r for r in pending["policy_check"]["results"]}
    assert failed["no_data"]["passed"] is False and failed["no_data"]["policy_set"] == "guard"
    assert failed["instances"]["passed"] is True

    # A push whose new module does not compile: the set keeps its policies, says why and where.
    bad = git.push({"policies/broken.rego": BROKEN}, "Add a broken policy")
    kept = wait_for(lambda: (ps := git.policy_set(created["id"]))["repository"]["error_sha"] == bad and ps, 60,
                    "the failed sync to be recorded")
    assert kept["repository"]["sha"] == sha
    assert "broken does not compile" in kept["repository"]["sync_error"]
    assert "broken.rego:3:" in kept["repository"]["sync_error"]
    assert sorted(p["name"] for p in kept["policies"]) == ["instances", "no_data"]
    actions = list(AuditEvent.objects.filter(object_type="policyset", object_id=str(created["id"]))
                   .order_by("id").values_list("action", flat=True))
    assert actions == ["policy_set.create", "policy_set.sync_failed", "policy_set.sync", "policy_set.sync_failed"]


def test_a_site_admin_syncs_on_demand_and_no_one_else_makes_or_syncs_such_a_set(git, live_url):
    git.repo.commit({"policies/instances.rego": ALLOW_ALL}, "A policy, pushed without a webhook")
    created = _follow(git)  # made at the branch's head
    first = created["repository"]["sha"]
    assert [p["name"] for p in created["policies"]] == ["instances"] and created["repository"]["sync_error"] == ""

    head = git.repo.commit({"policies/no_data.rego": DENY_TERRAFORM_DATA}, "Another, still no webhook")
    assert git.policy_set(created["id"])["repository"]["sha"] == first
    synced = git.user.request("POST", f"/api/v1/policy-sets/{created['id']}/sync/", expect=200).json()
    assert synced["repository"]["sha"] == head
    assert sorted(p["name"] for p in synced["policies"]) == ["instances", "no_data"]
    # Uploads are refused on it; it goes back to uploads keeping what it has.
    refused = git.user.request("PATCH", f"/api/v1/policy-sets/{created['id']}/", expect=400, json={
        "policies": [{"name": "x", "module": ALLOW_ALL}]})
    assert "follows a repository" in refused.text

    # A workspace admin who is not a site admin can neither make such a set nor sync one.
    dave = User.objects.create_user("dave", password="dave-password-1")
    grant(dave, Workspace.objects.get(id=git.ws["id"]), "admin")
    other = PlatformUser(live_url, make_token(dave))
    other.request("POST", "/api/v1/policy-sets/", expect=403, json={
        "name": "mine", "repository": {"connection": git.connection, "repository": REPO, "directory": "policies"}})
    other.request("POST", f"/api/v1/policy-sets/{created['id']}/sync/", expect=403)
    other.request("PATCH", f"/api/v1/policy-sets/{created['id']}/", expect=403, json={"repository": None})
    assert PolicySet.objects.count() == 1

    back = git.user.request("PATCH", f"/api/v1/policy-sets/{created['id']}/", expect=200,
                            json={"repository": None}).json()
    assert back["source"] == "upload" and back["repository"] is None and len(back["policies"]) == 2
    git.user.request("POST", f"/api/v1/policy-sets/{created['id']}/sync/", expect=409)

