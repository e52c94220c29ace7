"""The VCS tick (Celery beat, IAC_VCS_TICK_SECONDS): deliveries nobody is processing (the
enqueue after the answer was lost, a worker died mid-way), plain git branches due for an
ls-remote poll (workspaces' and policy sets'), and reports the forges have not received
yet. One tick at a time across workers (a Postgres advisory lock); each item on its own, a
failing one is logged."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone

from iacplatform.errors import PlatformError
from iacplatform.pglock import try_advisory_lock
from tasks_app.models import Workspace
from tasks_app.vcs import git
from tasks_app.vcs.models import VcsKind
from tasks_app.vcs.policy_sync import policy_set_poll, policy_sets_poll_due
from tasks_app.vcs.reports import report_send, reports_due
from tasks_app.vcs.webhooks import deliveries_stalled, delivery_process, delivery_store_polled

log = logging.getLogger(__name__)

TICK_LOCK = 0x1AC5EEA


def workspaces_poll_due() -> list[int]:
    now = timezone.now()
    due = []
    for ws in Workspace.objects.filter(vcs_connection__kind=VcsKind.GIT, vcs_connection__poll_interval_seconds__gt=0) \
            .select_related("vcs_connection").only("id", "vcs_polled_at", "vcs_connection__poll_interval_seconds"):
        interval = ws.vcs_connection.poll_interval_seconds
        if ws.vcs_polled_at is None or ws.vcs_polled_at + timedelta(seconds=interval) <= now:
            due.append(ws.id)
    return due


def workspace_poll(*, workspace_id: int) -> int | None:
    """ls-remote the workspace's branch; a new commit is stored as a delivery (once per
    branch and commit) and processed like a webhook's push. Returns its id, if any."""
    ws = Workspace.objects.select_related("vcs_connection").get(id=workspace_id)
    Workspace.objects.filter(id=ws.id).update(vcs_polled_at=timezone.now())
    connection, branch = ws.vcs_connection, ws.vcs_branch or "main"
    url = git.clone_url(connection, ws.vcs_repository)
    with git.git_dir(connection) as (repo, env):
        sha = git.ls_remote(env, repo, url=url, branch=branch)
    if sha is None or sha == ws.vcs_last_sha:
        return None
    delivery = delivery_store_polled(connection=connection, repository=ws.vcs_repository, branch=branch,
                                     before=ws.vcs_last_sha, after=sha)
    if delivery is None:
        return None
    delivery_process(delivery_id=delivery.id)
    return delivery.id


def _each(name: str, ids: list[int], fn: Any, results: dict[str, Any]) -> None:
    done = []
    for item in ids:
        try:
            done.append((item, fn(item)))
        except PlatformError as exc:
            log.warning("vcs tick %s %s: %s", name, item, exc)
            done.append((item, f"error: {exc}"))
        except Exception:  # noqa: BLE001 - one broken item must not stop the others
            log.exception("vcs tick %s %s failed", name, item)
            done.append((item, "error"))
    results[name] = done


def vcs_tick() -> dict[str, Any]:
    with try_advisory_lock(TICK_LOCK) as got:
        if not got:
            return {"skipped": True}
        results: dict[str, Any] = {}
        _each("deliveries", deliveries_stalled(), lambda i: delivery_process(delivery_id=i), results)
        _each("polls", workspaces_poll_due(), lambda i: workspace_poll(workspace_id=i), results)
        _each("policy_sets", policy_sets_poll_due(), lambda i: policy_set_poll(policy_set_id=i), results)
        _each("reports", reports_due(), lambda i: report_send(report_id=i), results)
        return results



