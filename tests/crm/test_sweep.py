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


def test_a_retry_whose_schedule_was_lost_is_run_once_it_is_overdue():
    """The attempt count and retry_at are written in one statement; the one-off schedule
    after it can be lost (the worker or the database went down): the sweeper runs the
    event SWEEP_AFTER after its retry was due, not hours later."""
    from crm.dispatch import SWEEP_AFTER

    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    overdue = event(integration, "overdue", age=timedelta(minutes=20), attempts=1)
    coming = event(integration, "coming", age=timedelta(minutes=20), attempts=1)
    now = timezone.now()
    CrmEvent.objects.filter(pk=overdue.pk).update(retry_at=now - SWEEP_AFTER - timedelta(seconds=1))
    CrmEvent.objects.filter(pk=coming.pk).update(retry_at=now - SWEEP_AFTER + timedelta(minutes=1))

    assert events_sweep() == 1

    assert dict(CrmEvent.objects.values_list("dedupe_key", "status")) == {"overdue": "done", "coming": "pending"}


def test_a_backlog_waiting_in_the_task_queue_is_not_queued_a_second_time(monkeypatch):
    """With tasks waiting in the queue, an event never tried may just be waiting its turn:
    it is swept only when events received well after it have been taken up already
    (tasks are taken oldest first, so its own task is gone)."""
    from crm import dispatch

    monkeypatch.setattr(dispatch, "_task_queue_busy", lambda: True)
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "lost", age=timedelta(minutes=40))
    event(integration, "taken up", age=timedelta(minutes=30), status="done")
    event(integration, "waiting", age=timedelta(minutes=20))

    assert events_sweep() == 1

    statuses = dict(CrmEvent.objects.values_list("dedupe_key", "status"))
    assert statuses == {"lost": "done", "taken up": "done", "waiting": "pending"}


def test_with_a_busy_queue_and_nothing_taken_up_yet_nothing_is_queued_again(monkeypatch):
    from crm import dispatch

    monkeypatch.setattr(dispatch, "_task_queue_busy", lambda: True)
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "waiting", age=timedelta(minutes=40))

    assert events_sweep() == 0


def test_the_task_queue_is_read_from_the_broker(settings):
    from django_q.models import OrmQ

    from crm.dispatch import _task_queue_busy

    assert _task_queue_busy() is False
    OrmQ.objects.create(key=settings.Q_CLUSTER["name"], payload="x", lock=timezone.now() - timedelta(minutes=5))
    assert _task_queue_busy() is True
