"""Runs from git on a connection that authenticates as a GitHub App, end to end as
tests/vcs/test_runs_from_git.py (the real platform, real agents and terraform, GitHub's
signed webhooks): the platform trades a JWT signed with the App's key for an installation
token at the fake GitHub (which checks signature, iss and expiry), fetches the commit from a
git server that serves only that token (Basic `x-access-token:<token>`), and reports the
commit status with it. The key never appears in an API answer."""

from __future__ import annotations

import pytest

from tasks_app.models import AuditEvent, TaskEvent
from tasks_app.vcs.models import VcsReport
from tests.e2e.github_app_fake import AppGitServer, FakeGitHubApp, new_private_key
from tests.live import wait_for
from tests.vcs.gitserver import Repo
from tests.vcs.test_runs_from_git import CHANGED_TF, REPO, Vcs

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

APP_ID, INSTALLATION = "314159", 2718281


class AppVcs(Vcs):
    """Vcs's world with a GitHub App's connection instead of a token's."""

    def __init__(self, scenario, tmp_path) -> None:  # noqa: D107 - not Vcs.__init__: no token connection
        self.pem = new_private_key()
        self.forge = FakeGitHubApp(app_id=APP_ID, installation_id=INSTALLATION, private_key=self.pem)
        self.git = AppGitServer(tmp_path / "git-root", self.forge)
        self.repo = Repo(tmp_path / "git-root", REPO, tmp_path / "work")
        self.base_sha = self.repo.commit({"README.md": "# infra\n"}, "Start")
        self.s = scenario()
        self.user = self.s.user
        self.made = self.user.request("POST", "/api/v1/vcs-connections/", expect=201, json={
            "name": f"gh-app{self.s.pool.id}", "kind": "github", "url": self.git.url, "api_url": self.forge.url,
            "app_id": APP_ID, "app_private_key": self.pem, "app_installation_id": INSTALLATION})
        made = self.made.json()
        self.connection, self.secret = made["name"], made["webhook_secret"]
        self.ws = self.s.workspace
        self.user.request("PUT", f"/api/v1/workspaces/{self.ws['id']}/vcs/", expect=200, json={
            "connection": self.connection, "repository": REPO, "branch": "main", "working_directory": "infra"})
        self.head = self.base_sha

    def key_shown_in(self, text: str) -> bool:
        body = "".join(self.pem.strip().splitlines()[1:-1])
        return body[:60] in text.replace("\\n", "").replace("\n", "")


@pytest.fixture
def vcs(scenario, tmp_path):
    v = AppVcs(scenario, tmp_path)
    yield v
    v.stop()


def test_a_push_runs_with_the_apps_installation_token_for_git_and_the_commit_status(vcs):
    vcs.s.agent("a1")
    sha, answer = vcs.push({"infra/main.tf": CHANGED_TF}, "Change through the App")
    assert answer.status_code == 202, answer.text

    run = vcs.run_for(sha)
    pending = vcs.user.wait(run["id"], "apply_pending")
    assert pending["commit"]["sha"] == sha and pending["commit"]["fetched_by"] == "sha"
    assert vcs.user.confirm(run["id"]).status_code == 200
    vcs.user.wait(run["id"], "applied")
    assert "applied hello again" in vcs.s.marker.read_text()

    context = f"iac/{vcs.ws['name']}"
    final = wait_for(lambda: [s for s in vcs.forge.statuses(context) if s.body["state"] == "success"], 30,
                     "the success status")
    assert final[-1].path.endswith(f"/repos/{REPO}/statuses/{sha}")
    assert final[-1].body["description"] == "applied +1 ~0 -0"
    # Every JWT the platform sent was signed with the App's key, iss its id, not expired; each
    # status went with an installation token (FakeGitHubApp accepts nothing else).
    app = vcs.forge.app
    assert app.refused == [] and app.grants, app.refused
    assert all(str(g.claims["iss"]) == APP_ID and g.claims["exp"] - g.claims["iat"] <= 660 for g in app.grants)
    status_paths = {p for m, p in app.used if m == "POST" and "/statuses/" in p}
    assert f"/repos/{REPO}/statuses/{sha}" in status_paths
    assert vcs.forge.state.violations == []
    # The commit was fetched with an installation token as Basic x-access-token, never without.
    assert vcs.git.with_app_token and vcs.git.refused == []
    # The token is cached: the worker (one process, threads) traded one for all its requests.
    assert len(app.grants) == 1 < len(app.used) + len(vcs.git.with_app_token), (app.grants, app.used)
    # Neither the key nor a token is stored anywhere people read.
    tokens = vcs.forge.tokens()
    stored = " ".join([str(list(AuditEvent.objects.values_list("data", flat=True))),
                       str(list(TaskEvent.objects.values_list("message", flat=True))),
                       str(list(VcsReport.objects.values_list("last_error", flat=True)))])
    assert not any(t in stored for t in tokens) and not vcs.key_shown_in(stored)


def test_the_key_never_appears_in_an_api_answer_and_a_bad_key_is_refused_with_why(vcs):
    answers = [vcs.made.text,
               vcs.user.request("GET", "/api/v1/vcs-connections/", expect=200).text]
    made = vcs.made.json()
    assert made["auth"] == "github_app" and made["has_app_private_key"] and made["app_id"] == APP_ID
    one = vcs.user.request("GET", f"/api/v1/vcs-connections/{made['id']}/", expect=200)
    answers.append(one.text)
    refused = vcs.user.request("PATCH", f"/api/v1/vcs-connections/{made['id']}/", expect=400,
                               json={"app_private_key": vcs.pem.replace("MII", "XYZ", 1)})
    assert "app_private_key" in refused.text and "is not a PEM private key" in refused.text
    answers.append(refused.text)
    rotated = new_private_key()
    changed = vcs.user.request("PATCH", f"/api/v1/vcs-connections/{made['id']}/", expect=200,
                               json={"app_private_key": rotated})
    assert changed.json()["auth"] == "github_app"
    answers += [changed.text, vcs.user.request("GET", "/api/v1/audit-events/", expect=200).text]
    for text in answers:
        assert not vcs.key_shown_in(text)
        assert "".join(rotated.strip().splitlines()[1:-1])[:60] not in text.replace("\\n", "")
