"""Serializers of the user API: they parse and render, the services do the writes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.validators import RegexValidator
from django.db import IntegrityError, models, transaction
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_app.protocol import JobKind, PlanMode, PlanStart
from agents_app.redaction import plan_summary_masked, redact
from tasks_app.models import (
    ConfigurationVersion,
    Plan,
    StateVersion,
    Task,
    TaskEvent,
    Variable,
    Workspace,
)
from tasks_app.selectors import masked_values_for, ms_between, run_waiting_reason, run_warm_slot
from tasks_app.states import ApplyPath, Operation, RunStatus, WarmupStatus
from tasks_app.vcs.commit import run_commit, run_report

# The bound of a long-poll on a run (`?wait=`): a pipeline asks again after it.
RUN_WAIT_MAX_SECONDS = 60.0


class StrictBooleanField(serializers.BooleanField):
    """Only JSON true/false. DRF's BooleanField also takes "yes", "on", 1..., which hides typos
    such as `{"force": "flase"}` (a truthy string would be a silent force-cancel)."""

    def to_internal_value(self, data: Any) -> bool:
        if isinstance(data, bool):
            return data
        raise serializers.ValidationError(self.error_messages["invalid"].format(input=data), code="invalid")


class _OnlyStrings:
    """Only JSON strings: DRF's CharField turns 1 into "1", which would store a file whose
    content the user never wrote (and the schema says `string`)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, not {type(data).__name__}", code="invalid")
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictCharField(_OnlyStrings, serializers.CharField):
    pass


class StrictSlugField(_OnlyStrings, serializers.SlugField):
    pass


class StrictChoiceField(_OnlyStrings, serializers.ChoiceField):
    pass


class StrictModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.BooleanField: StrictBooleanField,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.SlugField: StrictSlugField,
    }
    serializer_choice_field = StrictChoiceField


@contextmanager
def unique_or_400(field: str, message: str) -> Iterator[None]:
    """Uniqueness checked in Python races with a concurrent insert of the same name; the
    database constraint decides, and the loser gets the same 400 instead of a 500."""
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction stays usable
            yield
    except IntegrityError as exc:
        raise serializers.ValidationError({field: message}) from exc


# Workspaces ---------------------------------------------------------------------------------


class WorkspaceSerializer(StrictModelSerializer):
    latest_configuration_version = serializers.SerializerMethodField()

    class Meta:
        model = Workspace
        fields = ["id", "name", "pool", "auto_apply", "locked", "terraform_version", "created_at",
                  "latest_configuration_version", "drift_schedule", "drift_timezone", "drift_next_at",
                  "health", "health_detail", "health_checked_at"]
        read_only_fields = ["id", "created_at", "drift_next_at", "health", "health_detail", "health_checked_at"]
        extra_kwargs = {
            "pool": {"required": False, "help_text": "default: IAC_DEFAULT_POOL, else the only pool you may use"},
            "drift_schedule": {"help_text": "drift checks: a 5-field cron expression ('0 6 * * *'), 'off', or "
                                            "empty for the site's IAC_DRIFT_SCHEDULE"},
            "drift_timezone": {"help_text": "the IANA time zone of drift_schedule"},
        }

    def create(self, validated_data: dict[str, Any]) -> Workspace:
        with unique_or_400("name", "a workspace with this name already exists"):
            return super().create(validated_data)

    def update(self, instance: Workspace, validated_data: dict[str, Any]) -> Workspace:
        with unique_or_400("name", "a workspace with this name already exists"):
            return super().update(instance, validated_data)

    def get_latest_configuration_version(self, ws: Workspace) -> int | None:
        # Annotated by the views' queryset (one query for a list); computed when missing.
        if hasattr(ws, "latest_cv_id"):
            return ws.latest_cv_id
        return ConfigurationVersion.objects.filter(workspace=ws).order_by("-id").values_list("id", flat=True).first()


class ConfigurationVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConfigurationVersion
        fields = ["id", "sha256", "size", "files", "created_at"]
        read_only_fields = fields


@extend_schema_field({
    "type": "object", "minProperties": 1,
    "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"},
    "propertyNames": {"minLength": 1, "pattern": "^[^\\u0000]*$"},
})
class NonEmptyFilesField(serializers.DictField):
    """file name -> file text; the configs service checks the names and the sizes."""


class ConfigurationFilesSerializer(serializers.Serializer):
    """The JSON form of an upload; paths and sizes are checked by the configs service."""

    files = NonEmptyFilesField(
        child=StrictCharField(allow_blank=True, trim_whitespace=False),
        help_text='file name -> file text, e.g. {"main.tf": "..."}',
    )


# Variables ----------------------------------------------------------------------------------

identifier = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*\Z",
    "must be an identifier: letters, digits and underscores, not starting with a digit",
)


@extend_schema_field({"type": "string", "nullable": True, "description": "null when the variable is sensitive"})
class VariableValueField(StrictCharField):
    """Readable for plain variables; a sensitive value reads back as null, never decrypted here."""

    def get_attribute(self, instance: Variable) -> str | None:
        return None if instance.sensitive else instance.plain_value


class VariableSerializer(StrictModelSerializer):
    value = VariableValueField(allow_blank=True, trim_whitespace=False)

    class Meta:
        model = Variable
        fields = ["id", "key", "value", "category", "sensitive"]
        read_only_fields = ["id"]
        # The model's unique constraint includes `workspace`, which comes from the URL, so DRF
        # cannot build its validator: the variables service checks it (services/variables.py),
        # with the other rules that need the database. This serializer checks each field's shape.
        validators: list = []
        extra_kwargs = {"key": {"validators": [identifier]}}


# Runs ---------------------------------------------------------------------------------------


# A resource address for -target / -replace: one argv element (no shell), so it only must not
# read as an option (a leading "-") nor hold control characters; terraform checks the rest.
ADDRESS_PATTERN = r"^[^\-\x00-\x1f][^\x00-\x1f]*$"


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": 1000,
                      "pattern": "^[^\\-\\u0000-\\u001f][^\\u0000-\\u001f]*$",
                      "description": "a resource address, e.g. module.net.aws_subnet.a[0]"})
class AddressField(StrictCharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=1000, trim_whitespace=False, **kwargs)
        self.validators.append(RegexValidator(ADDRESS_PATTERN.replace("$", "\\Z"),
                                              "must be a resource address (not an option, no control characters)"))


class RunCreateSerializer(serializers.Serializer):
    # No `message`: a run's message is the platform's word on it ("discarded by …", a stale
    # plan); a client that could set it could forge one. Unknown fields are ignored.
    operation = StrictChoiceField(choices=Operation.choices)
    mode = StrictChoiceField(choices=[(m.value, m.value) for m in PlanMode], default=PlanMode.NORMAL,
                             help_text="normal; destroy (terraform plan -destroy); refresh_only (-refresh-only)")
    targets = serializers.ListField(child=AddressField(), required=False, default=list, max_length=100,
                                    help_text="terraform plan -target=… addresses")
    replace = serializers.ListField(child=AddressField(), required=False, default=list, max_length=100,
                                    help_text="terraform plan -replace=… addresses (normal mode only)")


class RunListQuerySerializer(serializers.Serializer):
    status = serializers.MultipleChoiceField(
        choices=RunStatus.choices, required=False,
        help_text="only runs in one of these statuses (repeat the parameter: ?status=planned&status=errored)",
    )
    needs_attention = serializers.BooleanField(
        required=False, default=False,
        help_text="only runs waiting for a person: apply_pending (Confirm or Discard)",
    )


class RunWaitQuerySerializer(serializers.Serializer):
    wait = serializers.FloatField(
        required=False, min_value=0, max_value=RUN_WAIT_MAX_SECONDS, default=0,
        help_text=f"long-poll: answer once the run is in one of `until` (or, without `until`, once its status "
                  f"changes), or after this many seconds (at most {RUN_WAIT_MAX_SECONDS:g}), whichever comes first",
    )
    until = serializers.MultipleChoiceField(
        choices=RunStatus.choices, required=False,
        help_text="the statuses `wait` waits for (repeat the parameter: ?until=apply_pending&until=errored)",
    )


class RunConfirmSerializer(serializers.Serializer):
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)


class RunCancelSerializer(serializers.Serializer):
    force = StrictBooleanField(
        required=False, default=False, help_text="stop terraform with SIGKILL at once instead of SIGINT first"
    )
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)


class TaskEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["from_status", "to_status", "message", "actor", "created_at"]
        read_only_fields = fields



class CachedFieldsMixin:
    """A ModelSerializer that builds its fields from the model once per class, not on every
    instance: DRF introspects the model for each of them (about 0.5 ms for a run's 30 fields,
    on every run the API returns, Confirm's answer and each check of a run long-poll among
    them). Each instance gets its own deep copy, as DRF copies declared fields."""

    _fields_template: dict | None = None

    def get_fields(self) -> dict:
        cls = type(self)
        if cls.__dict__.get("_fields_template") is None:
            cls._fields_template = super().get_fields()  # type: ignore[misc]
        return copy.deepcopy(cls._fields_template)


class RunSerializer(CachedFieldsMixin, serializers.ModelSerializer):
    """A run as the run page shows it. The views load it with select_related / defer so a list
    is a fixed number of queries and the (large, encrypted) plan bytes are never read."""

    plan_summary = serializers.SerializerMethodField()
    warmup_agent = serializers.SerializerMethodField()
    confirm_to_apply_start_ms = serializers.SerializerMethodField()
    confirm_to_first_log_ms = serializers.SerializerMethodField()
    waiting_reason = serializers.SerializerMethodField()
    sandbox = serializers.SerializerMethodField()
    plan_start = serializers.SerializerMethodField()
    plan_start_reason = serializers.SerializerMethodField()
    apply_path = serializers.SerializerMethodField()
    plan_targets = serializers.ListField(child=serializers.CharField(), read_only=True)
    plan_replace = serializers.ListField(child=serializers.CharField(), read_only=True)
    events = TaskEventSerializer(many=True, read_only=True)
    commit = serializers.SerializerMethodField()
    vcs_report = serializers.SerializerMethodField()
    variables = serializers.ListField(
        source="variable_sources", child=serializers.DictField(), read_only=True,
        help_text="every variable the plan was given and where its value came from: source run, workspace or "
                  "variable_set (then variable_set names it, with its scope and priority); never a value")
    policy_check = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "id", "workspace", "operation", "plan_mode", "plan_targets", "plan_replace",
            "status", "message", "created_at", "finished_at",
            "plan_hash", "has_changes", "plan_summary", "terraform_version",
            "warmup_status", "warmup_agent", "warmup_at", "warmup_expires_at", "warmup_retry_count", "warmup_message",
            "confirmed_at", "apply_started_at", "first_apply_log_at", "apply_path", "apply_path_reason",
            "confirm_to_apply_start_ms", "confirm_to_first_log_ms", "waiting_reason", "sandbox",
            "plan_start", "plan_start_reason", "events", "commit", "vcs_report", "variables", "triggered_by",
            "policy_status", "policy_check",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_policy_check(self, task: Task) -> dict | None:
        """Each policy's result ({policy_set, policy, level, passed, deny, warn, error}) and the
        override, once the check ran; None for a run no policy governs."""
        if not task.policy_status:
            return None
        check = getattr(task, "policy_check", None)  # reverse one-to-one: AttributeError when absent
        if check is None:
            return {"results": [], "finished_at": None}
        return {
            "results": check.results, "finished_at": check.finished_at, "duration_ms": check.duration_ms,
            "overridden_by": check.overridden_by.username if check.overridden_by else None,
            "overridden_at": check.overridden_at, "override_reason": check.override_reason,
        }

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_plan_summary(self, task: Task) -> dict | None:
        plan: Plan | None = getattr(task, "plan", None)  # reverse one-to-one: AttributeError when absent
        return plan.summary if plan is not None else None

    # The fields that carry what a configuration or a person wrote: masked for the caller.
    MASKED_TEXT = ("message", "warmup_message", "apply_path_reason", "plan_start_reason", "waiting_reason")

    def _masked(self, task: Task) -> list[str] | None:
        """The values to mask for the caller (selectors.masked_values_for), once per workspace
        and answer; a serializer given no request masks them (nobody known may see them)."""
        cache: dict[int, list[str] | None] = self.context.setdefault("masked_values", {})
        if task.workspace_id not in cache:
            request = self.context.get("request")
            cache[task.workspace_id] = masked_values_for(getattr(request, "user", None), task.workspace)
        return cache[task.workspace_id]

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = super().to_representation(instance)
        masked = self._masked(instance)
        if masked:
            data["plan_summary"] = plan_summary_masked(data["plan_summary"], masked)
            for name in self.MASKED_TEXT:
                if isinstance(data.get(name), str):
                    data[name] = redact(data[name], masked)
            data["events"] = [{**event, "message": redact(event["message"], masked)} for event in data["events"]]
        return data

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_commit(self, task: Task) -> dict | None:
        """The commit the run is (repository, branch, sha, message, author, pull request)."""
        return run_commit(task)

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_vcs_report(self, task: Task) -> dict | None:
        """Reporting the run back to the forge: what was sent, the last failure, the next try."""
        return run_report(task)

    def get_warmup_agent(self, task: Task) -> str | None:
        """The agent holding the run's warm dir, or running its warmup."""
        if task.warmup_status not in (WarmupStatus.READY, WarmupStatus.WARMING):
            return None
        slot = run_warm_slot(task.id)
        return slot.agent.name if slot is not None else None

    @extend_schema_field({"type": "string", "enum": [p.value for p in ApplyPath], "nullable": True,
                          "description": "how the apply got its work dir; null before an apply started"})
    def get_apply_path(self, task: Task) -> str | None:
        return task.apply_path or None

    def get_confirm_to_apply_start_ms(self, task: Task) -> int | None:
        return ms_between(task.confirmed_at, task.apply_started_at)

    def get_confirm_to_first_log_ms(self, task: Task) -> int | None:
        return ms_between(task.confirmed_at, task.first_apply_log_at)

    @extend_schema_field({
        "type": "string", "nullable": True,
        "description": "why the run waits, in words (e.g. \"queued: no agent of pool 'default' is online (gives up "
                       "at 12:33:00)\", \"pending: run #41 (apply_pending) holds the workspace\", \"apply_pending: "
                       "waiting for confirmation (warm on local-1 slot 2 until 13:05:00)\"); null when it does not "
                       "wait (it runs, or it is final)",
    })
    def get_waiting_reason(self, task: Task) -> str | None:
        return run_waiting_reason(task)

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
    def get_sandbox(self, task: Task) -> dict[str, str]:
        """How terraform ran for each kind of job of the run ({"plan": "bwrap", "apply":
        "off"}; the latest job of a kind wins), as the agents reported it."""
        return {kind: sandbox for kind, sandbox, _, _ in self._jobs(task) if sandbox}

    def _jobs(self, task: Task) -> list[tuple[str, str, str, str]]:
        """(kind, sandbox, plan_start, plan_start_reason) of the run's jobs, oldest first: one
        query for the fields that read them."""
        if not hasattr(task, "_job_facts"):
            task._job_facts = list(task.jobs.order_by("id").values_list("kind", "sandbox", "plan_start",
                                                                        "plan_start_reason"))
        return task._job_facts


    def _plan_start(self, task: Task) -> tuple[str, str]:
        plans = [(start, reason) for kind, _, start, reason in self._jobs(task) if kind == JobKind.PLAN and start]
        return plans[-1] if plans else ("", "")

    @extend_schema_field({"type": "string", "enum": [p.value for p in PlanStart], "nullable": True,
                          "description": "how the (latest) plan got its initialized dir: warm (the workspace's "
                                         "checked init output on its agent, no init) or cold; null before it ended"})
    def get_plan_start(self, task: Task) -> str | None:
        return self._plan_start(task)[0] or None

    def get_plan_start_reason(self, task: Task) -> str:
        """Why the plan started warm or cold."""
        return self._plan_start(task)[1]


class RunLogSerializer(serializers.Serializer):
    text = serializers.CharField()
    next_offset = serializers.IntegerField()
    complete = serializers.BooleanField(help_text="the run is final: no more log will come")
    status = serializers.ChoiceField(choices=RunStatus.choices, help_text="the run's status when the log was read")


class RunLogQuerySerializer(serializers.Serializer):
    offset = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0, help_text="byte offset to read from")
    wait = serializers.FloatField(
        required=False, min_value=0, max_value=RUN_WAIT_MAX_SECONDS, default=0,
        help_text="follow: when nothing lies past `offset` yet and the run is not final, answer once more log "
                  f"comes, the run ends, or after this many seconds (at most {RUN_WAIT_MAX_SECONDS:g})",
    )
    until = serializers.MultipleChoiceField(
        choices=RunStatus.choices, required=False,
        help_text="`wait` also answers once the run is in one of these statuses (repeat the parameter: "
                  "?until=apply_pending&until=errored): a follower learns at once that no more log comes "
                  "until someone acts",
    )


# State --------------------------------------------------------------------------------------


class OutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    sensitive = serializers.BooleanField(help_text="a sensitive output's value is never shown: null")
    type = serializers.JSONField(allow_null=True, help_text="terraform's type of the value, e.g. \"string\"")
    value = serializers.JSONField(allow_null=True, help_text="null when sensitive")


class StateVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = StateVersion
        # Never the state itself: it holds secrets (resource attributes, outputs).
        fields = ["id", "serial", "lineage", "sha256", "size", "created_at", "task"]
        read_only_fields = fields

    def to_representation(self, instance: StateVersion) -> dict[str, Any]:
        # The lineage is whatever the pushed state says: masked like any text a user wrote
        # (`masked` in the context: see selectors.masked_values_for).
        data = super().to_representation(instance)
        masked = self.context.get("masked")
        if masked:
            data["lineage"] = redact(data["lineage"], masked)
        return data

