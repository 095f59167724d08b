"""CRM event handlers for tests, referred to by dotted path in CRM_EVENT_HANDLERS.

``calls`` records (handler name, event id) in call order; ``plan`` says what a handler
does on its next calls (a list of exceptions or None, consumed front first; empty: return).
"""
from __future__ import annotations

import threading

calls: list[tuple[str, int]] = []
plan: dict[str, list[BaseException | None]] = {}
_lock = threading.Lock()


def reset() -> None:
    calls.clear()
    plan.clear()


def _run(name: str, event) -> None:
    with _lock:
        calls.append((name, event.id))
        outcome = plan[name].pop(0) if plan.get(name) else None
    if outcome is not None:
        raise outcome


def first(event) -> None:
    _run("first", event)


def second(event) -> None:
    _run("second", event)


FIRST = f"{__name__}.first"
SECOND = f"{__name__}.second"
