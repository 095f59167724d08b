"""Events whose processing was lost are picked up again by the sweeper."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from crm.dispatch import events_sweep
from crm.models import CrmEvent
from tests.factories import make_integration

pytestmark = pytest.mark.django_db


def event(integration, key: str, *, age: timedelta, attempts: int = 0, status: str = "pending") -> CrmEvent:
    row = CrmEvent.objects.create(
        integration=integration,
        kind="lead_added",
        entity_type="lead",
        entity_id=1,
        lead_id=1,
        data={"id": "1"},
        dedupe_key=key,
        attempts=attempts,
        status=status,
    )
    CrmEvent.objects.filter(pk=row.pk).update(received_at=timezone.now() - age)
    return row


def test_lost_events_are_processed_and_fresh_or_retrying_ones_left_alone():
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "lost", age=timedelta(minutes=30))
    event(integration, "fresh", age=timedelta(minutes=1))
    event(integration, "retrying", age=timedelta(minutes=30), attempts=2)
    event(integration, "overdue", age=timedelta(hours=5), attempts=2)
    event(integration, "done", age=timedelta(hours=5), status="done")

    assert events_sweep() == 2  # tasks run synchronously in tests

    statuses = dict(CrmEvent.objects.values_list("dedupe_key", "status"))
    assert statuses == {"lost": "done", "fresh": "pending", "retrying": "pending", "overdue": "done", "done": "done"}


def test_the_sweeper_runs_every_five_minutes():
    schedule = Schedule.objects.get(func="crm.tasks.sweep_pending_events")

    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 5 and schedule.repeats == -1
