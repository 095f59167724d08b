"""Processing stored CRM events in batches: drains.

Webhook intake does not queue a task per delivery. It stores the events and, in the
same transaction (on PostgreSQL, the same statement), marks a drain as waiting
(``EventDrain.queued_at``, one row) if none is; only the delivery that marked it queues a
drain task (``crm.tasks.drain_events``). A burst of deliveries so costs one task, and
django-q2's cost per task (about 6 ms of CPU in the worker, measured) is paid per batch,
not per delivery.

A drain:

1. empties the mark, so that the next delivery queues another drain;
2. claims up to DRAIN_BATCH events that were never tried, oldest first, by stamping their
   ``claimed_at`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer);
3. runs them through ``crm.dispatch.events_process`` (the handlers, the outcome, retries)
   and claims the next batch, until none is left. A full batch means a backlog: it then
   queues another drain (unless one waits), which an idle worker process picks up. After
   DRAIN_SECONDS it ends and leaves the rest to that one, so that replies and sequence
   steps queued meanwhile take their turn during a long burst. A batch slowed by a vendor
   is cut short after DRAIN_MAX_SECONDS: the events not begun are let go for another
   drain, so no drain outlasts django-q2's task timeout.

While a drain runs, the next delivery queues another, which another worker process picks
up: with Q_WORKERS processes, up to that many drains work at once on their own batches,
and at most one more waits in the queue.

Safety net, ``drain_kick``: the worker's dispatcher thread (agents/management/commands/
worker.py) calls it every second, and the events sweeper every few minutes. When events
have waited KICK_AFTER unclaimed and no drain is waiting (or one has been waiting
DRAIN_STALE, its task lost), it queues one. That covers a delivery that saw a drain
waiting which then claimed before the delivery committed (PostgreSQL's read committed), a
drain task lost with a worker, and the claims of a drain that died (claimable again after
DRAIN_CLAIM_TIMEOUT; a live drain renews its claims while it works, crm/dispatch.py).

Events being retried (``attempts`` > 0) are not drained: their retry is a scheduled task
naming them (crm/dispatch.py).
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from config.tasks import enqueue_with_transaction

from .models import CrmEvent, EventDrain

logger = logging.getLogger(__name__)

DRAIN_TASK = "crm.tasks.drain_events"
DRAIN_ROW = 1
DRAIN_BATCH = 50
DRAIN_SECONDS = 2.0
# A drain lets go of the events it has not begun after this long (a slow vendor): it then
# ends well inside django-q2's Q_TIMEOUT (300 s), which would kill it mid-action
DRAIN_MAX_SECONDS = 60.0
DRAIN_CLAIM_TIMEOUT = timedelta(minutes=2)
CLAIM_RENEW_SECONDS = 30.0  # well inside DRAIN_CLAIM_TIMEOUT
KICK_AFTER = timedelta(seconds=2)
DRAIN_STALE = timedelta(minutes=1)


def claimable(now: datetime) -> Q:
    """Events a drain may take: pending, never tried, and not held by a live drain."""
    return Q(status=CrmEvent.Status.PENDING, attempts=0) & (
        Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - DRAIN_CLAIM_TIMEOUT)
    )


def drain_request(*, now: datetime | None = None, stale: timedelta | None = None) -> bool:
    """Queue a drain unless one is waiting (or, with ``stale``, unless one has been waiting
    for less than that); True when this call queued it. The mark and the task commit together."""
    now = now or timezone.now()
    waiting = Q(queued_at__isnull=True)
    if stale is not None:
        waiting |= Q(queued_at__lt=now - stale)
    with transaction.atomic():
        marked = EventDrain.objects.filter(waiting, pk=DRAIN_ROW).update(queued_at=now)
        if not marked and not EventDrain.objects.filter(pk=DRAIN_ROW).exists():
            try:
                with transaction.atomic():
                    EventDrain.objects.create(pk=DRAIN_ROW, queued_at=now)
                marked = 1
            except IntegrityError:  # made a moment ago by another process, which queues
                marked = 0
        if marked:
            enqueue_with_transaction(DRAIN_TASK)
    return bool(marked)


def drain_kick(*, now: datetime | None = None, waited: timedelta = KICK_AFTER, stale: timedelta = DRAIN_STALE) -> bool:
    """Queue a drain when events have waited ``waited`` without one taking them; True when
    this call queued one."""
    now = now or timezone.now()
    waiting = CrmEvent.objects.filter(claimable(now), received_at__lt=now - waited)
    if not waiting.exists():
        return False
    queued = drain_request(now=now, stale=stale)
    if queued:
        logger.info("crm.events.drain_kicked")
    return queued


def events_drain(*, batch: int = DRAIN_BATCH, seconds: float = DRAIN_SECONDS) -> dict:
    """The drain task's body (see the module's docstring); returns the outcome counts."""
    from .dispatch import events_process

    started = time.monotonic()
    EventDrain.objects.filter(pk=DRAIN_ROW).update(queued_at=None)  # deliveries from now on queue another
    counts = {"done": 0, "failed": 0, "retrying": 0, "batches": 0}
    while True:
        ids = events_claim(batch)
        if not ids:
            break
        more = len(ids) == batch
        if more:  # a backlog: another worker process may join in (one drain waits, at most)
            drain_request()
        done = events_process(event_ids=ids, claimed=True, deadline=started + DRAIN_MAX_SECONDS)
        for outcome, n in done.items():
            counts[outcome] = counts.get(outcome, 0) + n
        counts["batches"] += 1
        if done.get("released"):  # out of time within the batch: the rest for another drain
            drain_request()
            break
        if not more:
            break  # events stored after the claim queued a drain of their own
        if time.monotonic() - started >= seconds:
            break  # the drain waiting takes the rest, after what else waits in the queue
    return counts


def events_claim(limit: int, *, now: datetime | None = None) -> list[int]:
    """Claim up to ``limit`` claimable events, oldest first; their ids in order."""
    now = now or timezone.now()
    stamp = connection.ops.adapt_datetimefield_value(now)
    stale = connection.ops.adapt_datetimefield_value(now - DRAIN_CLAIM_TIMEOUT)
    with connection.cursor() as cursor:
        cursor.execute(
            _claim_sql(connection.vendor, connection.ops.quote_name),
            [stamp, CrmEvent.Status.PENDING, stale, limit],
        )
        return sorted(row[0] for row in cursor.fetchall())


@functools.cache
def _claim_sql(vendor: str, qn: Callable[[str], str]) -> str:
    table = qn(CrmEvent._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""  # SQLite: one writer at a time
    return (
        f"UPDATE {table} SET {qn('claimed_at')} = %s WHERE {qn('id')} IN ("
        f"SELECT {qn('id')} FROM {table} WHERE {qn('status')} = %s AND {qn('attempts')} = 0 "
        f"AND ({qn('claimed_at')} IS NULL OR {qn('claimed_at')} < %s) "
        f"ORDER BY {qn('id')} LIMIT %s{lock}) RETURNING {qn('id')}"
    )


def claims_renew(event_ids: list[int]) -> None:
    """A drain still working on these events: other drains keep off them."""
    if event_ids:
        CrmEvent.objects.filter(id__in=event_ids, status=CrmEvent.Status.PENDING).update(claimed_at=timezone.now())
