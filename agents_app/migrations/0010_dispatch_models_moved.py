"""Slot and DispatchEvent moved to tasks_app (tasks_app/dispatch/models.py). The state only: the
tables stay as they are, now named in the models' Meta.db_table; tasks_app's 0021 takes the
models over."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("agents_app", "0009_agent_provider_cache"),
        ("tasks_app", "0020_statelock_holder_user"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="DispatchEvent"),
                migrations.DeleteModel(name="Slot"),
            ],
            database_operations=[],
        ),
    ]
