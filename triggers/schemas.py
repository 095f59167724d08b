"""Shapes of a trigger's conditions and actions.

Conditions are a list of ``{"field", "operator", "value"}`` tests; actions are a list of
typed objects (``{"type": "create_task", ...}``) whose types live in :data:`ACTIONS`.
Other apps add their own action types with ``@ACTIONS.register("name")``; the trigger
engine gives each type its behaviour. docs/json-fields.md documents every shape.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from config.validation import Problem, Registry, Schema, check_schema, check_typed_list, show

EVENTS = {
    "lead_added": "A lead was created",
    "lead_status_changed": "A lead moved to another stage",
    "lead_field_changed": "A lead's field changed",
    "lead_responsible_changed": "A lead got another responsible user",
    "note_added": "A note was added to a lead",
    "contact_added": "A contact was created",
    "contact_updated": "A contact changed",
    "incoming_message": "The lead wrote a message",
}

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
LIST_OPERATORS = {"in", "not_in"}

Scalar = str | int | float | bool


class Condition(Schema):
    field: str = Field(min_length=1)
    operator: str
    value: Scalar | list[Scalar] | None = None

    def problems(self) -> list[Problem]:
        if self.operator not in OPERATORS:
            return [(("operator",), f"unknown operator {show(self.operator)} (known: {', '.join(OPERATORS)})")]
        takes_value = OPERATORS[self.operator]
        if takes_value and self.value is None:
            return [(("value",), f"operator {self.operator!r} needs a value")]
        if not takes_value and self.value is not None:
            return [(("value",), f"operator {self.operator!r} takes no value")]
        if self.operator in LIST_OPERATORS and not isinstance(self.value, list):
            return [(("value",), f"operator {self.operator!r} needs a list of values, got {show(self.value)}")]
        return []


def check_conditions(value: Any) -> list[Problem]:
    if not isinstance(value, list):
        return [((), f"expected a list of conditions, got {show(value)}")]
    problems: list[Problem] = []
    for index, item in enumerate(value):
        problems.extend(check_schema(Condition, item, (index,))[1])
    return problems


ACTIONS = Registry()


@ACTIONS.register("send_message")
class SendMessageAction(Schema):
    """Send a message to the lead through one of the agent's messenger integrations."""

    type: Literal["send_message"]
    integration_id: int | None = Field(default=None, ge=1)
    text: str | None = Field(default=None, min_length=1)
    ai_instruction: str | None = Field(default=None, min_length=1)

    def problems(self) -> list[Problem]:
        if (self.text is None) == (self.ai_instruction is None):
            return [((), "give either text (a template) or ai_instruction (to generate it), not both")]
        return []


@ACTIONS.register("create_task")
class CreateTaskAction(Schema):
    """Create a CRM task on the lead."""

    type: Literal["create_task"]
    text: str = Field(min_length=1)
    due_in_minutes: int = Field(default=60, ge=0)
    responsible_user_id: int | None = Field(default=None, ge=1)


@ACTIONS.register("change_stage")
class ChangeStageAction(Schema):
    """Move the lead to a pipeline stage."""

    type: Literal["change_stage"]
    pipeline_id: int = Field(ge=1)
    status_id: int = Field(ge=1)


def check_actions(value: Any) -> list[Problem]:
    return check_typed_list(value, ACTIONS, noun="action")[1]
