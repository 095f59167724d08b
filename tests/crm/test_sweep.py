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


def test_lost_events_are_drained_and_retrying_ones_left_to_their_retry(django_capture_on_commit_callbacks):
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "lost", age=timedelta(minutes=30))
    event(integration, "fresh", age=timedelta(minutes=1))
    event(integration, "retrying", age=timedelta(minutes=30), attempts=2)
    event(integration, "overdue", age=timedelta(hours=5), attempts=2)
    event(integration, "done", age=timedelta(hours=5), status="done")

    with django_capture_on_commit_callbacks(execute=True):  # tasks run synchronously in tests
        assert events_sweep() == 2  # a drain, and the overdue retry

    statuses = dict(CrmEvent.objects.values_list("dedupe_key", "status"))
    # the drain takes every event waiting, the fresh one too
    assert statuses == {"lost": "done", "fresh": "done", "retrying": "pending", "overdue": "done", "done": "done"}


def test_nothing_to_sweep_queues_nothing(django_capture_on_commit_callbacks):
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "fresh", age=timedelta(minutes=1))

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert events_sweep() == 0

    assert callbacks == []
    assert CrmEvent.objects.get().status == "pending"


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


def test_a_drain_waiting_its_turn_is_not_queued_again_until_it_looks_lost(django_capture_on_commit_callbacks):
    """A backlog in the task queue: the drain queued for the events waits its turn, and
    the sweeper queues no second one; a drain waiting longer than SWEEP_AFTER was lost
    (its task went with a worker), and the sweeper queues another."""
    from crm.dispatch import SWEEP_AFTER
    from crm.models import EventDrain

    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    event(integration, "waiting", age=timedelta(minutes=40))
    queued_at = timezone.now() - SWEEP_AFTER + timedelta(minutes=1)
    EventDrain.objects.update_or_create(pk=1, defaults={"queued_at": queued_at})

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert events_sweep() == 0
    assert callbacks == [] and CrmEvent.objects.get().status == "pending"

    EventDrain.objects.filter(pk=1).update(queued_at=timezone.now() - SWEEP_AFTER - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert events_sweep() == 1
    assert CrmEvent.objects.get().status == "done"
    assert EventDrain.objects.get(pk=1).queued_at is None  # the drain started: no drain waiting
