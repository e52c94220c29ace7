from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tasks_app', '0005_dispatch_core'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='sandbox',
            field=models.CharField(blank=True, choices=[('auto', 'auto'), ('bwrap', 'bwrap'), ('off', 'off')], max_length=10),
        ),
    ]
