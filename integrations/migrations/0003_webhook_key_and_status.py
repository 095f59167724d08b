import secrets

from django.db import migrations, models

import integrations.models


def fill_webhook_keys(apps, schema_editor):
    Integration = apps.get_model("integrations", "Integration")
    for integration in Integration.objects.filter(webhook_key__isnull=True).only("id"):
        Integration.objects.filter(pk=integration.pk).update(webhook_key=secrets.token_urlsafe(32))


class Migration(migrations.Migration):
    dependencies = [("integrations", "0002_rate_slot")]

    operations = [
        # a unique key per existing row: added empty, filled one by one, then made unique
        migrations.AddField(
            model_name="integration",
            name="webhook_key",
            field=models.CharField(max_length=64, null=True, editable=False),
        ),
        migrations.RunPython(fill_webhook_keys, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="integration",
            name="webhook_key",
            field=models.CharField(
                default=integrations.models.new_webhook_key,
                editable=False,
                help_text="The secret part of this integration's webhook URL.",
                max_length=64,
                unique=True,
            ),
        ),
        migrations.AddField(
            model_name="integration",
            name="status",
            field=models.CharField(
                choices=[
                    ("new", "Not used yet"),
                    ("connected", "Connected"),
                    ("needs_reconnect", "Needs re-connection"),
                    ("failing", "Failing"),
                ],
                default="new",
                editable=False,
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="integration",
            name="status_detail",
            field=models.TextField(blank=True, editable=False, help_text="The last error, when there is one."),
        ),
        migrations.AddField(
            model_name="integration",
            name="status_changed_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
