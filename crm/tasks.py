"""django-q2 tasks of the CRM adapter: thin, they take ids and call a service."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .dispatch import events_process


def process_events(event_ids: Sequence[int], pending_handlers: Mapping[int, Sequence[str]] | None = None) -> dict:
    """Run the configured handlers on these stored events: a scheduled retry (with the
    handlers still to run), the sweeper's, or the admin's "process again"."""
    return events_process(event_ids=event_ids, pending_handlers=pending_handlers)


def sweep_pending_events() -> int:
    """Every few minutes (a django-q2 schedule): pick up events whose processing was lost."""
    from .dispatch import events_sweep

    return events_sweep()


def drain_events() -> dict:
    """Process the stored events waiting for it, batch after batch (crm/drain.py): queued
    by webhook intake when no drain is waiting."""
    from .drain import events_drain

    return events_drain()
