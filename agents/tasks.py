"""django-q2 tasks of the agents app: thin functions that call services."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .conversations import messages_sweep
from .models import LiveEvent
from .pipeline import message_reply


def prune_live_events() -> int:
    """Delete live events older than LIVE_EVENTS_RETENTION_DAYS (run daily by a schedule)."""
    cutoff = timezone.now() - timedelta(days=settings.LIVE_EVENTS_RETENTION_DAYS)
    deleted, _ = LiveEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def reply_to_message(message_id: int) -> str:
    """Answer one inbound messenger message (agents/pipeline.py)."""
    return message_reply(message_id=message_id)


def sweep_lost_messages() -> int:
    """Every few minutes (a django-q2 schedule): queue again messages whose processing was lost."""
    return messages_sweep()
