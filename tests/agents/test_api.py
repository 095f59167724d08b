"""The agents API: the agent and its CRM access travel together; JSON columns are validated."""
from __future__ import annotations

import pytest

from agents.models import Agent, AgentCrmAccess, LiveEvent
from tests.factories import make_agent, make_integration, make_log

pytestmark = pytest.mark.django_db

SCHEDULE = {
    "timezone": "Europe/Moscow",
    "days": {"mon": [{"start": "09:00", "end": "13:00"}, {"start": "14:00", "end": "18:00"}]},
}


def agent_payload(**overrides):
    return {
        "name": "Anna",
        "active": True,
        "instructions": "You sell furniture.",
        "ai_model": "anthropic:claude-sonnet-4-5",
        "language_detection": True,
        "default_language": "ru",
        "schedule": SCHEDULE,
        "crm_access": {"lead_fields": [11, 12], "contact_fields": [21]},
    } | overrides


def test_get_agent_embeds_its_crm_access(api, agent):
    response = api.get(f"/api/agents/{agent.id}/")

    assert response.status_code == 200
    assert response.json()["crm_access"] == {"lead_fields": [101, 102], "contact_fields": [201]}
    assert response.json()["name"] == agent.name


def test_create_then_put_round_trips_agent_and_crm_access(api, user):
    created = api.post("/api/agents/", agent_payload(), format="json")
    assert created.status_code == 201, created.json()
    agent_id = created.json()["id"]
    assert Agent.objects.get(id=agent_id).owner == user

    body = created.json() | {"name": "Anna 2", "crm_access": {"lead_fields": [13], "contact_fields": []}}
    updated = api.put(f"/api/agents/{agent_id}/", body, format="json")

    assert updated.status_code == 200, updated.json()
    fetched = api.get(f"/api/agents/{agent_id}/").json()
    assert fetched["name"] == "Anna 2"
    assert fetched["crm_access"] == {"lead_fields": [13], "contact_fields": []}
    assert fetched["schedule"] == SCHEDULE
    assert AgentCrmAccess.objects.get(agent_id=agent_id).lead_fields == [13]


def test_patch_of_one_crm_list_keeps_the_other(api, agent):
    response = api.patch(f"/api/agents/{agent.id}/", {"crm_access": {"lead_fields": [7]}}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["crm_access"] == {"lead_fields": [7], "contact_fields": [201]}


def test_bad_crm_access_leaves_the_agent_unchanged(api, agent):
    response = api.put(
        f"/api/agents/{agent.id}/",
        agent_payload(name="Renamed", crm_access={"lead_fields": [1, "x"], "contact_fields": []}),
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "crm_access": {"lead_fields": ['lead_fields[1]: expected a CRM field id (a positive whole number), got "x"']}
    }
    agent.refresh_from_db()
    assert agent.name != "Renamed"


def test_schedule_errors_say_where_and_what(api):
    schedule = {
        "timezone": "Mars/Olympus",
        "days": {
            "mon": [{"start": "09:00", "end": "18:00"}, {"start": "12:00", "end": "13:00"}],
            "tue": [{"start": "18:00", "end": "09:00"}],
            "funday": [],
            "wed": [{"start": "9am", "end": "18:00"}],
        },
    }
    response = api.post("/api/agents/", agent_payload(schedule=schedule), format="json")

    assert response.status_code == 400
    assert sorted(response.json()["schedule"]) == sorted(
        [
            'schedule.timezone: unknown time zone "Mars/Olympus" (use an IANA name such as "Europe/Moscow")',
            "schedule.days.mon[1]: 12:00–13:00 overlaps 09:00–18:00",
            "schedule.days.tue[0]: start 18:00 is not before end 09:00",
            'schedule.days.funday: unknown day "funday" (use mon, tue, wed, thu, fri, sat, sun)',
            'schedule.days.wed[0].start: expected a time as HH:MM (00:00–24:00), got "9am"',
        ]
    )


def test_schedule_of_wrong_type_is_a_field_error(api):
    response = api.post("/api/agents/", agent_payload(schedule={"timezone": 3, "days": []}), format="json")

    assert response.status_code == 400
    assert response.json()["schedule"] == [
        "schedule.timezone: input should be a valid string, got 3",
        "schedule.days: input should be a valid dictionary, got []",
    ]


@pytest.mark.parametrize(
    ("ai_model", "message"),
    [
        ("gpt-4o", 'ai_model: expected provider:model, e.g. \'openai:gpt-4o-mini\', got "gpt-4o"'),
        ("mistral:large", 'ai_model: unknown provider "mistral" (known: openai, anthropic, gemini)'),
        ("openai:", 'ai_model: model name "" is empty or has characters a model name cannot have'),
    ],
)
def test_ai_model_must_name_a_known_provider_and_a_model(api, ai_model, message):
    response = api.post("/api/agents/", agent_payload(ai_model=ai_model), format="json")

    assert response.status_code == 400
    assert response.json() == {"ai_model": [message]}


def test_name_is_required(api):
    response = api.post("/api/agents/", agent_payload(name=""), format="json")

    assert response.status_code == 400
    assert "name" in response.json()


def test_owner_cannot_be_set_through_the_api(api, user, other_user):
    response = api.post("/api/agents/", agent_payload(owner=other_user.id), format="json")

    assert response.status_code == 400
    assert response.json() == {"owner": ["unknown field"]}
    assert not Agent.objects.filter(owner=other_user).exists()


def test_owner_cannot_be_changed_through_the_api(api, agent, other_user):
    response = api.patch(f"/api/agents/{agent.id}/", {"owner": other_user.id}, format="json")

    assert response.status_code == 400
    agent.refresh_from_db()
    assert agent.owner_id != other_user.id


def test_saving_an_agent_pushes_a_live_event_to_its_owner(api, agent):
    api.patch(f"/api/agents/{agent.id}/", {"active": False}, format="json")

    event = LiveEvent.objects.filter(type="agent.changed").latest("id")
    assert event.owner_id == agent.owner_id
    assert event.payload == {"agent_id": agent.id, "name": agent.name, "active": False, "change": "updated"}


def test_duplicate_copies_rules_but_not_integrations(api, agent):
    from tests.factories import make_integration, make_sequence, make_trigger

    make_trigger(agent=agent)
    make_sequence(agent=agent)
    make_integration(agent=agent)

    response = api.post(f"/api/agents/{agent.id}/duplicate/")

    assert response.status_code == 201
    copy = Agent.objects.get(id=response.json()["id"])
    assert copy.name == f"{agent.name} (copy)"
    assert copy.active is False
    assert copy.triggers.count() == 1 and copy.sequences.count() == 1
    assert copy.integrations.count() == 0
    assert copy.crm_access.lead_fields == [101, 102]


def test_list_is_paginated(api, user):
    for _ in range(3):
        make_agent(owner=user)

    response = api.get("/api/agents/?page_size=2")

    assert response.status_code == 200
    assert response.json()["count"] == 3
    assert len(response.json()["results"]) == 2
    assert response.json()["next"]


def test_anonymous_requests_are_refused():
    from rest_framework.test import APIClient

    response = APIClient().get("/api/agents/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    "path, query",
    [
        ("/api/agents/", {"active": "maybe"}),
        ("/api/execution-logs/", {"crm_lead_id": "1.5"}),
        ("/api/conversations/", {"agent": "0.5"}),
    ],
)
def test_a_filter_value_the_filter_cannot_read_is_a_field_error(api, agent, path, query):
    make_log(agent)  # something the filter would otherwise have let through

    response = api.get(path, query)

    assert response.status_code == 400
    assert list(response.json()) == list(query)


@pytest.mark.parametrize("name", ["agent", "integration"])
def test_a_filter_id_past_64_bits_is_a_field_error_not_a_crash(api, agent, name):
    # SQLite cannot compare a foreign key with a number that large (OverflowError: a 500)
    response = api.get("/api/conversations/", {name: str(2**64)})

    assert response.status_code == 400
    assert list(response.json()) == [name]


def test_filtering_by_someone_elses_integration_reads_like_an_unknown_one(api, agent, other_user):
    theirs = make_integration(make_agent(owner=other_user))

    foreign = api.get("/api/conversations/", {"integration": theirs.id})
    unknown = api.get("/api/conversations/", {"integration": theirs.id + 1000})

    assert foreign.status_code == unknown.status_code == 200
    assert foreign.json()["results"] == unknown.json()["results"] == []


def test_a_handoff_longer_than_a_year_is_a_field_error(api, agent):
    # now + 10**12 minutes is past year 9999: the team's next message would be a 500
    response = api.patch(f"/api/agents/{agent.id}/", {"handoff_minutes": 10**12}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["handoff_minutes"]
    agent.refresh_from_db()
    assert agent.handoff_minutes == 24 * 60


def test_a_conversations_messages_are_documented_as_the_plain_list_they_are(api):
    operation = api.get("/api/schema/?format=json").json()["paths"]["/api/conversations/{id}/messages/"]["get"]

    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert body == {"type": "array", "items": {"$ref": "#/components/schemas/ConversationMessage"}}
    assert [p["name"] for p in operation["parameters"]] == ["id"]


def test_a_team_message_the_channel_does_not_take_is_documented_as_503(api):
    operation = api.get("/api/schema/?format=json").json()["paths"]["/api/conversations/{id}/messages/"]["post"]

    assert "503" in operation["responses"]
