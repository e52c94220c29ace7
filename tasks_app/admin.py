"""Admin for the run domain.

Rows that record what happened (events, audit, logs, jobs, plans, state) are read-only:
hand-editing them would break the invariants the services keep (one apply per confirm,
fencing tokens, plan hashes). Run state changes go through the services, here as actions.
Secrets never reach a form: archive / plan / state bytes are excluded, and a sensitive
variable's value is write-only.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from iacplatform.errors import Invalid, PlatformError
from iacplatform.permissions import Action, can
from tasks_app.dispatch.models import Job
from tasks_app.models import (
    ApiToken,
    AuditEvent,
    ConfigurationUpload,
    ConfigurationVersion,
    LogChunk,
    Plan,
    Policy,
    PolicyCheck,
    PolicySet,
    StateLock,
    StateVersion,
    SweepHeartbeat,
    Task,
    TaskEvent,
    Variable,
    Workspace,
    WorkspaceAccess,
)
from tasks_app.services.audit import audit_record
from tasks_app.services.policies import check_policies, policy_set_create, policy_set_delete, policy_set_update
from tasks_app.services.runs import run_cancel, runs_start_next
from tasks_app.services.state import state_unlock
from tasks_app.services.variables import variable_check, variable_create, variable_delete, variable_update
from tasks_app.vcs.connections import (
    follow_values,
    vcs_connection_create,
    vcs_connection_update,
    workspace_follow_repository,
)
from tasks_app.vcs.models import HeldPullRequest, PullRequestComment, VcsConnection, VcsReport, WebhookDelivery


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable, never added, changed or deleted by hand (a deleted state version or event
    is history lost; a deleted run or job orphans what its agent is doing)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


VCS_FORM_FIELDS = ["vcs_connection", "vcs_repository", "vcs_branch", "vcs_working_directory", "vcs_trigger_patterns",
                   "vcs_tag_regex", "vcs_keep_pending_runs"]


class WorkspaceAdminForm(forms.ModelForm):
    """The repository a workspace follows is checked by the service the API uses
    (tasks_app/vcs/connections.py follow_values) and written by it, audited (save_model)."""

    class Meta:
        model = Workspace
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if set(VCS_FORM_FIELDS) & set(self.changed_data):
            conn = data.get("vcs_connection")
            try:
                follow_values(connection=conn.name if conn else None, repository=data.get("vcs_repository") or "",
                              branch=data.get("vcs_branch") or "",
                              working_directory=data.get("vcs_working_directory") or "",
                              trigger_patterns=data.get("vcs_trigger_patterns") or [],
                              tag_regex=data.get("vcs_tag_regex") or "")
            except Invalid as exc:
                for field, errors in exc.fields.items():
                    self.add_error(f"vcs_{field}" if f"vcs_{field}" in self.fields else None, errors)
                if not exc.fields:
                    raise forms.ValidationError(str(exc)) from exc
            except PlatformError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data


class WorkspaceAccessInline(admin.TabularInline):
    model = WorkspaceAccess
    extra = 0


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    """The admin asks the same `can` as every other door (site admins have `admin` on every
    workspace; a staff member without it sees nothing to change)."""

    list_display = ["name", "pool", "auto_apply", "locked", "terraform_version", "health", "created_at"]
    list_filter = ["pool", "auto_apply", "locked", "health"]
    search_fields = ["name"]
    inlines = [WorkspaceAccessInline]
    form = WorkspaceAdminForm
    # Changed through the TFE API's relationships/remote-state-consumers, which audits it; run
    # triggers and drift schedules through the REST API (a cycle check, a cron and time zone
    # check, an audit record); health only by the drift checks; the last commit seen on the
    # branch is the webhooks' record.
    readonly_fields = ["remote_state_consumers", "vcs_last_sha", "vcs_seen_delivery_id", "vcs_last_delivery_id",
                       "vcs_polled_at", "trigger_sources", "drift_schedule", "drift_timezone", "drift_next_at",
                       "health", "health_detail", "health_checked_at"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or can(request.user, Action.SETTINGS, obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or can(request.user, Action.DELETE, obj))

    def save_model(self, request: HttpRequest, obj: Workspace, form: forms.ModelForm, change: bool) -> None:
        follow = None
        if change and set(VCS_FORM_FIELDS) & set(form.changed_data):
            conn = obj.vcs_connection
            follow = {"connection": conn.name if conn else None, "repository": obj.vcs_repository,
                      "branch": obj.vcs_branch, "working_directory": obj.vcs_working_directory,
                      "trigger_patterns": obj.vcs_trigger_patterns, "tag_regex": obj.vcs_tag_regex,
                      "keep_pending_runs": obj.vcs_keep_pending_runs}
            # Written by the service below (checked, audited), not by the form's save.
            for name in VCS_FORM_FIELDS:
                setattr(obj, name, form.initial.get(name) if name != "vcs_connection" else
                        VcsConnection.objects.filter(id=form.initial.get(name)).first())
        super().save_model(request, obj, form, change)
        if follow is not None:
            workspace_follow_repository(workspace=obj, actor=request.user, **follow)
        if change and "locked" in form.changed_data:
            # Lock changes are audited wherever they are made.
            audit_record(actor=request.user, action="workspace.lock" if obj.locked else "workspace.unlock", obj=obj)
            if not obj.locked:
                # Runs that waited on the lock start now, not at the next unrelated event.
                workspace_id = obj.id
                transaction.on_commit(lambda: runs_start_next(workspace_id=workspace_id))


@admin.register(ConfigurationVersion)
class ConfigurationVersionAdmin(ReadOnlyAdmin):
    list_display = ["id", "workspace", "size", "sha256", "created_by", "created_at"]
    list_filter = ["workspace"]
    # The archive bytes are not shown: they are large and may hold secrets.
    fields = ["workspace", "files", "sha256", "size", "created_by", "created_at"]
    readonly_fields = fields


@admin.register(ConfigurationUpload)
class ConfigurationUploadAdmin(ReadOnlyAdmin):
    """Configuration versions announced through the TFE API, before and after their upload."""

    list_display = ["id", "workspace", "speculative", "configuration_version", "error", "created_by", "created_at"]
    list_filter = ["workspace"]


class VariableAdminForm(forms.ModelForm):
    """The admin's door to variables, with the API's rules: the key is checked by the same
    service function (a refused environment variable name, a key taken), and the change is
    written by the variables service, which audits it (VariableAdmin)."""

    # Write-only for sensitive variables: the form never carries the stored secret back out.
    value = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="For a sensitive variable, leave blank to keep the current value.",
    )

    class Meta:
        model = Variable
        fields = ["workspace", "key", "category", "sensitive"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.instance.sensitive:
            self.fields["value"].initial = self.instance.plain_value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.instance.pk and self.instance.sensitive and "sensitive" in data and not data["sensitive"]:
            self.add_error("sensitive", "a sensitive variable cannot be made non-sensitive: delete it and create "
                                        "it again")
        workspace = data.get("workspace") or (self.instance.workspace if self.instance.pk else None)
        if workspace is not None and data.get("key") and data.get("category"):
            try:
                variable_check(workspace=workspace, key=data["key"], category=data["category"],
                               exclude=self.instance.pk)
            except Invalid as exc:
                for field, errors in exc.fields.items():
                    for error in errors:
                        self.add_error(field if field in self.fields else None, error)
        return data

    def validate_unique(self) -> None:
        """variable_check (clean) answers a taken key, in the API's words."""


@admin.register(Variable)
class VariableAdmin(admin.ModelAdmin):
    form = VariableAdminForm
    list_display = ["key", "workspace", "category", "sensitive", "shown_value"]
    list_filter = ["category", "sensitive", "workspace"]
    search_fields = ["key"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A variable stays in its workspace (as through the API): another workspace's
        # variables are created there.
        return ["workspace"] if obj is not None else []

    @admin.display(description="value")
    def shown_value(self, obj: Variable) -> str:
        return "sensitive" if obj.sensitive else obj.plain_value

    def save_model(self, request: HttpRequest, obj: Variable, form: forms.ModelForm, change: bool) -> None:
        """Written by the variables service, as the API writes (its checks again, its audit
        record), not by the form: `obj` only carries the form's fields."""
        data = form.cleaned_data
        value = data.get("value", "")
        if change:
            stored = Variable.objects.select_related("workspace").get(pk=obj.pk)
            changes: dict[str, Any] = {"key": data["key"], "category": data["category"],
                                       "sensitive": data["sensitive"]}
            if value or not data["sensitive"]:
                changes["value"] = value  # blank for a sensitive one: the value is kept
            saved = variable_update(variable=stored, actor=request.user, changes=changes)
        else:
            saved = variable_create(workspace=data["workspace"], key=data["key"], value=value, actor=request.user,
                                    category=data["category"], sensitive=data["sensitive"])
        obj.pk = saved.pk
        obj.id = saved.id

    def delete_model(self, request: HttpRequest, obj: Variable) -> None:
        variable_delete(variable=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Variable]) -> None:
        for variable in queryset.select_related("workspace"):
            variable_delete(variable=variable, actor=request.user)


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    fields = ["created_at", "from_status", "to_status", "actor", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "workspace",
        "operation",
        "status",
        "warmup_status",
        "apply_path",
        "created_at",
    ]
    list_filter = ["status", "warmup_status", "apply_path", "operation", "workspace"]
    search_fields = ["id", "workspace__name", "plan_hash"]
    list_select_related = ["workspace"]
    inlines = [TaskEventInline]
    actions = ["cancel_runs"]

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset:
            try:
                run_cancel(task_id=task.id, actor=request.user, comment="cancelled from the admin")
            except PlatformError as exc:
                self.message_user(request, f"run {task.id}: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"run {task.id}: cancel requested", messages.SUCCESS)


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "from_status", "to_status", "actor", "created_at"]
    list_filter = ["to_status"]
    search_fields = ["task__id", "actor", "message"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "kind", "status", "agent", "target_agent", "fence", "created_at", "finished_at"]
    list_filter = ["kind", "status", "pool"]
    search_fields = ["task__id"]
    list_select_related = ["task", "agent", "target_agent"]
    # The credential hash authenticates the running job; it is no one's business here.
    exclude = ["credential_hash"]


@admin.register(LogChunk)
class LogChunkAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "job", "seq", "offset", "created_at"]
    search_fields = ["task__id"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Plan)
class PlanAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "sha256", "size", "created_at"]
    search_fields = ["task__id", "sha256"]
    exclude = ["encrypted_data", "encrypted_json"]


@admin.register(StateVersion)
class StateVersionAdmin(ReadOnlyAdmin):
    list_display = ["id", "workspace", "serial", "lineage", "sha256", "size", "task", "created_at"]
    list_filter = ["workspace"]
    exclude = ["encrypted_data"]


@admin.register(StateLock)
class StateLockAdmin(ReadOnlyAdmin):
    """Deleting a row here is a force-unlock of the workspace state."""

    list_display = ["workspace", "lock_id", "created_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The one read-only row that may be deleted: that is how the admin force-unlocks.
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def delete_model(self, request: HttpRequest, obj: StateLock) -> None:
        # Through the state service, as the backend's force-unlock: its audit record names
        # the holder and the lock. (The admin is for site admins: `admin` everywhere.)
        state_unlock(workspace=obj.workspace, lock_id=obj.lock_id, actor=request.user,
                     may_force=can(request.user, Action.FORCE_UNLOCK, obj.workspace))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[StateLock]) -> None:
        for lock in queryset.select_related("workspace"):
            self.delete_model(request, lock)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "actor_label", "action", "object_type", "object_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor_label", "action", "object_id"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SweepHeartbeat)
class SweepHeartbeatAdmin(ReadOnlyAdmin):
    # When the control loop last completed a sweep (read by /healthz/ready).
    list_display = ["id", "finished_at"]


@admin.register(WorkspaceAccess)
class WorkspaceAccessAdmin(admin.ModelAdmin):
    list_display = ["workspace", "team", "level"]
    list_filter = ["level", "team"]
    list_select_related = ["workspace", "team"]

    def save_model(self, request: HttpRequest, obj: WorkspaceAccess, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_record(actor=request.user, action="access.set", obj=obj.workspace,
                     data={"team": obj.team.name, "level": obj.level})

    def delete_model(self, request: HttpRequest, obj: WorkspaceAccess) -> None:
        audit_record(actor=request.user, action="access.remove", obj=obj.workspace, data={"team": obj.team.name})
        super().delete_model(request, obj)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their users (shown once); a site admin can see and revoke
    (delete) anyone's, never read one."""

    list_display = ["name", "user", "token_key", "created", "last_used_at", "expiry"]
    list_select_related = ["user"]
    search_fields = ["name", "user__username"]
    exclude = ["digest"]
    readonly_fields = ["name", "user", "token_key", "created", "last_used_at", "expiry"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        audit_record(actor=request.user, action="token.revoke", obj=obj.user, data={"name": obj.name, "key": obj.token_key})
        super().delete_model(request, obj)


class VcsConnectionAdminForm(forms.ModelForm):
    """A new connection, made by the service the API uses (checked URLs, encrypted
    credentials, audited). The credentials are write-only: never shown again."""

    token = forms.CharField(required=False, strip=False, widget=forms.PasswordInput(render_value=False))
    ssh_key = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"autocomplete": "off"}))
    webhook_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                     help_text="blank: one is generated and shown once")
    app_id = forms.CharField(required=False, max_length=100, label="GitHub App id",
                             help_text="GitHub, instead of a token: the App's id (or client id)")
    app_private_key = forms.CharField(required=False, strip=False, label="GitHub App private key",
                                      widget=forms.Textarea(attrs={"autocomplete": "off"}),
                                      help_text="the PEM file GitHub generated; never shown again")
    app_installation_id = forms.IntegerField(required=False, min_value=1, label="GitHub App installation id")

    class Meta:
        model = VcsConnection
        fields = ["name", "kind", "url", "api_url", "poll_interval_seconds", "trusted_authors"]


class VcsConnectionCredentialForm(forms.Form):
    """A connection's credential changed through the service the API's PATCH uses: blank
    fields keep what is stored (write-only: nothing is shown). A token replaces a GitHub App's
    credentials; App credentials replace the token."""

    token = forms.CharField(required=False, strip=False, widget=forms.PasswordInput(render_value=False),
                            help_text="blank: unchanged")
    app_id = forms.CharField(required=False, max_length=100, label="GitHub App id", help_text="blank: unchanged")
    app_private_key = forms.CharField(required=False, strip=False, label="GitHub App private key",
                                      widget=forms.Textarea(attrs={"autocomplete": "off"}),
                                      help_text="blank: the stored key is kept")
    app_installation_id = forms.IntegerField(required=False, min_value=1, label="GitHub App installation id",
                                             help_text="blank: unchanged")


class VcsConnectionChangeForm(VcsConnectionCredentialForm, forms.ModelForm):
    class Meta:
        model = VcsConnection
        fields: list[str] = []


@admin.register(VcsConnection)
class VcsConnectionAdmin(admin.ModelAdmin):
    """Site admins only (staff); added here or through the API. Afterwards only the
    credential changes (a rotated token or App key, a token replaced by a GitHub App): a
    changed URL is a new connection."""

    list_display = ["name", "kind", "url", "api_url", "poll_interval_seconds", "refused_deliveries", "created_at"]
    CREDENTIAL_FIELDS = ["token", "app_id", "app_private_key", "app_installation_id"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = VcsConnectionAdminForm if obj is None else VcsConnectionChangeForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["name", "kind", "url", "api_url", "github_app_id", "github_app_installation_id",
                "poll_interval_seconds", "trusted_authors", "refused_deliveries", "created_at"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["name", "kind", "url", "api_url", "token", "ssh_key", "app_id", "app_private_key",
                    "app_installation_id", "webhook_secret", "poll_interval_seconds", "trusted_authors"]
        return [*self.get_readonly_fields(request, obj), *self.CREDENTIAL_FIELDS]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff) and super().has_change_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_staff)

    def save_model(self, request: HttpRequest, obj: VcsConnection, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            given = {k: data[k] for k in self.CREDENTIAL_FIELDS if data.get(k) not in (None, "")}
            if not given:
                return
            try:
                vcs_connection_update(actor=request.user, connection_id=obj.pk, **given)
            except PlatformError as exc:
                messages.error(request, f"Credential not changed: {exc}")
            return
        try:
            made, secret = vcs_connection_create(
                actor=request.user, name=data["name"], kind=data["kind"], url=data["url"],
                api_url=data.get("api_url") or "", token=data.get("token") or "", ssh_key=data.get("ssh_key") or "",
                webhook_secret=data.get("webhook_secret") or "",
                poll_interval_seconds=data.get("poll_interval_seconds") or 0,
                trusted_authors=data.get("trusted_authors") or [], app_id=data.get("app_id") or "",
                app_private_key=data.get("app_private_key") or "",
                app_installation_id=data.get("app_installation_id"))
        except PlatformError as exc:
            messages.error(request, f"Connection not created: {exc}")
            return
        obj.pk = made.pk
        if secret:
            messages.warning(request, f"Webhook secret for {made.name} (shown once): {secret}")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "connection", "event", "delivery_id", "received_at", "processed_at", "attempts", "result"]
    list_filter = ["connection", "event"]
    exclude = ["payload"]


@admin.register(VcsReport)
class VcsReportAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "held", "sent_status", "attempts", "next_attempt_at", "last_error", "last_sent_at"]


@admin.register(HeldPullRequest)
class HeldPullRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "workspace", "number", "sha", "reason", "allowed_run", "created_at"]


@admin.register(PullRequestComment)
class PullRequestCommentAdmin(ReadOnlyAdmin):
    list_display = ["id", "connection", "repository", "number", "workspace", "comment_id"]


# Workflows across workspaces (tasks_app/workflows/). Viewable here; every change goes through
# the REST API's services, which check who may attach a set's secrets where and audit it.
from tasks_app.workflows.models import (  # noqa: E402
    NotificationAttempt,
    NotificationDelivery,
    NotificationDestination,
    VariableSet,
    VariableSetVariable,
)
from tasks_app.workflows.notifications import (  # noqa: E402
    notification_destination_create,
    notification_destination_delete,
    notification_destination_update,
)
from tasks_app.workflows.variable_sets import (  # noqa: E402
    set_variable_create,
    set_variable_delete,
    set_variable_update,
    variable_set_attach,
    variable_set_create,
    variable_set_delete,
    variable_set_detach,
    variable_set_update,
)


class _DryRun(Exception):
    """Ends a service call's dry run (service_problems): its writes are rolled back."""


def service_problems(form: forms.Form, write: Any) -> None:
    """Run `write` (the service call save_model will make) in a savepoint that is rolled
    back: what the service refuses (a name taken, who may own what, a bad URL) becomes the
    form's errors, in the API's words, and nothing of the try is kept (nor audited)."""
    try:
        with transaction.atomic():
            write()
            raise _DryRun
    except _DryRun:
        pass
    except Invalid as exc:
        if not exc.fields:
            form.add_error(None, str(exc))
        for field, problems in exc.fields.items():
            for problem in problems:
                form.add_error(field if field in form.fields else None, problem)
    except PlatformError as exc:  # Forbidden, Conflict, NotFound
        form.add_error(None, str(exc))


class ServiceAdmin(admin.ModelAdmin):
    """An admin whose form writes through the model's service (`form.write(actor)`, checked
    first by service_problems in the form's clean) and whose deletes go through
    `delete_through_service`: the API's rules and audit records, from the admin."""

    delete_related: tuple[str, ...] = ()  # what delete_through_service reads of each row

    def delete_through_service(self, obj: Any, actor: Any) -> None:
        raise NotImplementedError

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.actor = request.user  # the service's checks (service_problems) are the acting user's
        return form

    def save_model(self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool) -> None:
        saved = form.write(request.user)
        obj.pk = saved.pk
        obj.id = saved.id

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_through_service(obj, request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset.select_related(*self.delete_related):
            self.delete_through_service(obj, request.user)


class VariableSetAdminForm(forms.ModelForm):
    """The admin's door to variable sets, with the API's rules: written (and checked, and
    audited) by tasks_app/workflows/variable_sets.py; the workspaces a set of scope
    'workspaces' is attached to by its attach and detach."""

    class Meta:
        model = VariableSet
        fields = ["name", "description", "scope", "priority", "team", "workspaces"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            service_problems(self, lambda: self.write(self.actor))
        return data

    def write(self, actor: Any) -> VariableSet:
        data = self.cleaned_data
        if self.instance.pk:
            stored = VariableSet.objects.select_related("team").get(pk=self.instance.pk)
            changes = {k: data[k] for k in ("name", "description", "scope", "priority") if data[k] != getattr(stored, k)}
            variable_set = variable_set_update(variable_set=stored, actor=actor, changes=changes) if changes else stored
        else:
            variable_set = variable_set_create(actor=actor, name=data["name"], scope=data["scope"],
                                               priority=data["priority"], description=data["description"],
                                               team=data["team"])
        wanted = set(data["workspaces"])
        attached = set(variable_set.workspaces.all())
        for workspace in sorted(wanted - attached, key=lambda w: w.id):
            variable_set_attach(variable_set=variable_set, workspace=workspace, actor=actor)
        for workspace in sorted(attached - wanted, key=lambda w: w.id):
            variable_set_detach(variable_set=variable_set, workspace=workspace, actor=actor)
        return variable_set

    def validate_unique(self) -> None:
        """The service answers a taken name, in the API's words."""


class VariableSetVariableInline(admin.TabularInline):
    """A set's variables at a glance; each is added and changed on its own page (the value is
    write-only there), through the set's service."""

    model = VariableSetVariable
    fields = ["key", "category", "sensitive", "shown_value"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="value")
    def shown_value(self, obj: VariableSetVariable) -> str:
        return "sensitive" if obj.sensitive else obj.plain_value


@admin.register(VariableSet)
class VariableSetAdmin(ServiceAdmin):
    form = VariableSetAdminForm
    list_display = ["name", "scope", "priority", "team", "created_at"]
    list_filter = ["scope", "priority"]
    filter_horizontal = ["workspaces"]
    inlines = [VariableSetVariableInline]
    delete_related = ("team",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["team"] if obj is not None else []  # who owns a set does not change (as in the API)

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        """The service attached and detached the workspaces (save_model); the inline's rows
        are read-only (each variable has its own page), so its formset saves nothing."""
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_through_service(self, obj: VariableSet, actor: Any) -> None:
        variable_set_delete(variable_set=obj, actor=actor)


class VariableSetVariableAdminForm(forms.ModelForm):
    """A set's variable, written by the set's service (its key rules, its owner's rights,
    the audit); the value is write-only for a sensitive one."""

    value = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2}),
                            help_text="For a sensitive variable, leave blank to keep the current value.")

    class Meta:
        model = VariableSetVariable
        fields = ["variable_set", "key", "category", "sensitive"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.instance.sensitive:
            self.fields["value"].initial = self.instance.plain_value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            service_problems(self, lambda: self.write(self.actor))
        return data

    def write(self, actor: Any) -> VariableSetVariable:
        data = self.cleaned_data
        value = data.get("value", "")
        if self.instance.pk:
            stored = VariableSetVariable.objects.select_related("variable_set__team").get(pk=self.instance.pk)
            changes: dict[str, Any] = {"key": data["key"], "category": data["category"], "sensitive": data["sensitive"]}
            if value or not data["sensitive"]:
                changes["value"] = value  # blank for a sensitive one: the value is kept
            return set_variable_update(variable=stored, actor=actor, changes=changes)
        return set_variable_create(variable_set=data["variable_set"], actor=actor, key=data["key"], value=value,
                                   category=data["category"], sensitive=data["sensitive"])

    def validate_unique(self) -> None:
        """The service answers a taken key, in the API's words."""


@admin.register(VariableSetVariable)
class VariableSetVariableAdmin(ServiceAdmin):
    form = VariableSetVariableAdminForm
    list_display = ["key", "variable_set", "category", "sensitive", "shown_value"]
    list_filter = ["category", "sensitive", "variable_set"]
    delete_related = ("variable_set__team",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["variable_set"] if obj is not None else []

    @admin.display(description="value")
    def shown_value(self, obj: VariableSetVariable) -> str:
        return "sensitive" if obj.sensitive else obj.plain_value

    def delete_through_service(self, obj: VariableSetVariable, actor: Any) -> None:
        set_variable_delete(variable=obj, actor=actor)


class NotificationDestinationAdminForm(forms.ModelForm):
    """A workspace's notification destination, written by tasks_app/workflows/notifications.py
    (the URL rules, private addresses refused, the audit); the signing secret is write-only."""

    secret = forms.CharField(required=False, strip=False, widget=forms.PasswordInput(render_value=False),
                             help_text="The webhook's signing secret; leave blank to keep the current one.")
    url = forms.URLField(required=False, max_length=2000, assume_scheme="https")

    class Meta:
        model = NotificationDestination
        fields = ["workspace", "name", "kind", "url", "emails", "triggers", "enabled"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not self.errors:
            service_problems(self, lambda: self.write(self.actor))
        return data

    def write(self, actor: Any) -> NotificationDestination:
        data = self.cleaned_data
        fields = {k: data[k] for k in ("name", "kind", "url", "emails", "triggers", "enabled")}
        fields["emails"], fields["triggers"] = list(fields["emails"] or []), list(fields["triggers"] or [])
        if self.instance.pk:
            stored = NotificationDestination.objects.select_related("workspace").get(pk=self.instance.pk)
            changes = {k: v for k, v in fields.items() if v != getattr(stored, k)}
            if data["secret"]:
                changes["secret"] = data["secret"]
            return notification_destination_update(destination=stored, actor=actor, changes=changes)
        return notification_destination_create(workspace=data["workspace"], actor=actor, secret=data["secret"],
                                               **fields)

    def validate_unique(self) -> None:
        """The service answers a taken name, in the API's words."""


@admin.register(NotificationDestination)
class NotificationDestinationAdmin(ServiceAdmin):
    form = NotificationDestinationAdminForm
    list_display = ["name", "workspace", "kind", "url", "enabled", "created_at"]
    list_filter = ["kind", "enabled"]
    delete_related = ("workspace",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["workspace"] if obj is not None else []

    def delete_through_service(self, obj: NotificationDestination, actor: Any) -> None:
        notification_destination_delete(destination=obj, actor=actor)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "destination", "trigger", "task", "status", "attempts", "next_attempt_at", "created_at"]
    list_filter = ["status", "trigger"]


@admin.register(NotificationAttempt)
class NotificationAttemptAdmin(ReadOnlyAdmin):
    list_display = ["id", "delivery", "number", "status_code", "to_status", "error", "created_at"]


class PolicySetAdminForm(forms.ModelForm):
    """The admin's door to policy sets, with the API's rules: the policies (a JSON list of
    {name, enforcement_level, module}) are checked and compiled by the policies service, and
    the set is written by it, audited (PolicySetAdmin.save_model)."""

    policies = forms.JSONField(
        widget=forms.Textarea(attrs={"rows": 16, "cols": 100}),
        help_text='[{"name": "...", "enforcement_level": "advisory | soft-mandatory | hard-mandatory", '
                  '"module": "package ...\\n..."}]',
    )

    class Meta:
        model = PolicySet
        fields = ["name", "description", "is_global", "workspaces"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["policies"].initial = [
                {"name": p.name, "enforcement_level": p.enforcement_level, "module": p.module}
                for p in self.instance.policies.all()]
        if self.instance.source == "vcs":
            # Its policies come from its repository (tasks_app.vcs.policy_sync): shown, not edited.
            self.fields["policies"].disabled = True
            self.fields["policies"].required = False
            self.fields["policies"].help_text = "taken from the repository on each push (see Repository below)"

    def clean_policies(self) -> Any:
        raw = self.cleaned_data["policies"]
        if self.instance.source == "vcs":
            return None
        try:
            check_policies(raw)
        except Invalid as exc:
            raise forms.ValidationError(exc.fields.get("policies") or [str(exc)]) from exc
        return raw


@admin.register(PolicySet)
class PolicySetAdmin(admin.ModelAdmin):
    form = PolicySetAdminForm
    list_display = ["name", "is_global", "source", "vcs_sha", "vcs_sync_error", "updated_at"]
    filter_horizontal = ["workspaces"]
    # A set follows a repository through the API (POST/PATCH `repository`); here it is shown,
    # with how its last sync went.
    readonly_fields = ["source", "vcs_connection", "vcs_repository", "vcs_branch", "vcs_directory", "vcs_sha",
                       "vcs_synced_at", "vcs_sync_error", "vcs_error_sha"]

    def save_model(self, request: HttpRequest, obj: PolicySet, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        workspaces = [w.id for w in data["workspaces"]]
        if change:
            changes = {"name": data["name"], "description": data["description"], "global": data["is_global"],
                       "workspaces": workspaces}
            if data["policies"] is not None:
                changes["policies"] = data["policies"]
            saved = policy_set_update(actor=request.user, policy_set_id=obj.pk, changes=changes)
        else:
            saved = policy_set_create(actor=request.user, name=data["name"], policies=data["policies"],
                                      description=data["description"], is_global=data["is_global"],
                                      workspaces=workspaces)
        obj.pk = saved.pk
        obj.id = saved.id

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        """The service saved the workspaces with the set."""

    def delete_model(self, request: HttpRequest, obj: PolicySet) -> None:
        policy_set_delete(actor=request.user, policy_set_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PolicySet]) -> None:
        for ps in queryset:
            policy_set_delete(actor=request.user, policy_set_id=ps.pk)


@admin.register(Policy)
class PolicyAdmin(ReadOnlyAdmin):
    """A set's policies are changed with their set (PolicySetAdmin: checked, compiled, audited)."""

    list_display = ["name", "policy_set", "enforcement_level", "package"]
    list_filter = ["enforcement_level", "policy_set"]


@admin.register(PolicyCheck)
class PolicyCheckAdmin(ReadOnlyAdmin):
    list_display = ["task", "finished_at", "duration_ms", "overridden_by"]
