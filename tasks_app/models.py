from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from knox.models import AbstractAuthToken

from agents_app.protocol import ApplyPath, PlanMode, WarmupStatus, choices
from iacplatform import crypto
from tasks_app.states import EnforcementLevel, Operation, PolicyStatus, RunStatus
from tasks_app.variable_fields import VariableCategory, VariableFields  # noqa: F401  (VariableCategory re-exported)
from tasks_app.workflows.states import Health


class Workspace(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    pool = models.ForeignKey("agents_app.AgentPool", on_delete=models.PROTECT, related_name="workspaces")
    auto_apply = models.BooleanField(default=False)
    locked = models.BooleanField(default=False)
    # Pin: the workspace's jobs go only to agents running this terraform version (blank: any).
    terraform_version = models.CharField(max_length=50, blank=True)
    # Remote state sharing, as HCP Terraform has it: the workspaces whose runs may read this
    # one's state and outputs (`terraform_remote_state`, backend "remote"). Default: none.
    remote_state_consumers = models.ManyToManyField("self", symmetrical=False, blank=True,
                                                    related_name="remote_state_sources")
    # Tags, as terraform's `cloud { workspaces { tags = [...] } }` selects workspaces by them.
    tags = models.JSONField(default=list, blank=True)
    # Key-value tags ({key: value}; "" for a key alone), as terraform's
    # `cloud { workspaces { tags = { env = "prod" } } }` selects and creates workspaces by them.
    tag_bindings = models.JSONField(default=dict, blank=True)
    # A workspace that follows a repository (tasks_app/vcs/): its applies come from git only.
    vcs_connection = models.ForeignKey("tasks_app.VcsConnection", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="workspaces")
    vcs_repository = models.CharField(max_length=300, blank=True)  # owner/name on a forge; a path on plain git
    vcs_branch = models.CharField(max_length=250, blank=True)  # blank: the repository's default, "main"
    vcs_working_directory = models.CharField(max_length=300, blank=True)
    # Only changes under these paths (gitignore-style, from the repository root) start a run;
    # empty: the working directory.
    vcs_trigger_patterns = models.JSONField(default=list, blank=True)
    # Runs from tags matching this regular expression (blank: tags start nothing).
    vcs_tag_regex = models.CharField(max_length=200, blank=True)
    # Keep runs waiting for Confirm when a newer push arrives (default: discard them, naming it).
    vcs_keep_pending_runs = models.BooleanField(default=False)
    # The newest commit seen on the tracked branch (the Confirm dialog's "newer commit", the
    # poll's last answer), and the delivery that made the last run: a delivery older than
    # that one is superseded, never run after it.
    vcs_last_sha = models.CharField(max_length=64, blank=True)
    vcs_seen_delivery_id = models.BigIntegerField(null=True, blank=True)  # the delivery that brought vcs_last_sha
    vcs_last_delivery_id = models.BigIntegerField(null=True, blank=True)  # the delivery that made the last run
    vcs_polled_at = models.DateTimeField(null=True, blank=True)
    # Run triggers: an apply of one of these workspaces that changed its state queues a
    # plan_and_apply here (tasks_app/workflows/run_triggers.py). No cycles.
    trigger_sources = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="trigger_consumers")
    # Drift detection (tasks_app/workflows/drift.py): a cron schedule in a time zone ("": the
    # pool's default, else the site's IAC_DRIFT_SCHEDULE; "off": never), when the next check is due, and what the last
    # one found (written only by workflows.health).
    drift_schedule = models.CharField(max_length=100, blank=True)
    drift_timezone = models.CharField(max_length=64, default="UTC")
    # The schedule drift_next_at was computed from (workflows/schedules.py's schedule_key): a
    # change of the pool's default or of the site's is seen as a new schedule.
    drift_next_for = models.CharField(max_length=200, blank=True, editable=False)
    drift_next_at = models.DateTimeField(null=True, blank=True)
    health = models.CharField(max_length=20, choices=Health.choices, default=Health.UNKNOWN)
    health_detail = models.JSONField(default=dict, blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def follows_repository(self) -> bool:
        return self.vcs_connection_id is not None


class AccessLevel(models.TextChoices):
    """A team's level on a workspace, as users of HCP Terraform know them. Each includes the
    ones before it (iacplatform/permissions.py says what each allows)."""

    READ = "read"
    PLAN = "plan"
    WRITE = "write"
    ADMIN = "admin"


class WorkspaceAccess(models.Model):
    """A team (a Django group) has one level on a workspace."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="access")
    team = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="workspace_access")
    level = models.CharField(max_length=10, choices=AccessLevel.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "team"], name="one_level_per_team_and_workspace")]
        ordering = ["workspace_id", "team__name"]

    def __str__(self) -> str:
        return f"{self.team.name}: {self.level} on {self.workspace.name}"


class ApiToken(AbstractAuthToken):
    """A user's named API token (django-rest-knox: only a digest is stored; the token is
    shown once). No expiry unless the user sets one: automation must not stop after 10 h."""

    name = models.CharField(max_length=100)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"


class ConfigurationVersion(models.Model):
    """An immutable snapshot of a workspace's Terraform files, as a normalised .tar.gz."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="configuration_versions")
    archive = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    files = models.JSONField(default=list)  # the file names, for display
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    # Made from a pull request's commit: plan-only, never the configuration a later run applies.
    speculative = models.BooleanField(default=False)
    # The commit it was made from (HCP Terraform's ingress attributes); blank for uploads.
    vcs_repository = models.CharField(max_length=300, blank=True)
    vcs_branch = models.CharField(max_length=250, blank=True)
    vcs_tag = models.CharField(max_length=250, blank=True)
    vcs_sha = models.CharField(max_length=64, blank=True)
    vcs_message = models.TextField(blank=True)
    vcs_author = models.CharField(max_length=200, blank=True)
    vcs_commit_url = models.CharField(max_length=500, blank=True)
    vcs_pr_number = models.PositiveIntegerField(null=True, blank=True)
    vcs_pr_url = models.CharField(max_length=500, blank=True)
    # How the commit was fetched: "sha" (a shallow fetch of the exact commit) or "branch" (the
    # server refused that: the branch was fetched and the commit found in it).
    vcs_fetched_by = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["-id"]


class Variable(VariableFields):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="variables")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "key", "category"], name="variable_unique_key")]
        ordering = ["category", "key"]


class Task(models.Model):
    """One run of a workspace: plan, or plan then (after Confirm) apply."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="tasks")
    # RESTRICT: a configuration cannot be deleted under its runs, but a workspace deletion
    # (which cascades to both) goes through.
    configuration_version = models.ForeignKey(ConfigurationVersion, on_delete=models.RESTRICT, related_name="tasks")
    operation = models.CharField(max_length=20, choices=Operation.choices)
    # How its plan runs terraform (agents_app.protocol.PlanOptions): -destroy / -refresh-only,
    # -target=… and -replace=… addresses.
    plan_mode = models.CharField(max_length=20, choices=choices(PlanMode), default=PlanMode.NORMAL)
    plan_targets = models.JSONField(default=list, blank=True)
    plan_replace = models.JSONField(default=list, blank=True)
    # Apply without a Confirm once planned (`terraform apply -auto-approve` through the TFE
    # API), whatever the workspace's own auto_apply says.
    auto_apply = models.BooleanField(default=False)
    # Terraform variables given for this run only ({key: value}; the CLI's `-var`), over the
    # workspace's: values as terraform reads them from TF_VAR_<key>.
    run_variables = models.JSONField(default=dict, blank=True)
    # Every variable the run's plan was given and where its value came from (the run's own,
    # the workspace's, a variable set's), as workflows.precedence resolved them when an agent
    # took the plan: [{key, category, sensitive, source, variable_set}]. Never a value.
    variable_sources = models.JSONField(default=list, blank=True)
    # A run queued by a run trigger: the source workspace's applied run that queued it.
    triggered_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="triggered_runs")
    # A drift check (a refresh-only plan queued by the schedule or "check now"): its result
    # becomes the workspace's health.
    drift_check = models.BooleanField(default=False)
    status = models.CharField(max_length=30, choices=RunStatus.choices, default=RunStatus.PENDING)
    message = models.TextField(blank=True)  # why it errored / was discarded, shown to the user
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    log_size = models.PositiveBigIntegerField(default=0)
    # Retention (services/retention.py): when the log / the plan file was deleted, so pages
    # and the API say "pruned" instead of showing an empty log or a missing plan.
    log_pruned_at = models.DateTimeField(null=True, blank=True)
    plan_pruned_at = models.DateTimeField(null=True, blank=True)

    # Plan.
    plan_hash = models.CharField(max_length=64, blank=True)
    has_changes = models.BooleanField(null=True)
    # The state serial the plan was made against; a different current serial = stale plan.
    base_state_serial = models.BigIntegerField(null=True, blank=True)
    # The terraform version the plan was made with: terraform refuses a plan file from
    # another version, so warmups and the apply go only to agents that run it.
    terraform_version = models.CharField(max_length=50, blank=True)

    # Warm apply. The reservation itself is the Slot reserved for this task (Slot.task);
    # these fields are the warmup's lifecycle, changed only by services.warmups.
    warmup_status = models.CharField(max_length=20, choices=choices(WarmupStatus), default=WarmupStatus.NONE)
    warmup_at = models.DateTimeField(null=True, blank=True)
    warmup_expires_at = models.DateTimeField(null=True, blank=True)
    warmup_retry_count = models.PositiveSmallIntegerField(default=0)
    warmup_message = models.TextField(blank=True)

    # Apply latency, visible on every run.
    confirmed_at = models.DateTimeField(null=True, blank=True)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    apply_started_at = models.DateTimeField(null=True, blank=True)  # `terraform apply` process started
    first_apply_log_at = models.DateTimeField(null=True, blank=True)  # first apply log line reached us
    apply_path = models.CharField(max_length=20, choices=choices(ApplyPath), blank=True)
    apply_path_reason = models.TextField(blank=True)

    # The policy check (tasks_app.services.policy_checks, the only writer): on the run's row
    # so that Confirm's gate costs no query; the details are its PolicyCheck.
    policy_status = models.CharField(max_length=20, choices=PolicyStatus.choices, default=PolicyStatus.NONE,
                                     blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "warmup_status"], name="task_status_warmup"),
            models.Index(fields=["workspace", "status"], name="task_workspace_status"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.operation}, {self.status})"

    @property
    def can_apply(self) -> bool:
        return self.operation == Operation.PLAN_AND_APPLY


class TaskEvent(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=30, blank=True)
    to_status = models.CharField(max_length=30)
    message = models.TextField(blank=True)
    actor = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class LogChunk(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="log_chunks")
    job = models.ForeignKey("tasks_app.Job", on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    offset = models.PositiveBigIntegerField()  # byte offset of this chunk in the run's log
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["offset"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="logchunk_job_seq")]
        indexes = [models.Index(fields=["task", "offset"], name="logchunk_task_offset")]


class Plan(models.Model):
    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="plan")
    job = models.ForeignKey("tasks_app.Job", null=True, on_delete=models.SET_NULL, related_name="+")
    encrypted_data = models.BinaryField()
    sha256 = models.CharField(max_length=64)  # of the plaintext plan.out
    size = models.PositiveIntegerField()
    summary = models.JSONField(default=dict)
    # `terraform show -json` of the plan, gzipped then encrypted (it holds sensitive values in
    # clear): the input of the policy check. Only sent by the agent when policies apply.
    encrypted_json = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def data(self) -> bytes:
        return crypto.decrypt(self.encrypted_data)


class StateVersion(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="state_versions")
    serial = models.BigIntegerField()  # 64-bit: terraform's serial is a uint64
    lineage = models.CharField(max_length=100)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    encrypted_data = models.BinaryField()
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="state_versions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-serial", "-id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "serial"], name="state_workspace_serial")]

    @property
    def data(self) -> bytes:
        return crypto.decrypt(self.encrypted_data)


class StateLock(models.Model):
    workspace = models.OneToOneField(Workspace, on_delete=models.CASCADE, related_name="state_lock")
    lock_id = models.CharField(max_length=200)
    info = models.JSONField(default=dict)
    # The holder: the job whose credential took the lock, or the user whose API token did.
    # Only the holder may lock again, push under or unlock it, whatever lock ID anyone else
    # presents (a refused LOCK shows the ID to whoever asks); anyone else needs `admin` and
    # a force-unlock. Neither set (a lock whose taker is unknown or was deleted): nobody can
    # prove it is theirs, and only a force-unlock releases it (services/state.py).
    # A job's lock is released when the job ends, however it ends: a killed terraform
    # never unlocks.
    job = models.ForeignKey("tasks_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)


class AuditEvent(models.Model):
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=200, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)  # where the request came from
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class SweepHeartbeat(models.Model):
    """When the control loop's sweep last completed, one row per runner: `CELERY` (id 1, the
    normal path: beat ticks, the worker sweeps) and `WEB` (id 2, the fallback tick of the web
    processes, tasks_app/sweep_fallback.py, which runs while the Celery row is stale).
    /healthz/ready reads both to tell whether the worker and beat are alive and who keeps
    the loop going. In the database, not Redis: Redis may be down while the sweep still
    needs watching.

    Two more rows serve liveness (sweep.step_offline): `WEB_SEEN` (id 3), when a web
    process last ticked, and `HEARD_SINCE` (id 4), since when the platform has been able to
    hear agents without a break (a web process (re)started or came back, or the sweep itself
    resumed after a gap: a database outage). An agent's silence counts only from then: a
    heartbeat nobody could receive is not the agent's fault."""

    CELERY = 1
    WEB = 2
    WEB_SEEN = 3
    HEARD_SINCE = 4

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    finished_at = models.DateTimeField()


class ConfigurationUpload(models.Model):
    """A configuration version announced through the TFE API (tasks_app/tfe/), before its
    archive arrives at the signed upload URL: the CLI creates it, uploads, then polls it until
    it is uploaded. `configuration_version` is set by the upload (once); `error` says why an
    upload was refused. `speculative`: its runs are plan-only (`terraform plan`)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="configuration_uploads")
    speculative = models.BooleanField(default=False)
    auto_queue_runs = models.BooleanField(default=False)
    configuration_version = models.OneToOneField(ConfigurationVersion, null=True, blank=True,
                                                 on_delete=models.CASCADE, related_name="upload")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class PolicySet(models.Model):
    """Rego policies applied to chosen workspaces or to all of them (`is_global`). Managed by
    site admins only (tasks_app.services.policies)."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    is_global = models.BooleanField(default=False)
    workspaces = models.ManyToManyField(Workspace, blank=True, related_name="policy_sets")
    # Where its policies come from: "upload" (API, admin) or "vcs": a directory of a
    # repository's branch, synced on each push (tasks_app.vcs.policy_sync) through the same
    # service the API uses.
    source = models.CharField(max_length=20, default="upload")
    vcs_connection = models.ForeignKey("tasks_app.VcsConnection", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="policy_sets")
    vcs_repository = models.CharField(max_length=300, blank=True)
    vcs_branch = models.CharField(max_length=250, blank=True)
    vcs_directory = models.CharField(max_length=300, blank=True)
    # The commit whose policies the set holds, and when they were taken.
    vcs_sha = models.CharField(max_length=64, blank=True)
    vcs_synced_at = models.DateTimeField(null=True, blank=True)
    # The last sync that failed (the set kept its policies): why, and at which commit.
    vcs_sync_error = models.TextField(blank=True)
    vcs_error_sha = models.CharField(max_length=64, blank=True)
    vcs_polled_at = models.DateTimeField(null=True, blank=True)
    # The webhook delivery that brought vcs_sha: an older delivery processed later is skipped.
    vcs_delivery_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Policy(models.Model):
    """One Rego module, queried at `data.<package>.deny` (failures) and `.warn` (notes)."""

    policy_set = models.ForeignKey(PolicySet, on_delete=models.CASCADE, related_name="policies")
    name = models.SlugField(max_length=100)
    enforcement_level = models.CharField(max_length=20, choices=EnforcementLevel.choices,
                                         default=EnforcementLevel.ADVISORY)
    module = models.TextField()
    package = models.CharField(max_length=200)  # from the module's `package` line

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["policy_set", "name"], name="policy_unique_name"),
            models.UniqueConstraint(fields=["policy_set", "package"], name="policy_unique_package"),
        ]

    def __str__(self) -> str:
        return f"{self.policy_set.name}/{self.name}"


class PolicyCheck(models.Model):
    """A run's policy check: what was evaluated and what each policy said. `results` is a list
    of {policy_set, policy, level, passed, deny: [...], warn: [...], error}."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="policy_check")
    results = models.JSONField(default=list)
    requested_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)  # the evaluation alone
    overridden_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="+")
    overridden_at = models.DateTimeField(null=True, blank=True)
    override_reason = models.TextField(blank=True)


# Dispatch's models (Job, Slot, DispatchEvent), the VCS ones and the workflows' live beside
# their services (tasks_app/dispatch/, vcs/, workflows/); imported here so that Django
# registers them with this app when it loads its models.
from tasks_app.dispatch import models as _dispatch_models  # noqa: E402,F401
from tasks_app.vcs.models import (  # noqa: E402,F401
    HeldPullRequest,
    PullRequestComment,
    VcsConnection,
    VcsKind,
    VcsReport,
    WebhookDelivery,
)
from tasks_app.workflows import models as _workflow_models  # noqa: E402,F401
