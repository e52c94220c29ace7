"""Dispatch's rows: jobs (one unit of agent work each), the agents' slots (where a job runs and
where a run's warm dir is kept) and the dispatch history. Registered with tasks_app (imported
by tasks_app/models.py); Slot and DispatchEvent keep the tables they had in agents_app."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from agents_app.protocol import JobKind, JobStatus, PlanStart, SandboxMode, SlotState, choices


class Job(models.Model):
    """One unit of agent work. Claimed with a conditional update; every agent call about it
    carries the fencing token (`fence`), so an agent that lost the job cannot write to it."""

    task = models.ForeignKey("tasks_app.Task", on_delete=models.CASCADE, related_name="jobs")
    pool = models.ForeignKey("agents_app.AgentPool", on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=choices(JobKind))
    status = models.CharField(max_length=20, choices=choices(JobStatus), default=JobStatus.QUEUED)
    # Only agents running this terraform version may take the job (blank: any).
    terraform_version = models.CharField(max_length=50, blank=True)
    # An apply confirmed while its run's warmup was still running waits for that warmup
    # (it is handed to the warmup's agent the moment the dir is ready) until this moment;
    # after it any agent may take it, cold.
    hold_until = models.DateTimeField(null=True, blank=True)
    # The agent Confirm pushed the apply to (the one holding the run warm), for the record.
    target_agent = models.ForeignKey(
        "agents_app.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="targeted_jobs"
    )
    agent = models.ForeignKey("agents_app.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    # A job taken back from an agent that lost it (its lease ran out, its heartbeats stopped
    # reporting it, it did not take a pushed apply) goes to another agent first: this one may
    # take it again only from `avoid_until` on (an agent that can claim but not report
    # would otherwise win the job back each time, the workspace's warm plan dir being there).
    avoid_agent = models.ForeignKey("agents_app.Agent", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    avoid_until = models.DateTimeField(null=True, blank=True)
    # Which of its agent's slots ran it, for the record (the live link is Slot.job).
    slot_index = models.PositiveSmallIntegerField(null=True, blank=True)
    fence = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    credential_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # The ciphertexts of the sensitive values its payload carried (the workspace's and its
    # variable sets'), set when it is assigned: the server masks the job's log, error and plan
    # summary with exactly what its terraform was given, read with the job's own row (a log
    # post is on the Confirm -> first apply line path). Null: assigned before this column.
    mask_ciphertexts = ArrayField(models.BinaryField(), null=True, blank=True)
    cold_reason = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    force_cancel = models.BooleanField(default=False)
    # SIGINT, then SIGKILL after this many seconds (null: the agent's default); set when a
    # bound fires, sent with the cancel order.
    cancel_grace_seconds = models.PositiveIntegerField(null=True, blank=True)
    # When the job ran past its pool's bound, and the words the run ends with because of it.
    timed_out_at = models.DateTimeField(null=True, blank=True)
    timeout_message = models.TextField(blank=True)
    # Why the platform told the agent to stop the job although nobody cancelled the run (its
    # pool entered a freeze window): the run (or the warmup) ends with these words.
    cancel_message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # How the agent ran terraform (bwrap: sandboxed; off: directly), as it reported with the
    # result; blank until then.
    sandbox = models.CharField(max_length=10, choices=choices(SandboxMode), blank=True)
    # A plan job: warm (the workspace's checked init output on its agent, no init) or cold,
    # and why, as the agent reported with the result; blank until then (or from an older agent).
    plan_start = models.CharField(max_length=10, choices=choices(PlanStart), blank=True)
    plan_start_reason = models.TextField(blank=True)
    # The terraform commands the job ran, as its agent timed them (start to exit, sandbox
    # start included) and reported with the result: [{"command", "started_at", "ended_at",
    # "exit_code"}] (epoch seconds); empty until then or from an older agent.
    commands = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # An apply is acknowledged by its agent before terraform starts; an unacknowledged one
    # provably never ran and may be handed to another agent.
    acked_at = models.DateTimeField(null=True, blank=True)
    # Heartbeats of its agent in a row that did not report this running job (see
    # jobs.jobs_missed_by_heartbeat): two mean the agent does not have it.
    missed_heartbeats = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["pool", "status"], name="job_pool_status")]
        constraints = [
            # Exactly once: a run has at most one apply job, whatever happens to confirm requests.
            models.UniqueConstraint(fields=["task"], condition=models.Q(kind="apply"), name="one_apply_job_per_task"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} of run {self.task_id} ({self.status})"


class Slot(models.Model):
    """One of an agent's job places. The source of truth for a run's warm reservation: a
    slot `reserved` for a task holds that task's warm dir on its agent. Nothing else stores
    the reservation; the constraints below keep a slot's state and its links consistent.
    Changed only by tasks_app.dispatch.slots.slot_transition."""

    agent = models.ForeignKey("agents_app.Agent", on_delete=models.CASCADE, related_name="slots")
    index = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=20, choices=choices(SlotState), default=SlotState.IDLE)
    job = models.ForeignKey("tasks_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="slots")
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="slots")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "index"], name="slot_agent_index"),
            # idle: nothing; running: a job (of a task); reserved: a task's warm dir, no job.
            models.CheckConstraint(
                condition=(
                    Q(state=SlotState.IDLE, job__isnull=True, task__isnull=True)
                    | Q(state=SlotState.RUNNING, job__isnull=False, task__isnull=False)
                    | Q(state=SlotState.RESERVED, job__isnull=True, task__isnull=False)
                ),
                name="slot_state_links",
            ),
            # A run is reserved in at most one slot, and a job runs in at most one.
            models.UniqueConstraint(fields=["task"], condition=Q(state=SlotState.RESERVED), name="one_reservation_per_task"),
            models.UniqueConstraint(fields=["job"], condition=Q(job__isnull=False), name="one_slot_per_job"),
        ]
        db_table = "agents_app_slot"  # the table it had in agents_app (moved by migration 0021)
        ordering = ["agent_id", "index"]
        indexes = [models.Index(fields=["agent", "state"], name="slot_agent_state")]

    def __str__(self) -> str:
        return f"{self.agent.name}#{self.index} {self.state}"


class DispatchEvent(models.Model):
    """One row per state change of a job, slot or warmup (the run's are TaskEvents)."""

    subject = models.CharField(max_length=20)  # "job", "slot", "warmup"
    subject_id = models.PositiveBigIntegerField()
    task = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.CASCADE, related_name="dispatch_events")
    agent = models.ForeignKey("agents_app.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    from_state = models.CharField(max_length=30, blank=True)
    to_state = models.CharField(max_length=30)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "agents_app_dispatchevent"  # as for Slot
        ordering = ["id"]
        indexes = [models.Index(fields=["subject", "subject_id"], name="dispatch_event_subject")]

    def __str__(self) -> str:
        return f"{self.subject} {self.subject_id}: {self.from_state} -> {self.to_state}"
