"""The forges' bodies read into one shape, and which paths concern a workspace (pure)."""

from __future__ import annotations

import pytest

from iacplatform.errors import Invalid
from tasks_app.vcs.events import ZERO, github_change, gitlab_change, matches
from tests.vcs.forge import pull_request_payload, push_payload

A, B = "a" * 40, "b" * 40


def test_it_reads_a_github_push_with_its_paths():
    change = github_change("push", push_payload("org/infra", before=A, after=B, message="Fix it",
                                                files={"modified": ["envs/prod/main.tf"], "added": ["x.md"]}))
    assert (change.kind, change.ref_name, change.repository, change.sha) == ("branch", "main", "org/infra", B)
    assert change.changed == {"envs/prod/main.tf", "x.md"} and change.author == "dana"


def test_it_counts_every_path_as_changed_for_a_new_branch():
    change = github_change("push", push_payload("org/infra", before=ZERO, after=B, message="m", files={}))
    assert change.changed is None


def test_it_reads_a_github_pull_request_from_a_fork():
    change = github_change("pull_request", pull_request_payload(
        "org/infra", action="synchronize", number=3, head_sha=B, base_sha=A, head_ref="f", title="t",
        fork_of="eve/infra", author="eve"))
    assert change.kind == "pull_request" and change.pr_number == 3 and change.pr_fork and change.ref_name == "main"
    assert github_change("pull_request", {**pull_request_payload(
        "org/infra", action="labeled", number=3, head_sha=B, base_sha=A, head_ref="f", title="t")}) is None


def test_it_reads_gitlab_pushes_and_merge_requests():
    push = gitlab_change("Push Hook", {
        "object_kind": "push", "ref": "refs/heads/main", "before": A, "after": B, "total_commits_count": 1,
        "project": {"path_with_namespace": "grp/infra"},
        "commits": [{"id": B, "message": "m", "author": {"name": "Dana"}, "added": [], "modified": ["a.tf"],
                     "removed": []}]})
    assert push.changed == {"a.tf"} and push.author == "Dana"
    truncated = gitlab_change("Push Hook", {"ref": "refs/heads/main", "before": A, "after": B,
                                            "total_commits_count": 30, "project": {"path_with_namespace": "g/i"},
                                            "commits": []})
    assert truncated.changed is None
    mr = gitlab_change("Merge Request Hook", {
        "object_kind": "merge_request", "user": {"username": "dana"}, "project": {"path_with_namespace": "grp/infra"},
        "object_attributes": {"iid": 5, "action": "update", "target_branch": "main", "source_project_id": 1,
                              "target_project_id": 1, "last_commit": {"id": B}, "url": "https://gl/mr/5"}})
    assert mr.pr_number == 5 and mr.pr_action == "synchronize" and not mr.pr_fork and mr.sha == B


@pytest.mark.parametrize("body", [{"ref": 1}, {"ref": "refs/heads/main"}, {"ref": "refs/notes/x", "after": B}])
def test_it_refuses_a_body_the_forge_would_not_send(body):
    with pytest.raises(Invalid):
        github_change("push", body)


@pytest.mark.parametrize("patterns, workdir, paths, expected", [
    ([], "envs/prod", {"envs/prod/main.tf"}, True),
    ([], "envs/prod", {"envs/dev/main.tf", "README.md"}, False),
    ([], "", {"README.md"}, True),
    (["modules/**"], "envs/prod", {"modules/net/main.tf"}, True),
    (["modules/**"], "envs/prod", {"envs/prod/main.tf"}, False),
    (["envs/prod/"], "", {"envs/prod/x/y.tf"}, True),
    ([], "envs/prod", None, True),
])
def test_it_matches_trigger_patterns(patterns, workdir, paths, expected):
    assert matches(patterns, workdir, paths) is expected
