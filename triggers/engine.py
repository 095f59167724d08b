"""Condition evaluation: what an event shows (``Facts``) tested against a trigger's
conditions, with an explanation for each test. No database and no network here: the
facts come with loaders for what the event itself does not carry (a contact's fields
on a lead event, the lead on a note event), which the caller supplies.

Every subject's value is a list of plain values (a custom field may hold several, a
lead several tags, a scalar is a list of one, an unset one an empty list), so each
operator has one meaning for every subject:

* ``equals`` — one of the values equals the value (text compared without case and
  surrounding spaces, numbers as numbers, a stage by status and, when given, pipeline);
  ``not_equals`` — none does; ``in`` / ``not_in`` — the same with a list of values;
* ``contains`` — a text value contains it (a tag list: has that tag);
* ``gt`` ``gte`` ``lt`` ``lte`` — the first value compared as a number (a time of day as
  ``HH:MM``); a value that is not a number fails the test;
* ``is_empty`` / ``is_not_empty`` — no value (an empty text counts as none);
* ``changed`` — the values differ from the previous ones; ``changed_to`` — changed and
  now equal to the value; ``changed_from`` — changed and equal to it before. The
  previous value comes from the event (Kommo sends the old stage and the old
  responsible user) or from the last event seen about the lead (``LeadState``); when
  there is none, a change test fails and says so.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .schemas import (
    CHANGE_OPERATORS,
    DAYS,
    OPERATORS,
    Subject,
    custom_field_of,
    subject_of,
)

UNKNOWN = object()  # the facts cannot tell this subject

# --- normalising the CRM's shapes ----------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or value in (None, ""):
        return None
    if isinstance(value, int | float):
        return value
    try:
        number = float(str(value).replace(",", ".").replace(" ", ""))
    except ValueError:
        return None
    if math.isnan(number) or math.isinf(number):
        return None
    return int(number) if number.is_integer() else number


def plain(value: Any) -> str:
    """A custom field value as text, the same whether it came from a webhook (always
    text) or from the API (typed): true → "1", 15000.0 → "15000"."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _listed(group: Any) -> list[Any]:
    """Kommo's form-encoded lists arrive as {"0": …, "1": …}; JSON lists stay lists."""
    if isinstance(group, Mapping):
        return [group[key] for key in sorted(group, key=lambda k: (_int(k) is None, _int(k) or 0, k))]
    if isinstance(group, list | tuple):
        return list(group)
    return []


def _webhook_custom_fields(raw: Any) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for item in _listed(raw):
        if not isinstance(item, Mapping) or _int(item.get("id")) is None:
            continue
        values = []
        for value in _listed(item.get("values")):
            if isinstance(value, Mapping):
                value = value.get("value")
            if value not in (None, ""):
                values.append(plain(value))
        fields[str(_int(item["id"]))] = values
    return fields


def _webhook_tags(raw: Any) -> list[str]:
    return [str(t.get("name")) for t in _listed(raw) if isinstance(t, Mapping) and t.get("name")]


def lead_from_webhook(data: Mapping[str, Any]) -> dict[str, Any]:
    """A lead as a Kommo lead webhook shows it, normalised (see ``lead_from_api``)."""
    return {
        "id": _int(data.get("id")),
        "name": str(data.get("name") or ""),
        "price": _number(data.get("price")),
        "pipeline_id": _int(data.get("pipeline_id")),
        "status_id": _int(data.get("status_id")),
        "responsible_user_id": _int(data.get("responsible_user_id")),
        "tags": _webhook_tags(data.get("tags")),
        "cf": _webhook_custom_fields(data.get("custom_fields")),
    }


def lead_from_api(lead) -> dict[str, Any]:
    """A crm.client.Lead, normalised like ``lead_from_webhook``."""
    return {
        "id": lead.id,
        "name": lead.name or "",
        "price": _number(lead.price),
        "pipeline_id": lead.pipeline_id or None,
        "status_id": lead.status_id or None,
        "responsible_user_id": lead.responsible_user_id,
        "tags": [tag.name for tag in lead.tags],
        "cf": {str(v.field_id): [plain(x) for x in v.values if x not in (None, "")] for v in lead.custom_fields},
        "main_contact_id": lead.main_contact_id,
    }


def contact_from_webhook(data: Mapping[str, Any]) -> dict[str, Any]:
    fields = _webhook_custom_fields(data.get("custom_fields"))
    codes = {
        str(_int(item.get("id"))): str(item.get("code") or "")
        for item in _listed(data.get("custom_fields"))
        if isinstance(item, Mapping)
    }
    return {
        "id": _int(data.get("id")),
        "name": str(data.get("name") or ""),
        "first_name": str(data.get("first_name") or ""),
        "responsible_user_id": _int(data.get("responsible_user_id")),
        "tags": _webhook_tags(data.get("tags")),
        "cf": fields,
        "phones": [v for fid, values in fields.items() if codes.get(fid) == "PHONE" for v in values],
        "emails": [v for fid, values in fields.items() if codes.get(fid) == "EMAIL" for v in values],
    }


def contact_from_api(contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "name": contact.name or "",
        "first_name": contact.first_name or "",
        "responsible_user_id": contact.responsible_user_id,
        "tags": [],
        "cf": {str(v.field_id): [plain(x) for x in v.values if x not in (None, "")] for v in contact.custom_fields},
        "phones": list(contact.phones),
        "emails": list(contact.emails),
    }


def lead_values(lead: Mapping[str, Any]) -> dict[str, list]:
    """A normalised lead → {subject: values}: what LeadState keeps and "changed" compares."""
    stage = [[lead["pipeline_id"], lead["status_id"]]] if lead.get("status_id") else []
    values: dict[str, list] = {
        "pipeline": [lead["pipeline_id"]] if lead.get("pipeline_id") else [],
        "status": stage,
        "price": [] if lead.get("price") is None else [lead["price"]],
        "name": [lead["name"]] if lead.get("name") else [],
        "tags": sorted(lead.get("tags") or [], key=str.casefold),
        "responsible_user": [lead["responsible_user_id"]] if lead.get("responsible_user_id") else [],
    }
    for field_id, field_values in (lead.get("cf") or {}).items():
        values[f"lead.cf.{field_id}"] = list(field_values)
    return values


def contact_values(contact: Mapping[str, Any]) -> dict[str, list]:
    values: dict[str, list] = {
        "contact.name": [contact["name"]] if contact.get("name") else [],
        "contact.tags": sorted(contact.get("tags") or [], key=str.casefold),
    }
    for field_id, field_values in (contact.get("cf") or {}).items():
        values[f"contact.cf.{field_id}"] = list(field_values)
    return values


# --- facts ---------------------------------------------------------------------------------


@dataclass
class Facts:
    """What is known when evaluating: the event's own values, the previous ones, and
    loaders for the lead or contact when the event does not carry them."""

    event: str
    at: datetime  # when the event happened (received), aware
    zone: ZoneInfo
    lead: dict[str, Any] | None = None
    contact: dict[str, Any] | None = None
    message_text: str | None = None
    note_text: str | None = None
    previous: dict[str, list] | None = None  # subject → values before this event; None: unknown
    previous_complete: bool = True  # False: ``previous`` holds only what the event itself told
    load_lead: Callable[[], dict[str, Any] | None] | None = None
    load_contact: Callable[[], dict[str, Any] | None] | None = None
    _values: dict[str, list] = field(default_factory=dict, init=False, repr=False)
    _loaded: set[str] = field(default_factory=set, init=False, repr=False)

    def _ensure(self, what: str) -> None:
        if what in self._loaded:
            return
        self._loaded.add(what)
        if what == "lead":
            if self.lead is None and self.load_lead is not None:
                self.lead = self.load_lead()
            if self.lead is not None:
                self._values.update(lead_values(self.lead))
        else:
            if self.contact is None and self.load_contact is not None:
                self.contact = self.load_contact()
            if self.contact is not None:
                self._values.update(contact_values(self.contact))

    def values(self, subject: str) -> list | object:
        """The subject's current values, or UNKNOWN."""
        if subject == "time_of_day":
            return [self.at.astimezone(self.zone).strftime("%H:%M")]
        if subject == "weekday":
            return [DAYS[self.at.astimezone(self.zone).weekday()]]
        if subject == "message.text":
            return UNKNOWN if self.message_text is None else [self.message_text]
        if subject == "note.text":
            return UNKNOWN if self.note_text is None else [self.note_text]
        if subject == "previous_status":
            return self.previous_values("status")
        what = "contact" if subject.startswith("contact.") else "lead"
        self._ensure(what)
        entity = self.lead if what == "lead" else self.contact
        if entity is None:
            return UNKNOWN
        if subject in self._values:
            return self._values[subject]
        return [] if custom_field_of(subject) else UNKNOWN

    def previous_values(self, subject: str) -> list | object:
        if self.previous is None or subject not in self.previous:
            if self.previous is not None and self.previous_complete and custom_field_of(subject):
                return []  # the field had no value then
            return UNKNOWN
        return self.previous[subject]


# --- comparing -----------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on", "y", "да"}


def _text(value: Any) -> str:
    return str(value).strip().casefold()


def _equal(seen: Any, expected: Any, kind: str) -> bool:
    if kind in ("stage", "previous_stage"):
        pipeline, status = seen
        return status == expected.get("status_id") and expected.get("pipeline_id") in (None, pipeline)
    if kind in ("id", "number"):
        a, b = _number(seen), _number(expected)
        return a is not None and a == b
    if kind == "custom":
        if isinstance(expected, bool):
            return (_text(seen) in _TRUE) == expected
        if isinstance(expected, int | float):
            return _number(seen) == expected
        return _text(seen) == _text(expected)
    return _text(seen) == _text(expected)


def _any_equal(values: Sequence[Any], expected: Any, kind: str) -> bool:
    return any(_equal(value, expected, kind) for value in values)


def _order(values: Sequence[Any], operator: str, expected: Any, kind: str) -> tuple[bool | None, str]:
    """(result, problem) of gt/gte/lt/lte; result None when the value cannot be compared."""
    if not values:
        return None, "has no value"
    if kind == "time":
        a, b = str(values[0]), str(expected)
    else:
        a, b = _number(values[0]), _number(expected)
        if a is None or b is None:
            return None, "is not a number"
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[operator], ""


def _same(before: Sequence[Any], after: Sequence[Any], kind: str) -> bool:
    if kind in ("text", "custom", "tags"):
        return sorted(map(_text, before)) == sorted(map(_text, after))
    if kind in ("id", "number"):
        return [_number(v) for v in before] == [_number(v) for v in after]
    return [list(v) if isinstance(v, tuple) else v for v in before] == [
        list(v) if isinstance(v, tuple) else v for v in after
    ]


def show_values(values: Any, kind: str) -> str:
    if values is UNKNOWN:
        return "unknown"
    if not values:
        return "empty"
    if kind in ("stage", "previous_stage"):
        return ", ".join(f"status {s} in pipeline {p}" for p, s in values)
    return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values)


def show_expected(value: Any, kind: str) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(show_expected(v, kind) for v in value) + "]"
    if isinstance(value, dict):
        if value.get("pipeline_id") is None:
            return f"status {value.get('status_id')} in any pipeline"
        return f"status {value.get('status_id')} in pipeline {value.get('pipeline_id')}"
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


_PHRASES = {
    "equals": "equal to",
    "not_equals": "other than",
    "in": "one of",
    "not_in": "none of",
    "contains": "containing",
    "gt": "greater than",
    "gte": "at least",
    "lt": "less than",
    "lte": "at most",
}


@dataclass(frozen=True)
class Result:
    """One test or group, evaluated: passed, what was seen, and a sentence saying why."""

    path: str
    passed: bool
    reason: str
    field: str = ""
    operator: str = ""
    value: Any = None
    seen: str = ""
    children: tuple[Result, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "passed": self.passed, "reason": self.reason}
        if self.field:
            data.update(field=self.field, operator=self.operator, value=self.value, seen=self.seen)
        if self.children:
            data["children"] = [child.as_dict() for child in self.children]
        return data


def test(condition: Mapping[str, Any], facts: Facts, path: str) -> Result:
    """One condition against the facts."""
    name, operator, expected = condition["field"], condition["operator"], condition.get("value")
    subject: Subject | None = subject_of(name)
    common = {"path": path, "field": name, "operator": operator, "value": expected}
    if subject is None or operator not in OPERATORS:  # stored before a subject was retired
        return Result(passed=False, reason=f"{name} {operator} is not a known test", **common)
    kind = subject.kind
    label = subject.label[0].upper() + subject.label[1:]
    be = "are" if kind == "tags" else "is"
    current = facts.values(name)
    seen = show_values(current, kind)
    if current is UNKNOWN:
        why = "this event does not tell it" if subject.events is None else "not part of this event"
        if subject.name == "previous_status":
            why = "the previous stage is not known (the first event seen for this lead)"
        return Result(passed=False, reason=f"{label} {be} unknown: {why}", seen=seen, **common)
    if operator in CHANGE_OPERATORS:
        before = facts.previous_values(name)
        if before is UNKNOWN:
            return Result(
                passed=False,
                reason=f"{label}: the previous value is not known (the first event seen for this lead)",
                seen=seen,
                **common,
            )
        was = show_values(before, kind)
        changed = not _same(before, current, kind)
        if not changed:
            return Result(passed=False, reason=f"{label} did not change (still {seen})", seen=seen, **common)
        if operator == "changed":
            return Result(passed=True, reason=f"{label} changed from {was} to {seen}", seen=seen, **common)
        target = current if operator == "changed_to" else before
        ok = _any_equal(target, expected, kind)
        word = "to" if operator == "changed_to" else "from"
        verdict = "" if ok else f", not {word} {show_expected(expected, kind)}"
        return Result(passed=ok, reason=f"{label} changed from {was} to {seen}{verdict}", seen=seen, **common)
    if operator == "is_empty" or operator == "is_not_empty":
        empty = not [v for v in current if str(v).strip()]
        ok = empty if operator == "is_empty" else not empty
        return Result(passed=ok, reason=f"{label} {be} {seen}", seen=seen, **common)
    phrase = f"{_PHRASES[operator]} {show_expected(expected, kind)}"
    if operator in ("gt", "gte", "lt", "lte"):
        ok, problem = _order(current, operator, expected, kind)
        if ok is None:
            return Result(passed=False, reason=f"{label} {problem} ({seen}), so not {phrase}", seen=seen, **common)
    elif operator == "equals":
        ok = _any_equal(current, expected, kind)
        if kind == "custom" and expected is False and not current:
            ok = True  # an unticked checkbox arrives as no value at all
    elif operator == "not_equals":
        ok = not _any_equal(current, expected, kind)
    elif operator == "in":
        ok = any(_any_equal(current, item, kind) for item in expected)
    elif operator == "not_in":
        ok = not any(_any_equal(current, item, kind) for item in expected)
    else:  # contains
        if kind in ("tags",):
            ok = _any_equal(current, expected, "text")
        else:
            ok = any(_text(expected) in _text(value) for value in current)
    if ok:
        return Result(passed=True, reason=f"{label} {be} {seen}: {phrase}", seen=seen, **common)
    if operator == "not_equals":
        return Result(passed=False, reason=f"{label} {be} {seen}, which it must not be", seen=seen, **common)
    if operator == "not_in":
        listed = show_expected(expected, kind)
        return Result(passed=False, reason=f"{label} {be} {seen}, which is in {listed}", seen=seen, **common)
    return Result(passed=False, reason=f"{label} {be} {seen}, not {phrase}", seen=seen, **common)


def evaluate(conditions: Sequence[Any], facts: Facts, *, explain_all: bool = False, path: str = "conditions") -> Result:
    """The conditions (all must hold) against the facts.

    Stops at the first test that fails unless ``explain_all`` (the dry run), and returns
    a Result whose ``children`` are the tests looked at and whose ``reason`` is, for a
    failure, the first failing test's."""
    return _group("all", conditions, facts, explain_all, path)


def _group(mode: str, items: Sequence[Any], facts: Facts, explain_all: bool, path: str) -> Result:
    children: list[Result] = []
    first_failure: Result | None = None
    first_success: Result | None = None
    for index, item in enumerate(items):
        here = f"{path}[{index}]"
        if "any" in item or "all" in item:
            key = "any" if "any" in item else "all"
            result = _group(key, item[key], facts, explain_all, f"{here}.{key}")
        else:
            result = test(item, facts, here)
        children.append(result)
        if result.passed and first_success is None:
            first_success = result
        if not result.passed and first_failure is None:
            first_failure = result
        if not explain_all and ((mode == "all" and not result.passed) or (mode == "any" and result.passed)):
            break
    if mode == "all":
        passed = first_failure is None
        reason = "every condition holds" if passed else first_failure.reason
        if not items:
            reason = "no conditions: every event of this kind matches"
    else:
        passed = first_success is not None
        reason = (
            first_success.reason
            if passed
            else "none of these holds: " + "; ".join(child.reason for child in children)
        )
    return Result(path=path, passed=passed, reason=reason, children=tuple(children))


def first_failure(result: Result) -> Result | None:
    """The test that decided a failed evaluation (a failed "any" group is itself it)."""
    if result.passed:
        return None
    for child in result.children:
        if not child.passed:
            if child.field or not child.children or child.path.endswith(".any"):
                return child
            return first_failure(child) or child
    return result
