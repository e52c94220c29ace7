"""/metrics: Prometheus text format.

What it serves: the in-process histograms and counters of iacplatform.metrics, plus gauges
computed from the database at scrape time (`DatabaseCollector`: runs by status, jobs by pool,
kind and status, agents by pool and status, slots of online agents by pool and state,
workspaces by health, notification deliveries by status). The
gauges are GROUP BY queries, not counters kept in memory, so they are right whichever process
(web, the Celery worker's sweep, the admin) changed the rows, and right after a restart.

Who may scrape: a request with `Authorization: Bearer <IAC_METRICS_TOKEN>`, from anywhere;
anything else gets 401. Being local proves nothing: terraform's `local-exec` on an agent that
shares the web's host reaches every address the web listens on, loopback included. Unset, the
token is a random one kept in `<var>/metrics_token` (iacplatform/settings.py; `manage.py up`
prints where), so there is always one.

Not here yet: the autoscaler's desired and actual pods (the pools issue builds the
autoscaler; its gauges belong in `DatabaseCollector` or next to the autoscaler's loop).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agents_app.models import Agent, AgentPool
from agents_app.protocol import AgentStatus, JobKind, JobStatus, SlotState
from iacplatform.metrics import REGISTRY
from tasks_app.dispatch.models import Job, Slot
from tasks_app.models import Task, Workspace
from tasks_app.states import PolicyStatus, RunStatus
from tasks_app.vcs.models import VcsConnection
from tasks_app.workflows.models import NotificationDelivery
from tasks_app.workflows.states import DeliveryStatus, Health


class DatabaseCollector:
    """Gauges read from PostgreSQL on each scrape: one GROUP BY query per family. Every known
    label combination is exported, zeros included, so a panel's series never vanish."""

    def collect(self) -> Iterator[Metric]:
        pools = list(AgentPool.objects.order_by("name").values_list("name", flat=True))

        runs = GaugeMetricFamily("iac_runs", "Runs by status", labels=["status"])
        counts = dict(Task.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in RunStatus.values:
            runs.add_metric([status], counts.get(status, 0))
        yield runs

        # Runs by their policy check: checking, passed, soft_failed (waiting for an override),
        # overridden, hard_failed. Runs no policy governs are not counted.
        policy = GaugeMetricFamily("iac_policy_checks", "Runs by policy check status", labels=["status"])
        by_policy = dict(Task.objects.exclude(policy_status="").values_list("policy_status")
                         .annotate(n=Count("id")).order_by())
        for status in PolicyStatus.values:
            if status:
                policy.add_metric([status], by_policy.get(status, 0))
        yield policy

        jobs = GaugeMetricFamily("iac_jobs", "Jobs by pool, kind and status", labels=["pool", "kind", "status"])
        by_job = {
            (pool, kind, status): n
            for pool, kind, status, n in Job.objects.values_list("pool__name", "kind", "status")
            .annotate(n=Count("id")).order_by()
        }
        for pool in pools:
            for kind in JobKind:
                for status in JobStatus:
                    jobs.add_metric([pool, kind, status], by_job.get((pool, kind, status), 0))
        yield jobs

        agents = GaugeMetricFamily("iac_agents", "Agents by pool and status", labels=["pool", "status"])
        by_agent = {
            (pool, status): n
            for pool, status, n in Agent.objects.values_list("pool__name", "status").annotate(n=Count("id")).order_by()
        }
        for pool in pools:
            for status in AgentStatus:
                agents.add_metric([pool, status], by_agent.get((pool, status), 0))
        yield agents

        # The slots of online agents only: an offline agent's slots are capacity nobody has.
        slots = GaugeMetricFamily("iac_slots", "Slots of online agents by pool and state", labels=["pool", "state"])
        by_slot = {
            (pool, state): n
            for pool, state, n in Slot.objects.filter(agent__status=AgentStatus.ONLINE)
            .values_list("agent__pool__name", "state").annotate(n=Count("id")).order_by()
        }
        for pool in pools:
            for state in SlotState:
                slots.add_metric([pool, state], by_slot.get((pool, state), 0))
        yield slots

        # Drift checks' findings (tasks_app/workflows/health.py): how many workspaces are in each health.
        health = GaugeMetricFamily("iac_workspaces_health", "Workspaces by health (drift checks)", labels=["health"])
        by_health = dict(Workspace.objects.values_list("health").annotate(n=Count("id")).order_by())
        for value in Health.values:
            health.add_metric([value], by_health.get(value, 0))
        yield health
        deliveries = GaugeMetricFamily("iac_notification_deliveries", "Notification deliveries by status",
                                       labels=["status"])
        by_delivery = dict(NotificationDelivery.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in DeliveryStatus:
            deliveries.add_metric([status], by_delivery.get(status, 0))
        yield deliveries
        # Webhooks refused unread (unsigned or wrongly signed, tasks_app/vcs/webhooks.py): a
        # forge whose secret changed, or someone knocking; counted on the connection's row.
        refused = CounterMetricFamily("iac_webhook_deliveries_refused",
                                      "Webhook deliveries refused as unsigned or wrongly signed, by VCS connection",
                                      labels=["connection"])
        for name, n in VcsConnection.objects.values_list("name", "refused_deliveries").order_by("name"):
            refused.add_metric([name], n)
        yield refused


class _Scrape:
    """What one scrape exports: the in-process registry, then the database gauges."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from DatabaseCollector().collect()


def scrape() -> bytes:
    return generate_latest(_Scrape())  # type: ignore[arg-type]  # any object with collect()


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.IAC_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # An empty token (settings always set one; a test may blank it) matches nothing.
    if not token or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = JsonResponse(
            {"detail": "metrics need Authorization: Bearer <IAC_METRICS_TOKEN> (unset, the token is in "
                       "<var>/metrics_token on the web's host)"},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)
