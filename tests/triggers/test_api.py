from __future__ import annotations

import pytest

from tests.factories import make_trigger
from triggers.models import Trigger

pytestmark = pytest.mark.django_db

ACTIONS = [
    {"type": "create_task", "text": "Call the lead", "due_in_minutes": 30},
    {"type": "change_stage", "pipeline_id": 5, "status_id": 142},
]
CONDITIONS = [{"field": "status", "operator": "in", "value": [{"status_id": 142}, {"status_id": 143}]}]


def new_trigger(agent, **fields) -> dict:
    return {"agent": agent.id, "name": "t", "event": "lead_added"} | fields


def test_create_and_update_a_trigger(api, agent):
    created = api.post(
        "/api/triggers/",
        {
            "agent": agent.id,
            "name": "Won → task",
            "event": "lead_status_changed",
            "conditions": CONDITIONS,
            "actions": ACTIONS,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()

    updated = api.patch(f"/api/triggers/{created.json()['id']}/", {"active": False}, format="json")

    assert updated.status_code == 200
    trigger = Trigger.objects.get(id=created.json()["id"])
    assert trigger.actions == ACTIONS and trigger.active is False and trigger.agent == agent


def test_unknown_action_type_is_named_with_its_position(api, agent):
    actions = [ACTIONS[0], {"type": "sendd", "text": "hi"}]

    response = api.post("/api/triggers/", new_trigger(agent, actions=actions), format="json")

    assert response.status_code == 400
    assert response.json() == {
        "actions": ['actions[1].type: unknown action "sendd" (known: add_note, add_tags, change_stage, '
        "create_calendar_event, create_task, remove_tags, send_message, start_sequence, stop_sequence, update_field)"]
    }


def test_action_settings_are_checked_per_type(api, agent):
    actions = [
        {"type": "change_stage", "pipeline_id": "5"},
        {"type": "create_task", "text": "x", "colour": "red"},
        {"type": "send_message"},
        "create_task",
    ]

    response = api.post("/api/triggers/", new_trigger(agent, actions=actions), format="json")

    assert response.status_code == 400
    assert response.json()["actions"] == [
        'actions[0].pipeline_id: input should be a valid integer, got "5"',
        "actions[0].status_id: this field is required",
        "actions[1].colour: unknown key",
        "actions[2]: give either text (a template) or ai_instruction (to generate it), not both",
        'actions[3]: expected an object, got "create_task"',
    ]


def test_conditions_are_validated(api, agent):
    conditions = [
        {"field": "status", "operator": "equalz", "value": 1},
        {"field": "price", "operator": "is_empty", "value": 5},
        {"field": "tags", "operator": "in", "value": "vip"},
        {"operator": "equals", "value": 1},
    ]

    response = api.post("/api/triggers/", new_trigger(agent, conditions=conditions), format="json")

    assert response.status_code == 400
    assert response.json()["conditions"] == [
        'conditions[0].operator: unknown operator "equalz" (known: equals, not_equals, in, not_in, contains, gt, '
        "gte, lt, lte, is_empty, is_not_empty, changed, changed_to, changed_from)",
        "conditions[1].value: operator 'is_empty' takes no value",
        "conditions[2].value: operator 'in' needs a non-empty list of values, got \"vip\"",
        "conditions[3].field: this field is required",
    ]


def test_actions_must_be_a_list(api, agent):
    response = api.post("/api/triggers/", new_trigger(agent, actions={"type": "create_task"}), format="json")

    assert response.status_code == 400
    assert response.json()["actions"] == ['actions: expected a list of actions, got {"type": "create_task"}']


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"])
def test_a_dry_run_moment_outside_1970_to_2999_is_a_field_error_not_a_crash(api, agent, at):
    # the actions' due times are computed from it: 30 minutes after 9999-12-31 23:59 is no
    # date at all (OverflowError in the action's description: a 500)
    trigger = make_trigger(agent)

    response = api.post(f"/api/triggers/{trigger.id}/test/", {"event": {"lead": {"id": 1}}, "at": at}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["at"]


def test_the_schema_documents_the_dry_run_report_and_the_crm_being_down(api):
    operation = api.get("/api/schema/?format=json").json()["paths"]["/api/triggers/{id}/test/"]["post"]

    report = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert report == {"$ref": "#/components/schemas/DryRunReport"}
    assert "503" in operation["responses"]
