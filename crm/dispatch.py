"""Processing of stored CRM events: each event goes to every function listed in
settings.CRM_EVENT_HANDLERS, in order (the way MIDDLEWARE lists middleware), so the CRM
adapter imports none of the apps that consume its events.

Outcomes, per event:

* every handler returned → ``done`` (``processed_at`` set);
* a handler raised TransientError or RateLimited, or the database failed under it →
  that handler is tried again later, the others are not: the event stays ``pending``
  with ``retry_at`` set (in the same statement as its attempt count), and a one-off
  django-q2 schedule runs ``crm.tasks.process_events`` for it with the handlers still to
  run, after ``retry_delay(attempts)`` (30 s, 2 min, 8 min, 32 min; longer when the CRM
  asked for it with Retry-After). The cluster looks at schedules about every 30 s. If
  that schedule is lost (the worker or the database went down before it was written),
  the sweeper runs the event once ``retry_at`` is SWEEP_AFTER overdue. After
  MAX_ATTEMPTS runs it counts as failed;
* a handler raised anything else → the other handlers still run, the event ends
  ``failed`` with the reason, and the failure goes to the agent's execution log.

A failing handler never stops the other events. Processing is at-least-once: a worker
killed mid-task has its task delivered again, so handlers must tolerate seeing an
event twice; they are never called again for an event they handled, short of that.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import lru_cache

from django.conf import settings
from django.db import DatabaseError
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.tasks import schedule

from agents.services import execution_log_write
from integrations.errors import RateLimited, TransientError
from integrations.models import Integration

from .models import CrmEvent

logger = logging.getLogger(__name__)

Handler = Callable[[CrmEvent], None]

PROCESS_TASK = "crm.tasks.process_events"
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 30
RETRY_FACTOR = 4
ERROR_MAX_CHARS = 1000


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


def events_process(*, event_ids: Sequence[int], pending_handlers: Mapping[int, Iterable[str]] | None = None) -> dict:
    """Run the handlers on each still-pending event of ``event_ids``, in id order.

    ``pending_handlers`` ({event id: handler paths}) limits a retry to the handlers that
    failed transiently; without it every handler runs.
    """
    handlers = event_handlers()
    events = list(CrmEvent.objects.filter(id__in=event_ids, status=CrmEvent.Status.PENDING).order_by("id"))
    # one load (and one decryption of credentials) per integration, not per event
    integrations = Integration.objects.in_bulk({event.integration_id for event in events})
    counts = {"done": 0, "failed": 0, "retrying": 0}
    retries: dict[int, list[str]] = {}
    retry_at = 0.0
    for event in events:
        event.integration = integrations[event.integration_id]
        only = set(pending_handlers[event.id]) if pending_handlers and event.id in pending_handlers else None
        outcome, transient, retry_after = _run_handlers(event, handlers, only)
        counts[outcome] += 1
        if transient:
            retries[event.id] = transient
            retry_at = max(retry_at, retry_delay(event.attempts, retry_after))
    if retries:
        schedule(
            PROCESS_TASK,
            sorted(retries),
            pending_handlers=retries,
            next_run=timezone.now() + timedelta(seconds=retry_at),
        )
    logger.info("crm.events.processed", extra={"events": len(events), **counts})
    return counts


def _run_handlers(
    event: CrmEvent, handlers: Sequence[tuple[str, Handler]], only: set[str] | None
) -> tuple[str, list[str], float | None]:
    """Run the handlers on one event and record the outcome on it.

    Returns (outcome, handlers to retry, the longest Retry-After asked for)."""
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
    if transient and attempts < MAX_ATTEMPTS and not permanent:
        event.attempts, event.error = attempts, last_transient
        event.retry_at = timezone.now() + timedelta(seconds=retry_delay(attempts, retry_after))
        base.update(attempts=F("attempts") + 1, error=last_transient, retry_at=event.retry_at)
        logger.warning("crm.event.retrying", extra={"event_id": event.id, "attempts": attempts})
        return "retrying", transient, retry_after
    if not transient and not permanent:
        event.attempts, event.status, event.processed_at = attempts, CrmEvent.Status.DONE, timezone.now()
        base.update(attempts=F("attempts") + 1, status=CrmEvent.Status.DONE, processed_at=event.processed_at, error="")
        return "done", [], None
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
    return "failed", [], None


SWEEP_AFTER = timedelta(minutes=10)
SWEEP_RETRIES_AFTER = timedelta(hours=3)  # events from before retry_at: longer than any retry delay
SWEEP_FRONTIER_LAG = timedelta(minutes=1)  # tasks taken just before the newest one may still run
SWEEP_BATCH = 200


def events_sweep(*, now=None) -> int:
    """Queue events whose processing was lost (a task that died outside the handlers, a
    worker or database outage); run every few minutes by a django-q2 schedule:

    * never tried, received SWEEP_AFTER ago, and not just waiting their turn: the task
      queue is empty, or events received over SWEEP_FRONTIER_LAG after them have been
      taken up (tasks are taken oldest first, so theirs is gone). A long backlog is
      left to drain instead of being queued a second time;
    * retrying, with ``retry_at`` SWEEP_AFTER overdue (the retry's schedule was lost)."""
    from django.db.models import Q
    from django_q.tasks import async_task

    now = now or timezone.now()
    never_tried = Q(attempts=0, received_at__lt=now - SWEEP_AFTER)
    if _task_queue_busy():
        frontier = (
            CrmEvent.objects.exclude(status=CrmEvent.Status.PENDING, attempts=0)
            .order_by("-id")
            .values_list("id", "received_at")
            .first()
        )
        if frontier is None:
            never_tried = Q(pk__in=[])
        else:
            never_tried &= Q(id__lt=frontier[0], received_at__lt=frontier[1] - SWEEP_FRONTIER_LAG)
    stuck = (
        CrmEvent.objects.filter(status=CrmEvent.Status.PENDING)
        .filter(
            never_tried
            | Q(attempts__gt=0, retry_at__lt=now - SWEEP_AFTER)
            | Q(attempts__gt=0, retry_at__isnull=True, received_at__lt=now - SWEEP_RETRIES_AFTER)
        )
        .order_by("id")
        .values_list("id", flat=True)
    )
    ids = list(stuck[:5000])
    for start in range(0, len(ids), SWEEP_BATCH):
        async_task(PROCESS_TASK, ids[start : start + SWEEP_BATCH], save=False)
    if ids:
        logger.warning("crm.events.swept", extra={"events": len(ids)})
    return len(ids)


def _task_queue_busy() -> bool:
    """Whether django-q2's queue holds tasks (the events of a backlog wait in it); when the
    broker cannot tell, assume it does (sweep less rather than twice)."""
    from config.tasks import task_queue_size

    size = task_queue_size()
    return size is None or size > 0
