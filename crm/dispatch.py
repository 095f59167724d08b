"""Processing of stored CRM events: each event goes to every function listed in
settings.CRM_EVENT_HANDLERS, in order (the way MIDDLEWARE lists middleware), so the CRM
adapter imports none of the apps that consume its events. New events reach it in batches
taken by a drain (crm/drain.py); retries and the admin's "process again" name theirs.

Outcomes, per event:

* every handler returned → ``done`` (``processed_at`` set);
* a handler raised TransientError or RateLimited, or the database failed under it →
  that handler is tried again later, the others are not: the event stays ``pending``
  with ``retry_at`` set, and a one-off django-q2 schedule runs
  ``crm.tasks.process_events`` for it with the handlers still to run, after
  ``retry_delay(attempts)`` (30 s, 2 min, 8 min, 32 min; longer when the CRM asked for it
  with Retry-After); the attempt count, ``retry_at`` and the schedule are written in one
  transaction. The cluster looks at schedules about every 30 s. If that schedule is lost
  anyway (deleted, or its task died), the sweeper runs the event once ``retry_at`` is
  SWEEP_AFTER overdue. After MAX_ATTEMPTS runs it counts as failed;
* a handler raised anything else → the other handlers still run, the event ends
  ``failed`` with the reason, and the failure goes to the agent's execution log.

A failing handler never stops the other events. Processing is at-least-once: a worker
killed mid-task has its task delivered again, so handlers must tolerate seeing an
event twice; they are never called again for an event they handled, short of that.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import lru_cache
from typing import Protocol, TypeVar

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.tasks import schedule

from agents.services import execution_log_write
from integrations.errors import RateLimited, TransientError
from integrations.models import Integration

from .drain import CLAIM_RENEW_SECONDS, claims_renew, drain_kick
from .models import CrmEvent

logger = logging.getLogger(__name__)

Handler = Callable[[CrmEvent], None]
T = TypeVar("T")
W = TypeVar("W", bound="BatchWriter")

PROCESS_TASK = "crm.tasks.process_events"
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 30
RETRY_FACTOR = 4
ERROR_MAX_CHARS = 1000
OUTCOMES_EVERY_SECONDS = 1.0  # a batch's events done are marked at least this often


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before run number ``attempts + 1`` of an event."""
    delay = RETRY_BASE_SECONDS * RETRY_FACTOR ** max(attempts - 1, 0)
    return max(delay, retry_after or 0)


@lru_cache(maxsize=8)
def _load(paths: tuple[str, ...]) -> tuple[tuple[str, Handler], ...]:
    return tuple((path, import_string(path)) for path in paths)


def event_handlers() -> tuple[tuple[str, Handler], ...]:
    """(dotted path, function) of each configured handler, imported once."""
    return _load(tuple(settings.CRM_EVENT_HANDLERS))


def _reason(path: str, exc: BaseException) -> str:
    # typed integration errors never carry secrets (integrations/errors.py)
    return f"{path}: {type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


def events_process(
    *,
    event_ids: Sequence[int],
    pending_handlers: Mapping[int, Iterable[str]] | None = None,
    claimed: bool = False,
    deadline: float | None = None,
) -> dict:
    """Run the handlers on each still-pending event of ``event_ids``, in id order.

    ``pending_handlers`` ({event id: handler paths}) limits a retry to the handlers that
    failed transiently; without it every handler runs. ``claimed``: a drain claimed the
    events (crm/drain.py), and its claim on those not yet run is renewed while it works.
    ``deadline`` (``time.monotonic()``): claimed events not begun by then are let go, for
    another drain (a vendor slow enough to make a batch outlast the task's Q_TIMEOUT);
    they are counted as "released"."""
    handlers = event_handlers()
    events = list(CrmEvent.objects.filter(id__in=event_ids, status=CrmEvent.Status.PENDING).order_by("id"))
    # one load (and one decryption of credentials) per integration, not per event
    integrations = Integration.objects.in_bulk({event.integration_id for event in events})
    counts = {"done": 0, "failed": 0, "retrying": 0}
    renewed = time.monotonic()
    batch = Batch(events)
    for event in events:
        event.integration = integrations[event.integration_id]
        event.batch = batch
    outcomes = _Outcomes(batch)
    begun = 0
    try:
        for position, event in enumerate(events):
            begun = position + 1
            if claimed and deadline is not None and time.monotonic() >= deadline:
                rest = [later.id for later in events[position:]]
                for writer in batch.writers.values():
                    writer.release(rest)
                CrmEvent.objects.filter(id__in=rest, status=CrmEvent.Status.PENDING).update(claimed_at=None)
                counts["released"] = len(rest)
                logger.warning("crm.events.released", extra={"events": len(rest)})
                break
            if claimed and time.monotonic() - renewed >= CLAIM_RENEW_SECONDS:
                claims_renew([later.id for later in events[position:]])
                renewed = time.monotonic()
            only = set(pending_handlers[event.id]) if pending_handlers and event.id in pending_handlers else None
            outcome = _run_handlers(event, handlers, only)
            counts[outcome] += 1
            outcomes.add(event, outcome)
            if outcomes.due():
                outcomes.write()
    except BaseException:
        # what the handlers prepared for the events not begun is given back (a worker
        # killed outright gives nothing back: that is what the claim timeouts are for)
        with contextlib.suppress(DatabaseError):
            for writer in batch.writers.values():
                writer.release([later.id for later in events[begun:]])
        raise
    finally:
        outcomes.write()
    logger.info("crm.events.processed", extra={"events": len(events), **counts})
    return counts


class _Outcomes:
    """The batch's events done, marked every OUTCOMES_EVERY_SECONDS and at its end in one
    statement rather than one each, in one transaction with what the handlers put off
    until then (``batch_writer``). Should the worker die before a write, the events done
    since the last one are run again (handlers take an event twice)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done: list[int] = []
        self.written = time.monotonic()

    def add(self, event: CrmEvent, outcome: str) -> None:
        if outcome == "done":
            self.done.append(event.id)

    def due(self) -> bool:
        return time.monotonic() - self.written >= OUTCOMES_EVERY_SECONDS

    def write(self) -> None:
        self.written = time.monotonic()
        writers = [writer for writer in self.batch.writers.values() if writer.pending()]
        if not self.done and not writers:
            return
        try:
            with transaction.atomic():
                for writer in writers:
                    writer.write()
                if self.done:
                    CrmEvent.objects.filter(id__in=self.done).update(
                        attempts=F("attempts") + 1, status=CrmEvent.Status.DONE, processed_at=timezone.now(), error=""
                    )
        except DatabaseError:
            for writer in writers:
                writer.salvage()
            raise
        self.done = []


class BatchWriter(Protocol):
    """What a handler puts off for its batch (``batch_writer``)."""

    def pending(self) -> bool:
        """Anything to write."""

    def write(self) -> None:
        """Write it, inside the transaction that marks the batch's events done (the
        handler's part comes first); called at least every OUTCOMES_EVERY_SECONDS, before
        an event's failure or retry is recorded, and at the batch's end."""

    def salvage(self) -> None:
        """That transaction failed: keep what matters most, each write on its own, and
        keep the rest pending for the next write (or, should none come, the events are
        run again)."""

    def release(self, event_ids: list[int]) -> None:
        """These events are let go unbegun (``deadline``), for another drain."""


class Batch:
    """The events processed together (a drain's batch, a retry's). A handler that reads
    the same kind of rows for each event reads them once for all (``batch_load``), and
    may put writes off to the batch's next outcome write (``batch_writer``)."""

    __slots__ = ("events", "loaded", "writers")

    def __init__(self, events: list[CrmEvent]) -> None:
        self.events = events
        self.loaded: dict[str, object] = {}
        self.writers: dict[str, BatchWriter] = {}

    def write_deferred(self) -> None:
        """What the handlers put off, in one transaction, now."""
        _Outcomes(self).write()


def batch_load(event: CrmEvent, key: str, load: Callable[[list[CrmEvent]], T]) -> T | None:
    """``load(events)`` for the batch ``event`` is processed in, called once per batch and
    ``key``; None for an event handled outside a batch (the caller reads for it alone).

    Only for rows the batch's own handling does not change (definitions, agents), or that
    only this event's handling changes (its firings): the values are those at the batch's
    first use."""
    batch = getattr(event, "batch", None)
    if batch is None:
        return None
    if key not in batch.loaded:
        batch.loaded[key] = load(batch.events)
    return batch.loaded[key]


def batch_writer(event: CrmEvent, key: str, make: Callable[[Batch], W]) -> W | None:
    """The batch's writer for ``key`` (``make(batch)`` the first time), or None for an
    event handled outside a batch (the caller writes at once)."""
    batch = getattr(event, "batch", None)
    if batch is None:
        return None
    if key not in batch.writers:
        batch.writers[key] = make(batch)
    return batch.writers[key]  # type: ignore[return-value]


def _run_handlers(event: CrmEvent, handlers: Sequence[tuple[str, Handler]], only: set[str] | None) -> str:
    """Run the handlers on one event and record the outcome on it (a retry with its
    schedule; "done" is the caller's to write); returns the outcome."""
    started = time.monotonic()
    transient: list[str] = []
    permanent: list[tuple[str, BaseException]] = []
    retry_after: float | None = None
    last_transient = ""
    for path, handler in handlers:
        if only is not None and path not in only:
            continue
        try:
            handler(event)
        except (TransientError, RateLimited, DatabaseError) as exc:  # the database: down or locked for a while
            transient.append(path)
            last_transient = _reason(path, exc)
            if isinstance(exc, RateLimited) and exc.retry_after:
                retry_after = max(retry_after or 0, exc.retry_after)
        except Exception as exc:
            logger.exception(
                "crm.event.handler_failed", extra={"event_id": event.id, "handler": path, "kind": event.kind}
            )
            permanent.append((path, exc))
    attempts = event.attempts + 1
    base = CrmEvent.objects.filter(pk=event.pk)
    if (transient or permanent) and getattr(event, "batch", None) is not None:
        # what its handlers put off goes first: a failed event is not run again to redo it
        event.batch.write_deferred()
    if transient and attempts < MAX_ATTEMPTS and not permanent:
        event.attempts, event.error = attempts, last_transient
        event.retry_at = timezone.now() + timedelta(seconds=retry_delay(attempts, retry_after))
        with transaction.atomic():  # the attempt and its retry's schedule: both or neither
            base.update(attempts=F("attempts") + 1, error=last_transient, retry_at=event.retry_at)
            schedule(PROCESS_TASK, [event.id], pending_handlers={event.id: transient}, next_run=event.retry_at)
        logger.warning("crm.event.retrying", extra={"event_id": event.id, "attempts": attempts})
        return "retrying"
    if not transient and not permanent:  # written by the caller, with the batch's others
        event.attempts, event.status, event.processed_at = attempts, CrmEvent.Status.DONE, timezone.now()
        return "done"
    # A permanent failure ends the event even when another handler failed only
    # transiently (rare: two handlers broken on one event); the error names both.
    reasons = [_reason(path, exc) for path, exc in permanent]
    if transient and permanent:
        reasons.append(f"not retried: {', '.join(transient)}")
    elif transient:
        reasons.append(f"gave up after {attempts} attempts: {last_transient}")
    error = "; ".join(reasons)[:ERROR_MAX_CHARS]
    event.attempts, event.status, event.error = attempts, CrmEvent.Status.FAILED, error
    base.update(attempts=F("attempts") + 1, status=CrmEvent.Status.FAILED, error=error)
    execution_log_write(
        agent=event.integration.agent_id,
        kind="webhook",
        status="failed",
        ref_type="crm_event",
        ref_id=event.id,
        crm_lead_id=event.lead_id,
        detail={
            "kind": event.kind,
            "entity_type": event.entity_type,
            "entity_id": event.entity_id,
            "integration_id": event.integration_id,
            "handlers": [path for path, _ in permanent] + transient,
            "attempts": attempts,
        },
        error=error,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    return "failed"


SWEEP_AFTER = timedelta(minutes=10)
SWEEP_RETRIES_AFTER = timedelta(hours=3)  # events from before retry_at: longer than any retry delay
SWEEP_BATCH = 200


def events_sweep(*, now=None) -> int:
    """Pick up events whose processing was lost; run every few minutes by a django-q2
    schedule (the worker's dispatcher thread catches most of them within seconds already,
    crm/drain.py; this is the net under it, and under a worker run without it):

    * never tried, waiting SWEEP_AFTER: a drain is queued, unless one queued less than
      SWEEP_AFTER ago still waits for its turn (a backlog in the task queue);
    * retrying, with ``retry_at`` SWEEP_AFTER overdue (the retry's schedule was lost):
      queued by id, with every handler.

    Returns how many retrying events were queued, plus one for a drain queued."""
    from django.db.models import Q
    from django_q.tasks import async_task

    now = now or timezone.now()
    drained = drain_kick(now=now, waited=SWEEP_AFTER, stale=SWEEP_AFTER)
    stuck = (
        CrmEvent.objects.filter(status=CrmEvent.Status.PENDING, attempts__gt=0)
        .filter(
            Q(retry_at__lt=now - SWEEP_AFTER) | Q(retry_at__isnull=True, received_at__lt=now - SWEEP_RETRIES_AFTER)
        )
        .order_by("id")
        .values_list("id", flat=True)
    )
    ids = list(stuck[:5000])
    for start in range(0, len(ids), SWEEP_BATCH):
        async_task(PROCESS_TASK, ids[start : start + SWEEP_BATCH], save=False)
    if ids or drained:
        logger.warning("crm.events.swept", extra={"events": len(ids), "drain_queued": drained})
    return len(ids) + int(drained)
