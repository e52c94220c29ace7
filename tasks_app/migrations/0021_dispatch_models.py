"""Slot and DispatchEvent, moved from agents_app into dispatch (tasks_app/dispatch/models.py),
keep their tables (agents_app_slot, agents_app_dispatchevent) and rows: the state only, after
agents_app's 0010 let go of them. Their content types (and so their permissions and admin
log entries) move with them."""

import django.db.models.deletion
from django.db import migrations, models

import agents_app.protocol

MOVED = ("slot", "dispatchevent")


def content_types_to(app_label: str, other: str):
    def move(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        for model in MOVED:
            if not ContentType.objects.filter(app_label=app_label, model=model).exists():
                ContentType.objects.filter(app_label=other, model=model).update(app_label=app_label)

    return move


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("agents_app", "0010_dispatch_models_moved"),
        ("tasks_app", "0020_statelock_holder_user"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='DispatchEvent',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('subject', models.CharField(max_length=20)),
                        ('subject_id', models.PositiveBigIntegerField()),
                        ('from_state', models.CharField(blank=True, max_length=30)),
                        ('to_state', models.CharField(max_length=30)),
                        ('message', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('agent', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='agents_app.agent')),
                        ('task', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='dispatch_events', to='tasks_app.task')),
                    ],
                    options={
                        'db_table': 'agents_app_dispatchevent',
                        'ordering': ['id'],
                        'indexes': [models.Index(fields=['subject', 'subject_id'], name='dispatch_event_subject')],
                    },
                ),
                migrations.CreateModel(
                    name='Slot',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('index', models.PositiveSmallIntegerField()),
                        ('state', models.CharField(choices=[('idle', 'idle'), ('running', 'running'), ('reserved', 'reserved')], default=agents_app.protocol.SlotState['IDLE'], max_length=20)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('agent', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='slots', to='agents_app.agent')),
                        ('job', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='slots', to='tasks_app.job')),
                        ('task', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='slots', to='tasks_app.task')),
                    ],
                    options={
                        'db_table': 'agents_app_slot',
                        'ordering': ['agent_id', 'index'],
                        'indexes': [models.Index(fields=['agent', 'state'], name='slot_agent_state')],
                        'constraints': [models.UniqueConstraint(fields=('agent', 'index'), name='slot_agent_index'), models.CheckConstraint(condition=models.Q(models.Q(('job__isnull', True), ('state', agents_app.protocol.SlotState['IDLE']), ('task__isnull', True)), models.Q(('job__isnull', False), ('state', agents_app.protocol.SlotState['RUNNING']), ('task__isnull', False)), models.Q(('job__isnull', True), ('state', agents_app.protocol.SlotState['RESERVED']), ('task__isnull', False)), _connector='OR'), name='slot_state_links'), models.UniqueConstraint(condition=models.Q(('state', agents_app.protocol.SlotState['RESERVED'])), fields=('task',), name='one_reservation_per_task'), models.UniqueConstraint(condition=models.Q(('job__isnull', False)), fields=('job',), name='one_slot_per_job')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to("tasks_app", "agents_app"), content_types_to("agents_app", "tasks_app")),
    ]
