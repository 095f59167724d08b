from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from agents.models import LiveEvent
from agents.tasks import prune_live_events

pytestmark = pytest.mark.django_db


def test_old_live_events_are_pruned_and_recent_ones_kept(user, settings):
    settings.LIVE_EVENTS_RETENTION_DAYS = 7
    old = LiveEvent.objects.create(owner=user, type="x", payload={})
    LiveEvent.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=8))
    recent = LiveEvent.objects.create(owner=user, type="x", payload={})

    assert prune_live_events() == 1
    assert list(LiveEvent.objects.values_list("id", flat=True)) == [recent.id]


def test_pruning_is_scheduled_daily():
    schedule = Schedule.objects.get(func="agents.tasks.prune_live_events")

    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats == -1
