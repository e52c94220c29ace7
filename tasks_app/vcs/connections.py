"""VCS connections (site admins only) and a workspace following a repository (`admin` on the
workspace). Credentials are encrypted at rest like sensitive variables and never returned."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django.db import IntegrityError, transaction

from iacplatform import crypto
from iacplatform.errors import Forbidden, NotFound, invalid_field
from iacplatform.permissions import Action, is_site_admin, require
from tasks_app.models import Workspace
from tasks_app.services.audit import audit_record
from tasks_app.vcs import github_app
from tasks_app.vcs.models import VcsConnection, VcsKind
from tasks_app.vcs.urls_check import check_url

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
REPOSITORY = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
BRANCH = re.compile(r"(?!/)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]{1,250}(?<![/.])")
PATTERN = re.compile(r"[^\x00-\x1f]{1,300}")


def _text(value: Any, field: str, *, limit: int = 20000) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise invalid_field(field, f"a string of at most {limit} characters")
    return value


def vcs_connection_create(*, actor: Any, name: str, kind: str, url: str, api_url: str = "", token: str = "",
                          ssh_key: str = "", webhook_secret: str = "", poll_interval_seconds: int = 0,
                          trusted_authors: list[str] | None = None, app_id: str | int | None = None,
                          app_private_key: str = "", app_installation_id: int | None = None,
                          ) -> tuple[VcsConnection, str]:
    """A new connection; returns it with its webhook secret (generated when not given), the
    only time the secret is shown. A GitHub connection authenticates with a token or with a
    GitHub App (its id, private key and installation id), not both."""
    if not is_site_admin(actor):
        raise Forbidden("only site admins manage VCS connections")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise invalid_field("name", "1 to 100 lowercase letters, digits, '-' or '_'")
    if kind not in VcsKind.values:
        raise invalid_field("kind", f"must be one of {', '.join(VcsKind.values)}")
    check_url(url, field="url", schemes=("https", "ssh"))
    if api_url:
        check_url(api_url, field="api_url", schemes=("https",))
    token, ssh_key = _text(token, "token", limit=2000), _text(ssh_key, "ssh_key")
    webhook_secret = _text(webhook_secret, "webhook_secret", limit=200)
    if kind == VcsKind.GIT and webhook_secret:
        raise invalid_field("webhook_secret", "plain git connections have no webhooks: they are polled")
    if not isinstance(poll_interval_seconds, int) or isinstance(poll_interval_seconds, bool) or not (
            0 <= poll_interval_seconds <= 86400):
        raise invalid_field("poll_interval_seconds", "whole seconds from 0 (never) to 86400")
    if poll_interval_seconds and kind != VcsKind.GIT:
        raise invalid_field("poll_interval_seconds", "only plain git connections are polled; forges send webhooks")
    trusted = trusted_authors or []
    if not isinstance(trusted, list) or len(trusted) > 1000 or not all(
            isinstance(a, str) and 0 < len(a) <= 100 for a in trusted):
        raise invalid_field("trusted_authors", "a list of logins")
    app = _app_values(kind=kind, app_id=app_id, app_private_key=app_private_key,
                      app_installation_id=app_installation_id, token=token, ssh_key=ssh_key)
    if kind != VcsKind.GIT and not webhook_secret:
        webhook_secret = secrets.token_urlsafe(32)
    connection = VcsConnection(**app,
        name=name, kind=kind, url=url.rstrip("/"), api_url=api_url.rstrip("/"),
        encrypted_token=crypto.encrypt(token.encode()) if token else None,
        encrypted_ssh_key=crypto.encrypt(ssh_key.encode()) if ssh_key else None,
        encrypted_webhook_secret=crypto.encrypt(webhook_secret.encode()) if webhook_secret else None,
        poll_interval_seconds=poll_interval_seconds, trusted_authors=sorted(set(trusted)),
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                connection.save()
        except IntegrityError as exc:
            raise invalid_field("name", "a connection with this name already exists") from exc
        audit_record(actor=actor, action="vcs_connection.create", obj=connection,
                     data={"name": name, "kind": kind, "url": connection.url, "auth": auth_kind(connection)})
    return connection, webhook_secret


def auth_kind(c: VcsConnection) -> str | None:
    """How the connection authenticates, for people (never the credential)."""
    if c.uses_github_app:
        return "github_app"
    if c.encrypted_token is not None:
        return "token"
    return "ssh_key" if c.encrypted_ssh_key is not None else None


def _app_values(*, kind: str, app_id: Any, app_private_key: Any, app_installation_id: Any, token: str,
                ssh_key: str) -> dict[str, Any]:
    """The GitHub App fields, checked (all three or none; GitHub only; not with a token or a
    deploy key), the key encrypted."""
    given = [f for f, v in (("app_id", app_id), ("app_private_key", app_private_key),
                            ("app_installation_id", app_installation_id)) if v not in (None, "")]
    if not given:
        return {"github_app_id": "", "encrypted_github_app_private_key": None, "github_app_installation_id": None}
    if kind != VcsKind.GITHUB:
        raise invalid_field(given[0], "only GitHub connections authenticate as a GitHub App")
    if token or ssh_key:
        raise invalid_field("token" if token else "ssh_key", "give a token or a GitHub App's credentials, not both")
    missing = [f for f in ("app_id", "app_private_key", "app_installation_id") if f not in given]
    if missing:
        raise invalid_field(missing[0], "a GitHub App needs its app_id, app_private_key and app_installation_id")
    pem = github_app.check_private_key(app_private_key)
    return {"github_app_id": github_app.check_app_id(app_id),
            "encrypted_github_app_private_key": crypto.encrypt(pem.encode()),
            "github_app_installation_id": github_app.check_installation_id(app_installation_id)}


UNSET: Any = object()


def vcs_connection_update(*, actor: Any, connection_id: int, token: Any = UNSET, ssh_key: Any = UNSET,
                          app_id: Any = UNSET, app_private_key: Any = UNSET, app_installation_id: Any = UNSET,
                          trusted_authors: Any = UNSET) -> VcsConnection:
    """Change a connection's credential (rotate a token or an App's key, move from a token to
    a GitHub App or back) or its trusted authors. Site admins; audited with what changed,
    never the values. Giving a credential replaces the other kind: a token drops the App's
    credentials, App credentials drop the token. An App's id or installation id alone keeps
    its stored key."""
    if not is_site_admin(actor):
        raise Forbidden("only site admins manage VCS connections")
    with transaction.atomic():
        c = VcsConnection.objects.select_for_update().filter(id=connection_id).first()
        if c is None:
            raise NotFound(f"no VCS connection {connection_id}")
        changed: list[str] = []
        fields: dict[str, Any] = {}
        new_token = _text(token, "token", limit=2000) if token is not UNSET else ""
        new_ssh = _text(ssh_key, "ssh_key") if ssh_key is not UNSET else ""
        app_given = any(v is not UNSET and v not in (None, "") for v in (app_id, app_private_key, app_installation_id))
        if app_given:
            if token is not UNSET and new_token or ssh_key is not UNSET and new_ssh:
                raise invalid_field("token" if new_token else "ssh_key",
                                    "give a token or a GitHub App's credentials, not both")
            fields.update(_app_values(
                kind=c.kind, token="", ssh_key="",
                app_id=c.github_app_id if app_id is UNSET else app_id,
                app_installation_id=c.github_app_installation_id if app_installation_id is UNSET
                else app_installation_id,
                app_private_key=c.github_app_private_key if app_private_key in (UNSET, None, "") else app_private_key))
            fields.update(encrypted_token=None, encrypted_ssh_key=None)
            changed += [f for f, v in (("app_id", app_id), ("app_private_key", app_private_key),
                                       ("app_installation_id", app_installation_id)) if v is not UNSET]
        if token is not UNSET:
            if not app_given:
                fields["encrypted_token"] = crypto.encrypt(new_token.encode()) if new_token else None
                if new_token:
                    fields.update(github_app_id="", encrypted_github_app_private_key=None,
                                  github_app_installation_id=None)
            changed.append("token")
        if ssh_key is not UNSET:
            if not app_given:
                fields["encrypted_ssh_key"] = crypto.encrypt(new_ssh.encode()) if new_ssh else None
            changed.append("ssh_key")
        if trusted_authors is not UNSET:
            trusted = trusted_authors or []
            if not isinstance(trusted, list) or len(trusted) > 1000 or not all(
                    isinstance(a, str) and 0 < len(a) <= 100 for a in trusted):
                raise invalid_field("trusted_authors", "a list of logins")
            fields["trusted_authors"] = sorted(set(trusted))
            changed.append("trusted_authors")
        for key, value in fields.items():
            setattr(c, key, value)
        if fields:
            c.save(update_fields=list(fields))
        audit_record(actor=actor, action="vcs_connection.update", obj=c,
                     data={"name": c.name, "changed": sorted(set(changed)), "auth": auth_kind(c)})
    github_app.forget(c.id)
    return c


VCS_FIELDS = ("vcs_connection", "vcs_repository", "vcs_branch", "vcs_working_directory", "vcs_trigger_patterns",
              "vcs_tag_regex", "vcs_keep_pending_runs")


def follow_values(*, connection: str | None, repository: str = "", branch: str = "", working_directory: str = "",
                  trigger_patterns: list[str] | None = None, tag_regex: str = "",
                  keep_pending_runs: bool = False) -> dict[str, Any]:
    """The workspace fields that make it follow a repository (or nothing: `connection`
    None), checked; Invalid / NotFound naming what is wrong. Writes nothing."""
    if connection is None:
        return {"vcs_connection": None, "vcs_repository": "", "vcs_branch": "", "vcs_working_directory": "",
                "vcs_trigger_patterns": [], "vcs_tag_regex": "", "vcs_keep_pending_runs": False}
    conn = VcsConnection.objects.filter(name=connection).first()
    if conn is None:
        raise NotFound(f"no VCS connection '{connection}' (site admins create them)")
    if conn.kind != VcsKind.GIT or repository:
        if not isinstance(repository, str) or not REPOSITORY.fullmatch(repository) or ".." in repository:
            raise invalid_field("repository", "a repository path such as owner/name")
    if branch and (not isinstance(branch, str) or not BRANCH.fullmatch(branch)):
        raise invalid_field("branch", "a branch name")
    wd = _text(working_directory, "working_directory", limit=300).strip("/")
    if wd and (not REPOSITORY.fullmatch(wd) or any(p in ("..", ".") for p in wd.split("/"))):
        raise invalid_field("working_directory", "a directory of the repository, such as envs/prod")
    patterns = trigger_patterns or []
    if not isinstance(patterns, list) or len(patterns) > 100 or not all(
            isinstance(p, str) and PATTERN.fullmatch(p) for p in patterns):
        raise invalid_field("trigger_patterns", "at most 100 path patterns such as modules/** or envs/prod/*.tf")
    if tag_regex:
        try:
            re.compile(_text(tag_regex, "tag_regex", limit=200))
        except re.error as exc:
            raise invalid_field("tag_regex", f"not a regular expression: {exc}") from exc
    return {"vcs_connection": conn, "vcs_repository": repository, "vcs_branch": branch or "main",
            "vcs_working_directory": wd, "vcs_trigger_patterns": patterns, "vcs_tag_regex": tag_regex,
            "vcs_keep_pending_runs": bool(keep_pending_runs)}


def workspace_follow_repository(*, workspace: Workspace, actor: Any, connection: str | None, repository: str = "",
                                branch: str = "", working_directory: str = "",
                                trigger_patterns: list[str] | None = None, tag_regex: str = "",
                                keep_pending_runs: bool = False) -> Workspace:
    """Make the workspace follow a repository (or nothing: `connection` None). `admin` on it;
    audited. The branch's last seen commit is forgotten: the next push starts afresh."""
    require(actor, Action.SETTINGS, workspace)
    values = follow_values(connection=connection, repository=repository, branch=branch,
                           working_directory=working_directory, trigger_patterns=trigger_patterns,
                           tag_regex=tag_regex, keep_pending_runs=keep_pending_runs)
    with transaction.atomic():
        ws = Workspace.objects.select_for_update(no_key=True).get(id=workspace.id)
        for key, value in values.items():
            setattr(ws, key, value)
        ws.vcs_last_sha, ws.vcs_last_delivery_id, ws.vcs_seen_delivery_id, ws.vcs_polled_at = "", None, None, None
        ws.save(update_fields=[*values, "vcs_last_sha", "vcs_last_delivery_id", "vcs_seen_delivery_id",
                               "vcs_polled_at"])
        audit_record(actor=actor, action="workspace.vcs", obj=ws, data={
            "connection": connection, "repository": ws.vcs_repository, "branch": ws.vcs_branch,
            "working_directory": ws.vcs_working_directory, "trigger_patterns": ws.vcs_trigger_patterns,
            "tag_regex": ws.vcs_tag_regex, "keep_pending_runs": ws.vcs_keep_pending_runs})
    return ws
