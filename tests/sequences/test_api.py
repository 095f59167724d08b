from __future__ import annotations

import pytest

from sequences.models import Sequence

pytestmark = pytest.mark.django_db

STEPS = [
    {"type": "delay", "days": 1, "working_hours_only": True},
    {"type": "generate_message", "instruction": "Remind about the offer"},
    {"type": "send_message", "use_generated": True},
    {"type": "create_task", "text": "Call if no answer"},
]


def test_create_a_sequence(api, agent):
    response = api.post(
        "/api/sequences/",
        {
            "agent": agent.id,
            "name": "Warm-up",
            "description": "Three days of follow-up",
            "trigger_config": {
                "event": "lead_added",
                "conditions": [{"field": "price", "operator": "gt", "value": 1000}],
            },
            "steps": STEPS,
        },
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert Sequence.objects.get(id=response.json()["id"]).steps == STEPS


def test_steps_errors_name_the_step(api, agent):
    steps = [
        {"type": "delay"},
        {"type": "wait", "days": 1},
        {"type": "send_message", "text": "hi", "use_generated": True},
    ]

    response = api.post("/api/sequences/", {"agent": agent.id, "name": "s", "steps": steps}, format="json")

    assert response.status_code == 400
    assert response.json()["steps"] == [
        "steps[0]: a delay needs minutes, hours or days greater than 0",
        'steps[1].type: unknown step "wait" '
        "(known: add_note, change_stage, create_calendar_event, create_task, delay, generate_message, send_message)",
        "steps[2]: give either text or use_generated: true, not both",
    ]


def test_trigger_config_is_validated(api, agent):
    config = {"event": "lead_exploded", "conditions": [{"field": "price", "operator": "gt"}]}

    response = api.post(
        "/api/sequences/", {"agent": agent.id, "name": "s", "trigger_config": config}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["trigger_config"] == [
        'trigger_config.event: unknown event "lead_exploded" (known: lead_added, lead_status_changed, '
        "lead_field_changed, lead_responsible_changed, note_added, contact_added, contact_updated, incoming_message)",
        "trigger_config.conditions[0].value: operator 'gt' needs a value: a number",
    ]


def test_empty_trigger_config_means_started_by_hand(api, agent):
    response = api.post("/api/sequences/", {"agent": agent.id, "name": "s", "trigger_config": {}}, format="json")

    assert response.status_code == 201
