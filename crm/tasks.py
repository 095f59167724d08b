"""django-q2 tasks of the CRM adapter: thin, they take ids and call a service."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .dispatch import events_process


def process_events(event_ids: Sequence[int], pending_handlers: Mapping[int, Sequence[str]] | None = None) -> dict:
    """Run the configured handlers on the stored events of one webhook delivery (or on
    the events of a scheduled retry, with the handlers still to run)."""
    return events_process(event_ids=event_ids, pending_handlers=pending_handlers)


def sweep_pending_events() -> int:
    """Every few minutes (a django-q2 schedule): re-queue events whose processing was lost."""
    from .dispatch import events_sweep

    return events_sweep()
