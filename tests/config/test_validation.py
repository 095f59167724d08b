"""The JSON validation mechanism shared by the API and the admin."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
from django.core.exceptions import ValidationError

from config.validation import JSONValidator, Registry, Schema, check_typed_list, format_loc
from sequences.schemas import STEPS
from triggers.schemas import ACTIONS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "json-fields.md"


def test_locations_read_like_paths():
    assert format_loc("actions", (1, "type")) == "actions[1].type"
    assert format_loc("schedule", ("days", "mon", 0, "start")) == "schedule.days.mon[0].start"
    assert format_loc("steps", ()) == "steps"


def test_a_registry_takes_new_item_types():
    registry = Registry()

    @registry.register("ping")
    class Ping(Schema):
        type: Literal["ping"]
        times: int

    items, problems = check_typed_list([{"type": "ping", "times": 2}, {"type": "pong"}], registry, noun="thing")

    assert [item.times for item in items] == [2]
    assert problems == [((1, "type"), 'unknown thing "pong" (known: ping)')]


def test_a_type_cannot_be_registered_twice():
    registry = Registry()
    registry.register("a")(type("A", (Schema,), {}))

    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(type("B", (Schema,), {}))


def test_validator_raises_one_message_per_problem():
    validator = JSONValidator("triggers.schemas.check_actions", field="actions")

    with pytest.raises(ValidationError) as error:
        validator([{"type": "create_task"}, {}])

    assert error.value.messages == [
        "actions[0].text: this field is required",
        "actions[1].type: this field is required "
        "(one of: add_note, add_tags, change_stage, create_calendar_event, create_task, remove_tags, send_message, "
        "start_sequence, stop_sequence, update_field)",
    ]


def test_validator_is_stable_in_migrations():
    validator = JSONValidator("agents.schemas.check_schedule", field="schedule")

    assert validator.deconstruct() == (
        "config.validation.JSONValidator",
        ("agents.schemas.check_schedule",),
        {"field": "schedule"},
    )


@pytest.mark.parametrize("name", sorted(ACTIONS) + sorted(STEPS))
def test_every_item_type_is_documented(name):
    assert re.search(rf"\| `{name}` \|", DOCS.read_text()), f"{name} is missing from docs/json-fields.md"
