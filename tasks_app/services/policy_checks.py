"""A run's policy check: the plan's JSON (stored with the plan, encrypted) and the run's
context are evaluated against the policy sets that govern its workspace, in the worker's warm
evaluator (tasks_app.policy_engine), then the run moves on: apply_pending (passed, advisory
failures reported, or a soft-mandatory failure that blocks Confirm until an override),
errored (a hard-mandatory failure), planned (a plan-only run, whatever the result).

Called by the Celery task queued when the plan result arrives (tasks_app.tasks.policy_check)
and by the sweep for a run whose task never came (Redis down): never in a web request. The
evaluation holds no lock and no transaction; the result is written under the run's lock, and
only if the run is still policy_checking (a second evaluation of the same run, or a Cancel
meanwhile, changes nothing).

The input (documented in README.md, "Policies"):
    {"plan": <terraform show -json>, "run": {"id", "operation", "mode", "speculative",
     "created_by", "message", "configuration_version", "commit"},
     "workspace": {"id", "name", "tags"}}
Each policy is queried at data.<package>.deny (messages: the policy fails) and .warn.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone

from agents_app.redaction import redact
from iacplatform import crypto
from iacplatform.errors import PlatformError
from iacplatform.unit_of_work import unit_of_work
from tasks_app.models import Plan, Policy, PolicyCheck, PolicySet, Task, TaskEvent
from tasks_app.policy_engine.pool import EvaluatorFailure
from tasks_app.redaction import run_sensitive_values
from tasks_app.services.policies import policy_engine, policy_sets_of
from tasks_app.services.runs import policy_transition, run_confirm, run_transition
from tasks_app.states import EnforcementLevel, Operation, PolicyStatus, RunStatus
from tasks_app.workflows.notifications import run_notify_policy_failed

log = logging.getLogger(__name__)
L = EnforcementLevel

# Messages kept per policy and their length: a policy that denies every one of 10,000
# resources is reported, not stored 10,000 times.
MAX_MESSAGES = 100
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class Outcome:
    status: PolicyStatus
    results: list[dict[str, Any]]
    duration_ms: float


def _input_json(task: Task, plan_json: str) -> str:
    """The input document, built around the plan's JSON text without parsing it here."""
    cv = task.configuration_version
    run = {
        "id": task.id, "operation": task.operation, "mode": task.plan_mode,
        "speculative": task.operation == Operation.PLAN,
        "created_by": task.created_by.username if task.created_by else None,
        "message": task.message, "configuration_version": cv.id if cv else None,
        # The commit a run from a repository was made of (tasks_app/vcs/); none for an upload.
        "commit": ({"repository": cv.vcs_repository, "branch": cv.vcs_branch or None, "tag": cv.vcs_tag or None,
                    "sha": cv.vcs_sha, "author": cv.vcs_author or None, "pull_request": cv.vcs_pr_number}
                   if cv is not None and cv.vcs_sha else None),
        "targets": task.plan_targets, "replace": task.plan_replace,
    }
    ws = task.workspace
    workspace = {"id": ws.id, "name": ws.name, "tags": ws.tags}
    return f'{{"plan": {plan_json}, "run": {json.dumps(run)}, "workspace": {json.dumps(workspace)}}}'


def _plan_json(task: Task) -> str | None:
    row = Plan.objects.filter(task_id=task.id).values_list("encrypted_json", flat=True).first()
    if not row:
        return None
    # Bounded like the plan file: a gzip bomb is refused, not inflated.
    with gzip.GzipFile(fileobj=io.BytesIO(crypto.decrypt(bytes(row)))) as gz:
        data = gz.read(settings.IAC_MAX_PLAN_BYTES + 1)
    if len(data) > settings.IAC_MAX_PLAN_BYTES:
        raise ValueError(f"the plan's JSON is over {settings.IAC_MAX_PLAN_BYTES} bytes")
    return data.decode()


def _lookup(document: dict[str, Any], package: str) -> dict[str, Any]:
    node: Any = document
    for part in package.split("."):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return {}
    return node if isinstance(node, dict) else {}


def _messages(value: Any, sensitive: list[str]) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items[:MAX_MESSAGES]:
        text = item if isinstance(item, str) else json.dumps(item, sort_keys=True)
        out.append(redact(text[:MAX_MESSAGE_CHARS], sensitive))
    if len(items) > MAX_MESSAGES:
        out.append(f"... and {len(items) - MAX_MESSAGES} more")
    return out


def _result(ps: PolicySet, policy: Policy, *, deny: list[str], warn: list[str], error: str = "") -> dict[str, Any]:
    return {"policy_set": ps.name, "policy": policy.name, "level": policy.enforcement_level, "package": policy.package,
            "passed": not deny and not error, "deny": deny, "warn": warn, "error": error}


def _evaluate_set(ps: PolicySet, policies: list[Policy], input_json: str, sensitive: list[str]) -> list[dict[str, Any]]:
    """One set in one pass; when that pass fails (a runtime error, the time or memory bound),
    each policy again on its own, so the failure is pinned on the policy that caused it."""
    engine = policy_engine()
    modules = {f"{p.name}.rego": p.module for p in policies}
    key = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()
    try:
        answer = engine.evaluate(key=key, modules=modules, input_json=input_json)
    except EvaluatorFailure as exc:
        answer = {"error": str(exc)}
    if "document" in answer:
        document = answer["document"]
        return [_result(ps, p, deny=_messages(_lookup(document, p.package).get("deny"), sensitive),
                        warn=_messages(_lookup(document, p.package).get("warn"), sensitive)) for p in policies]
    if len(policies) == 1:
        return [_result(ps, policies[0], deny=[], warn=[], error=answer["error"])]
    return [r for p in policies for r in _evaluate_set(ps, [p], input_json, sensitive)]


def policy_check_evaluate(task: Task) -> Outcome:
    """Evaluate the run's plan against its workspace's policy sets (no lock, no transaction)."""
    started = time.monotonic()
    sets = list(policy_sets_of(task.workspace_id))
    results: list[dict[str, Any]] = []
    try:
        plan_json = _plan_json(task)
    except (ValueError, OSError, EOFError) as exc:
        plan_json, missing = None, f"the plan's JSON could not be read: {exc}"
    else:
        missing = ("the plan's JSON did not come with the plan (policies were attached while it ran?): "
                   "queue a new run")
    if sets and plan_json is None:
        # Fail closed: an unchecked plan is not a passed one.
        results = [_result(ps, p, deny=[], warn=[], error=missing) for ps in sets for p in ps.policies.all()]
    elif sets:
        input_json = _input_json(task, plan_json)
        sensitive = run_sensitive_values(task)
        for ps in sets:
            results += _evaluate_set(ps, list(ps.policies.all()), input_json, sensitive)
    failed = {r["level"] for r in results if not r["passed"]}
    status = (PolicyStatus.HARD_FAILED if L.HARD_MANDATORY in failed
              else PolicyStatus.SOFT_FAILED if L.SOFT_MANDATORY in failed else PolicyStatus.PASSED)
    return Outcome(status=status, results=results, duration_ms=(time.monotonic() - started) * 1000)


def _failures(results: list[dict[str, Any]], level: str) -> str:
    parts = []
    for r in results:
        if not r["passed"] and r["level"] == level:
            why = r["error"] or "; ".join(r["deny"][:3])
            parts.append(f"{r['policy_set']}/{r['policy']}: {why}")
    return "; ".join(parts)


def policy_check_run(*, task_id: int) -> bool:
    """Check a policy_checking run and move it on. False: the run had moved on already."""
    task = (Task.objects.select_related("workspace", "created_by", "configuration_version")
            .defer("configuration_version__archive").filter(id=task_id).first())
    if task is None or task.status != RunStatus.POLICY_CHECKING:
        return False
    outcome = policy_check_evaluate(task)
    auto = False
    with unit_of_work() as uow:
        task = (Task.objects.select_for_update(no_key=True, of=("self",)).select_related("workspace__pool")
                .get(id=task_id))
        if task.status != RunStatus.POLICY_CHECKING:
            return False
        PolicyCheck.objects.update_or_create(task=task, defaults={
            "results": outcome.results, "finished_at": timezone.now(), "duration_ms": outcome.duration_ms})
        failed = [r for r in outcome.results if not r["passed"]]
        summary = (f"policy check: {len(outcome.results) - len(failed)} of {len(outcome.results)} policies passed"
                   if outcome.results else "policy check: no policies")
        policy_transition(task, outcome.status, uow=uow, message=summary)
        if outcome.status in (PolicyStatus.SOFT_FAILED, PolicyStatus.HARD_FAILED):
            hard = outcome.status == PolicyStatus.HARD_FAILED
            level = L.HARD_MANDATORY if hard else L.SOFT_MANDATORY
            run_notify_policy_failed(task, uow=uow, level="hard" if hard else "soft", failures=[
                f"{r['policy_set']}/{r['policy']}: {r['error'] or '; '.join(r['deny'][:3])}"
                for r in outcome.results if not r["passed"] and r["level"] == level])
        if outcome.status == PolicyStatus.HARD_FAILED:
            run_transition(task, RunStatus.ERRORED, uow=uow, message=(
                "a hard-mandatory policy failed: " + _failures(outcome.results, L.HARD_MANDATORY)))
        elif task.operation == Operation.PLAN:
            message = ""
            if outcome.status == PolicyStatus.SOFT_FAILED:
                message = "a soft-mandatory policy failed: " + _failures(outcome.results, L.SOFT_MANDATORY)
            run_transition(task, RunStatus.PLANNED, uow=uow, message=message, event_only=not message)
        elif outcome.status == PolicyStatus.SOFT_FAILED:
            run_transition(task, RunStatus.APPLY_PENDING, uow=uow, message=(
                "a soft-mandatory policy failed (Confirm waits for an admin's override): "
                + _failures(outcome.results, L.SOFT_MANDATORY)))
        else:
            run_transition(task, RunStatus.APPLY_PENDING, uow=uow)
            auto = task.workspace.auto_apply or task.auto_apply
    log.info("policy check of run %s: %s in %.1f ms", task_id, outcome.status, outcome.duration_ms)
    if auto:
        try:
            run_confirm(task_id=task_id, actor="auto-apply")
        except PlatformError:  # the sweep's auto_apply step tries again
            log.warning("auto-apply of run %s after its policy check failed; the sweep retries", task_id,
                        exc_info=True)
    return True


def runs_policy_check_overdue() -> list[int]:
    """Runs in policy_checking past what a check may take (its queued task was lost: Redis
    down, a worker killed mid-check): the sweep evaluates them itself."""
    bound = settings.IAC_POLICY_TIMEOUT_SECONDS * 3 + 30
    cutoff = timezone.now() - timedelta(seconds=bound)
    entered = TaskEvent.objects.filter(task=OuterRef("pk"), to_status=RunStatus.POLICY_CHECKING,
                                       created_at__lt=cutoff)
    return list(Task.objects.filter(Exists(entered), status=RunStatus.POLICY_CHECKING)
                .order_by("id").values_list("id", flat=True))
