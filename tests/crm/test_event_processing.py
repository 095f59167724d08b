"""The worker's side: stored CRM events go to the configured handlers, once, in order."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from agents.models import ExecutionLog
from crm import dispatch
from crm.handlers import log_event
from crm.intake import delivery_store
from crm.models import CrmEvent
from crm.tasks import process_events
from crm.webhooks import parse_delivery
from integrations.errors import AuthError, RateLimited, TransientError
from tests.crm import recording_handlers as recording
from tests.crm.webhook_helpers import body, make_kommo_integration, run_schedule

# one-off schedules of our retries (migrations add other, recurring, schedules)
retries = Schedule.objects.filter(func="crm.tasks.process_events")

FIRST, SECOND = recording.FIRST, recording.SECOND


@pytest.fixture
def handlers(settings):
    settings.CRM_EVENT_HANDLERS = [FIRST, SECOND]
    recording.reset()
    yield recording
    recording.reset()


@pytest.fixture
def kommo(agent):
    return make_kommo_integration(agent)


def store(integration, name: str = "lead_status_changed") -> list[CrmEvent]:
    """Events of a delivery, stored without processing them (as the web process does)."""
    stored = delivery_store(integration_id=integration.id, changes=parse_delivery(body(name)).changes)
    return list(CrmEvent.objects.filter(id__in=stored.event_ids).order_by("id"))


@pytest.fixture
def events(kommo, django_capture_on_commit_callbacks) -> list[CrmEvent]:
    with django_capture_on_commit_callbacks(execute=False):
        return store(kommo)


def reload(events: list[CrmEvent]) -> list[CrmEvent]:
    return list(CrmEvent.objects.filter(id__in=[e.id for e in events]).order_by("id"))


def test_handlers_are_called_in_order_once_per_event_in_id_order(handlers, events):
    one, two = events

    counts = process_events([two.id, one.id])

    assert handlers.calls == [("first", one.id), ("second", one.id), ("first", two.id), ("second", two.id)]
    assert counts == {"done": 2, "failed": 0, "retrying": 0}
    for event in reload(events):
        assert (event.status, event.attempts, event.error) == ("done", 1, "")
        assert event.processed_at is not None


def test_handlers_get_the_event_with_its_integration_loaded(settings, events, kommo):
    seen = []
    settings.CRM_EVENT_HANDLERS = ["tests.crm.test_event_processing.remember_integration"]
    remember_integration.seen = seen

    process_events([e.id for e in events])

    assert seen == [kommo.id, kommo.id]


def remember_integration(event):
    remember_integration.seen.append(event.integration.id)


def test_a_processed_event_is_not_processed_again(handlers, events):
    ids = [e.id for e in events]

    process_events(ids)
    process_events(ids)  # the broker delivering the task twice

    assert len(handlers.calls) == 4


def test_a_failing_handler_marks_its_event_failed_and_logs_it_without_stopping_the_others(
    handlers, events, kommo, caplog
):
    one, two = events
    handlers.plan["first"] = [ValueError("the trigger rule is broken")]

    counts = process_events([one.id, two.id])

    assert counts == {"done": 1, "failed": 1, "retrying": 0}
    # the other handler still ran for the failed event, and the next event went through
    assert handlers.calls == [("first", one.id), ("second", one.id), ("first", two.id), ("second", two.id)]
    one, two = reload(events)
    assert (one.status, one.attempts, one.processed_at) == ("failed", 1, None)
    assert one.error == f"{FIRST}: ValueError: the trigger rule is broken"
    assert two.status == "done"
    (log,) = ExecutionLog.objects.all()
    assert (log.agent_id, log.kind, log.status, log.ref_type, log.ref_id, log.crm_lead_id) == (
        kommo.agent_id,
        "webhook",
        "failed",
        "crm_event",
        one.id,
        23416597,
    )
    assert log.error == one.error
    assert log.detail["handlers"] == [FIRST]
    assert log.detail["kind"] == "lead_status_changed"
    assert "crm.event.handler_failed" in [r.getMessage() for r in caplog.records]


def test_an_auth_error_is_permanent(handlers, events):
    handlers.plan["second"] = [AuthError("the CRM refused the token", status=401)]

    process_events([events[0].id])

    assert reload(events)[0].status == "failed"
    assert not retries.exists()


def test_a_transient_failure_is_retried_later_with_only_the_handler_that_failed(handlers, events):
    one, two = events
    handlers.plan["second"] = [TransientError("Kommo answered 503", status=503)]
    before = timezone.now()

    counts = process_events([one.id, two.id])

    assert counts == {"done": 1, "failed": 0, "retrying": 1}
    one_now, two_now = reload(events)
    assert (one_now.status, one_now.attempts) == ("pending", 1)
    assert one_now.error == f"{SECOND}: TransientError: Kommo answered 503"
    assert two_now.status == "done"
    (retry,) = retries.all()
    assert retry.func == "crm.tasks.process_events"
    assert timedelta(seconds=29) < retry.next_run - before < timedelta(seconds=35)
    assert not ExecutionLog.objects.exists()

    handlers.calls.clear()
    run_schedule(retry)

    assert handlers.calls == [("second", one.id)]  # "first" already handled it
    one_now = reload(events)[0]
    assert (one_now.status, one_now.attempts, one_now.error) == ("done", 2, "")
    assert not retries.exists()


def test_the_retry_time_is_written_with_the_attempt_and_a_database_failure_is_retried(handlers, events):
    """A handler that hit the database while it was down or locked is tried again, like a
    transient CRM failure; the event's retry_at lets the sweeper find it if the retry's
    schedule is lost."""
    from django.db import OperationalError

    one = events[0]
    handlers.plan["first"] = [OperationalError("database is locked")]
    before = timezone.now()

    assert process_events([one.id]) == {"done": 0, "failed": 0, "retrying": 1}

    one_now = reload(events)[0]
    assert (one_now.status, one_now.attempts) == ("pending", 1) and "database is locked" in one_now.error
    assert timedelta(seconds=29) < one_now.retry_at - before < timedelta(seconds=35)
    assert abs(retries.get().next_run - one_now.retry_at) < timedelta(seconds=2)


def test_retries_back_off(handlers, events):
    event = events[0]
    handlers.plan["first"] = [TransientError("timeout")] * 3
    delays = []
    process_events([event.id])
    for _ in range(3):
        retry = retries.get()
        delays.append(round((retry.next_run - timezone.now()).total_seconds() / 30))
        run_schedule(retry)

    assert delays == [1, 4, 16]
    assert reload(events)[0].status == "done"


def test_rate_limited_waits_at_least_as_long_as_the_crm_asked(handlers, events):
    handlers.plan["first"] = [RateLimited("429 from Kommo", retry_after=300)]
    before = timezone.now()

    process_events([events[0].id])

    (retry,) = retries.all()
    assert retry.next_run - before >= timedelta(seconds=300)


def test_an_event_that_keeps_failing_transiently_fails_after_the_last_attempt(handlers, events, kommo):
    event = events[0]
    handlers.plan["first"] = [TransientError("Kommo answered 502")] * dispatch.MAX_ATTEMPTS

    process_events([event.id])
    for _ in range(dispatch.MAX_ATTEMPTS - 1):
        run_schedule(retries.get())

    assert not retries.exists()
    event = reload(events)[0]
    assert (event.status, event.attempts) == ("failed", dispatch.MAX_ATTEMPTS)
    assert event.error == f"gave up after 5 attempts: {FIRST}: TransientError: Kommo answered 502"
    (log,) = ExecutionLog.objects.all()
    assert (log.kind, log.status, log.ref_id) == ("webhook", "failed", event.id)
    assert [c for c in handlers.calls if c[0] == "first" and c[1] == event.id] == [("first", event.id)] * 5


def test_a_permanent_failure_wins_over_a_transient_one_on_the_same_event(handlers, events):
    handlers.plan["first"] = [TransientError("timeout")]
    handlers.plan["second"] = [KeyError("status_id")]

    process_events([events[0].id])

    event = reload(events)[0]
    assert event.status == "failed"
    assert event.error == f"{SECOND}: KeyError: 'status_id'; not retried: {FIRST}"
    assert not retries.exists()


def test_handlers_are_imported_once_per_setting(settings):
    settings.CRM_EVENT_HANDLERS = [FIRST, SECOND]
    first = dispatch.event_handlers()

    assert dispatch.event_handlers() is first
    assert [path for path, _ in first] == [FIRST, SECOND]
    settings.CRM_EVENT_HANDLERS = [SECOND]
    assert [path for path, _ in dispatch.event_handlers()] == [SECOND]


def test_the_default_handler_logs_ids_not_data(kommo, caplog, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        (event,) = store(kommo, "contact_added")
    caplog.set_level(logging.DEBUG, logger="crm.handlers")

    log_event(event)

    (record,) = caplog.records
    assert (record.getMessage(), record.event_id, record.kind, record.lead_id) == (
        "crm.event",
        event.id,
        "contact_added",
        23416597,
    )
    assert "maria.lopez@example.com" not in str(record.__dict__)
