"""Loop prevention: a trigger's own change to the CRM comes back as a webhook event.

Before an action changes the lead (a stage, a field, tags, a note), it records an
``OwnChange``: the lead, the event kinds that will report it, what such an event will
show (the stage it set, the value, the tags, the note's text), the trigger, and the
chain depth. When an event about that lead arrives within OWN_CHANGE_WINDOW and shows
what a recorded change set, the event is that change coming back, and its *cause* is
the recorded trigger and depth. Then:

* the trigger that caused it is not evaluated on it (a rule never re-fires on its own
  change: "status changed → change status" cannot loop);
* other triggers may react (a chain: A moves the lead, B reacts to the new stage), but
  only up to MAX_CHAIN_DEPTH changes deep, which ends cycles between triggers
  (A → B → A → …) after a few hops;
* the execution log says which, for every trigger it skipped this way.

A person changing the same lead in the window to the same value would be taken as the
trigger's change: the cost is that the causing trigger does not fire on it, which it
would have done already.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.models import Integration

from .engine import UNKNOWN, Facts, _same
from .models import OwnChange
from .schemas import subject_of

OWN_CHANGE_WINDOW = timedelta(minutes=30)
OWN_CHANGE_KEEP = timedelta(days=1)
MAX_CHAIN_DEPTH = 3


@dataclass(frozen=True)
class Cause:
    trigger_id: int | None
    depth: int
    change_id: int

    def as_dict(self) -> dict[str, Any]:
        return {"trigger_id": self.trigger_id, "depth": self.depth, "own_change_id": self.change_id}


def own_change_record(
    *,
    integration: Integration,
    lead_id: int | None,
    trigger_id: int | None,
    depth: int,
    kinds: list[str],
    expect: Mapping[str, Any],
) -> OwnChange | None:
    if not lead_id:
        return None
    return OwnChange.objects.create(
        integration=integration,
        crm_lead_id=lead_id,
        trigger_id=trigger_id,
        depth=depth,
        kinds=list(kinds),
        expect=dict(expect),
    )


def _shows(expect: Mapping[str, Any], facts: Facts) -> bool:
    """The event's own data shows what the change set (never reads the CRM for it)."""
    for key, want in expect.items():
        if key in ("tags_has", "tags_not"):
            if facts.lead is None:
                return False
            have = {tag.casefold() for tag in facts.lead.get("tags") or []}
            wanted = {tag.casefold() for tag in want}
            if key == "tags_has" and not wanted <= have:
                return False
            if key == "tags_not" and wanted & have:
                return False
            continue
        if key == "note.text":
            if facts.note_text is None or facts.note_text.strip() != str(want[0]).strip():
                return False
            continue
        if facts.lead is None:
            return False
        subject = subject_of(key)
        seen = facts.values(key)
        if subject is None or seen is UNKNOWN or not _same(want, seen, subject.kind):
            return False
    return True


def find_cause(
    *,
    integration_id: int,
    lead_id: int | None,
    kind: str,
    event_id: int,
    facts: Facts,
    now=None,
    recent: list[OwnChange] | None = None,
) -> Cause | None:
    """The trigger change this event reports, if it reports one (the deepest that fits).

    A change is reported once per event kind: the first event of a kind that shows it
    takes it (the same event, evaluated again, still does), so a person's later edit
    that happens to show the same value is not mistaken for it. ``recent``: the lead's
    changes as ``recent_changes`` reads them, when the caller read them already (for a
    batch of events: a change taken meanwhile is told by ``_take``, which reads it again)."""
    if not lead_id:
        return None
    if recent is None:
        recent = recent_changes([(integration_id, lead_id)], now=now).get((integration_id, lead_id), [])
    for change in recent:
        taken_by = change.matched.get(kind)
        if kind not in change.kinds or taken_by not in (None, event_id) or not _shows(change.expect, facts):
            continue
        if taken_by is None and not _take(change.pk, kind, event_id):
            continue  # another event of this kind took it a moment ago
        return Cause(trigger_id=change.trigger_id, depth=change.depth, change_id=change.pk)
    return None


def recent_changes(leads: list[tuple[int, int]], *, now=None) -> dict[tuple[int, int], list[OwnChange]]:
    """{(integration id, lead id): its changes within OWN_CHANGE_WINDOW, deepest first}."""
    now = now or timezone.now()
    found: dict[tuple[int, int], list[OwnChange]] = {}
    pairs = sorted(set(leads))
    if not pairs:
        return found
    wanted = functools.reduce(operator.or_, (Q(integration_id=i, crm_lead_id=lead) for i, lead in pairs))
    changes = OwnChange.objects.filter(wanted, created_at__gte=now - OWN_CHANGE_WINDOW).order_by("-depth", "-id")
    for change in changes:
        found.setdefault((change.integration_id, change.crm_lead_id), []).append(change)
    return found


def _take(change_id: int, kind: str, event_id: int) -> bool:
    with transaction.atomic():
        change = OwnChange.objects.select_for_update().get(pk=change_id)
        if change.matched.get(kind) not in (None, event_id):
            return False
        change.matched = {**change.matched, kind: event_id}
        change.save(update_fields=["matched"])
        return True


def forget_old_changes(*, now=None) -> int:
    """Delete recorded changes past any use (a django-q2 schedule runs this daily)."""
    now = now or timezone.now()
    deleted, _ = OwnChange.objects.filter(created_at__lt=now - OWN_CHANGE_KEEP).delete()
    return deleted
