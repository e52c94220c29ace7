"""Live workspaces list and workspace page: server-rendered fragments over a websocket,
swapped by id by htmx's ws extension (`hx-swap-oob`).

Both join their group before the backfill (a change between the two is then sent twice,
never lost) and backfill by sending the current fragment, which is also what a reconnect
gets: a fragment is the whole truth of its part of the page, so repeats are harmless.

- `/ws/workspaces/`: group `workspaces` gets every run change of the platform. Each
  consumer re-checks, per event, that its user may read the workspace (access can be
  revoked while the page is open) and pushes that workspace's row only then.
- `/ws/workspaces/<id>/`: group `workspace-<id>`; read permission is checked on connect and
  again on each event; each run change re-renders the runs table, the health and the
  notification deliveries (a `workspace.changed`, sent when a delivery is attempted, the
  last two).

Both close with 4403 when their user loses access (an `access.changed`, see
iacplatform/live_consumer.py: the list when the account is deactivated, the workspace page
when it may no longer be read). Messages carry ids only: an id that is not one is ignored."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from iacplatform.live import WORKSPACES_GROUP, Close, workspace_group
from iacplatform.live_consumer import LiveConsumer
from iacplatform.permissions import Action, can
from tasks_app.models import Workspace
from tasks_app.selectors_workspaces import workspace_row, workspace_rows, workspace_runs

ROWS_BACKFILLED = 500  # a list longer than this backfills its first rows; later ones update on change


def _row_html(user: Any, workspace_id: int) -> str | None:
    ws = workspace_row(user, workspace_id)
    if ws is None:
        return None
    # `user`: the row links the pool page for site admins only, as the page does.
    return render_to_string("tasks_app/workspace/_row.html", {"ws": ws, "oob": True, "user": user})


def _rows_html(user: Any) -> str:
    return "".join(render_to_string("tasks_app/workspace/_row.html", {"ws": ws, "oob": True, "user": user})
                   for ws in workspace_rows(user)[:ROWS_BACKFILLED])


def _runs_html(user: Any, workspace_id: int) -> str | None:
    ws = Workspace.objects.filter(id=workspace_id).first()
    if ws is None or not can(user, Action.READ, ws):
        return None
    context = {"runs": workspace_runs(ws.id), "oob": True,
               "configuration": ws.configuration_versions.order_by("-id").only("id").first()}
    return render_to_string("tasks_app/workspace/_runs.html", context)


def _workflows_html(user: Any, workspace_id: int) -> str | None:
    """The workspace's health and its destinations' last deliveries, as oob fragments."""
    ws = Workspace.objects.filter(id=workspace_id).first()
    if ws is None or not can(user, Action.READ, ws):
        return None
    html = render_to_string("tasks_app/workspace/_health.html", {"workspace": ws, "oob": True})
    destinations = ws.notification_destinations.prefetch_related("deliveries__attempt_rows").order_by("name")
    return html + "".join(render_to_string("tasks_app/workspace/_deliveries.html", {"d": d, "oob": True})
                          for d in destinations)


def _authenticated(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


class WorkspacesConsumer(LiveConsumer):
    access_lost_reason = "your account no longer has access"

    async def connect(self) -> None:
        if not _authenticated(self.user):
            await self.close(code=Close.UNAUTHENTICATED)
            return
        await self.channel_layer.group_add(WORKSPACES_GROUP, self.channel_name)
        self.joined = True
        await self.accept()
        await self.send(text_data=await database_sync_to_async(_rows_html)(self.user))

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(WORKSPACES_GROUP, self.channel_name)

    def may_watch(self, user: Any) -> bool:
        return True  # an active account (checked by LiveConsumer); each row is checked as it changes

    async def run_changed(self, event: dict) -> None:
        workspace_id = event.get("workspace_id")
        if type(workspace_id) is not int:
            return
        html = await database_sync_to_async(_row_html)(self.user, workspace_id)
        if html is not None:
            await self.send(text_data=html)


class WorkspaceConsumer(LiveConsumer):
    access_lost_reason = "you no longer have access to this workspace"

    async def connect(self) -> None:
        if not _authenticated(self.user):
            await self.close(code=Close.UNAUTHENTICATED)
            return
        self.workspace_id = int(self.scope["url_route"]["kwargs"]["workspace_id"])
        html = await database_sync_to_async(_runs_html)(self.user, self.workspace_id)
        if html is None:
            # The same answer for a workspace that does not exist and one the user may not read.
            await self.close(code=Close.NOT_FOUND)
            return
        await self.channel_layer.group_add(workspace_group(self.workspace_id), self.channel_name)
        self.joined = True
        await self.accept()
        # Rendered again after joining: a change between the check and the join is not lost.
        html = await database_sync_to_async(_runs_html)(self.user, self.workspace_id)
        if html is not None:
            await self.send(text_data=html)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(workspace_group(self.workspace_id), self.channel_name)

    def may_watch(self, user: Any) -> bool:
        ws = Workspace.objects.filter(id=self.workspace_id).first()
        return ws is not None and can(user, Action.READ, ws)

    async def run_changed(self, event: dict) -> None:
        # A run's change may be a drift check's end (the health) or a notification queued.
        html = await database_sync_to_async(_runs_html)(self.user, self.workspace_id)
        more = await database_sync_to_async(_workflows_html)(self.user, self.workspace_id)
        if html is None or more is None:  # access revoked (or the workspace deleted) while the page was open
            await self.close_access_lost()
            return
        await self.send(text_data=html + more)

    async def workspace_changed(self, event: dict) -> None:
        """A notification delivery was attempted (the worker): its table again."""
        html = await database_sync_to_async(_workflows_html)(self.user, self.workspace_id)
        if html is None:
            await self.close_access_lost()
            return
        await self.send(text_data=html)
