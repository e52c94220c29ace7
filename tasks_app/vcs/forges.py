"""The forges' APIs, through their well-kept clients: PyGithub for GitHub, python-gitlab for
GitLab. Only what reporting needs: a commit status and one pull request comment, created
then edited. No client retries here: a failure raises ForgeError and the report is tried
again later with back-off (tasks_app/vcs/reports.py), stored, so a restart loses nothing."""

from __future__ import annotations

import github
import gitlab
import requests
from django.conf import settings
from github import Auth, Github, GithubException

from iacplatform.errors import PlatformError
from tasks_app.vcs import github_app
from tasks_app.vcs.models import VcsConnection, VcsKind
from tasks_app.vcs.urls_check import api_url

# GitHub's commit status states; GitLab's differ for failures ("failed", "canceled").
GITLAB_STATES = {"pending": "running", "success": "success", "failure": "failed", "error": "failed"}


class ForgeError(PlatformError):
    status = 502


def _github(connection: VcsConnection) -> Github:
    api = api_url(connection)
    # A GitHub App: its installation's access token (from memory, or traded for a new one).
    token = github_app.installation_token(connection, api) if connection.uses_github_app else connection.token
    return Github(base_url=api, auth=Auth.Token(token) if token else None,
                  timeout=settings.IAC_VCS_TIMEOUT_SECONDS, retry=None, lazy=True)


def _gitlab(connection: VcsConnection) -> gitlab.Gitlab:
    return gitlab.Gitlab(api_url(connection), private_token=connection.token or None,
                         timeout=settings.IAC_VCS_TIMEOUT_SECONDS, retry_transient_errors=False)


def _fail(exc: Exception) -> ForgeError:
    status = getattr(exc, "status", None) or getattr(exc, "response_code", None)
    return ForgeError(f"the forge answered {status}" if status else f"the forge could not be reached: "
                      f"{type(exc).__name__}")


def status_set(connection: VcsConnection, *, repository: str, sha: str, state: str, description: str,
               context: str, target_url: str) -> None:
    """`state`: pending, success, failure or error (GitHub's words)."""
    description = description if len(description) <= 140 else description[:139] + "…"
    try:
        if connection.kind == VcsKind.GITHUB:
            repo = _github(connection).get_repo(repository, lazy=True)
            repo.get_commit(sha).create_status(state=state, target_url=target_url, description=description,
                                               context=context)
        elif connection.kind == VcsKind.GITLAB:
            project = _gitlab(connection).projects.get(repository, lazy=True)
            project.commits.get(sha, lazy=True).statuses.create({
                "state": GITLAB_STATES[state], "name": context, "target_url": target_url,
                "description": description})
    except github_app.GitHubAppError as exc:
        raise ForgeError(str(exc)) from exc
    except (GithubException, gitlab.GitlabError, requests.RequestException, github.BadAttributeException) as exc:
        raise _fail(exc) from exc


def comment_upsert(connection: VcsConnection, *, repository: str, number: int, comment_id: int | None,
                   body: str) -> int:
    """Edit the comment `comment_id`, or create one; returns its id."""
    try:
        if connection.kind == VcsKind.GITHUB:
            issue = _github(connection).get_repo(repository, lazy=True).get_issue(number)
            if comment_id is not None:
                issue.get_comment(comment_id).edit(body)
                return comment_id
            return issue.create_comment(body).id
        if connection.kind == VcsKind.GITLAB:
            mr = _gitlab(connection).projects.get(repository, lazy=True).mergerequests.get(number, lazy=True)
            if comment_id is not None:
                mr.notes.update(comment_id, {"body": body})
                return comment_id
            return int(mr.notes.create({"body": body}).id)
    except github_app.GitHubAppError as exc:
        raise ForgeError(str(exc)) from exc
    except (GithubException, gitlab.GitlabError, requests.RequestException, github.BadAttributeException) as exc:
        raise _fail(exc) from exc
    raise ForgeError(f"a {connection.kind} connection has no pull requests")
