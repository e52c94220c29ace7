"""Policy sets taken from a repository, below the HTTP edge: which files are policies and
which level policies.hcl gives them, and the sync itself against a real git server (git
http-backend on the loopback): a good commit replaces the set's policies, a bad one keeps
them and records why, the tick's poll of a plain git connection."""

from __future__ import annotations

import pytest

from iacplatform.errors import Invalid
from tasks_app.models import AuditEvent, PolicySet
from tasks_app.services.policies import policy_set_create
from tasks_app.vcs.models import VcsConnection
from tasks_app.vcs.policy_sync import (
    policies_from_files,
    policy_set_poll,
    policy_set_sync,
    policy_sets_poll_due,
    repository_values,
)
from tests.vcs.gitserver import GitHttpServer, Repo

DENY = 'package terraform.a\n\ndeny contains "no" if { true }\n'
WARN = 'package terraform.b\n\nwarn contains "careful" if { true }\n'
BROKEN = 'package terraform.c\n\ndeny contains msg if {\n  msg := "x"\n'
HCL = '''policy "a" {
  query = "data.terraform.a.deny"
  enforcement_level = "mandatory"
}

policy "b" {
  query = "data.terraform.b.deny"
  enforcement_level = "advisory"
}
'''


def _levels(entries: dict[str, str]) -> dict[str, str]:
    return {p["name"]: p["enforcement_level"]
            for p in policies_from_files([(k, v.encode()) for k, v in entries.items()])}


def test_every_rego_file_of_the_directory_is_a_policy_named_after_it_advisory_by_default():
    assert _levels({"a.rego": DENY, "b.rego": WARN, "a_test.rego": "package terraform.a_test\n",
                    "sub/c.rego": DENY, "README.md": "#"}) == {"a": "advisory", "b": "advisory"}


def test_policies_hcl_gives_the_levels_hcp_terraform_reads_mandatory_being_soft_mandatory():
    assert _levels({"a.rego": DENY, "b.rego": WARN, "policies.hcl": HCL}) == {
        "a": "soft-mandatory", "b": "advisory"}
    json_variant = '{"policy": {"a": {"query": "data.terraform.a.deny", "enforcement_level": "hard-mandatory"}}}'
    assert _levels({"a.rego": DENY, "b.rego": WARN, "policies.json": json_variant}) == {
        "a": "hard-mandatory", "b": "advisory"}


@pytest.mark.parametrize(("files", "words"), [
    ({"a.rego": DENY, "policies.hcl": 'policy "a" {\n  enforcement_level = \n'}, "policies.hcl cannot be read"),
    ({"a.rego": DENY, "policies.hcl": 'policy "z" {\n  enforcement_level = "advisory"\n}\n'},
     "policy 'z' has no file z.rego"),
    ({"a.rego": DENY, "policies.hcl": 'policy "a" {\n  enforcement_level = "strict"\n}\n'},
     "enforcement_level must be advisory or mandatory"),
    ({"a.rego": DENY, "policies.hcl": 'policy "a" {\n  query = "data.other.deny"\n}\n'},
     "query must be data.terraform.a.deny"),
    ({"a.rego": DENY, "policies.hcl": 'policy "a" {\n  colour = "red"\n}\n'}, "unknown attribute(s) colour"),
    ({"a.rego": DENY, "policies.hcl": HCL, "policies.json": "{}"}, "both policies.hcl and policies.json"),
    ({"README.md": "#"}, "no *.rego files"),
])
def test_a_bad_directory_is_refused_with_what_is_wrong(files, words):
    with pytest.raises(Invalid) as refused:
        _levels(files)
    assert words in str(refused.value)


@pytest.fixture
def served(tmp_path):
    server = GitHttpServer(tmp_path / "git-root")
    repo = Repo(tmp_path / "git-root", "org/policies", tmp_path / "work")
    yield server, repo
    server.stop()


@pytest.mark.django_db
def test_a_sync_replaces_the_policies_and_a_bad_commit_keeps_them_with_the_error(served, alice):
    server, repo = served
    VcsConnection.objects.create(name="plain", kind="git", url=server.url, poll_interval_seconds=60)
    good = repo.commit({"guard/a.rego": DENY, "guard/b.rego": WARN, "guard/policies.hcl": HCL}, "Policies")
    ps = policy_set_create(actor=alice, name="from-git", repository=repository_values(
        {"connection": "plain", "repository": "org/policies.git", "branch": "main", "directory": "guard"}))
    assert ps.source == "vcs" and not ps.policies.exists()

    synced = policy_set_sync(policy_set_id=ps.id, actor=alice)
    assert synced.vcs_sha == good and synced.vcs_sync_error == "" and synced.vcs_synced_at is not None
    assert {p.name: p.enforcement_level for p in synced.policies.all()} == {"a": "soft-mandatory", "b": "advisory"}

    bad = repo.commit({"guard/c.rego": BROKEN}, "Broken")
    kept = policy_set_sync(policy_set_id=ps.id, actor="git poll")
    assert kept.vcs_sha == good and kept.vcs_error_sha == bad
    assert "c does not compile" in kept.vcs_sync_error and "c.rego:3:" in kept.vcs_sync_error
    assert f"guard at {bad[:12]}" in kept.vcs_sync_error
    assert sorted(kept.policies.values_list("name", flat=True)) == ["a", "b"]
    actions = list(AuditEvent.objects.filter(object_id=str(ps.id)).order_by("id").values_list("action", "actor_label"))
    assert actions == [("policy_set.create", "alice"), ("policy_set.sync", "alice"),
                       ("policy_set.sync_failed", "git poll")]

    # The tick polls the plain git branch: the failed commit is not fetched again; a fix is.
    assert policy_sets_poll_due() == [ps.id]
    assert policy_set_poll(policy_set_id=ps.id) == "policy set from-git: unchanged"
    assert policy_sets_poll_due() == []
    fixed = repo.commit({"guard/c.rego": BROKEN + "}\n"}, "Fix")
    assert policy_set_poll(policy_set_id=ps.id) == f"policy set from-git: synced {fixed[:7]}"
    ps = PolicySet.objects.get(id=ps.id)
    assert ps.vcs_sha == fixed and ps.vcs_sync_error == "" and ps.policies.count() == 3


@pytest.mark.django_db
def test_a_missing_directory_or_branch_is_recorded_and_nothing_is_written(served, alice):
    server, repo = served
    VcsConnection.objects.create(name="plain", kind="git", url=server.url)
    repo.commit({"README.md": "#"}, "Start")
    ps = policy_set_create(actor=alice, name="nothing-yet", repository=repository_values(
        {"connection": "plain", "repository": "org/policies.git", "directory": "guard"}))
    ps = policy_set_sync(policy_set_id=ps.id, actor=alice)
    assert "has no directory 'guard'" in ps.vcs_sync_error and ps.vcs_sha == "" and not ps.policies.exists()
    PolicySet.objects.filter(id=ps.id).update(vcs_branch="gone")
    ps = policy_set_sync(policy_set_id=ps.id, actor=alice)
    assert ps.vcs_sync_error == "the repository has no branch gone"
