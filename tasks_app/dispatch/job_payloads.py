"""A job's payload: what an agent is given with a job (agents_app.protocol.JobPayload): the
run, its workspace's variables (sensitive ones decrypted here only), the configuration when
small enough to travel inline, and the job's state credential. Reads only: the run is read
(and locked) with what the payload needs in one query.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import BinaryField, Case, Exists, F, Func, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import JSONObject

from agents_app.protocol import JobKind, JobPayload, PlanOptions, StateBackend, TaskRef, Variables
from tasks_app.dispatch.models import Job
from tasks_app.models import ConfigurationVersion, StateVersion, Task, Variable
from tasks_app.selectors import workspace_has_policies
from tasks_app.states import Operation
from tasks_app.workflows.models import VariableSet
from tasks_app.workflows.precedence import Resolved, SetValue, resolve
from tasks_app.workflows.set_reads import set_values_for


@dataclass(frozen=True)
class PayloadReads:
    """What a job's payload needs beside the run, when it was read with the locked run in one
    query (task_locked_for_payload, Confirm's lock): the workspace's variables, the
    configuration archive small enough to travel inline, the workspace's current state serial
    (for run_plan_started; None also when it has no state yet, see `state_serial_read`).
    None: not read with the run (queried when needed)."""

    variables: list[Variable] | None = None
    set_variables: list[SetValue] | None = None  # of the variable sets that apply to the workspace
    inline_archive: bytes | None = None
    state_serial: int | None = None
    state_serial_read: bool = False


def task_locked_for_payload(task_id: int, *, inline_archive: bool = False,
                            state_serial: bool = False) -> tuple[Task, PayloadReads]:
    """The run, locked, with what a job's payload reads, in one query. `inline_archive`:
    with its configuration archive when it is small enough to travel inside the payload
    (`_inline_configuration`); a larger one is never read here. `state_serial`: with its
    workspace's current state serial."""
    qs = (
        Task.objects.select_for_update(no_key=True, of=("self",))
        .select_related("workspace__pool", "configuration_version")
        .defer("configuration_version__archive")
    )
    qs = with_payload_variables(qs)
    if inline_archive:
        qs = qs.annotate(inline_archive=Case(
            When(configuration_version__size__lte=INLINE_CONFIGURATION_BYTES, then=F("configuration_version__archive")),
            default=Value(None), output_field=BinaryField(),
        ))
    if state_serial:
        qs = qs.annotate(current_state_serial=Subquery(
            StateVersion.objects.filter(workspace_id=OuterRef("workspace_id")).order_by("-serial").values("serial")[:1]
        ))
    task = qs.get(id=task_id)
    return task, PayloadReads(
        variables=payload_variables(task), set_variables=payload_set_variables(task),
        inline_archive=task.inline_archive if inline_archive else None,
        state_serial=task.current_state_serial if state_serial else None, state_serial_read=state_serial,
    )


# Configuration archives up to this size travel inside a plan's or warmup's payload: the
# agent starts `terraform init` without a `GET configuration` round trip. Larger ones, and
# applies (Confirm's hot path reads no archive; a warm apply needs none), are fetched.
INLINE_CONFIGURATION_BYTES = 256 * 1024


def _inline_configuration(job: Job, task: Task, reads: PayloadReads) -> str:
    cv = task.configuration_version
    if job.kind == JobKind.APPLY or cv.size > INLINE_CONFIGURATION_BYTES:
        return ""
    archive = reads.inline_archive
    if archive is None:
        archive = ConfigurationVersion.objects.filter(id=cv.id).values_list("archive", flat=True).first()
    return base64.b64encode(bytes(archive)).decode() if archive is not None else ""


def with_payload_variables(qs: QuerySet[Task]) -> QuerySet[Task]:
    """Runs annotated with their workspace's variables (`payload_variables`), for job_payload:
    read with the locked run instead of a query of their own on the claim's and Confirm's
    path. A sensitive value travels as its ciphertext (base64) and is decrypted here only."""
    rows = Variable.objects.filter(workspace_id=OuterRef("workspace_id")).order_by().values(row=JSONObject(
        key="key", category="category", sensitive="sensitive", plain="plain_value",
        cipher=Func(F("encrypted_value"), Value("base64"), function="encode"),
    ))
    # Whether any variable set exists at all (a tiny table): without one, the payload's set
    # variables need no query of their own (payload_set_variables).
    return qs.annotate(payload_variables=ArraySubquery(rows), any_variable_set=Exists(VariableSet.objects.all()))


def payload_variables(task: Task) -> list[Variable]:
    """The workspace's variables, as a run read `with_payload_variables` carries them."""
    return [Variable(workspace_id=task.workspace_id, key=r["key"], category=r["category"], sensitive=r["sensitive"],
                     plain_value=r["plain"], encrypted_value=base64.b64decode(r["cipher"]) if r["cipher"] else None)
            for r in task.payload_variables]


def payload_set_variables(task: Task) -> list[SetValue]:
    """The variables of the sets that apply to the run's workspace: a query of their own, none
    when the locked run's read found no variable set at all (`any_variable_set`). (Read as one
    more array subquery of the locked run, they made the claim's query slow enough for
    an agent to miss its heartbeat bound on a loaded machine: tests/tasks_app/test_lock_order.py
    next to a live server.)"""
    if not getattr(task, "any_variable_set", True):  # read with the locked run: there is none
        return []
    return set_values_for(task.workspace_id)


def reads_with_variables(task: Task, reads: PayloadReads) -> PayloadReads:
    """`reads` with the workspace's and its sets' variables, queried if they were not read."""
    variables, set_variables = reads.variables, reads.set_variables
    if variables is None:
        variables = list(Variable.objects.filter(workspace_id=task.workspace_id))
    if set_variables is None:
        set_variables = set_values_for(task.workspace_id)
    return replace(reads, variables=variables, set_variables=set_variables)


def mask_ciphertexts(reads: PayloadReads) -> list[bytes]:
    """The ciphertexts of every sensitive value a payload made from `reads` carries (the
    `sensitive_values` its agent masks), for the job's row (Job.mask_ciphertexts)."""
    assert reads.variables is not None and reads.set_variables is not None
    own = [v.encrypted_value for v in reads.variables if v.sensitive and v.encrypted_value]
    return own + [s.variable.encrypted_value for s in reads.set_variables
                  if s.variable.sensitive and s.variable.encrypted_value]


def run_variables_resolved(task: Task, reads: PayloadReads) -> tuple[list[Resolved], list[str]]:
    """The variables the run's job gets (workflows/precedence.py: the run's own, the sets',
    the workspace's) and every sensitive value among all of them (a losing one too: the
    agent masks them all)."""
    workspace_variables = reads.variables
    if workspace_variables is None:
        workspace_variables = list(Variable.objects.filter(workspace_id=task.workspace_id))
    set_variables = reads.set_variables
    if set_variables is None:
        set_variables = set_values_for(task.workspace_id)
    resolved = resolve(workspace_variables=workspace_variables, set_variables=set_variables,
                       run_variables=task.run_variables)
    sensitive = [v.value for v in workspace_variables if v.sensitive and v.value]
    sensitive += [s.variable.value for s in set_variables if s.variable.sensitive and s.variable.value]
    return resolved, sensitive


def job_payload(job: Job, task: Task, credential: str, *, reads: PayloadReads, note: str = "") -> dict[str, Any]:
    by_category: dict[str, dict[str, str]] = {"terraform": {}, "env": {}}
    resolved, sensitive = run_variables_resolved(task, reads)
    for var in resolved:
        by_category[var.category][var.key] = var.value
    variables = Variables(**by_category)
    # Terraform runs beside the agent: it reaches web the way agents do (IAC_AGENT_URL).
    state_url = f"{settings.IAC_AGENT_URL}/api/v1/workspaces/{task.workspace_id}/state"
    pool = task.workspace.pool
    payload = JobPayload(
        id=job.id,
        kind=JobKind(job.kind),
        fence=job.fence,
        task=TaskRef(id=task.id, workspace=task.workspace_id, workspace_name=task.workspace.name,
                     operation=task.operation, plan_hash=task.plan_hash),
        configuration_sha256=task.configuration_version.sha256,
        configuration_b64=_inline_configuration(job, task, reads),
        # Keep the dir after a plan of a run that can apply, on a warm pool.
        keep_dir=job.kind == JobKind.PLAN and task.can_apply and pool.warm_apply,
        speculative=task.operation == Operation.PLAN,
        cold_reason=job.cold_reason,
        note=note,
        variables=variables,
        sensitive_values=sensitive,  # the agent redacts them before sending anything
        plan_options=PlanOptions(mode=task.plan_mode, targets=task.plan_targets, replace=task.plan_replace),
        # terraform_remote_state names the platform by its public host (tasks_app/tfe/sharing.py).
        tfe_hostname=urlsplit(settings.IAC_PUBLIC_URL).netloc,
        # Policies govern the workspace: the plan's JSON comes back with the plan, for the check.
        plan_json=job.kind == JobKind.PLAN and workspace_has_policies(task.workspace_id),
        # Credentials reach terraform only through TF_HTTP_* environment variables.
        state_backend=StateBackend(address=state_url, lock_address=f"{state_url}/lock",
                                   unlock_address=f"{state_url}/lock", username=f"job-{job.id}", password=credential),
    )
    return payload.model_dump(mode="json")
