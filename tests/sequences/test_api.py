from __future__ import annotations

import pytest

from sequences.models import Sequence, SequenceRun
from tests.factories import make_integration, make_sequence

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


@pytest.fixture
def sequence(agent):
    make_integration(agent, integration_type="kommo", config={"base_url": "https://acme.kommo.com"})
    return make_sequence(agent)


def test_a_lead_id_past_64_bits_is_a_field_error_not_a_crash(api, sequence):
    # the run's crm_lead_id is a 64-bit column: storing 2**63 was a 500
    response = api.post(f"/api/sequences/{sequence.id}/start/", {"lead_id": 2**63}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["lead_id"]
    assert not SequenceRun.objects.exists()


@pytest.mark.parametrize("query", [{"crm_lead_id": "abc"}, {"status": "sleeping"}])
def test_a_sequences_runs_refuse_a_filter_value_they_cannot_read(api, sequence, query):
    api.post(f"/api/sequences/{sequence.id}/start/", {"lead_id": 7}, format="json")

    response = api.get(f"/api/sequences/{sequence.id}/runs/", query)

    assert response.status_code == 400
    assert list(response.json()) == list(query)


def test_a_sequences_runs_are_filtered_by_status_and_lead(api, sequence):
    for lead_id in (7, 8):
        api.post(f"/api/sequences/{sequence.id}/start/", {"lead_id": lead_id}, format="json")

    response = api.get(f"/api/sequences/{sequence.id}/runs/", {"crm_lead_id": 8, "status": "scheduled"})

    assert [run["crm_lead_id"] for run in response.json()["results"]] == [8]


def test_the_schema_documents_a_sequences_run_filters_and_the_conflicts_of_run_changes(api):
    paths = api.get("/api/schema/?format=json").json()["paths"]

    runs = paths["/api/sequences/{id}/runs/"]["get"]
    assert {p["name"] for p in runs["parameters"] if p["in"] == "query"} == {
        "crm_lead_id", "status", "page", "page_size"
    }
    for change in ("cancel", "pause", "resume", "retry"):
        assert "409" in paths[f"/api/sequence-runs/{{id}}/{change}/"]["post"]["responses"]
    conflict = paths["/api/sequences/{id}/start/"]["post"]["responses"]["409"]["content"]["application/json"]
    assert conflict["schema"] == {"$ref": "#/components/schemas/SequenceAlreadyRunning"}


def test_a_delay_of_more_than_a_year_is_refused_before_it_could_overflow_the_date(api, agent):
    def post(step):
        return api.post("/api/sequences/", {"agent": agent.id, "name": "s", "steps": [step]}, format="json")

    too_many_days = post({"type": "delay", "days": 1_000_000_000})
    too_long_in_all = post({"type": "delay", "days": 366, "hours": 1})
    a_year = post({"type": "delay", "days": 366})

    assert too_many_days.status_code == 400 and "steps[0].days" in too_many_days.json()["steps"][0]
    assert too_long_in_all.status_code == 400
    assert too_long_in_all.json()["steps"] == ["steps[0]: a delay is at most 366 days in all"]
    assert a_year.status_code == 201
