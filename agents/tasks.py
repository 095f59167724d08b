"""django-q2 tasks of the agents app: thin functions that call services."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import LiveEvent


def prune_live_events() -> int:
    """Delete live events older than LIVE_EVENTS_RETENTION_DAYS (run daily by a schedule)."""
    cutoff = timezone.now() - timedelta(days=settings.LIVE_EVENTS_RETENTION_DAYS)
    deleted, _ = LiveEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted
