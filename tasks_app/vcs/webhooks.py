"""Webhook deliveries: verified, stored, answered, then processed once.

`delivery_receive` checks the signature (GitHub's X-Hub-Signature-256, an HMAC-SHA256 of
the raw body; GitLab's X-Gitlab-Token), refuses and counts anything else, and stores the
delivery (a redelivery with the same id finds the stored one). The edge answers 2xx and
enqueues `delivery_process`; the VCS tick picks up whatever that missed (a worker restart,
Redis away) once the claim's lease has run out. Processing claims the row with a
conditional update, fetches the commit, and in one transaction makes the configurations,
the runs, their report rows and marks the delivery processed: a crash before the commit
leaves nothing half-made, and the retry starts over. A push also syncs the policy sets that
follow its branch (tasks_app.vcs.policy_sync), before its runs are made."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from iacplatform.errors import Conflict, Forbidden, Invalid, NotFound, PlatformError
from iacplatform.permissions import Action, require
from tasks_app.models import ConfigurationVersion, Task, Workspace
from tasks_app.services.configs import configuration_create_from_commit
from tasks_app.services.runs import run_cancel, run_create, run_discard
from tasks_app.states import Operation, RunStatus
from tasks_app.vcs import events as vcs_events
from tasks_app.vcs import git
from tasks_app.vcs.events import Change
from tasks_app.vcs.models import HeldPullRequest, VcsConnection, VcsKind, VcsReport, WebhookDelivery
from tasks_app.vcs.policy_sync import policy_sets_sync_push

log = logging.getLogger(__name__)

CLAIM_SECONDS = 300  # a claim outlives the slowest fetch; then the tick may take the delivery again
MAX_ATTEMPTS = 5
DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")


@dataclass(frozen=True)
class Received:
    delivery: WebhookDelivery | None  # None: an event that starts nothing (answered, not stored)
    duplicate: bool = False
    note: str = ""


def _refuse(connection: VcsConnection, why: str) -> Forbidden:
    VcsConnection.objects.filter(id=connection.id).update(refused_deliveries=F("refused_deliveries") + 1)
    log.warning("webhook for connection %s refused: %s", connection.name, why)
    return Forbidden(why)


def delivery_receive(*, connection_name: str, headers: dict[str, str], body: bytes) -> Received:
    """`headers` with lowercase names. Raises Forbidden (counted) for an unsigned or wrongly
    signed body, Invalid for a malformed one: nothing is stored then."""
    connection = VcsConnection.objects.filter(name=connection_name).first()
    if connection is None or connection.kind == VcsKind.GIT:
        raise NotFound("no connection with webhooks by that name")
    if len(body) > settings.IAC_VCS_MAX_WEBHOOK_BYTES:
        raise Invalid(f"the body is larger than {settings.IAC_VCS_MAX_WEBHOOK_BYTES} bytes")
    secret = connection.webhook_secret.encode()
    if not secret:  # an HMAC under an empty key proves nothing
        raise _refuse(connection, "the connection has no webhook secret: nothing can be verified")
    if connection.kind == VcsKind.GITHUB:
        signature = headers.get("x-hub-signature-256", "")
        if not signature:
            raise _refuse(connection, "unsigned: X-Hub-Signature-256 is missing")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _refuse(connection, "X-Hub-Signature-256 does not match the body")
        event, delivery_id = headers.get("x-github-event", ""), headers.get("x-github-delivery", "")
        wanted = event in vcs_events.GITHUB_EVENTS
    else:
        token = headers.get("x-gitlab-token", "")
        if not token:
            raise _refuse(connection, "unsigned: X-Gitlab-Token is missing")
        if not hmac.compare_digest(token.encode(), secret):
            raise _refuse(connection, "X-Gitlab-Token does not match")
        event = headers.get("x-gitlab-event", "")
        delivery_id = headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid", "")
        wanted = event in vcs_events.GITLAB_EVENTS
    if not wanted:
        return Received(delivery=None, note=f"event {event[:50]!r} starts nothing")
    if not DELIVERY_ID.fullmatch(delivery_id):
        raise Invalid("the delivery id header is missing or malformed")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise Invalid("the body is not a JSON object")
    # Read now, so a body that is signed but not the forge's shape is refused at once.
    change = (vcs_events.github_change if connection.kind == VcsKind.GITHUB else vcs_events.gitlab_change)(
        event, payload)
    if change is None:
        return Received(delivery=None, note="this action starts nothing")
    return _store(connection, delivery_id, event, payload)


def _store(connection: VcsConnection, delivery_id: str, event: str, payload: dict) -> Received:
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(connection=connection, delivery_id=delivery_id, event=event,
                                                      payload=payload)
    except IntegrityError:
        return Received(delivery=WebhookDelivery.objects.get(connection=connection, delivery_id=delivery_id),
                        duplicate=True)
    return Received(delivery=delivery)


def delivery_store_polled(*, connection: VcsConnection, repository: str, branch: str, before: str,
                          after: str) -> WebhookDelivery | None:
    """A change the ls-remote poll found, stored as a delivery (once per branch and commit)."""
    received = _store(connection, f"poll:{hashlib.sha256(f'{repository}:{branch}'.encode()).hexdigest()[:16]}:{after}",
                      "poll", {"repository": repository, "branch": branch, "before": before, "after": after})
    return None if received.duplicate else received.delivery


def deliveries_stalled() -> list[int]:
    """Deliveries nobody is processing: never claimed (the enqueue after the answer was lost)
    a few seconds after they arrived, or claimed by a worker whose lease ran out."""
    now = timezone.now()
    return list(WebhookDelivery.objects.filter(processed_at=None).filter(
        Q(claimed_until__lt=now) | Q(claimed_until=None, received_at__lt=now - timedelta(seconds=5)))
        .order_by("id").values_list("id", flat=True)[:100])


def _change(delivery: WebhookDelivery) -> Change | None:
    kind = delivery.connection.kind
    if delivery.event == "poll":
        return vcs_events.poll_change(delivery.payload)
    if kind == VcsKind.GITHUB:
        return vcs_events.github_change(delivery.event, delivery.payload)
    return vcs_events.gitlab_change(delivery.event, delivery.payload)


def _follows(ws: Workspace, change: Change) -> bool:
    if change.kind == "tag":
        return bool(ws.vcs_tag_regex) and re.fullmatch(ws.vcs_tag_regex, change.ref_name) is not None
    return (ws.vcs_branch or "main") == change.ref_name


def _trust(ws: Workspace, change: Change) -> str:
    """Why a pull request's commit is held (not planned until someone allows it), or ""."""
    if change.pr_fork:
        return "a pull request from a fork runs its author's code with this workspace's variables"
    trusted = ws.vcs_connection.trusted_authors
    if trusted and change.pr_author not in trusted:
        return f"{change.pr_author or 'the author'} is not trusted by connection {ws.vcs_connection.name}"
    return ""


def delivery_process(*, delivery_id: int) -> str:
    """Process a stored delivery once; returns what was done (also kept on the delivery)."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(id=delivery_id, processed_at=None).filter(
        Q(claimed_until=None) | Q(claimed_until__lt=now)).update(
        claimed_until=now + timedelta(seconds=CLAIM_SECONDS), attempts=F("attempts") + 1)
    if not claimed:
        return "not claimed: processed, or being processed"
    delivery = WebhookDelivery.objects.select_related("connection").get(id=delivery_id)
    try:
        result = _process(delivery)
    except git.GitError as exc:
        if delivery.attempts < MAX_ATTEMPTS:
            # Worth another try (the server or the network): the tick takes it again later.
            WebhookDelivery.objects.filter(id=delivery.id).update(
                claimed_until=timezone.now() + timedelta(seconds=10 * delivery.attempts), result=str(exc))
            return f"retry later: {exc}"
        result = _finish(delivery, f"error: {exc}")
    except PlatformError as exc:
        result = _finish(delivery, f"error: {exc}")
    return result


def _finish(delivery: WebhookDelivery, result: str, **fields: Any) -> str:
    WebhookDelivery.objects.filter(id=delivery.id, processed_at=None).update(
        processed_at=timezone.now(), result=result[:5000], **fields)
    return result


def _process(delivery: WebhookDelivery) -> str:
    """Policy sets following the pushed branch are synced first (so the runs this push
    starts are checked against them), then the workspaces' runs are made."""
    change = _change(delivery)
    if change is not None and not change.deleted and change.kind == "branch":
        git.checked_sha(change.sha)
        synced = policy_sets_sync_push(connection=delivery.connection, change=change, delivery_id=delivery.id)
        if synced:
            result = _process_runs(delivery, change)
            result = "; ".join([*synced, result])
            WebhookDelivery.objects.filter(id=delivery.id).update(result=result[:5000])
            return result
    return _process_runs(delivery, change)


def _process_runs(delivery: WebhookDelivery, change: Change | None) -> str:
    connection = delivery.connection
    if change is None or change.deleted:
        return _finish(delivery, "nothing to run (a deleted branch or an action that starts nothing)")
    if change.kind == "pull_request" and change.pr_action == "closed":
        return _finish(delivery, "pull request closed: nothing to plan")
    git.checked_sha(change.sha)
    candidates = [ws for ws in Workspace.objects.filter(vcs_connection=connection, vcs_repository=change.repository)
                  .select_related("vcs_connection").order_by("id") if _follows(ws, change)]
    if not candidates:
        return _finish(delivery, f"no workspace follows {change.repository or connection.url} "
                                 f"{change.kind} {change.ref_name}")
    if change.kind == "branch":
        # The branch's newest commit, whatever it starts (a newer delivery may have come first).
        Workspace.objects.filter(id__in=[ws.id for ws in candidates]).filter(
            Q(vcs_seen_delivery_id=None) | Q(vcs_seen_delivery_id__lt=delivery.id)).update(
            vcs_last_sha=change.sha, vcs_seen_delivery_id=delivery.id)
    if change.changed is not None and change.kind != "tag" and not any(
            vcs_events.matches(ws.vcs_trigger_patterns, ws.vcs_working_directory, change.changed)
            for ws in candidates):
        # The push lists its paths: nothing to fetch when none concerns a workspace.
        return _finish(delivery, f"the change touches no workspace's trigger patterns "
                                 f"({', '.join(ws.name for ws in candidates)})")
    url = git.clone_url(connection, change.repository)
    with git.git_dir(connection) as (repo, env):
        commit = git.fetch_commit(repo, env, url=url, sha=change.sha,
                                  branch=change.ref_name if change.kind == "branch" else "")
        changed = change.changed
        if changed is None and change.before and change.before != vcs_events.ZERO and (
                change.kind == "pull_request" or delivery.event == "poll"):
            changed = git.changed_files(repo, env, url=url, old=change.before, new=change.sha)
        concerned = [ws for ws in candidates if change.kind == "tag"
                     or vcs_events.matches(ws.vcs_trigger_patterns, ws.vcs_working_directory, changed)]
        if not concerned:
            return _finish(delivery, f"the change touches no workspace's trigger patterns "
                                     f"({', '.join(ws.name for ws in candidates)})")
        older = _older_than_last_run(repo, env, url, change, concerned) if change.kind == "branch" else {}
        entries: dict[str, list[tuple[str, bytes]] | PlatformError] = {}
        for ws in concerned:
            if ws.vcs_working_directory not in entries:
                try:
                    entries[ws.vcs_working_directory] = git.archive_entries(
                        repo, env, sha=change.sha, directory=ws.vcs_working_directory)
                except git.GitError:
                    raise
                except PlatformError as exc:  # the upload's limits: nothing to run from this commit
                    entries[ws.vcs_working_directory] = exc
    return _make_runs(delivery, change, commit, concerned, entries, older)


def _older_than_last_run(repo: Any, env: dict[str, str], url: str, change: Change,
                         concerned: list[Workspace]) -> dict[int, str]:
    """The workspaces whose last run from the branch is of a commit that has this push's
    commit in its history: a delivery that arrived late (the forge sends each push's webhook
    on its own; they may come out of order). {workspace id: that newer commit}. A push that
    follows the last run's commit (its `before`) needs no check; one that does not (out of
    order, a force push) is checked against that commit's last 50 commits."""
    last = {}
    for ws in concerned:
        sha = (ConfigurationVersion.objects.filter(workspace=ws, vcs_pr_number__isnull=True, vcs_tag="")
               .exclude(vcs_sha="").order_by("-id").values_list("vcs_sha", flat=True).first())
        if sha and sha != change.sha and sha != change.before:
            last[ws.id] = sha
    newer = {sha for sha in set(last.values()) if git.is_ancestor(repo, env, url=url, old=change.sha, new=sha)}
    return {ws_id: sha for ws_id, sha in last.items() if sha in newer}


def _make_runs(delivery: WebhookDelivery, change: Change, commit: git.Commit, concerned: list[Workspace],
               entries: dict[str, Any], older: dict[int, str]) -> str:
    runs: list[int] = []
    superseded: list[int] = []
    notes: list[str] = []
    with transaction.atomic():
        if not WebhookDelivery.objects.select_for_update().filter(id=delivery.id, processed_at=None).exists():
            return "already processed"
        for ws in concerned:
            ws = Workspace.objects.select_for_update(no_key=True, of=("self",)).select_related("vcs_connection").get(
                id=ws.id)
            files = entries[ws.vcs_working_directory]
            if isinstance(files, PlatformError):
                notes.append(f"{ws.name}: {files}")
                continue
            ingress = dict(vcs_repository=change.repository, vcs_sha=change.sha, vcs_message=commit.message,
                           vcs_author=change.author or commit.author, vcs_commit_url=change.commit_url,
                           vcs_fetched_by=commit.fetched_by)
            if change.kind == "pull_request":
                held = _trust(ws, change)
                if held:
                    hold, made = HeldPullRequest.objects.get_or_create(workspace=ws, sha=change.sha, defaults=dict(
                        delivery=delivery, number=change.pr_number, reason=held))
                    if made:
                        VcsReport.objects.create(held=hold)
                    notes.append(f"{ws.name}: held ({held})")
                    continue
                cv = configuration_create_from_commit(
                    workspace=ws, entries=files, speculative=True, vcs_branch=change.ref_name,
                    vcs_pr_number=change.pr_number, vcs_pr_url=change.pr_url, **ingress)
                task = run_create(workspace=ws, operation=Operation.PLAN, actor=f"pull request #{change.pr_number}",
                                  configuration_version=cv,
                                  message=f"speculative plan of pull request #{change.pr_number} at {change.sha[:7]}")
            else:
                if ws.vcs_last_delivery_id is not None and ws.vcs_last_delivery_id > delivery.id:
                    # A newer push already made this workspace's run: this one would undo it.
                    superseded.append(ws.id)
                    notes.append(f"{ws.name}: superseded by a newer push")
                    continue
                if ws.id in older:
                    # A newer commit's push came first: running this one would undo it.
                    superseded.append(ws.id)
                    notes.append(f"{ws.name}: superseded: {change.sha[:7]} is older than {older[ws.id][:7]}, "
                                 "the commit of its last run (this push's webhook came late)")
                    if ws.vcs_last_sha == change.sha:
                        ws.vcs_last_sha = older[ws.id]
                        ws.save(update_fields=["vcs_last_sha"])
                    continue
                _supersede_waiting(ws, change.sha)
                cv = configuration_create_from_commit(
                    workspace=ws, entries=files,
                    **({"vcs_tag": change.ref_name} if change.kind == "tag" else {"vcs_branch": change.ref_name}),
                    **ingress)
                ws.vcs_last_delivery_id = delivery.id
                ws.save(update_fields=["vcs_last_delivery_id"])
                task = run_create(workspace=ws, operation=Operation.PLAN_AND_APPLY, configuration_version=cv,
                                  actor=f"git push {change.sha[:7]}",
                                  message=f"{change.kind} {change.ref_name} at {change.sha[:7]}: "
                                          f"{commit.message.splitlines()[0][:200] if commit.message else ''}")
            VcsReport.objects.create(task=task)
            runs.append(task.id)
            notes.append(f"{ws.name}: run {task.id}")
        result = "; ".join(notes)
        WebhookDelivery.objects.filter(id=delivery.id).update(
            processed_at=timezone.now(), result=result[:5000], runs=runs, superseded=superseded)
    return result


def _supersede_waiting(ws: Workspace, sha: str) -> None:
    """A newer push to the branch: the workspace's runs from older commits that have not
    started applying are discarded (waiting for Confirm) or cancelled (queued, planning),
    naming the newer commit, unless the workspace keeps them."""
    if ws.vcs_keep_pending_runs:
        return
    why = f"superseded by commit {sha[:7]}, a newer push to {ws.vcs_branch or 'main'}"
    older = (Task.objects.filter(workspace=ws, operation=Operation.PLAN_AND_APPLY,
                                 status__in=[RunStatus.PENDING, RunStatus.PLAN_QUEUED, RunStatus.PLANNING,
                                             RunStatus.APPLY_PENDING])
             .exclude(configuration_version__vcs_sha=sha).values_list("id", "status"))
    for task_id, status in older:
        try:
            if status == RunStatus.APPLY_PENDING:
                run_discard(task_id=task_id, actor="git", comment=why)
            else:
                run_cancel(task_id=task_id, actor="git", comment=why)
        except Conflict:  # it moved on meanwhile (confirmed, finished): leave it
            pass


def held_allow(*, workspace: Workspace, sha: str, actor: Any) -> Task:
    """Someone with `write` on the workspace allows a held pull request commit: it is planned."""
    require(actor, Action.QUEUE_APPLY, workspace)
    held = HeldPullRequest.objects.filter(workspace=workspace, sha=sha).select_related("delivery__connection").first()
    if held is None:
        raise NotFound(f"no held pull request commit {sha[:40]} on workspace '{workspace.name}'")
    if held.allowed_run_id is not None:
        raise Conflict(f"commit {sha[:7]} was allowed already (run {held.allowed_run_id})")
    delivery = held.delivery
    change = _change(delivery)
    if change is None:
        raise Conflict("the pull request's delivery can no longer be read")
    url = git.clone_url(delivery.connection, change.repository)
    with git.git_dir(delivery.connection) as (repo, env):
        commit = git.fetch_commit(repo, env, url=url, sha=sha, branch="")
        files = git.archive_entries(repo, env, sha=sha, directory=workspace.vcs_working_directory)
    with transaction.atomic():
        held = HeldPullRequest.objects.select_for_update().get(id=held.id)
        if held.allowed_run_id is not None:
            raise Conflict(f"commit {sha[:7]} was allowed already (run {held.allowed_run_id})")
        cv = configuration_create_from_commit(
            workspace=workspace, entries=files, speculative=True, vcs_repository=change.repository,
            vcs_branch=change.ref_name, vcs_sha=sha, vcs_message=commit.message, vcs_author=change.author,
            vcs_pr_number=change.pr_number, vcs_pr_url=change.pr_url, vcs_fetched_by=commit.fetched_by)
        task = run_create(workspace=workspace, operation=Operation.PLAN, configuration_version=cv, actor=actor,
                          message=f"speculative plan of pull request #{change.pr_number} at {sha[:7]}, "
                                  f"allowed by {getattr(actor, 'username', actor)}")
        VcsReport.objects.create(task=task)
        held.allowed_run = task
        held.save(update_fields=["allowed_run"])
    return task
