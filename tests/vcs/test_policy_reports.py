"""A pull request's plan tells its reviewers what the policies said: a mandatory policy that
failed turns the commit status into a failure naming it, and the comment lists every policy
with its level and what it said. End to end, as tests/vcs/test_runs_from_git.py: a real git
server, GitHub's signed webhooks, real agents and terraform, the local GitHub API."""

from __future__ import annotations

import pytest

from tests.e2e.test_policies import ALLOW_ALL, DENY_TERRAFORM_DATA
from tests.live import wait_for
from tests.vcs.forge import pull_request_payload, send
from tests.vcs.test_runs_from_git import CHANGED_TF, REPO, vcs  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_pull_requests_status_fails_on_a_mandatory_policy_and_its_comment_lists_each_policy(vcs):  # noqa: F811
    vcs.user.request("POST", "/api/v1/policy-sets/", expect=201, json={
        "name": "guard", "workspaces": [vcs.ws["id"]], "policies": [
            {"name": "no-data", "enforcement_level": "soft-mandatory", "module": DENY_TERRAFORM_DATA},
            {"name": "instances", "enforcement_level": "advisory", "module": ALLOW_ALL}]})
    vcs.s.agent("a1")
    head = vcs.repo.commit({"infra/main.tf": CHANGED_TF}, "Try a change", branch="feature")
    send(vcs.user.base, vcs.connection, vcs.secret, "pull_request", pull_request_payload(
        REPO, action="opened", number=9, head_sha=head, base_sha=vcs.base_sha, head_ref="feature",
        title="Try a change"))
    run = vcs.run_for(head)
    planned = vcs.user.wait(run["id"], "planned")
    assert planned["policy_status"] == "soft_failed"

    context = f"iac/{vcs.ws['name']}"
    failure = wait_for(lambda: next((s.body for s in vcs.forge.statuses(context) if s.body["state"] == "failure"),
                                    None), 30, "the failure status")
    assert failure["description"] == "+1 ~0 -0; policies failed: 1 soft-mandatory (guard/no-data)"
    assert not any(s.body["state"] == "success" for s in vcs.forge.statuses(context))
    body = wait_for(lambda: next(iter(vcs.forge.state.comments.values()), None), 30, "the comment")["body"]
    assert "| guard/no-data | soft-mandatory | ❌ failed: terraform_data.demo: terraform_data is not allowed" in body
    assert "warn: read the plan before you confirm it" in body
    assert "| guard/instances | advisory | ✅ passed |" in body
    assert vcs.s.applies() == 0
    assert vcs.forge.state.violations == []
