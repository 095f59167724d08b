"""Shapes of a trigger's event, conditions and actions (docs/json-fields.md).

A trigger listens to one *event*; its *conditions* are a list that must all hold, each
item a test ``{"field", "operator", "value"}`` or a group ``{"any": [...]}`` /
``{"all": [...]}`` (groups nest up to MAX_GROUP_DEPTH); its *actions* are typed objects
(``{"type": "create_task", ...}``) from the :data:`ACTIONS` registry, done in order.

These checks need nothing but the value. Checks against the CRM (does field 123 exist,
is status 5 in pipeline 7, is integration 9 the agent's) need the agent and run in the
services (triggers/validation.py).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from config.validation import Loc, Problem, Registry, Schema, check_schema, check_typed_list, show

# trigger event → the CRM event kind (crm.models.CrmEvent.Kind) it listens to
EVENTS: dict[str, str] = {
    "lead_added": "A lead was created",
    "lead_status_changed": "A lead moved to another stage",
    "lead_field_changed": "A lead's field changed",
    "lead_responsible_changed": "A lead got another responsible user",
    "note_added": "A note was added to a lead",
    "contact_added": "A contact was created",
    "contact_updated": "A contact changed",
    "incoming_message": "The lead wrote a message",
}
EVENT_KINDS: dict[str, str] = {
    "lead_added": "lead_added",
    "lead_status_changed": "lead_status_changed",
    "lead_field_changed": "lead_updated",
    "lead_responsible_changed": "lead_responsible_changed",
    "note_added": "note_added",
    "contact_added": "contact_added",
    "contact_updated": "contact_updated",
    "incoming_message": "incoming_message",
}
KIND_EVENTS: dict[str, str] = {kind: event for event, kind in EVENT_KINDS.items()}
LEAD_EVENTS = frozenset({"lead_added", "lead_status_changed", "lead_field_changed", "lead_responsible_changed"})
CONTACT_EVENTS = frozenset({"contact_added", "contact_updated"})

# Operators and whether they take a value.
OPERATORS: dict[str, bool] = {
    "equals": True,
    "not_equals": True,
    "in": True,
    "not_in": True,
    "contains": True,
    "gt": True,
    "gte": True,
    "lt": True,
    "lte": True,
    "is_empty": False,
    "is_not_empty": False,
    "changed": False,
    "changed_to": True,
    "changed_from": True,
}
LIST_OPERATORS = frozenset({"in", "not_in"})
CHANGE_OPERATORS = frozenset({"changed", "changed_to", "changed_from"})
ORDER_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})

WON, LOST = 142, 143  # the closing stages, the same ids in every pipeline
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_GROUP_DEPTH = 3
# \Z, not $: "$" also matches before a trailing newline ("09:00\n", "lead.cf.5\n")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d\Z")
_CF = re.compile(r"^(lead|contact)\.cf\.([1-9]\d{0,17})\Z")

_EQUALITY = frozenset({"equals", "not_equals", "in", "not_in"})
_EMPTINESS = frozenset({"is_empty", "is_not_empty"})


@dataclass(frozen=True)
class SubjectKind:
    """How a kind of subject is compared: its operators and the value each takes."""

    operators: frozenset[str]
    value_help: str


KINDS: dict[str, SubjectKind] = {
    "stage": SubjectKind(_EQUALITY | CHANGE_OPERATORS, '{"pipeline_id": 6213074, "status_id": 48293914}'),
    "previous_stage": SubjectKind(_EQUALITY, '{"pipeline_id": 6213074, "status_id": 48293914}'),
    "id": SubjectKind(_EQUALITY | _EMPTINESS | CHANGE_OPERATORS, "an id (a whole number)"),
    "number": SubjectKind(_EQUALITY | ORDER_OPERATORS | _EMPTINESS | CHANGE_OPERATORS, "a number"),
    "text": SubjectKind(_EQUALITY | {"contains"} | _EMPTINESS | CHANGE_OPERATORS, "a text"),
    "tags": SubjectKind(frozenset({"contains", "in", "not_in", "is_empty", "is_not_empty", "changed"}), "a tag name"),
    "custom": SubjectKind(frozenset(OPERATORS), "a text, number or true/false"),
    "time": SubjectKind(frozenset({"equals", "gt", "gte", "lt", "lte"}), 'a time of day as "HH:MM"'),
    "weekday": SubjectKind(_EQUALITY, f"a weekday: {', '.join(DAYS)}"),
}


@dataclass(frozen=True)
class Subject:
    name: str
    kind: str
    label: str
    events: frozenset[str] | None = None  # None: every event that concerns a lead


SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        Subject("pipeline", "id", "the lead's pipeline"),
        Subject("status", "stage", "the lead's stage (pipeline and status)"),
        Subject("previous_status", "previous_stage", "the stage the lead left", LEAD_EVENTS - {"lead_added"}),
        Subject("price", "number", "the lead's price (budget)"),
        Subject("name", "text", "the lead's name"),
        Subject("tags", "tags", "the lead's tags"),
        Subject("responsible_user", "id", "the lead's responsible user"),
        Subject("contact.name", "text", "the contact's name"),
        Subject("contact.tags", "tags", "the contact's tags"),
        Subject("message.text", "text", "the message's text", frozenset({"incoming_message"})),
        Subject("note.text", "text", "the note's text", frozenset({"note_added"})),
        Subject("time_of_day", "time", "the time the event happened, in the agent's time zone", frozenset(EVENTS)),
        Subject("weekday", "weekday", "the weekday the event happened, in the agent's time zone", frozenset(EVENTS)),
    )
}


def subject_of(field: str) -> Subject | None:
    """The subject a condition's ``field`` names: a fixed one or ``lead.cf.<id>`` /
    ``contact.cf.<id>`` (a custom field by its CRM id)."""
    subject = SUBJECTS.get(field)
    if subject is not None:
        return subject
    match = _CF.match(field)
    if match:
        return Subject(field, "custom", f"{match.group(1)} field {match.group(2)}")
    return None


def custom_field_of(field: str) -> tuple[str, int] | None:
    """("lead" | "contact", field id) of a custom-field subject, else None."""
    match = _CF.match(field)
    return (match.group(1), int(match.group(2))) if match else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_one(kind: str, value: Any, loc: Loc) -> list[Problem]:
    """Problems of one value (not a list) for a subject of ``kind``."""
    if kind in ("stage", "previous_stage"):
        if not isinstance(value, dict):
            return [(loc, f"expected a stage such as {KINDS[kind].value_help}, got {show(value)}")]
        problems: list[Problem] = []
        unknown = set(value) - {"pipeline_id", "status_id"}
        problems += [(loc + (key,), "unknown key") for key in sorted(unknown)]
        status = value.get("status_id")
        pipeline = value.get("pipeline_id")
        if not (isinstance(status, int) and not isinstance(status, bool) and status >= 1):
            problems.append((loc + ("status_id",), f"expected a status id (a whole number), got {show(status)}"))
        if pipeline is None:
            if status not in (WON, LOST):
                problems.append(
                    (
                        loc + ("pipeline_id",),
                        "this field is required: status ids belong to a pipeline "
                        f"(only {WON} won and {LOST} lost are the same in every pipeline)",
                    )
                )
        elif not (isinstance(pipeline, int) and not isinstance(pipeline, bool) and pipeline >= 1):
            problems.append((loc + ("pipeline_id",), f"expected a pipeline id (a whole number), got {show(pipeline)}"))
        return problems
    if kind == "id":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return []
        return [(loc, f"expected an id (a whole number), got {show(value)}")]
    if kind == "number":
        return [] if _is_number(value) else [(loc, f"expected a number, got {show(value)}")]
    if kind in ("text", "tags"):
        if isinstance(value, str) and value.strip():
            return []
        return [(loc, f"expected {KINDS[kind].value_help}, got {show(value)}")]
    if kind == "custom":
        if isinstance(value, str | bool) or _is_number(value):
            return []
        return [(loc, f"expected a text, number or true/false, got {show(value)}")]
    if kind == "time":
        if isinstance(value, str) and _HHMM.match(value):
            return []
        return [(loc, f'expected a time of day as "HH:MM" (00:00–23:59), got {show(value)}')]
    if kind == "weekday":
        return [] if value in DAYS else [(loc, f"expected one of {', '.join(DAYS)}, got {show(value)}")]
    raise AssertionError(kind)


class Condition(Schema):
    """One test: the subject named by ``field``, an operator and, for most, a value."""

    field: str = Field(min_length=1)
    operator: str
    value: Any = None

    def problems(self) -> list[Problem]:
        subject = subject_of(self.field)
        if subject is None:
            known = ", ".join([*SUBJECTS, "lead.cf.<field id>", "contact.cf.<field id>"])
            return [(("field",), f"unknown field {show(self.field)} (known: {known})")]
        if self.operator not in OPERATORS:
            return [(("operator",), f"unknown operator {show(self.operator)} (known: {', '.join(OPERATORS)})")]
        kind = KINDS[subject.kind]
        if self.operator not in kind.operators:
            allowed = ", ".join(op for op in OPERATORS if op in kind.operators)
            return [(("operator",), f"{self.operator!r} does not apply to {subject.label} (use {allowed})")]
        takes_value = OPERATORS[self.operator]
        if not takes_value:
            return [(("value",), f"operator {self.operator!r} takes no value")] if self.value is not None else []
        if self.value is None:
            return [(("value",), f"operator {self.operator!r} needs a value: {kind.value_help}")]
        if self.operator in LIST_OPERATORS:
            if not isinstance(self.value, list) or not self.value:
                message = f"operator {self.operator!r} needs a non-empty list of values, got {show(self.value)}"
                return [(("value",), message)]
            problems: list[Problem] = []
            for index, item in enumerate(self.value):
                problems += _check_one(subject.kind, item, ("value", index))
            return problems
        if isinstance(self.value, list):
            return [(("value",), f"operator {self.operator!r} takes one value, not a list (use 'in' for several)")]
        if self.operator in ORDER_OPERATORS and subject.kind == "custom" and not (
            _is_number(self.value) or isinstance(self.value, str)
        ):
            return [(("value",), f"operator {self.operator!r} needs a number or a text, got {show(self.value)}")]
        return _check_one(subject.kind, self.value, ("value",))


class Group(Schema):
    """Conditions combined: ``any`` holds when one of them does, ``all`` when every one does."""

    any: list[Any] | None = None
    all: list[Any] | None = None


def _is_group(item: Mapping[str, Any]) -> bool:
    return "any" in item or "all" in item


def check_condition_list(value: Any, loc: Loc = (), *, event: str | None = None, depth: int = 0) -> list[Problem]:
    """Problems of a list of conditions and groups; with ``event``, also subjects that
    event does not carry and change operators on an event without a previous value."""
    if not isinstance(value, list):
        return [(loc, f"expected a list of conditions, got {show(value)}")]
    problems: list[Problem] = []
    for index, item in enumerate(value):
        here = loc + (index,)
        if not isinstance(item, dict):
            problems.append((here, f"expected a condition or a group, got {show(item)}"))
            continue
        if _is_group(item):
            group, group_problems = check_schema(Group, item, here)
            problems += group_problems
            if group is None:
                continue
            if (group.any is None) == (group.all is None):
                problems.append((here, 'a group has exactly one of "any" or "all"'))
                continue
            key = "any" if group.any is not None else "all"
            members = group.any if group.any is not None else group.all
            if depth + 1 >= MAX_GROUP_DEPTH:
                problems.append((here, f"groups nest at most {MAX_GROUP_DEPTH - 1} deep"))
                continue
            if not members:
                problems.append((here + (key,), "a group needs at least one condition"))
                continue
            problems += check_condition_list(members, here + (key,), event=event, depth=depth + 1)
            continue
        condition, item_problems = check_schema(Condition, item, here)
        problems += item_problems
        if condition is not None and not item_problems and event in EVENTS:
            problems += [(here + loc_, msg) for loc_, msg in event_problems(condition, event)]
    return problems


def event_problems(condition: Condition, event: str) -> list[Problem]:
    subject = subject_of(condition.field)
    if subject is None:
        return []
    if subject.events is not None and event not in subject.events:
        where = ", ".join(sorted(subject.events)) if len(subject.events) < len(EVENTS) else "any event"
        return [(("field",), f"{subject.label} is only known for {where}, not for {event}")]
    if condition.operator in CHANGE_OPERATORS and event not in LEAD_EVENTS | CONTACT_EVENTS:
        return [(("operator",), f"{condition.operator!r} needs a lead or contact event, not {event}")]
    on_contact = condition.field.startswith("contact.")
    if condition.operator in CHANGE_OPERATORS and event in CONTACT_EVENTS and not on_contact:
        return [(("operator",), f"{condition.operator!r} on a contact event applies to contact fields only")]
    if condition.operator in CHANGE_OPERATORS and event in LEAD_EVENTS and on_contact:
        return [(("operator",), f"{condition.operator!r} on a lead event applies to lead fields only")]
    return []


def check_conditions(value: Any) -> list[Problem]:
    return check_condition_list(value)


def check_event(value: Any) -> list[Problem]:
    if value in EVENTS:
        return []
    return [((), f"unknown event {show(value)} (known: {', '.join(EVENTS)})")]


def walk_conditions(value: Any, loc: Loc = ()):
    """(location, condition dict) of every test in a (valid) condition list, groups opened."""
    for index, item in enumerate(value or []):
        here = loc + (index,)
        if isinstance(item, dict) and _is_group(item):
            key = "any" if "any" in item else "all"
            yield from walk_conditions(item.get(key), here + (key,))
        elif isinstance(item, dict):
            yield here, item


# --- templates -----------------------------------------------------------------------------

# {{lead.name}}, {{ contact.phone }}, {{lead.cf.123}}
TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([a-z_.0-9]+)\s*\}\}")
TEMPLATE_NAMES = {
    "lead.id": "the lead's id",
    "lead.name": "the lead's name",
    "lead.price": "the lead's price",
    "lead.status": "the lead's stage name",
    "lead.pipeline": "the lead's pipeline name",
    "contact.name": "the contact's name",
    "contact.first_name": "the contact's first name",
    "contact.phone": "the contact's first phone number",
    "contact.email": "the contact's first email",
    "responsible.name": "the lead's responsible user",
    "agent.name": "the agent's name",
}


def template_problems(text: str, loc: Loc) -> list[Problem]:
    problems: list[Problem] = []
    for match in TEMPLATE_VARIABLE.finditer(text):
        name = match.group(1)
        if name not in TEMPLATE_NAMES and not _CF.match(name):
            known = ", ".join([*TEMPLATE_NAMES, "lead.cf.<field id>", "contact.cf.<field id>"])
            problems.append((loc, f"unknown variable {{{{{name}}}}} (known: {known})"))
    if "{{" in TEMPLATE_VARIABLE.sub("", text):
        problems.append((loc, "a variable is not closed or not written as {{name}}"))
    return problems


# --- actions -------------------------------------------------------------------------------

ACTIONS = Registry()

# action types whose effect on the CRM is the same when done twice (a retried one may be
# redone after a crash; the others are not repeated, so they happen at most once)
IDEMPOTENT_ACTIONS = {
    "change_stage",
    "update_field",
    "add_tags",
    "remove_tags",
    "start_sequence",
    "stop_sequence",
    "create_calendar_event",  # booked under the action's key: done again, it finds its meeting
}

# action types whose CRM write can be looked for (the lead's tasks or notes, by text): an
# attempt whose write was not confirmed, or whose worker died, is found done or done again
VERIFIABLE_ACTIONS = {"create_task", "add_note"}


@ACTIONS.register("send_message")
class SendMessageAction(Schema):
    """Send a message to the lead in its chat with the agent (one of the agent's
    messenger integrations: the one given, else the chat the lead last wrote in)."""

    type: Literal["send_message"]
    integration_id: int | None = Field(default=None, ge=1)
    text: str | None = Field(default=None, min_length=1, max_length=4000)
    ai_instruction: str | None = Field(default=None, min_length=1, max_length=4000)

    def problems(self) -> list[Problem]:
        if (self.text is None) == (self.ai_instruction is None):
            return [((), "give either text (a template) or ai_instruction (to generate it), not both")]
        return template_problems(self.text, ("text",)) if self.text else []


@ACTIONS.register("create_task")
class CreateTaskAction(Schema):
    """Create a CRM task on the lead, for the lead's responsible user or a chosen one."""

    type: Literal["create_task"]
    text: str = Field(min_length=1, max_length=4000)
    task_type_id: int | None = Field(default=None, ge=1)
    responsible_user_id: int | None = Field(default=None, ge=1)
    due_in_minutes: int = Field(default=60, ge=0, le=60 * 24 * 365)
    within_working_hours: bool = False

    def problems(self) -> list[Problem]:
        return template_problems(self.text, ("text",))


@ACTIONS.register("change_stage")
class ChangeStageAction(Schema):
    """Move the lead to a pipeline stage."""

    type: Literal["change_stage"]
    pipeline_id: int = Field(ge=1)
    status_id: int = Field(ge=1)


LEAD_FIELDS = {"name", "price"}


def _scalar(value: Any) -> Any:
    # one message, not one per member of the union below ("value.str: …", "value.int: …")
    if value is None or isinstance(value, str | bool) or _is_number(value):
        return value
    raise ValueError(f"expected a text, a number, true/false or null, got {show(value)}")


@ACTIONS.register("update_field")
class UpdateFieldAction(Schema):
    """Set a lead field: ``name``, ``price`` or ``lead.cf.<id>``; null clears a custom field."""

    type: Literal["update_field"]
    field: str
    value: Annotated[str | int | float | bool | None, BeforeValidator(_scalar)]

    def problems(self) -> list[Problem]:
        if self.field == "price":
            if not (isinstance(self.value, int) and not isinstance(self.value, bool) and self.value >= 0):
                return [(("value",), f"the price is a whole number ≥ 0, got {show(self.value)}")]
            return []
        if self.field == "name":
            if not (isinstance(self.value, str) and self.value.strip()):
                return [(("value",), f"the name is a non-empty text, got {show(self.value)}")]
            return template_problems(self.value, ("value",))
        parsed = custom_field_of(self.field)
        if parsed is None or parsed[0] != "lead":
            return [(("field",), f'expected "name", "price" or "lead.cf.<field id>", got {show(self.field)}')]
        if isinstance(self.value, str):
            return template_problems(self.value, ("value",))
        return []


class _TagsAction(Schema):
    tags: list[str] = Field(min_length=1, max_length=50)

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        seen: set[str] = set()
        for index, tag in enumerate(self.tags):
            if not tag.strip():
                problems.append((("tags", index), "a tag name cannot be empty"))
            elif tag.strip().lower() in seen:
                problems.append((("tags", index), f"{show(tag)} is listed twice"))
            seen.add(tag.strip().lower())
        return problems


@ACTIONS.register("add_tags")
class AddTagsAction(_TagsAction):
    """Add tags to the lead (by name; the lead keeps its other tags)."""

    type: Literal["add_tags"]


@ACTIONS.register("remove_tags")
class RemoveTagsAction(_TagsAction):
    """Remove tags from the lead (by name)."""

    type: Literal["remove_tags"]


@ACTIONS.register("add_note")
class AddNoteAction(Schema):
    """Add a text note to the lead."""

    type: Literal["add_note"]
    text: str = Field(min_length=1, max_length=10000)

    def problems(self) -> list[Problem]:
        return template_problems(self.text, ("text",))


@ACTIONS.register("start_sequence")
class StartSequenceAction(Schema):
    """Start one of the agent's sequences for the lead (not again while it runs)."""

    type: Literal["start_sequence"]
    sequence_id: int = Field(ge=1)


@ACTIONS.register("stop_sequence")
class StopSequenceAction(Schema):
    """Stop the lead's run of a sequence, or of every sequence of the agent."""

    type: Literal["stop_sequence"]
    sequence_id: int | None = Field(default=None, ge=1)


@ACTIONS.register("create_calendar_event")
class CreateCalendarEventAction(Schema):
    """Book a meeting with the lead in the agent's Google Calendar (agents/booking.py):
    ``start_in_minutes`` from now, moved into working hours, never onto a busy time."""

    type: Literal["create_calendar_event"]
    summary: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=8000)
    start_in_minutes: int = Field(default=60, ge=0, le=60 * 24 * 365)
    duration_minutes: int = Field(default=30, ge=5, le=480)
    within_working_hours: bool = True
    if_busy: Literal["next_free", "fail"] = "next_free"
    send_updates: Literal["all", "externalOnly", "none"] = "all"
    invite_contact: bool = True

    def problems(self) -> list[Problem]:
        problems = template_problems(self.summary, ("summary",))
        if self.description:
            problems += template_problems(self.description, ("description",))
        return problems


def check_actions(value: Any) -> list[Problem]:
    return check_typed_list(value, ACTIONS, noun="action")[1]
