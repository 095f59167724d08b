"""The Gemini provider is called "gemini" (it was "google"): rewrite stored ai_model values."""
from django.db import migrations
from django.db.models import Value
from django.db.models.functions import Concat, Substr


def rename(apps, old: str, new: str) -> None:
    Agent = apps.get_model("agents", "Agent")
    prefix = f"{old}:"
    Agent.objects.filter(ai_model__startswith=prefix).update(
        ai_model=Concat(Value(f"{new}:"), Substr("ai_model", len(prefix) + 1))
    )


def google_to_gemini(apps, schema_editor):
    rename(apps, "google", "gemini")


def gemini_to_google(apps, schema_editor):
    rename(apps, "gemini", "google")


class Migration(migrations.Migration):
    dependencies = [("agents", "0002_schedule_prune_live_events")]

    operations = [migrations.RunPython(google_to_gemini, gemini_to_google)]
