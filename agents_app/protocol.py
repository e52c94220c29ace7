"""The agent protocol: the enums and typed payloads shared by the server and the agent.

No Django here (an import-linter contract checks it): the agent imports this module and
runs in a pod that has no database and no server code. The models' `choices` derive from
these enums, so a status has one spelling everywhere.

Payloads are pydantic models: the server validates what an agent sends with them (a bad
field is a 400 naming it), the agent parses what the server answers with the same classes.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bumped when a message changes incompatibly. The server refuses an agent that speaks
# another version at registration, with a message that says which one it needs.
PROTOCOL_VERSION = 4


class JobKind(enum.StrEnum):
    PLAN = "plan"
    APPLY = "apply"
    WARMUP = "warmup"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobOutcome(enum.StrEnum):
    """How a job ended, as the agent reports it: one value, not a set of flags."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The apply was refused by terraform because the state changed after the plan.
    STALE = "stale"


class SlotState(enum.StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    RESERVED = "reserved"  # holds a warm dir for a run awaiting Confirm


class PodPhase(enum.StrEnum):
    PENDING = "pending"  # created by its backend; its agent has not registered yet
    RUNNING = "running"  # its agent registered
    DRAINING = "draining"  # chosen for removal (all slots idle, agent taken offline); being deleted
    GONE = "gone"  # deleted, or vanished from its backend


class WarmupStatus(enum.StrEnum):
    NONE = "none"
    WARMING = "warming"
    READY = "ready"
    EXPIRED = "expired"
    FAILED = "failed"


class ApplyPath(enum.StrEnum):
    FAST = "fast"  # the plan's own work dir, kept on the plan's agent
    REWARMED = "rewarmed"  # a dir rebuilt ahead of time by a warmup job
    COLD = "cold"  # full preparation after Confirm


class AgentStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class WarmOrigin(enum.StrEnum):
    PLAN = "plan"  # the plan's own dir
    WARMUP = "warmup"  # rebuilt by a warmup job


class PlanStart(enum.StrEnum):
    """How a plan job got its initialized dir (agents_app/agent/warmdirs.py)."""

    WARM = "warm"  # this workspace's checked init output kept on the agent: no init
    COLD = "cold"  # terraform init (providers from the agent's cache when it has one)


class SandboxMode(enum.StrEnum):
    """How the agent runs terraform (IAC_AGENT_SANDBOX); a job reports BWRAP or OFF."""

    AUTO = "auto"  # the setting only: bwrap when it works, else off with a warning
    BWRAP = "bwrap"  # inside a bubblewrap sandbox that sees only the job's own dir
    OFF = "off"  # directly, with the agent's view of the filesystem


def choices(values: type[enum.StrEnum]) -> list[tuple[str, str]]:
    """Django `choices` for a model field, derived from a protocol enum."""
    return [(m.value, m.value.replace("_", " ")) for m in values]


class _Message(BaseModel):
    # Unknown fields are ignored so a newer peer can add fields without breaking this one.
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- registration ----------------------------------------------------------------------


class Registration(_Message):
    name: str = Field(min_length=1, max_length=200)
    slots: int | None = Field(default=None, ge=1, le=16)
    version: str = ""
    protocol_version: int = 0
    terraform_version: str = Field(default="", max_length=50)
    # The agent credential a previous process of this agent kept in its work root: with it,
    # a restarted process is the same agent and keeps its reservations.
    credential: str = ""
    warm_dirs: list[WarmDirReport] = []


class RegistrationReply(_Message):
    agent_id: int
    token: str
    pool: str
    heartbeat_interval: float
    claim_wait: float
    resumed: bool = False  # True: the same agent as before the restart; warm dirs kept
    release: list[int] = []  # warm dirs to delete: the server no longer reserves them


# --- heartbeat ---------------------------------------------------------------------------


class WarmDirReport(_Message):
    task: int
    plan_hash: str = ""


class ProviderCacheReport(_Message):
    """The agent's provider cache (agents_app/agent/providers.py), as its heartbeat reports it."""

    size_bytes: int = Field(default=0, ge=0)
    entries: int = Field(default=0, ge=0)
    hits: int = Field(default=0, ge=0)  # a job's provider found in the cache
    misses: int = Field(default=0, ge=0)  # installed into the cache for a job
    installs: int = Field(default=0, ge=0)  # packages unpacked and verified (one per miss)


class Heartbeat(_Message):
    warm_dirs: list[WarmDirReport] = []
    running_jobs: list[int] = []
    # Optional (None from an older agent, which the server then leaves as it was): the
    # provider cache's counters, and the workspaces whose warm plan dirs the agent holds
    # (a queued plan of one of them prefers this agent: plan affinity).
    provider_cache: ProviderCacheReport | None = None
    warm_plan_workspaces: list[int] | None = Field(default=None, max_length=10000)
    # The version of that list (the agent bumps it with every change): the server keeps the
    # newest it was sent, by a heartbeat or a job's result, whichever arrives last.
    warm_plans_version: int | None = Field(default=None, ge=0)


class CancelOrder(_Message):
    """Stop a job: SIGINT to terraform, then SIGKILL after `grace` seconds (None: the agent's
    own default, CANCEL_GRACE_SECONDS), or SIGKILL at once with `force`. The server repeats
    the order in every heartbeat until the job ends; the agent interrupts once per process
    (terraform exits at once, without saving state, on a second interrupt)."""

    id: int
    force: bool = False
    # A bound that fired sets it (the pool's plan or apply kill grace). Optional: an older
    # server sends none, an older agent ignores it.
    grace: float | None = Field(default=None, ge=0)


class HeartbeatReply(_Message):
    release: list[int] = []  # task ids whose warm dirs the agent should delete
    cancel: list[CancelOrder] = []
    heartbeat_interval: float


# --- jobs --------------------------------------------------------------------------------


class TaskRef(_Message):
    id: int
    workspace: int
    workspace_name: str
    operation: str
    plan_hash: str = ""


class StateBackend(_Message):
    address: str
    lock_address: str
    unlock_address: str
    username: str
    password: str


class Variables(_Message):
    terraform: dict[str, str] = {}
    env: dict[str, str] = {}


class PlanMode(enum.StrEnum):
    NORMAL = "normal"
    DESTROY = "destroy"  # terraform plan -destroy
    REFRESH_ONLY = "refresh_only"  # terraform plan -refresh-only


class PlanOptions(_Message):
    """How the plan job runs terraform plan (the apply applies that plan file as it is)."""

    mode: PlanMode = PlanMode.NORMAL
    targets: list[str] = []  # -target=ADDRESS each
    replace: list[str] = []  # -replace=ADDRESS each


class JobPayload(_Message):
    """What a claim (or a push) hands the agent."""

    id: int
    kind: JobKind
    fence: int
    task: TaskRef
    configuration_sha256: str
    # The configuration archive itself (base64) when it is small (jobs.INLINE_CONFIGURATION_BYTES):
    # no `GET configuration` round trip before init. Empty: fetch it. Either way the agent
    # checks it against configuration_sha256.
    configuration_b64: str = ""
    keep_dir: bool  # keep the dir after a plan: it becomes the run's warm reservation
    speculative: bool  # plan-only run: plan without locking the state
    cold_reason: str = ""
    # How the job came to this agent, when it is worth telling the user (e.g. an apply that
    # waited for the warmup running here): appended to the apply path's reason.
    note: str = ""
    variables: Variables
    state_backend: StateBackend
    # Values the agent must redact from everything it sends (the sensitive variables';
    # the state credential is redacted anyway). Optional: an older server sends none.
    sensitive_values: list[str] = []
    # Optional: an older server sends none (a normal plan).
    plan_options: PlanOptions = Field(default_factory=PlanOptions)
    # The platform's host as a `terraform_remote_state` (backend "remote") names it: the
    # agent points it at the server with the job's credential (agents_app/agent/remote_state.py).
    # Optional: an older server sends none (no remote state through the platform).
    tfe_hostname: str = ""
    # Send the plan's JSON with the plan (PlanUpload.json_gz_b64): policies govern the
    # workspace, the server checks the plan. Optional: an older server asks for none.
    plan_json: bool = False


class ClaimReply(_Message):
    """What a claim answers: up to `max` jobs (the agent's free slots), one per slot, and the
    cancel orders pushed for the agent's running jobs since its last poll (the same orders
    its heartbeat's answer repeats; an older server sends none, an older agent ignores them)."""

    jobs: list[JobPayload] = []
    cancel: list[CancelOrder] = []


class LogPost(_Message):
    seq: int = Field(ge=1)
    text: str = ""
    events: LogEvents = Field(default_factory=lambda: LogEvents())


class LogEvents(_Message):
    # The agent has the apply and is starting it: the run becomes `applying`.
    ack: bool = False
    apply_started_at: float | None = None  # unix time `terraform apply` started
    apply_path: ApplyPath | None = None
    apply_path_reason: str = ""


class PlanUpload(_Message):
    plan_b64: str
    sha256: str = Field(min_length=64, max_length=64)
    summary: dict = {}
    has_changes: bool
    terraform_version: str = ""
    # `terraform show -json` of the plan, gzipped, base64: sent when the job asked for it
    # (JobPayload.plan_json), for the server's policy check. Holds sensitive values in clear.
    json_gz_b64: str = ""


class CommandTime(_Message):
    """One terraform command a job ran, timed by the agent from its start to its exit (its
    sandbox's start included), in seconds since the epoch."""

    command: str = Field(min_length=1, max_length=40)  # terraform's subcommand: init, plan, show, apply
    started_at: float = Field(ge=0)
    ended_at: float = Field(ge=0)
    exit_code: int

    @model_validator(mode="after")
    def _ordered(self) -> CommandTime:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self


class JobResult(_Message):
    outcome: JobOutcome
    error: str = ""
    kept_dir: bool = False  # the agent kept the work dir (plan of an applyable run, warmup)
    # How terraform ran (bwrap or off); None from an agent that does not say.
    sandbox: SandboxMode | None = None
    # A plan job: warm (no init) or cold, and why. None from an agent that does not say.
    plan_start: PlanStart | None = None
    plan_start_reason: str = Field(default="", max_length=2000)
    # The job's init output became its workspace's warm plan dir on this agent; with it, the
    # agent's warm plan workspaces and their version (as in a heartbeat), recorded before
    # the run moves on: the workspace's next plan, queued the moment this one shows
    # planned, prefers this agent.
    warm_plan_kept: bool = False
    warm_plan_workspaces: list[int] | None = Field(default=None, max_length=10000)
    warm_plans_version: int | None = Field(default=None, ge=0)
    # The job's last log text (the post after the last one sent), stored with the result in
    # one transaction: no separate log post at the end of every job.
    log: LogPost | None = None
    # A plan job's plan, stored with its result in one transaction (else `POST plan` first).
    plan: PlanUpload | None = None
    # The terraform commands the job ran, in order, as the agent timed them (none from an
    # agent that does not say).
    commands: list[CommandTime] = Field(default_factory=list, max_length=20)


class FinishReply(_Message):
    keep_dir: bool  # keep the dir as the run's warm reservation (else delete it)
    # Jobs handed to this agent with the answer, to start as a claim's (version 4): the apply
    # of an auto-apply run confirmed with this plan's result, or an apply that waited for this
    # warmup, both assigned to the slot this job ran on. No push and no long-poll between a
    # plan's end and its apply's start; an agent that never gets this answer (its request
    # failed) never acknowledges the apply, which then goes back to the queue.
    jobs: list[JobPayload] = []


Registration.model_rebuild()
LogPost.model_rebuild()
JobResult.model_rebuild()
