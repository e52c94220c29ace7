"""Slot and DispatchEvent moved from agents_app into dispatch (tasks_app/dispatch/models.py)
without touching their tables: migrated back to before the move, a row in every table of both
apps, migrated forward, and every row is still there, read through today's models, links
included; the moved models' content types (and their permissions) moved with them."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("agents_app", "0009_agent_provider_cache"), ("tasks_app", "0020_statelock_holder_user")]
APPS = ("agents_app", "tasks_app")


def _value(field: models.Field, made: dict) -> object:
    """A valid value for a required field of a historical model."""
    if field.is_relation:
        return made[field.related_model._meta.label_lower]
    if field.choices:
        return field.choices[0][0]
    if isinstance(field, models.JSONField):
        return {}
    if isinstance(field, models.BinaryField):
        return b"bytes"
    if isinstance(field, models.DateTimeField):
        # In the future: an online agent whose last heartbeat is past the offline window is
        # taken offline (its reserved slot released) by any sweep of this database, the
        # live platform's that an e2e test of this xdist worker started among them.
        return datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    if isinstance(field, models.BooleanField):
        return False
    if isinstance(field, (models.IntegerField, models.DecimalField, models.FloatField)):
        return 1
    return f"{field.model._meta.model_name}-{field.name}"[: getattr(field, "max_length", None) or None]


def _fill(apps) -> dict[str, object]:
    """One row in every table of both apps (and the users and teams they point at), parents
    first, with only the required fields set: the rest keeps its defaults."""
    made: dict[str, object] = {}
    user = apps.get_model("auth", "User").objects.create(username="migrated")
    made["auth.user"] = user
    made["auth.group"] = apps.get_model("auth", "Group").objects.create(name="migrated")
    pending = [m for m in apps.get_models() if m._meta.app_label in APPS]
    while pending:
        progress = False
        for model in list(pending):
            required = [f for f in model._meta.concrete_fields
                        if not f.primary_key and not f.null and not f.has_default() and not getattr(f, "auto_now", False)
                        and not getattr(f, "auto_now_add", False)]
            if any(f.is_relation and f.related_model._meta.label_lower not in made for f in required):
                continue
            # A singleton row (the sweep's heartbeat) may be there already.
            made[model._meta.label_lower] = (model.objects.first()
                                             or model.objects.create(**{f.name: _value(f, made) for f in required}))
            pending.remove(model)
            progress = True
        assert progress, f"cannot order {[m._meta.label for m in pending]}"
    return made


def test_the_moved_models_keep_their_tables_rows_and_links():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        _check_the_move(latest)
    finally:  # the next tests on this database need it migrated, whatever happened here
        MigrationExecutor(connection).migrate(latest)


def _check_the_move(latest: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    old = executor.loader.project_state(BEFORE).apps
    made = _fill(old)
    agent, task, job = made["agents_app.agent"], made["tasks_app.task"], made["tasks_app.job"]
    slot = old.get_model("agents_app", "Slot").objects.create(agent=agent, index=2, state="reserved", task=task)
    event = old.get_model("agents_app", "DispatchEvent").objects.create(
        subject="slot", subject_id=slot.id, task=task, agent=agent, to_state="reserved", message="kept warm")
    # By id: the live servers of this worker's e2e tests (their sweep, the autoscaler) may add
    # rows meanwhile; none may go missing.
    before = {m._meta.db_table: set(m.objects.values_list("pk", flat=True))
              for m in old.get_models() if m._meta.app_label in APPS}
    slot_type = ContentType.objects.get(app_label="agents_app", model="slot")
    slot_perms = set(slot_type.permission_set.values_list("codename", flat=True))
    assert slot_perms >= {"change_slot", "view_slot"}

    executor = MigrationExecutor(connection)
    executor.migrate(latest)

    from django.apps import apps as current

    from tasks_app.dispatch.models import DispatchEvent, Job, Slot

    now = {m._meta.db_table: set(m.objects.values_list("pk", flat=True))
           for m in current.get_models() if m._meta.app_label in APPS}
    assert all(before[table] for table in before)  # a row in every table
    assert {table: before[table] - now.get(table, set()) for table in before} == {t: set() for t in before}
    assert Slot._meta.db_table == "agents_app_slot" and Slot._meta.app_label == "tasks_app"
    moved = Slot.objects.select_related("agent", "task").get(id=slot.id)
    assert (moved.agent_id, moved.task_id, moved.state) == (agent.id, task.id, "reserved")
    assert list(Slot.objects.filter(task_id=task.id, state="reserved").values_list("id", flat=True)) == [slot.id]
    history = DispatchEvent.objects.get(id=event.id)
    assert (history.task_id, history.agent_id, history.message) == (task.id, agent.id, "kept warm")
    assert Job.objects.get(id=job.id).task_id == task.id
    ContentType.objects.clear_cache()
    assert not ContentType.objects.filter(app_label="agents_app", model__in=("slot", "dispatchevent")).exists()
    moved_type = ContentType.objects.get(app_label="tasks_app", model="slot")
    assert moved_type.id == slot_type.id  # the same row: its permissions and admin history follow
    assert set(moved_type.permission_set.values_list("codename", flat=True)) == slot_perms
