"""Kommo webhook bodies → normalized CRM changes. Pure functions: no database, no network.

Kommo posts ``application/x-www-form-urlencoded`` with bracket keys in the legacy v2
style: ``leads[status][0][id]=1&leads[status][0][status_id]=142&account[id]=…``.
Reference: https://www.kommo.com/developers/content/webhooks/webhooks/
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
# leads[update][0][custom_fields][0][values][0][value] is 8 deep; a little room above it
MAX_DEPTH = 10
# the body size limit (CRM_WEBHOOK_MAX_BYTES) bounds the work too; this only stops a
# body of nothing but "&" separators from becoming a huge list first
MAX_FIELDS = 20_000

# A deletion carries only ids (leads[delete][0][id]=…&…[status_id]=…), no timestamp, so
# the same entity deleted, restored and deleted again would hash the same. Such changes
# are told apart by the hour they arrived in: a repeated delivery within the hour is one
# change, a deletion an hour later is a new one.
UNTIMED_KINDS = frozenset({"lead_deleted", "contact_deleted"})
UNTIMED_DEDUPE_WINDOW_SECONDS = 3600


class WebhookParseError(ValueError):
    """The body is not a Kommo webhook; the message says why (no body content in it)."""


@dataclass(frozen=True)
class Change:
    kind: str
    entity_type: str
    entity_id: int | None
    lead_id: int | None
    data: dict[str, Any]

    def dedupe_key(self, integration_id: int, *, received_at: float = 0.0) -> str:
        """The same change of the same integration always gives the same key; Kommo's
        changes carry a timestamp (last_modified, created_at) or a unique id, so two
        real changes differ. ``received_at`` (Unix time) only matters for UNTIMED_KINDS."""
        parts: list[Any] = [integration_id, self.kind, self.data]
        if self.kind in UNTIMED_KINDS:
            parts.append(int(received_at // UNTIMED_DEDUPE_WINDOW_SECONDS))
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Delivery:
    account_id: int | None
    subdomain: str
    changes: tuple[Change, ...]
    skipped: int = 0  # items of actions we do not handle, and outgoing messages


# (top-level key, action) → (kind, entity type)
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("leads", "add"): ("lead_added", "lead"),
    ("leads", "update"): ("lead_updated", "lead"),
    ("leads", "status"): ("lead_status_changed", "lead"),
    ("leads", "responsible"): ("lead_responsible_changed", "lead"),
    ("leads", "delete"): ("lead_deleted", "lead"),
    ("leads", "restore"): ("lead_restored", "lead"),
    ("leads", "note"): ("note_added", "note"),
    ("contacts", "add"): ("contact_added", "contact"),
    ("contacts", "update"): ("contact_updated", "contact"),
    ("contacts", "delete"): ("contact_deleted", "contact"),
    ("contacts", "note"): ("note_added", "note"),
    ("message", "add"): ("incoming_message", "message"),
}
_TOP_KEYS = ("leads", "contacts", "message")
_LEAD_ELEMENT_TYPES = frozenset({"2", "lead", "leads"})


def parse_form(body: bytes) -> dict[str, Any]:
    """Bracket-keyed form data → nested dicts (numeric keys stay dict keys, in order)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookParseError("the body is not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise WebhookParseError(
            f"the body is not form data ({'too many fields' if 'fields' in str(exc) else 'bad syntax'})"
        ) from None
    tree: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise WebhookParseError("a key has unbalanced brackets")
        parts = [match.group(1), *_PART.findall(match.group(2))]
        if len(parts) > MAX_DEPTH:
            raise WebhookParseError("a key is nested too deep")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise WebhookParseError("a key is both a value and a group")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise WebhookParseError("a key is both a value and a group")
        node[parts[-1]] = value
    return tree


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _items(group: Any) -> list[dict[str, Any]]:
    if not isinstance(group, dict):
        return []
    return [
        item
        for _, item in sorted(group.items(), key=lambda kv: (_int(kv[0]) is None, _int(kv[0]) or 0, kv[0]))
        if isinstance(item, dict)
    ]


def _note_of(item: dict[str, Any]) -> dict[str, Any]:
    # Kommo nests the note once more: leads[note][0][note][element_id]=…
    note = item.get("note")
    return note if isinstance(note, dict) else item


def _lead_of(entity_type: str, item: dict[str, Any]) -> int | None:
    if entity_type == "lead":
        return _int(item.get("id"))
    if entity_type == "note":
        note = _note_of(item)
        if str(note.get("element_type") or "") in _LEAD_ELEMENT_TYPES:
            return _int(note.get("element_id"))
        return None
    if entity_type == "message":
        # a chat bound to a lead: element_type=2 / entity_type=lead; otherwise only a contact
        if str(item.get("entity_type") or item.get("element_type") or "") in _LEAD_ELEMENT_TYPES:
            return _int(item.get("entity_id") or item.get("element_id"))
        return None
    if entity_type == "contact":
        # a contact change carries its linked leads as linked_leads_id[<id>][ID]=<id>;
        # with several the lead is ambiguous and handlers read data instead
        linked = item.get("linked_leads_id")
        if isinstance(linked, dict) and len(linked) == 1:
            return _int(next(iter(linked)))
    return None


def _entity_id(entity_type: str, item: dict[str, Any]) -> tuple[bool, int | None]:
    """(the item has an id, that id as a number when it is one).

    Chat message ids are UUIDs: the event keeps it in ``data["id"]`` and has no numeric
    entity id."""
    if entity_type == "note":
        raw = _note_of(item).get("id")
    else:
        raw = item.get("id")
    if raw is None or raw == "":
        return False, None
    if entity_type == "message":
        return True, None
    number = _int(raw)
    return number is not None, number


def parse_delivery(body: bytes) -> Delivery:
    tree = parse_form(body)
    account = tree.get("account") if isinstance(tree.get("account"), dict) else {}
    changes: list[Change] = []
    skipped = 0
    for top in _TOP_KEYS:
        group = tree.get(top)
        if not isinstance(group, dict):
            continue
        for action, items in group.items():
            kind_and_type = _KINDS.get((top, action))
            if kind_and_type is None:
                skipped += len(_items(items))  # an action we do not handle
                continue
            for item in _items(items):
                kind, entity_type = kind_and_type
                if entity_type == "message":
                    direction = item.get("type")
                    if direction == "outgoing":
                        # the team (or a Kommo bot) wrote to the lead in a Kommo chat: the
                        # agents app hands such conversations off; nothing answers it
                        kind = "outgoing_message"
                    elif direction != "incoming":
                        skipped += 1
                        continue
                has_id, entity_id = _entity_id(entity_type, item)
                if not has_id:
                    raise WebhookParseError(f"{top}[{action}] has an item without an id")
                changes.append(
                    Change(
                        kind=kind,
                        entity_type=entity_type,
                        entity_id=entity_id,
                        lead_id=_lead_of(entity_type, item),
                        data=item,
                    )
                )
    for top, group in tree.items():
        if top not in _TOP_KEYS and top != "account" and isinstance(group, dict):
            skipped += sum(len(_items(items)) for items in group.values())  # unsorted, tasks, …
    if not changes and not account:
        raise WebhookParseError("the body has no account and no lead, contact or message changes")
    return Delivery(
        account_id=_int(account.get("id")),
        subdomain=str(account.get("subdomain") or ""),
        changes=tuple(changes),
        skipped=skipped,
    )
