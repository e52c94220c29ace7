# Joins the migrations of work done in parallel (job sandbox, 64-bit serials, teams and tokens);
# none of them touches what another changes.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0006_job_sandbox"),
        ("tasks_app", "0007_bigint_serials"),
        ("tasks_app", "0007_bigint_serials"),
        ("tasks_app", "0008_teams_and_tokens"),
    ]

    operations = []
