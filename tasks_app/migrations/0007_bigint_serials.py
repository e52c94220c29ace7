# State serials are 64-bit (terraform's own serial is a uint64; PostgreSQL's bigint holds
# every serial up to 2**63 - 1, which the state backend checks).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("tasks_app", "0005_dispatch_core"),
    ]

    operations = [
        migrations.AlterField(
            model_name="stateversion",
            name="serial",
            field=models.BigIntegerField(),
        ),
        migrations.AlterField(
            model_name="task",
            name="base_state_serial",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
