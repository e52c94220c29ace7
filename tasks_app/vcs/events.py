"""The forges' webhook bodies, read into one shape (`Change`). Pure: no database. GitHub's
push and pull_request events, GitLab's Push Hook, Tag Push Hook and Merge Request Hook, and
the changes the ls-remote poll finds on plain git servers."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from iacplatform.errors import Invalid

ZERO = "0" * 40

# Events stored and processed; anything else is answered 202 and dropped (GitHub's `ping`
# included: it has nothing to run).
GITHUB_EVENTS = {"push", "pull_request"}
GITLAB_EVENTS = {"Push Hook": "push", "Tag Push Hook": "push", "Merge Request Hook": "pull_request"}
PR_ACTIONS = {"opened", "synchronize", "reopened", "closed"}
GITLAB_MR_ACTIONS = {"open": "opened", "reopen": "reopened", "update": "synchronize", "close": "closed",
                     "merge": "closed"}


@dataclass(frozen=True)
class Change:
    kind: str  # "branch", "tag" or "pull_request"
    repository: str
    sha: str
    ref_name: str = ""  # the branch or the tag
    before: str = ""  # the branch's previous commit (a push), the base's commit (a pull request)
    changed: frozenset[str] | None = None  # None: unknown, every path counts
    message: str = ""
    author: str = ""
    commit_url: str = ""
    pr_number: int | None = None
    pr_url: str = ""
    pr_action: str = ""
    pr_author: str = ""
    pr_fork: bool = False
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _dig(body: Any, *path: str, kind: type = str, default: Any = None) -> Any:
    value = body
    for key in path:
        if not isinstance(value, dict) or key not in value:
            if default is not None:
                return default
            raise Invalid(f"the webhook body has no {'.'.join(path)}")
        value = value[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        if default is not None and value is None:
            return default
        raise Invalid(f"the webhook body's {'.'.join(path)} is not a {kind.__name__}")
    return value


def _files(commits: Any) -> set[str]:
    files: set[str] = set()
    for commit in commits if isinstance(commits, list) else []:
        for key in ("added", "modified", "removed"):
            for path in commit.get(key) or [] if isinstance(commit, dict) else []:
                if isinstance(path, str):
                    files.add(path)
    return files


def _ref(ref: str) -> tuple[str, str]:
    if ref.startswith("refs/heads/"):
        return "branch", ref.removeprefix("refs/heads/")
    if ref.startswith("refs/tags/"):
        return "tag", ref.removeprefix("refs/tags/")
    raise Invalid(f"unsupported ref {ref[:200]!r}")


def github_change(event: str, body: Any) -> Change | None:
    """None: nothing to do (a pull request action other than opened/synchronize/reopened/closed)."""
    if event == "push":
        kind, name = _ref(_dig(body, "ref"))
        after, before = _dig(body, "after"), _dig(body, "before", default="")
        head = body.get("head_commit") if isinstance(body.get("head_commit"), dict) else {}
        commits = body.get("commits")
        # GitHub lists at most 2048 commits (and none for a new branch's existing commits).
        known = isinstance(commits, list) and len(commits) < 2048 and before not in ("", ZERO)
        return Change(kind=kind, ref_name=name, repository=_dig(body, "repository", "full_name"), sha=after,
                      before=before, changed=frozenset(_files(commits)) if known else None,
                      message=str(head.get("message") or "")[:10000],
                      author=str((head.get("author") or {}).get("username") or (head.get("author") or {}).get("name") or ""),
                      commit_url=str(head.get("url") or ""), deleted=bool(body.get("deleted")) or after == ZERO)
    if event == "pull_request":
        action = _dig(body, "action")
        if action not in PR_ACTIONS:
            return None
        pr = _dig(body, "pull_request", kind=dict)
        base_repo = _dig(pr, "base", "repo", "full_name")
        head_repo = pr.get("head", {}).get("repo") or {}
        return Change(kind="pull_request", repository=base_repo, sha=_dig(pr, "head", "sha"),
                      ref_name=_dig(pr, "base", "ref"), before=_dig(pr, "base", "sha"),
                      message=str(pr.get("title") or "")[:10000], author=str((pr.get("user") or {}).get("login") or ""),
                      pr_number=_dig(body, "number", kind=int), pr_url=str(pr.get("html_url") or ""),
                      pr_action=action, pr_author=str((pr.get("user") or {}).get("login") or ""),
                      pr_fork=head_repo.get("full_name") != base_repo)
    return None


def gitlab_change(event: str, body: Any) -> Change | None:
    if event in ("Push Hook", "Tag Push Hook"):
        kind, name = _ref(_dig(body, "ref"))
        after, before = _dig(body, "after"), _dig(body, "before", default="")
        commits = body.get("commits") if isinstance(body.get("commits"), list) else []
        total = body.get("total_commits_count")
        # GitLab's payload lists at most 20 commits of a push.
        known = isinstance(total, int) and total == len(commits) and before not in ("", ZERO)
        last = next((c for c in commits if isinstance(c, dict) and c.get("id") == after), {})
        return Change(kind=kind, ref_name=name, repository=_dig(body, "project", "path_with_namespace"), sha=after,
                      before=before, changed=frozenset(_files(commits)) if known else None,
                      message=str(last.get("message") or "")[:10000],
                      author=str((last.get("author") or {}).get("name") or body.get("user_username") or ""),
                      commit_url=str(last.get("url") or ""), deleted=after == ZERO)
    if event == "Merge Request Hook":
        attrs = _dig(body, "object_attributes", kind=dict)
        action = GITLAB_MR_ACTIONS.get(str(attrs.get("action") or ""))
        if action is None:
            return None
        return Change(kind="pull_request", repository=_dig(body, "project", "path_with_namespace"),
                      sha=_dig(attrs, "last_commit", "id"), ref_name=_dig(attrs, "target_branch"),
                      before=str(attrs.get("oldrev") or ""), message=str(attrs.get("title") or "")[:10000],
                      author=str((body.get("user") or {}).get("username") or ""),
                      pr_number=_dig(attrs, "iid", kind=int), pr_url=str(attrs.get("url") or ""), pr_action=action,
                      pr_author=str((body.get("user") or {}).get("username") or ""),
                      pr_fork=attrs.get("source_project_id") != attrs.get("target_project_id"))
    return None


def poll_change(body: Any) -> Change:
    """What the ls-remote poll stores: {"repository", "branch", "before", "after"}."""
    return Change(kind="branch", repository=_dig(body, "repository", default=""), ref_name=_dig(body, "branch"),
                  sha=_dig(body, "after"), before=_dig(body, "before", default=""), changed=None)


def matches(patterns: list[str], working_directory: str, paths: frozenset[str] | set[str] | None) -> bool:
    """Whether a change to `paths` concerns a workspace: any path under one of its trigger
    patterns (gitignore-like globs from the repository root: `modules/**`, `*.tf`, a
    directory name), or under its working directory when it has none. Unknown paths: yes."""
    if paths is None:
        return True
    rules = patterns or [f"{working_directory.strip('/')}/**" if working_directory.strip("/") else "**"]
    for path in paths:
        for rule in rules:
            rule = rule.strip().lstrip("/")
            if rule.endswith("/"):
                rule += "**"
            if fnmatch.fnmatchcase(path, rule) or fnmatch.fnmatchcase(path, rule.rstrip("*").rstrip("/") + "/*") \
                    or (rule.endswith("/**") and path.startswith(rule[:-2])) or rule == "**":
                return True
    return False
