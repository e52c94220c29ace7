"""Run triggers: a workspace lists source workspaces; an apply of a source that changed its
state queues a plan_and_apply on it (tasks_app/services/runs.py, `run_triggers_fire`, in the
transaction that makes the source's run `applied`).

A workspace's admins choose its sources, among the workspaces they can read: a trigger says
"plan me when that changes", it grants nothing. Reading the source's outputs from the
consumer's runs goes through the source's remote state sharing (Workspace.
remote_state_consumers), which only the source's admins set. A cycle (A triggers B triggers
A) would apply forever: it is refused when it would be made, under a lock that makes two
concurrent additions one after the other."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from iacplatform.errors import Invalid
from iacplatform.permissions import Action, require
from tasks_app.models import Workspace
from tasks_app.services.audit import audit_record

# pg_advisory_xact_lock key of the trigger graph (any constant distinct from the others in use).
_GRAPH_LOCK = 0x7472_6967  # "trig"

MAX_SOURCES = 20


def _path(start: int, goal: int) -> list[int] | None:
    """Workspace ids from `start` to `goal` following existing triggers (source → consumer),
    or None when `goal` is not downstream of `start`."""
    through = Workspace.trigger_sources.through
    parents: dict[int, int | None] = {start: None}
    frontier = [start]
    while frontier:
        edges = through.objects.filter(to_workspace_id__in=frontier).values_list("to_workspace_id",
                                                                                 "from_workspace_id")
        frontier = []
        for source, consumer in edges:
            if consumer not in parents:
                parents[consumer] = source
                frontier.append(consumer)
        if goal in parents:
            path, node = [], goal
            while node is not None:
                path.append(node)
                node = parents[node]
            return list(reversed(path))
    return None


def run_trigger_add(*, workspace: Workspace, source: Workspace, actor: Any) -> None:
    """`source`'s applies will queue runs on `workspace`. The actor needs `admin` on the
    workspace and to be able to read the source (else: no such workspace)."""
    require(actor, Action.SETTINGS, workspace)
    require(actor, Action.READ, source)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_GRAPH_LOCK])
        if source.id == workspace.id:
            raise Invalid(f"workspace '{workspace.name}' cannot trigger itself: its every apply would queue another")
        if workspace.trigger_sources.filter(id=source.id).exists():
            return
        if workspace.trigger_sources.count() >= MAX_SOURCES:
            raise Invalid(f"a workspace has at most {MAX_SOURCES} run trigger sources")
        # The new edge source → workspace closes a cycle when source is downstream of workspace.
        path = _path(workspace.id, source.id)
        if path is not None:
            names = dict(Workspace.objects.filter(id__in=path).values_list("id", "name"))
            chain = " → ".join(names[i] for i in [*path, workspace.id])
            raise Invalid(f"a run trigger from '{source.name}' to '{workspace.name}' would make a cycle: {chain}")
        workspace.trigger_sources.add(source)
        audit_record(actor=actor, action="run_trigger.add", obj=workspace, data={"source": source.name})


def run_trigger_remove(*, workspace: Workspace, source: Workspace, actor: Any) -> None:
    require(actor, Action.SETTINGS, workspace)
    workspace.trigger_sources.remove(source)
    audit_record(actor=actor, action="run_trigger.remove", obj=workspace, data={"source": source.name})
