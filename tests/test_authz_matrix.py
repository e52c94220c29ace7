"""Who may do what, at every door: the REST API, the pages, the state backend, the agent API,
the admin and the websockets.

Four named users: `alice` is a site admin; `bob` has `write` on workspace A through his team;
`carol` has `read` on A; `dave` has an account and nothing else. Workspace B belongs to nobody
but alice. Every URL pattern of the URLconf and every websocket route must have a rule here:
a new endpoint without one fails `test_it_has_a_rule_for_every_endpoint`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from agents_app.protocol import PROTOCOL_VERSION
from iacplatform.routing import websocket_urlpatterns
from iacplatform.unit_of_work import unit_of_work
from tasks_app.models import AccessLevel, AuditEvent, StateLock, Task, Variable
from tasks_app.services.runs import run_create
from tests.factories import DEMO_MAIN_TF, grant, make_pool, make_token, make_workspace

pytestmark = pytest.mark.django_db

USERS = ("alice", "bob", "carol", "dave")

# URL names that are public on purpose (logging in, resetting a forgotten password).
PUBLIC = {
    "login", "logout", "password_change", "password_change_done", "password_reset", "password_reset_done",
    "password_reset_confirm", "password_reset_complete",
}


@dataclass
class World:
    users: dict[str, User]
    tokens: dict[str, str]
    pool: Any
    pool_token: str
    a: Any
    b: Any
    run_a: Task
    variable_a: Variable
    clients: dict[str, Client] = field(default_factory=dict)
    api: dict[str, Client] = field(default_factory=dict)


def build_world() -> World:
    """The users, the pool, workspaces A and B with their grants, a run and a variable of A,
    and each user's API token (no clients: with_clients)."""
    users = {
        "alice": User.objects.create_user("alice", password="pw-alice-1", is_staff=True, is_superuser=True),
        "bob": User.objects.create_user("bob", password="pw-bob-1"),
        "carol": User.objects.create_user("carol", password="pw-carol-1"),
        "dave": User.objects.create_user("dave", password="pw-dave-1"),
    }
    pool, pool_token = make_pool()
    a = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    b = make_workspace(pool=pool, files={"main.tf": DEMO_MAIN_TF})
    builders = grant(users["bob"], a, AccessLevel.WRITE, team_name="builders")
    grant(users["carol"], a, AccessLevel.READ, team_name="viewers")
    pool.teams.add(builders)
    run_a = run_create(workspace=a, operation="plan", actor="alice")
    # A policy check to read (and, not being apply_pending, nothing to override: a 409 for who may).
    Task.objects.filter(id=run_a.id).update(policy_status="soft_failed")
    variable_a = Variable(workspace=a, key="region")
    variable_a.set_value("eu")
    variable_a.save()
    return World(users=users, tokens={u: make_token(users[u]) for u in USERS}, pool=pool, pool_token=pool_token,
                 a=a, b=b, run_a=run_a, variable_a=variable_a)


def with_clients(w: World, sessions: dict[str, str] | None = None) -> World:
    """`w` with a logged-in page client and an API client per user; `sessions`: the users'
    session keys to log in with (a session made before), else each user logs in now."""
    clients, api = {}, {}
    for name, user in w.users.items():
        page_client = Client()
        if sessions is None:
            page_client.force_login(user)
        else:
            page_client.cookies[settings.SESSION_COOKIE_NAME] = sessions[name]
        clients[name] = page_client
        api[name] = Client(HTTP_AUTHORIZATION=f"Token {w.tokens[name]}")
    return dataclasses.replace(w, clients=clients, api=api)


@pytest.fixture
def world(db) -> World:
    return with_clients(build_world())


def _window(w: World):
    """A freeze window of the pool, far in the future (it freezes nothing the tests do)."""
    from agents_app.models import FreezeWindow

    window = FreezeWindow.objects.filter(pool=w.pool, name="later").first()
    if window is None:
        window = FreezeWindow.objects.create(pool=w.pool, name="later", kind="one_off",
                                             starts_at="2099-01-01T00:00:00Z", ends_at="2099-01-02T00:00:00Z")
    return window


def _upload(w: World):
    """A configuration version of workspace A announced through the TFE API."""
    from tasks_app.models import ConfigurationUpload

    return ConfigurationUpload.objects.filter(workspace=w.a).first() or ConfigurationUpload.objects.create(workspace=w.a)


def _vset(w: World):
    """A variable set of bob's team `builders` (write on A, not admin), with one variable."""
    from tasks_app.workflows.models import VariableSet

    found = VariableSet.objects.filter(name="builders-set").first()
    if found is None:
        found = VariableSet.objects.create(name="builders-set", team=Group.objects.get(name="builders"))
        variable = found.variables.model(variable_set=found, key="region")
        variable.set_value("eu")
        variable.save()
    return found


def _destination(w: World):
    """A notification destination of workspace A."""
    from tasks_app.workflows.models import NotificationDestination

    return (NotificationDestination.objects.filter(workspace=w.a).first()
            or NotificationDestination.objects.create(workspace=w.a, name="ops", kind="webhook",
                                                      url="https://hooks.example.com/x", triggers=["applied"]))


def _expect(alice: int, bob: int, carol: int, dave: int) -> dict[str, int]:
    return {"alice": alice, "bob": bob, "carol": carol, "dave": dave}


@dataclass
class Case:
    method: str
    path: Callable[[World, str], str]
    expect: dict[str, int]
    body: Callable[[World, str], Any] | None = None
    api: bool = True  # token auth (else a logged-in browser session)


# One list of cases per URL name. Paths get the user's name so that cases that create
# something use distinct names.
RULES: dict[str, list[Case]] = {
    # --- REST API ----------------------------------------------------------------------------
    "api-workspace-list": [
        Case("GET", lambda w, u: "/api/v1/workspaces/", _expect(200, 200, 200, 200)),
        Case("POST", lambda w, u: "/api/v1/workspaces/", _expect(201, 403, 403, 403),
             body=lambda w, u: {"name": f"new-{u}", "pool": w.pool.id}),
    ],
    "api-workspace-detail": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/", _expect(200, 200, 200, 404)),
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.b.id}/", _expect(200, 404, 404, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/workspaces/{w.a.id}/", _expect(200, 200, 403, 404),
             body=lambda w, u: {"locked": False}),
        Case("PATCH", lambda w, u: f"/api/v1/workspaces/{w.a.id}/", _expect(200, 403, 403, 404),
             body=lambda w, u: {"auto_apply": True}),
        Case("DELETE", lambda w, u: f"/api/v1/workspaces/{w.b.id}/", _expect(204, 404, 404, 404)),
    ],
    "api-configuration-version-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/configuration-versions/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/configuration-versions/", _expect(201, 201, 403, 404),
             body=lambda w, u: {"files": {"main.tf": DEMO_MAIN_TF}}),
    ],
    "api-variable-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/variables/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/variables/", _expect(201, 201, 403, 404),
             body=lambda w, u: {"key": f"k_{u}", "value": "v"}),
    ],
    "api-variable-detail": [
        Case("GET", lambda w, u: f"/api/v1/variables/{w.variable_a.id}/", _expect(200, 200, 200, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/variables/{w.variable_a.id}/", _expect(200, 200, 403, 404),
             body=lambda w, u: {"value": f"set-by-{u}"}),
    ],
    "api-run-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/runs/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/runs/", _expect(201, 201, 403, 404),
             body=lambda w, u: {"operation": "plan"}),
    ],
    "api-run-detail": [Case("GET", lambda w, u: f"/api/v1/runs/{w.run_a.id}/", _expect(200, 200, 200, 404))],
    # The run is not awaiting Confirm: who may act gets the service's 409, who may not never
    # reaches it.
    "api-run-confirm": [Case("POST", lambda w, u: f"/api/v1/runs/{w.run_a.id}/confirm/", _expect(409, 409, 403, 404),
                             body=lambda w, u: {})],
    "api-run-discard": [Case("POST", lambda w, u: f"/api/v1/runs/{w.run_a.id}/discard/", _expect(409, 409, 403, 404),
                             body=lambda w, u: {})],
    "api-run-cancel": [
        # Force-cancel (SIGKILL) is `admin`; bob has `write`.
        Case("POST", lambda w, u: f"/api/v1/runs/{w.run_a.id}/cancel/", _expect(200, 403, 403, 404),
             body=lambda w, u: {"force": True}),
    ],
    "api-run-prepare": [Case("POST", lambda w, u: f"/api/v1/runs/{w.run_a.id}/prepare/", _expect(200, 200, 403, 404),
                             body=lambda w, u: {})],
    "api-run-logs": [Case("GET", lambda w, u: f"/api/v1/runs/{w.run_a.id}/logs/", _expect(200, 200, 200, 404))],
    # Overriding a failed policy is `admin` on the workspace (bob has `write`); the run has no
    # soft-failed check, so who may gets the service's 409.
    "api-run-override": [Case("POST", lambda w, u: f"/api/v1/runs/{w.run_a.id}/override/", _expect(409, 403, 403, 404),
                              body=lambda w, u: {"reason": "agreed"})],
    # Policy sets are site admins' alone: an empty body is alice's 400, everyone else's 403.
    "api-policy-set-list": [
        Case("GET", lambda w, u: "/api/v1/policy-sets/", _expect(200, 403, 403, 403)),
        Case("POST", lambda w, u: "/api/v1/policy-sets/", _expect(400, 403, 403, 403), body=lambda w, u: {}),
    ],
    "api-policy-set-detail": [
        Case("GET", lambda w, u: "/api/v1/policy-sets/999999/", _expect(404, 403, 403, 403)),
        Case("DELETE", lambda w, u: "/api/v1/policy-sets/999999/", _expect(404, 403, 403, 403)),
    ],
    "api-policy-set-sync": [
        Case("POST", lambda w, u: "/api/v1/policy-sets/999999/sync/", _expect(404, 403, 403, 403)),
    ],
    "api-state-version-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/state-versions/", _expect(200, 200, 200, 404)),
    ],
    # Sensitive outputs are masked for everyone; the others are as readable as the workspace.
    "api-workspace-outputs": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/outputs/", _expect(200, 200, 200, 404)),
    ],
    # VCS: connections are site admins' alone; following a repository is a setting (`admin`);
    # allowing a held pull request commit is `write` (404 here: nothing is held).
    "api-vcs-connection-list": [
        Case("GET", lambda w, u: "/api/v1/vcs-connections/", _expect(200, 403, 403, 403)),
        Case("POST", lambda w, u: "/api/v1/vcs-connections/", _expect(201, 403, 403, 403),
             body=lambda w, u: {"name": f"gh-{u}", "kind": "github", "url": "https://github.example.com"}),
    ],
    # One connection (its credential changed by PATCH): site admins' alone too; 404 for them
    # here (no such connection), 403 for everyone else before anything is looked up.
    "api-vcs-connection-detail": [
        Case("GET", lambda w, u: "/api/v1/vcs-connections/999999/", _expect(404, 403, 403, 403)),
        Case("PATCH", lambda w, u: "/api/v1/vcs-connections/999999/", _expect(404, 403, 403, 403),
             body=lambda w, u: {"token": "ghp_x"}),
    ],
    "api-workspace-vcs": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/vcs/", _expect(200, 200, 200, 404)),
        Case("PUT", lambda w, u: f"/api/v1/workspaces/{w.a.id}/vcs/", _expect(200, 403, 403, 404),
             body=lambda w, u: {"connection": None}),
    ],
    "api-workspace-vcs-held": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/vcs/held/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/vcs/held/", _expect(404, 404, 403, 404),
             body=lambda w, u: {"sha": "a" * 40}),
    ],
    "api-variable-set-list": [
        Case("GET", lambda w, u: "/api/v1/variable-sets/", _expect(200, 200, 200, 200)),
        Case("POST", lambda w, u: "/api/v1/variable-sets/", _expect(201, 403, 403, 403),
             body=lambda w, u: {"name": f"set-{u}", "scope": "global"}),
    ],
    "api-variable-set-detail": [
        Case("GET", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/", _expect(200, 200, 404, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/", _expect(200, 200, 404, 404),
             body=lambda w, u: {"description": f"by {u}"}),
    ],
    "api-variable-set-variable-list": [
        Case("GET", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/variables/", _expect(200, 200, 404, 404)),
        Case("POST", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/variables/", _expect(201, 201, 404, 404),
             body=lambda w, u: {"key": f"k_{u}", "value": "v"}),
    ],
    "api-variable-set-variable-detail": [
        Case("GET", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/variables/{_vset(w).variables.first().id}/",
             _expect(200, 200, 404, 404)),
    ],
    "api-variable-set-workspace": [
        # bob's team may write on A, not administer it: its set's secrets may not go there.
        Case("PUT", lambda w, u: f"/api/v1/variable-sets/{_vset(w).id}/workspaces/{w.a.id}/",
             _expect(200, 403, 404, 404)),
    ],
    "api-workspace-variable-sets": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/variable-sets/", _expect(200, 200, 200, 404)),
    ],
    "api-run-trigger-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/run-triggers/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/run-triggers/", _expect(201, 403, 403, 404),
             body=lambda w, u: {"source": w.b.id}),
    ],
    "api-run-trigger-detail": [
        Case("DELETE", lambda w, u: f"/api/v1/workspaces/{w.a.id}/run-triggers/0/", _expect(404, 403, 403, 404)),
    ],
    "api-notification-destination-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/notification-destinations/",
             _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/notification-destinations/",
             _expect(201, 403, 403, 404),
             body=lambda w, u: {"name": f"n-{u}", "kind": "webhook", "url": "https://hooks.example.com/y"}),
    ],
    "api-notification-destination-detail": [
        Case("GET", lambda w, u: f"/api/v1/notification-destinations/{_destination(w).id}/",
             _expect(200, 200, 200, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/notification-destinations/{_destination(w).id}/",
             _expect(200, 403, 403, 404), body=lambda w, u: {"enabled": True}),
    ],
    "api-notification-destination-test": [
        Case("POST", lambda w, u: f"/api/v1/notification-destinations/{_destination(w).id}/test/",
             _expect(202, 403, 403, 404)),
    ],
    "api-drift-check": [
        # Workspace A has no state yet: a check is refused with 409 for who may queue a plan.
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/drift-check/", _expect(409, 409, 403, 404)),
    ],
    "api-access-list": [
        Case("GET", lambda w, u: f"/api/v1/workspaces/{w.a.id}/access/", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v1/workspaces/{w.a.id}/access/", _expect(200, 403, 403, 404),
             body=lambda w, u: {"team": "viewers", "level": "read"}),
    ],
    "api-access-detail": [
        Case("DELETE", lambda w, u: f"/api/v1/workspaces/{w.a.id}/access/nobody/", _expect(404, 403, 403, 404)),
    ],
    "api-token-list": [
        Case("GET", lambda w, u: "/api/v1/tokens/", _expect(200, 200, 200, 200)),
        Case("GET", lambda w, u: "/api/v1/tokens/?user=alice", _expect(200, 403, 403, 403)),
        Case("POST", lambda w, u: "/api/v1/tokens/", _expect(201, 201, 201, 201), body=lambda w, u: {"name": "ci"}),
    ],
    "api-token-detail": [
        Case("DELETE", lambda w, u: f"/api/v1/tokens/{w.tokens['alice'][:15]}/?user=alice",
             _expect(204, 403, 403, 403)),
    ],
    "api-audit-list": [Case("GET", lambda w, u: "/api/v1/audit-events/", _expect(200, 403, 403, 403))],
    "api-pool-list": [
        Case("GET", lambda w, u: "/api/v1/pools/", _expect(200, 200, 200, 200)),
        Case("POST", lambda w, u: "/api/v1/pools/", _expect(201, 403, 403, 403), body=lambda w, u: {"name": f"p-{u}"}),
    ],
    "api-pool-detail": [
        # Bob's team may use the pool; carol's may not: to her it does not exist.
        Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/", _expect(200, 200, 404, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/pools/{w.pool.id}/", _expect(200, 403, 403, 403),
             body=lambda w, u: {"max_replicas": 5}),
    ],
    "api-pool-agents": [Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/agents/", _expect(200, 403, 403, 403))],
    # Freeze windows explain why runs wait: who may see the pool may read them; site admins
    # alone change them.
    "api-pool-freeze-windows": [
        Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/", _expect(200, 200, 404, 404)),
        Case("POST", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/", _expect(201, 403, 403, 403),
             body=lambda w, u: {"name": f"w-{u}", "kind": "weekly", "weekdays": ["sat"], "start_time": "01:00",
                                "end_time": "02:00", "time_zone": "Europe/Berlin"}),
    ],
    "api-pool-freeze-window-detail": [
        Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/{_window(w).id}/",
             _expect(200, 200, 404, 404)),
        Case("PATCH", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/{_window(w).id}/",
             _expect(200, 403, 403, 403), body=lambda w, u: {"enabled": False}),
        Case("DELETE", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/{_window(w).id}/",
             _expect(204, 403, 403, 403)),
    ],
    # The window is not active: the site admin gets the service's 409.
    "api-pool-freeze-window-lift": [
        Case("POST", lambda w, u: f"/api/v1/pools/{w.pool.id}/freeze-windows/{_window(w).id}/lift/",
             _expect(409, 403, 403, 403), body=lambda w, u: {"reason": "test"}),
    ],
    "api-pool-pods": [Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/pods/", _expect(200, 403, 403, 403))],
    "api-pool-scaling-decisions": [
        Case("GET", lambda w, u: f"/api/v1/pools/{w.pool.id}/scaling-decisions/", _expect(200, 403, 403, 403)),
    ],
    "schema": [Case("GET", lambda w, u: "/api/schema/", _expect(200, 200, 200, 200))],
    "api-docs": [Case("GET", lambda w, u: "/api/docs/", _expect(200, 200, 200, 200))],
    "api-redoc": [Case("GET", lambda w, u: "/api/redoc/", _expect(200, 200, 200, 200))],
    # --- pages (a browser session) -------------------------------------------------------------
    "workspace-list": [Case("GET", lambda w, u: "/", _expect(200, 200, 200, 200), api=False)],
    "workspace-detail": [Case("GET", lambda w, u: f"/workspaces/{w.a.id}/", _expect(200, 200, 200, 404), api=False)],
    "workspace-run-create": [
        # A refused POST redirects with a message, like any refusal on a page; the run counts
        # are checked in test_it_refuses_forged_page_posts.
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/runs/", _expect(302, 302, 302, 404), api=False,
             body=lambda w, u: {"operation": "plan"}),
    ],
    # The workspace page's forms: a refusal is 403 (readable) or 404, never a redirect.
    "workspace-settings": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/settings/", _expect(302, 403, 403, 404), api=False,
             body=lambda w, u: {"pool": w.pool.id, "auto_apply": "on"}),
    ],
    "workspace-vcs": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/vcs/", _expect(302, 403, 403, 404), api=False,
             body=lambda w, u: {"connection": ""}),
    ],
    "notification-destination-test": [
        Case("POST", lambda w, u: f"/notification-destinations/{_destination(w).id}/test/",
             _expect(302, 403, 403, 404), api=False),
    ],
    "workspace-lock": [Case("POST", lambda w, u: f"/workspaces/{w.a.id}/lock/", _expect(302, 302, 403, 404), api=False)],
    "workspace-unlock": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/unlock/", _expect(302, 302, 403, 404), api=False),
    ],
    "workspace-access": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/access/", _expect(302, 403, 403, 404), api=False,
             body=lambda w, u: {"team": "viewers", "level": "read"}),
    ],
    "workspace-sharing": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/sharing/", _expect(302, 403, 403, 404), api=False,
             body=lambda w, u: {"consumers": [str(w.b.id)]}),
    ],
    "workspace-variable-create": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/variables/", _expect(302, 302, 403, 404), api=False,
             body=lambda w, u: {"key": f"k_{u}", "value": "v", "category": "terraform"}),
    ],
    "variable-update": [
        Case("POST", lambda w, u: f"/variables/{w.variable_a.id}/", _expect(302, 302, 403, 404), api=False,
             body=lambda w, u: {"key": "region", "value": f"set-by-{u}", "category": "terraform"}),
    ],
    "variable-delete": [
        Case("POST", lambda w, u: f"/variables/{w.variable_a.id}/delete/", _expect(302, 302, 403, 404), api=False),
    ],
    # No file: who may upload is told to choose one (a redirect with the message).
    "workspace-configuration-upload": [
        Case("POST", lambda w, u: f"/workspaces/{w.a.id}/configuration/", _expect(302, 302, 403, 404), api=False),
    ],
    # Reading state is `write`, masked or not; there is no state yet, so who may gets a 400.
    "workspace-state-diff": [
        Case("GET", lambda w, u: f"/workspaces/{w.a.id}/state/diff/?from=1&to=2", _expect(400, 400, 403, 404),
             api=False),
    ],
    "run-detail": [Case("GET", lambda w, u: f"/runs/{w.run_a.id}/", _expect(200, 200, 200, 404), api=False)],
    "run-log-download": [Case("GET", lambda w, u: f"/runs/{w.run_a.id}/log.txt", _expect(200, 200, 200, 404), api=False)],
    "run-confirm-dialog": [
        Case("GET", lambda w, u: f"/runs/{w.run_a.id}/confirm-dialog/", _expect(200, 200, 200, 404), api=False),
    ],
    # The run actions: a refusal by state redirects with a message, one by permission (only a
    # forged post: the dialog offers nothing else) is a 403 page.
    "run-confirm": [Case("POST", lambda w, u: f"/runs/{w.run_a.id}/confirm/", _expect(302, 302, 403, 404), api=False)],
    "run-discard": [Case("POST", lambda w, u: f"/runs/{w.run_a.id}/discard/", _expect(302, 302, 403, 404), api=False)],
    "run-policy-override": [Case("POST", lambda w, u: f"/runs/{w.run_a.id}/override/", _expect(302, 403, 403, 404),
                                 api=False, body=lambda w, u: {"reason": "agreed"})],
    "run-cancel": [Case("POST", lambda w, u: f"/runs/{w.run_a.id}/cancel/", _expect(302, 403, 403, 404), api=False,
                        body=lambda w, u: {"force": "1"})],
    "pool-list": [Case("GET", lambda w, u: "/pools/", _expect(200, 403, 403, 403), api=False)],
    "pool-detail": [Case("GET", lambda w, u: f"/pools/{w.pool.id}/", _expect(200, 403, 403, 403), api=False)],
    # alice: an empty form is a 400; a window that is not active has nothing to lift, a 409.
    "pool-settings": [Case("POST", lambda w, u: f"/pools/{w.pool.id}/settings/", _expect(400, 403, 403, 403), api=False)],
    "pool-freeze-lift": [
        Case("POST", lambda w, u: f"/pools/{w.pool.id}/freeze-windows/{_window(w).id}/lift/", _expect(409, 403, 403, 403),
             api=False, body=lambda w, u: {"reason": "forged"}),
    ],
    # --- the TFE API (tasks_app/tfe/): the same levels through terraform's door -------------
    "tfe-account-details": [Case("GET", lambda w, u: "/api/v2/account/details", _expect(200, 200, 200, 200))],
    "tfe-organization": [Case("GET", lambda w, u: "/api/v2/organizations/iac", _expect(200, 200, 200, 200))],
    "tfe-entitlement-set": [
        Case("GET", lambda w, u: "/api/v2/organizations/iac/entitlement-set", _expect(200, 200, 200, 200)),
    ],
    "tfe-run-queue": [Case("GET", lambda w, u: "/api/v2/organizations/iac/runs/queue", _expect(200, 200, 200, 200))],
    "tfe-workspaces": [
        Case("GET", lambda w, u: "/api/v2/organizations/iac/workspaces", _expect(200, 200, 200, 200)),
        Case("POST", lambda w, u: "/api/v2/organizations/iac/workspaces", _expect(201, 403, 403, 403),
             body=lambda w, u: {"data": {"type": "workspaces", "attributes": {"name": f"tfe-{u}"}}}),
    ],
    "tfe-workspace-by-name": [
        Case("GET", lambda w, u: f"/api/v2/organizations/iac/workspaces/{w.a.name}", _expect(200, 200, 200, 404)),
        Case("GET", lambda w, u: f"/api/v2/organizations/iac/workspaces/{w.b.name}", _expect(200, 404, 404, 404)),
    ],
    "tfe-workspace": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}", _expect(200, 200, 200, 404)),
        Case("PATCH", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}", _expect(200, 403, 403, 404),
             body=lambda w, u: {"data": {"type": "workspaces", "attributes": {"auto-apply": True}}}),
    ],
    "tfe-workspace-action": [
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/actions/lock", _expect(200, 200, 403, 404)),
        # Nothing to force-unlock: who may gets the 409, who may not never reaches it.
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/actions/force-unlock",
             _expect(409, 403, 403, 404)),
    ],
    "tfe-workspace-tags": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/relationships/tags", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/relationships/tags", _expect(204, 403, 403, 404),
             body=lambda w, u: {"data": [{"type": "tags", "attributes": {"name": "app"}}]}),
    ],
    "tfe-workspace-tag-bindings": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/tag-bindings", _expect(200, 200, 200, 404)),
        Case("PATCH", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/tag-bindings", _expect(200, 403, 403, 404),
             body=lambda w, u: {"data": [{"type": "tag-bindings", "attributes": {"key": "env", "value": "prod"}}]}),
    ],
    "tfe-workspace-effective-tag-bindings": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/effective-tag-bindings",
             _expect(200, 200, 200, 404)),
    ],
    "tfe-remote-state-consumers": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/relationships/remote-state-consumers",
             _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/relationships/remote-state-consumers",
             _expect(204, 403, 403, 404), body=lambda w, u: {"data": [{"type": "workspaces", "id": f"ws-{w.a.id}"}]}),
    ],
    "tfe-configuration-versions": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/configuration-versions", _expect(200, 200, 200, 404)),
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/configuration-versions",
             _expect(201, 201, 403, 404), body=lambda w, u: {"data": {"type": "configuration-versions"}}),
    ],
    "tfe-configuration-version": [
        Case("GET", lambda w, u: f"/api/v2/configuration-versions/cv-{_upload(w).id}", _expect(200, 200, 200, 404)),
    ],
    "tfe-runs": [
        Case("POST", lambda w, u: "/api/v2/runs", _expect(201, 201, 403, 404), body=lambda w, u: {"data": {
            "type": "runs", "attributes": {"plan-only": True},
            "relationships": {"workspace": {"data": {"type": "workspaces", "id": f"ws-{w.a.id}"}}}}}),
    ],
    "tfe-run": [Case("GET", lambda w, u: f"/api/v2/runs/run-{w.run_a.id}", _expect(200, 200, 200, 404))],
    "tfe-run-action": [
        Case("POST", lambda w, u: f"/api/v2/runs/run-{w.run_a.id}/actions/apply", _expect(409, 409, 403, 404)),
        Case("POST", lambda w, u: f"/api/v2/runs/run-{w.run_a.id}/actions/force-cancel", _expect(202, 403, 403, 404)),
    ],
    "tfe-run-events": [
        Case("GET", lambda w, u: f"/api/v2/runs/run-{w.run_a.id}/run-events", _expect(200, 200, 200, 404)),
    ],
    "tfe-workspace-runs": [
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/runs", _expect(200, 200, 200, 404)),
    ],
    "tfe-plan": [Case("GET", lambda w, u: f"/api/v2/plans/plan-{w.run_a.id}", _expect(200, 200, 200, 404))],
    "tfe-run-policy-checks": [
        Case("GET", lambda w, u: f"/api/v2/runs/run-{w.run_a.id}/policy-checks", _expect(200, 200, 200, 404)),
    ],
    "tfe-policy-check": [Case("GET", lambda w, u: f"/api/v2/policy-checks/polchk-{w.run_a.id}",
                              _expect(200, 200, 200, 404))],
    "tfe-policy-check-output": [Case("GET", lambda w, u: f"/api/v2/policy-checks/polchk-{w.run_a.id}/output",
                                     _expect(200, 200, 200, 404))],
    # Overriding is `admin` on the workspace (bob has `write`).
    "tfe-policy-check-action": [Case("POST", lambda w, u: f"/api/v2/policy-checks/polchk-{w.run_a.id}/actions/override",
                                     _expect(409, 403, 403, 404))],
    "tfe-apply": [Case("GET", lambda w, u: f"/api/v2/applies/apply-{w.run_a.id}", _expect(200, 200, 200, 404))],
    "tfe-state-versions": [
        # The raw state is `write`; alice and bob get the refusal go-tfe needs to send it inline.
        Case("GET", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/state-versions", _expect(200, 200, 403, 404)),
        Case("POST", lambda w, u: f"/api/v2/workspaces/ws-{w.a.id}/state-versions", _expect(422, 422, 403, 404),
             body=lambda w, u: {"data": {"type": "state-versions", "attributes": {"serial": 1}}}),
    ],
    # `terraform login`'s token page: our tokens page, whose own rule is below.
    "tfe-token-page": [Case("GET", lambda w, u: "/app/settings/tokens", _expect(302, 302, 302, 302), api=False)],
    "tokens": [Case("GET", lambda w, u: "/tokens/", _expect(200, 200, 200, 200), api=False)],
    "token-revoke": [
        Case("POST", lambda w, u: f"/tokens/{w.tokens[u][:15]}/revoke/", _expect(302, 302, 302, 302), api=False),
    ],
}

# Checked by their own tests below (Basic auth, agent tokens, the admin site).
SPECIAL = {
    "state-backend": "test_it_guards_the_state_backend_by_level",
    "state-backend-lock": "test_it_guards_the_state_backend_by_level",
    "agent-register": "test_it_answers_agent_endpoints_only_to_agent_tokens",
    "agent-heartbeat": "test_it_answers_agent_endpoints_only_to_agent_tokens",
    "agent-claim": "test_it_answers_agent_endpoints_only_to_agent_tokens",
    "agent-job-configuration": "test_it_keeps_a_pool_a_agent_from_pool_b_jobs",
    "agent-job-plan-file": "test_it_keeps_a_pool_a_agent_from_pool_b_jobs",
    "agent-job-logs": "test_it_keeps_a_pool_a_agent_from_pool_b_jobs",
    "agent-job-plan": "test_it_keeps_a_pool_a_agent_from_pool_b_jobs",
    "agent-job-finish": "test_it_keeps_a_pool_a_agent_from_pool_b_jobs",
    # The TFE API's signed URLs: the URL is the grant (tests/tfe/test_api.py, test_state.py).
    "tfe-configuration-upload": "tests/tfe/test_api.py::test_it_refuses_a_forged_or_foreign_upload_url",
    "tfe-plan-log": "tests/tfe/test_api.py::test_it_refuses_a_forged_or_foreign_log_url",
    "tfe-apply-log": "tests/tfe/test_api.py::test_it_refuses_a_forged_or_foreign_log_url",
    "tfe-state-download": "tests/tfe/test_state.py::test_it_serves_the_current_state_at_a_signed_url",
    "tfe-current-state-version": "tests/tfe/test_state.py::test_it_hides_the_raw_state_below_write",
    "tfe-current-state-version-outputs": "tests/tfe/test_state.py::test_it_hides_the_raw_state_below_write",
    "tfe-state-version": "tests/tfe/test_state.py::test_it_hides_the_raw_state_below_write",
    "tfe-state-version-output": "tests/tfe/test_state.py::test_it_gives_a_sensitive_output_to_write",
    # Public on purpose: the API version header, and service discovery.
    "tfe-ping": "tests/tfe/test_api.py::test_it_answers_ping_with_the_api_version_terraform_needs",
    "tfe-discovery": "tests/tfe/test_api.py::test_it_offers_service_discovery",
    # The forge's signature is the grant: tests/vcs/test_connections.py.
    "vcs-webhook": "tests/vcs/test_connections.py::test_it_refuses_unsigned_forged_and_malformed_webhooks_storing_nothing",
    # A scraper's bearer token (always; loopback is not enough), not a user: tests/test_metrics.py.
    "metrics": "tests/test_metrics.py::test_it_refuses_anonymous_access_when_a_token_is_set",
}
WEBSOCKET_RULES = {
    "ws/runs/<int:task_id>/log/": "test_it_streams_a_run_log_only_to_who_may_read_it",
    "ws/runs/<int:task_id>/": "test_it_streams_a_run_log_only_to_who_may_read_it",
    "ws/pools/<int:pool_id>/": "test_it_shows_a_live_pool_only_to_site_admins",
    "ws/workspaces/": "tests/tasks_app/test_workspace_consumers.py::"
                      "test_it_sends_a_run_change_only_to_those_who_may_read_its_workspace",
    "ws/workspaces/<int:workspace_id>/": "test_it_shows_a_workspace_live_only_to_who_may_read_it",
}


def _url_names(resolver: URLResolver | None = None) -> set[str]:
    names: set[str] = set()
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                names.add("admin")
                continue
            names |= _url_names(pattern)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(pattern.name)
    return names


def test_it_has_a_rule_for_every_endpoint():
    missing = _url_names() - set(RULES) - set(SPECIAL) - PUBLIC - {"admin"}
    assert not missing, f"endpoints without an authorization rule: {sorted(missing)}"
    routes = {str(p.pattern) for p in websocket_urlpatterns}
    assert routes == set(WEBSOCKET_RULES), f"websocket routes without a rule: {sorted(routes - set(WEBSOCKET_RULES))}"


CASES = [(name, i) for name, cases in RULES.items() for i in range(len(cases))]


def test_it_lists_only_the_workspaces_a_user_may_read(world):
    names = {u: sorted(ws["name"] for ws in json.loads(world.api[u].get("/api/v1/workspaces/").content)) for u in USERS}
    assert names == {"alice": sorted([world.a.name, world.b.name]), "bob": [world.a.name], "carol": [world.a.name],
                     "dave": []}
    page = world.clients["dave"].get("/").content.decode()
    # (As the list shows them: a name like "ws-2" is also in a script's file name.)
    for ws in (world.a, world.b):
        assert f"/workspaces/{ws.id}/" not in page and f">{ws.name}<" not in page
    assert f">{world.a.name}<" in world.clients["carol"].get("/").content.decode()


def test_it_refuses_forged_page_posts(world):
    runs = Task.objects.filter(workspace=world.a).count()
    response = world.clients["carol"].post(f"/workspaces/{world.a.id}/runs/", {"operation": "plan"}, follow=True)
    assert Task.objects.filter(workspace=world.a).count() == runs
    assert "you need &#x27;plan&#x27; on workspace" in response.content.decode()
    # The page itself offers her nothing to click.
    page = world.clients["carol"].get(f"/workspaces/{world.a.id}/").content.decode()
    assert "Queue plan" not in page
    assert "Queue plan" in world.clients["bob"].get(f"/workspaces/{world.a.id}/").content.decode()


def test_it_keeps_the_admin_to_site_admins(world):
    assert world.clients["alice"].get("/admin/").status_code == 200
    for user in ("bob", "carol", "dave"):
        response = world.clients[user].get("/admin/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"user:{token}".encode()).decode()


def test_it_guards_the_state_backend_by_level(world):
    url = f"/api/v1/workspaces/{world.a.id}/state"
    client = Client()
    lock = json.dumps({"ID": "lock-1", "Operation": "OperationTypeApply", "Who": "x"})

    def call(user: str, method: str, path: str = url, body: str = "") -> int:
        return client.generic(method, path, body, content_type="application/json",
                              HTTP_AUTHORIZATION=_basic(world.tokens[user])).status_code

    # The raw state holds secrets in clear: reading it needs `write`.
    assert [call(u, "GET") for u in USERS] == [204, 204, 403, 404]
    assert call("dave", "GET", f"/api/v1/workspaces/{world.b.id}/state") == 404
    assert call("bob", "GET", f"/api/v1/workspaces/{world.b.id}/state") == 404
    assert call("carol", "LOCK", url + "/lock", lock) == 403
    assert call("bob", "LOCK", url + "/lock", lock) == 200
    # A force-unlock (no lock info) needs `admin`.
    assert call("bob", "UNLOCK", url + "/lock") == 403
    assert StateLock.objects.filter(workspace=world.a).exists()
    assert call("alice", "UNLOCK", url + "/lock") == 200
    assert not StateLock.objects.filter(workspace=world.a).exists()


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_state_lock_to_whoever_took_it(world):
    """The lock ID is no secret (a refused LOCK shows it): only the holder, or an admin's
    force-unlock, gets anywhere with it."""
    _, agent_token = _agent(world.pool_token, "agent-a")
    job = Client().post("/agent/v1/claim?wait=0", HTTP_AUTHORIZATION=f"Bearer {agent_token}").json()["jobs"][0]
    job_password = job["state_backend"]["password"]
    url = f"/api/v1/workspaces/{world.a.id}/state"
    held = json.dumps({"ID": "job-lock", "Operation": "OperationTypePlan", "Who": "agent-a"})

    def call(password: str, method: str, body: str = "", path: str = url + "/lock") -> Any:
        return Client().generic(method, path, body, content_type="application/json",
                                HTTP_AUTHORIZATION=_basic(password))

    assert call(job_password, "LOCK", held).status_code == 200
    refused = call(world.tokens["bob"], "LOCK", json.dumps({"ID": "bob-lock", "Who": "bob"}))
    assert (refused.status_code, refused.json()["ID"]) == (423, "job-lock")
    # bob (`write`) now knows the ID; presenting it is not holding the lock.
    assert call(world.tokens["bob"], "LOCK", held).status_code == 423
    unlock = call(world.tokens["bob"], "UNLOCK", held)
    assert unlock.status_code == 409 and "only its holder can unlock it" in unlock.json()["detail"]
    state = json.dumps({"version": 4, "serial": 1, "lineage": "l-1", "resources": []})
    assert call(world.tokens["bob"], "POST", state, path=url + "?ID=job-lock").status_code == 423
    assert StateLock.objects.get(workspace=world.a).job_id == job["id"]
    assert call(job_password, "LOCK", held).status_code == 200, "the holder's retry"
    # alice (`admin`) naming the held ID force-unlocks it, and the audit log says so.
    assert call(world.tokens["alice"], "UNLOCK", held).status_code == 200
    assert not StateLock.objects.filter(workspace=world.a).exists()
    forced = AuditEvent.objects.get(action="state.force_unlock")
    assert (forced.actor, forced.data["id"]) == (world.users["alice"], "job-lock")

    # A user's lock is theirs alone too: a job credential cannot release it.
    bobs = json.dumps({"ID": "bob-lock", "Who": "bob"})
    assert call(world.tokens["bob"], "LOCK", bobs).status_code == 200
    assert call(job_password, "UNLOCK", bobs).status_code == 409
    assert call(job_password, "LOCK", bobs).status_code == 423
    assert call(world.tokens["bob"], "UNLOCK", bobs).status_code == 200
    assert AuditEvent.objects.filter(action="state.unlock", actor=world.users["bob"]).exists()


def _agent(pool_token: str, name: str) -> tuple[int, str]:
    resp = Client().post("/agent/v1/register", {"name": name, "protocol_version": PROTOCOL_VERSION},
                         content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {pool_token}")
    assert resp.status_code == 201, resp.content
    return resp.json()["agent_id"], resp.json()["token"]


@pytest.mark.django_db(transaction=True)
def test_it_answers_agent_endpoints_only_to_agent_tokens(world):
    client = Client()
    user_token = world.tokens["alice"]  # a site admin's API token is not an agent credential
    for path in ("/agent/v1/register", "/agent/v1/heartbeat", "/agent/v1/claim?wait=0"):
        resp = client.post(path, "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {user_token}")
        assert resp.status_code == 401, path


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_pool_a_agent_from_pool_b_jobs(world):
    _, a_token = _agent(world.pool_token, "agent-a")
    other_pool, other_token = make_pool()
    _, b_token = _agent(other_token, "agent-b")
    client = Client()
    job = client.post("/agent/v1/claim?wait=0", HTTP_AUTHORIZATION=f"Bearer {a_token}").json()["jobs"][0]
    assert client.post("/agent/v1/claim?wait=0", HTTP_AUTHORIZATION=f"Bearer {b_token}").status_code == 204
    headers = {"HTTP_AUTHORIZATION": f"Bearer {b_token}", "HTTP_X_JOB_FENCE": str(job["fence"])}
    for method, suffix, body in [("GET", "configuration", ""), ("GET", "plan-file", ""),
                                 ("POST", "logs", json.dumps({"seq": 1, "text": "x"})),
                                 ("POST", "plan", json.dumps({"plan_b64": "", "sha256": "0" * 64, "has_changes": True})),
                                 ("POST", "finish", json.dumps({"outcome": "succeeded"}))]:
        resp = client.generic(method, f"/agent/v1/jobs/{job['id']}/{suffix}", body, content_type="application/json",
                              **headers)
        assert resp.status_code == 409, (suffix, resp.status_code)
        assert "not assigned to this agent" in resp.json()["detail"]
    # And a job credential of pool A's job does not open another workspace's state.
    password = job["state_backend"]["password"]
    resp = client.get(f"/api/v1/workspaces/{world.b.id}/state", HTTP_AUTHORIZATION=_basic(password))
    assert resp.status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/ws/runs/{id}/log/", "/ws/runs/{id}/"])
async def test_it_streams_a_run_log_only_to_who_may_read_it(world, route):
    async def connected(user: str) -> bool:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), route.format(id=world.run_a.id))
        communicator.scope["user"] = world.users[user]
        ok, _ = await communicator.connect()
        await communicator.disconnect()
        return ok

    assert [await connected(u) for u in USERS] == [True, True, True, False]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_shows_a_live_pool_only_to_site_admins(world):
    async def connected(user: str) -> bool:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/pools/{world.pool.id}/")
        communicator.scope["user"] = world.users[user]
        ok, _ = await communicator.connect()
        await communicator.disconnect()
        return ok

    assert [await connected(u) for u in USERS] == [True, False, False, False]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_shows_a_workspace_live_only_to_who_may_read_it(world):
    async def connected(user: str, workspace_id: int) -> bool:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/workspaces/{workspace_id}/")
        communicator.scope["user"] = world.users[user]
        ok, _ = await communicator.connect()
        await communicator.disconnect()
        return ok

    assert [await connected(u, world.a.id) for u in USERS] == [True, True, True, False]
    assert [await connected(u, world.b.id) for u in USERS] == [True, False, False, False]


def test_it_lets_a_team_allowed_to_create_workspaces_administer_its_own(world):
    from django.contrib.auth.models import Permission

    creators = Group.objects.get(name="builders")
    creators.permissions.add(Permission.objects.get(codename="add_workspace", content_type__app_label="tasks_app"))
    bob = world.api["bob"]
    resp = bob.post("/api/v1/workspaces/", {"name": "bobs", "pool": world.pool.id}, content_type="application/json")
    assert resp.status_code == 201, resp.content
    ws_id = resp.json()["id"]
    # The creating team administers it: settings and access are bob's to change.
    assert bob.patch(f"/api/v1/workspaces/{ws_id}/", {"auto_apply": True}, content_type="application/json").status_code == 200
    # But only on a pool his team may use.
    other_pool, _ = make_pool()
    resp = bob.post("/api/v1/workspaces/", {"name": "bobs2", "pool": other_pool.id}, content_type="application/json")
    assert resp.status_code == 403 and "may use pool" in resp.json()["detail"]


def test_it_masks_a_platform_sensitive_value_for_who_may_not_read_the_raw_state(world):
    """A value marked sensitive on the platform, in an output the configuration does not mark
    sensitive: in clear for `write` and above (they may pull the state anyway), masked for
    `read`."""
    secret = "s3cret-of-a"
    variable = Variable(workspace=world.a, key="db_password", sensitive=True)
    variable.set_value(secret)
    variable.save()
    state = json.dumps({"version": 4, "serial": 1, "lineage": "l-1", "resources": [],
                        "outputs": {"dsn": {"value": f"pg://app:{secret}@db", "type": "string"}}})
    pushed = Client().post(f"/api/v1/workspaces/{world.a.id}/state", state, content_type="application/json",
                           HTTP_AUTHORIZATION=_basic(world.tokens["bob"]))
    assert pushed.status_code in (200, 201, 204), pushed.content
    seen = {u: world.api[u].get(f"/api/v1/workspaces/{world.a.id}/outputs/") for u in USERS}
    assert [r.status_code for r in seen.values()] == [200, 200, 200, 404]
    assert [secret in r.content.decode() for r in seen.values()] == [True, True, False, False]
    assert seen["carol"].json() == [{"name": "dsn", "sensitive": False, "type": "string", "value": "pg://app:***@db"}]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/ws/runs/{id}/log/", "/ws/runs/{id}/"])
async def test_it_stops_a_run_log_at_once_when_its_reader_loses_access(world, route):
    """carol watches run A's log; alice removes her team's access through the API: the next
    line is not delivered and the socket closes with 4403 (the page says why)."""
    from asgiref.sync import sync_to_async

    from tasks_app.dispatch.models import Job
    from tasks_app.events import run_log_appended
    from tasks_app.models import LogChunk

    ws = WebsocketCommunicator(URLRouter(websocket_urlpatterns), route.format(id=world.run_a.id) + "?offset=0")
    ws.scope["user"] = world.users["carol"]
    assert (await ws.connect())[0]
    resp = await sync_to_async(world.api["alice"].delete)(f"/api/v1/workspaces/{world.a.id}/access/viewers/")
    assert resp.status_code == 204

    def log_line() -> None:
        job = Job.objects.filter(task=world.run_a).first()
        LogChunk.objects.create(task=world.run_a, job=job, seq=1, offset=0, text="after the removal\n")
        Task.objects.filter(id=world.run_a.id).update(log_size=18)
        with unit_of_work() as uow:
            run_log_appended(uow, world.run_a.id, start=0, end=18, text="after the removal\n")

    await sync_to_async(log_line)()
    output = await ws.receive_output(timeout=5)
    while output["type"] == "websocket.send":  # the page's own fragments, sent at connect
        assert "after the removal" not in output["text"]
        output = await ws.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4403, "reason": "you no longer have access to this run"}
    assert await ws.receive_nothing(timeout=0.5)
