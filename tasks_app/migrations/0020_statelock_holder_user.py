"""The state lock records the user whose API token took it (a job's lock already names its job).

Locks taken before this migration by a person's terraform get their holder from the audit
log (the `state.lock` row for the same workspace and lock ID names the user). A lock whose
taker the log does not name stays without a holder: only a force-unlock (`admin`) releases it.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def holders_from_audit_log(apps, schema_editor):
    StateLock = apps.get_model("tasks_app", "StateLock")
    AuditEvent = apps.get_model("tasks_app", "AuditEvent")
    for lock in StateLock.objects.filter(job__isnull=True, user__isnull=True):
        taker = (
            AuditEvent.objects.filter(action="state.lock", object_type="workspace", object_id=str(lock.workspace_id),
                                      data__id=lock.lock_id, actor__isnull=False)
            .order_by("-id").values_list("actor_id", flat=True).first()
        )
        if taker is not None:
            StateLock.objects.filter(pk=lock.pk).update(user_id=taker)


class Migration(migrations.Migration):

    dependencies = [
        ('tasks_app', '0019_job_avoid_agent'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='statelock',
            name='user',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunPython(holders_from_audit_log, migrations.RunPython.noop),
    ]
