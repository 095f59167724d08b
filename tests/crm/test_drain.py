"""Drains: stored events are taken in batches, each by one drain, and none is left behind."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from crm import drain
from crm.dispatch import events_process
from crm.drain import DRAIN_CLAIM_TIMEOUT, DRAIN_STALE, KICK_AFTER, drain_kick, events_claim, events_drain
from crm.models import CrmEvent, EventDrain
from tests.factories import make_agent, make_integration

pytestmark = pytest.mark.django_db


@pytest.fixture
def kommo():
    return make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})


def stored(integration, count: int, *, age: timedelta = timedelta(0), **values) -> list[int]:
    rows = CrmEvent.objects.bulk_create(
        CrmEvent(
            integration=integration,
            kind="lead_added",
            entity_type="lead",
            entity_id=n,
            lead_id=n,
            data={"id": str(n)},
            dedupe_key=f"k{n}-{timezone.now().timestamp()}",
            **values,
        )
        for n in range(count)
    )
    ids = [row.pk for row in rows]
    CrmEvent.objects.filter(id__in=ids).update(received_at=timezone.now() - age)
    return ids


def drain_waiting(at=None) -> None:
    EventDrain.objects.update_or_create(pk=1, defaults={"queued_at": at or timezone.now()})


def queued() -> list[str]:
    return [SignedPackage.loads(q.payload)["func"] for q in OrmQ.objects.order_by("id")]


def test_claims_take_the_oldest_events_and_never_the_same_twice(kommo):
    ids = stored(kommo, 5)

    first, second, third = events_claim(2), events_claim(2), events_claim(2)

    assert (first, second, third) == (ids[:2], ids[2:4], ids[4:])
    assert events_claim(2) == []
    assert not CrmEvent.objects.filter(claimed_at=None).exists()


def test_a_dead_drains_claim_is_taken_again_after_the_timeout_and_a_live_ones_is_not(kommo):
    live, dead = stored(kommo, 2)
    now = timezone.now()
    CrmEvent.objects.filter(pk=live).update(claimed_at=now - DRAIN_CLAIM_TIMEOUT + timedelta(seconds=5))
    CrmEvent.objects.filter(pk=dead).update(claimed_at=now - DRAIN_CLAIM_TIMEOUT - timedelta(seconds=1))

    assert events_claim(10, now=now) == [dead]


def test_retrying_and_finished_events_are_not_drained(kommo, recorded):
    retrying = stored(kommo, 1, attempts=1)
    done = stored(kommo, 1, status="done")
    waiting = stored(kommo, 2)

    assert events_drain() == {"done": 2, "failed": 0, "retrying": 0, "batches": 1}

    assert [call[1] for call in recorded] == waiting
    assert CrmEvent.objects.get(pk=retrying[0]).status == "pending"
    assert CrmEvent.objects.get(pk=done[0]).attempts == 0


def test_a_drain_leaves_the_mark_empty_so_that_the_next_delivery_queues_another(kommo, recorded):
    stored(kommo, 2)
    drain_waiting()

    assert events_drain()["done"] == 2

    assert EventDrain.objects.get(pk=1).queued_at is None


def test_a_backlog_is_drained_batch_after_batch_and_another_drain_is_queued_to_help(kommo, recorded, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    ids = stored(kommo, 5)

    assert events_drain(batch=2) == {"done": 5, "failed": 0, "retrying": 0, "batches": 3}

    assert [call[1] for call in recorded] == ids
    # the first full batch queued one for another worker process; no more while it waits
    assert queued() == ["crm.tasks.drain_events"]


def test_a_drain_out_of_time_hands_the_rest_to_a_successor(kommo, recorded, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    ids = stored(kommo, 5)

    assert events_drain(batch=2, seconds=0) == {"done": 2, "failed": 0, "retrying": 0, "batches": 1}

    assert [call[1] for call in recorded] == ids[:2]
    assert queued() == ["crm.tasks.drain_events"]  # behind what else waits in the queue
    assert EventDrain.objects.get(pk=1).queued_at is not None


def test_a_drain_renews_its_claim_on_the_events_it_has_yet_to_run(kommo, recorded, monkeypatch):
    monkeypatch.setattr("crm.dispatch.CLAIM_RENEW_SECONDS", 0)
    ids = stored(kommo, 3)
    claimed = events_claim(3, now=timezone.now() - timedelta(minutes=1))
    before = CrmEvent.objects.get(pk=ids[-1]).claimed_at

    events_process(event_ids=claimed, claimed=True)

    assert [call[1] for call in recorded] == ids
    assert CrmEvent.objects.get(pk=ids[-1]).claimed_at > before + timedelta(seconds=50)


def test_the_kick_queues_a_drain_for_events_nobody_came_for(kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    stored(kommo, 1, age=KICK_AFTER / 2)
    EventDrain.objects.all().delete()  # and the mark's row went missing too

    assert drain_kick() is False  # just arrived: its own drain may be on the way
    stored(kommo, 1, age=KICK_AFTER * 2)
    assert drain_kick() is True
    assert drain_kick() is False  # one is waiting now
    assert queued() == ["crm.tasks.drain_events"]

    drain_waiting(timezone.now() - DRAIN_STALE - timedelta(seconds=1))  # and its task was lost
    assert drain_kick() is True
    assert queued() == ["crm.tasks.drain_events"] * 2


def test_the_kick_leaves_a_live_drains_events_alone(kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    ids = stored(kommo, 2, age=timedelta(minutes=1))
    events_claim(2)

    assert drain_kick() is False
    CrmEvent.objects.filter(id__in=ids).update(claimed_at=timezone.now() - DRAIN_CLAIM_TIMEOUT - timedelta(seconds=1))
    assert drain_kick() is True


def test_the_worker_dispatcher_kicks_drains(kommo, monkeypatch):
    from agents.management.commands.worker import Dispatcher

    kicks = []
    monkeypatch.setattr(drain, "drain_kick", lambda: kicks.append(1))
    monkeypatch.setattr("sequences.runner.dispatch_due", lambda: 0)
    monkeypatch.setattr("agents.management.commands.worker.close_old_connections", lambda: None)
    dispatcher = Dispatcher(interval=0.01)
    dispatcher.start()
    try:
        for _ in range(200):
            if len(kicks) >= 2:
                break
            threading.Event().wait(0.01)
    finally:
        dispatcher.stop()
        dispatcher.join(5)
    assert len(kicks) >= 2


postgres_only = pytest.mark.skipif(
    "postgresql" not in django_settings.DATABASES["default"]["ENGINE"], reason="concurrent claims: PostgreSQL"
)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_drains_claiming_at_once_take_different_events():
    integration = make_integration(
        agent=make_agent(), integration_type="kommo", config={"base_url": "https://a.kommo.com"}
    )
    ids = stored(integration, 400)
    claims: list[list[int]] = []
    start = threading.Barrier(4)

    def claimer() -> None:
        try:
            start.wait(5)
            while batch := events_claim(7):
                claims.append(batch)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    taken = [event_id for batch in claims for event_id in batch]
    assert sorted(taken) == ids  # each once


seen_during: list[tuple[int, list[str], int]] = []


def observe(event) -> None:
    """A handler that notes, for each event, the statuses of the batch's earlier events
    and the retries scheduled so far; the first event fails transiently."""
    from django_q.models import Schedule

    from integrations.errors import TransientError

    earlier = CrmEvent.objects.filter(id__lt=event.id).order_by("id").values_list("status", flat=True)
    seen_during.append((event.id, list(earlier), Schedule.objects.filter(func="crm.tasks.process_events").count()))
    if not seen_during[1:]:
        raise TransientError("the CRM answered 503")


def test_a_long_batch_writes_its_outcomes_as_it_goes(kommo, settings, monkeypatch):
    """A batch slowed by a vendor does not hold its outcomes back: a retry is scheduled
    with its attempt, and the events done are marked every OUTCOMES_EVERY_SECONDS, so a
    worker dying late in a batch makes little run again and loses no retry."""
    settings.CRM_EVENT_HANDLERS = ["tests.crm.test_drain.observe"]
    monkeypatch.setattr("crm.dispatch.OUTCOMES_EVERY_SECONDS", 0)
    seen_during.clear()
    stored(kommo, 3)

    events_drain()

    (first, _, _), (_, second_saw, retries_then), (_, third_saw, _) = seen_during
    assert second_saw == ["pending"] and retries_then == 1  # the first is retrying: its schedule is written
    assert third_saw == ["pending", "done"]
    assert CrmEvent.objects.get(pk=first).attempts == 1


def test_a_batch_slowed_by_a_vendor_lets_go_of_what_it_has_not_begun(kommo, recorded, monkeypatch):
    """After DRAIN_MAX_SECONDS a drain stops taking the next event of its batch: those it
    has not begun are unclaimed at once for another drain (queued now), so a slow CRM
    never keeps a drain past django-q2's task timeout."""
    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(drain, "DRAIN_MAX_SECONDS", 0)
    ids = stored(kommo, 3)

    counts = events_drain()

    assert counts["released"] == 3 and counts["done"] == 0
    assert list(CrmEvent.objects.filter(id__in=ids).values_list("claimed_at", flat=True)) == [None] * 3
    assert queued() == ["crm.tasks.drain_events"]
    assert events_claim(10) == ids  # another drain takes them at once
