"""The admin: every model is manageable, saves go through the services, JSON columns are
checked like in the API, credentials never show, and staff members see only their own."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents.models import Agent, AgentCrmAccess, ExecutionLog, LiveEvent
from crm.models import CrmEvent, CrmSnapshot
from integrations.models import Integration
from sequences.models import Sequence
from tests.admin_forms import inline_prefix, post_data
from tests.factories import make_agent, make_integration, make_log, make_sequence, make_trigger, make_user
from triggers.models import Trigger

pytestmark = pytest.mark.django_db

SECRET = "123456:SECRET-bot-token-value"  # what make_integration() stores


@dataclass
class Tenant:
    """One user's agent and everything hanging off it."""

    agent: Agent
    trigger: Trigger
    sequence: Sequence
    integration: Integration
    log: ExecutionLog
    event: LiveEvent
    crm_event: CrmEvent
    snapshot: CrmSnapshot


def make_tenant(owner) -> Tenant:
    agent = make_agent(owner=owner)
    integration = make_integration(agent=agent, credentials={"bot_token": SECRET})
    return Tenant(
        agent=agent,
        trigger=make_trigger(agent=agent),
        sequence=make_sequence(agent=agent),
        integration=integration,
        log=make_log(agent=agent, status="failed", error="CRM said no", ref_type="trigger", duration_ms=42),
        event=LiveEvent.objects.create(owner=owner, type="agent.changed", payload={"agent_id": agent.id}),
        crm_event=CrmEvent.objects.create(
            integration=integration,
            kind="lead_added",
            entity_type="lead",
            entity_id=9,
            lead_id=9,
            data={"id": "9"},
            dedupe_key=f"key-{integration.id}",
        ),
        snapshot=CrmSnapshot.objects.create(integration=integration, lead_fields=[{"id": 1, "name": "Budget"}]),
    )


# admin URL prefix -> the tenant's object of that model
OBJECTS = {
    "agents_agent": lambda t: t.agent,
    "agents_agentcrmaccess": lambda t: t.agent.crm_access,
    "agents_executionlog": lambda t: t.log,
    "agents_liveevent": lambda t: t.event,
    "triggers_trigger": lambda t: t.trigger,
    "sequences_sequence": lambda t: t.sequence,
    "integrations_integration": lambda t: t.integration,
    "crm_crmevent": lambda t: t.crm_event,
    "crm_crmsnapshot": lambda t: t.snapshot,
}
ADDABLE = ["agents_agent", "triggers_trigger", "sequences_sequence", "integrations_integration"]
NOT_ADDABLE = sorted(set(OBJECTS) - set(ADDABLE))
READ_ONLY = ["agents_executionlog", "agents_liveevent", "crm_crmevent", "crm_crmsnapshot"]
STAFF_CANNOT_DELETE = READ_ONLY + ["agents_agentcrmaccess"]


def url(name: str, view: str, *args) -> str:
    return reverse(f"admin:{name}_{view}", args=args)


def text(response) -> str:
    """The page as a reader sees it (entities decoded)."""
    return html.unescape(response.content.decode())


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db):
    return make_user(is_staff=True, is_superuser=True)


@pytest.fixture
def staff(db):
    return make_user(is_staff=True)


@pytest.fixture
def other_staff(db):
    return make_user(is_staff=True)


@pytest.fixture
def super_client(superuser) -> Client:
    return client_for(superuser)


@pytest.fixture
def staff_client(staff) -> Client:
    return client_for(staff)


@pytest.fixture
def mine(staff) -> Tenant:
    return make_tenant(staff)


@pytest.fixture
def theirs(other_staff) -> Tenant:
    return make_tenant(other_staff)


@pytest.fixture(params=["superuser", "staff"])
def admin_user_client(request) -> Client:
    """A superuser, then a staff member without any Django permission."""
    return client_for(request.getfixturevalue(request.param))


# --- Every page renders -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_changelist_renders_for_superusers_and_staff(admin_user_client, mine, name):
    response = admin_user_client.get(url(name, "changelist"))

    assert response.status_code == 200
    assert [obj.pk for obj in response.context["cl"].result_list] == [OBJECTS[name](mine).pk]


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_change_page_renders_for_superusers_and_staff(admin_user_client, mine, name):
    response = admin_user_client.get(url(name, "change", OBJECTS[name](mine).pk))

    assert response.status_code == 200
    assert str(OBJECTS[name](mine)) in text(response)


@pytest.mark.parametrize("name", ADDABLE)
def test_every_add_page_renders_for_superusers_and_staff(admin_user_client, mine, name):
    response = admin_user_client.get(url(name, "add"))

    assert response.status_code == 200
    assert "adminform" in response.context


@pytest.mark.parametrize("name", NOT_ADDABLE)
def test_histories_and_crm_access_have_no_add_page(admin_user_client, mine, name):
    assert admin_user_client.get(url(name, "add")).status_code == 403


@pytest.mark.parametrize("name", READ_ONLY)
def test_histories_cannot_be_changed(admin_user_client, mine, name):
    obj = OBJECTS[name](mine)

    page = admin_user_client.get(url(name, "change", obj.pk))
    response = admin_user_client.post(url(name, "change", obj.pk), {"type": "changed", "status": "success"})

    assert 'name="_save"' not in page.content.decode()
    assert response.status_code == 403


def test_the_admin_index_lists_the_apps_for_staff_without_permissions(staff_client, mine):
    response = staff_client.get(reverse("admin:index"))

    assert response.status_code == 200
    models = {model["object_name"] for app in response.context["app_list"] for model in app["models"]}
    assert {"Agent", "AgentCrmAccess", "Trigger", "Sequence", "Integration", "ExecutionLog", "LiveEvent"} <= models


def test_every_registered_changelist_renders_for_a_superuser_including_the_task_queue(super_client, mine):
    registered = {model._meta.label for model in admin.site._registry}
    assert {"django_q.Schedule", "django_q.Success", "django_q.Failure"} <= registered

    for model in admin.site._registry:
        opts = model._meta
        response = super_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert response.status_code == 200, opts.label


# --- Tenancy -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_staff_see_only_their_own_objects_in_every_changelist(staff_client, mine, theirs, name):
    response = staff_client.get(url(name, "changelist"))

    assert [obj.pk for obj in response.context["cl"].result_list] == [OBJECTS[name](mine).pk]
    assert theirs.agent.name not in text(response)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_a_superuser_sees_everyones_objects(super_client, mine, theirs, name):
    response = super_client.get(url(name, "changelist"))

    found = {obj.pk for obj in response.context["cl"].result_list}
    assert found == {OBJECTS[name](mine).pk, OBJECTS[name](theirs).pk}


@pytest.mark.parametrize("view", ["change", "history", "delete"])
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_another_staff_members_object_reads_as_missing(staff_client, mine, theirs, name, view):
    response = staff_client.get(url(name, view, OBJECTS[name](theirs).pk), follow=True)

    if view == "delete" and name in STAFF_CANNOT_DELETE:
        assert response.status_code == 403  # not even their own
        return
    assert response.redirect_chain == [(reverse("admin:index"), 302)]
    assert "doesn’t exist" in text(response)
    assert theirs.agent.name not in text(response)


def test_a_staff_member_cannot_change_or_delete_another_users_agent(staff_client, theirs):
    agent = theirs.agent
    change = staff_client.post(url("agents_agent", "change", agent.pk), {"name": "taken over"})
    delete = staff_client.post(url("agents_agent", "delete", agent.pk), {"post": "yes"})

    assert change.status_code == delete.status_code == 302
    agent.refresh_from_db()
    assert agent.name != "taken over"


def test_actions_do_not_reach_another_users_agents(staff_client, mine, theirs):
    response = staff_client.post(
        url("agents_agent", "changelist"),
        {"action": "deactivate", "_selected_action": [theirs.agent.pk]},
        follow=True,
    )

    assert "0 agents deactivated." in text(response)
    theirs.agent.refresh_from_db()
    assert theirs.agent.active is True


@pytest.mark.parametrize("name", ["triggers_trigger", "sequences_sequence", "integrations_integration"])
def test_staff_choose_among_their_own_agents_only(staff_client, mine, theirs, name):
    response = staff_client.get(url(name, "add"))

    assert list(response.context["adminform"].form.fields["agent"].queryset) == [mine.agent]
    assert theirs.agent.name not in text(response)


def test_a_trigger_cannot_be_attached_to_another_users_agent(staff_client, mine, theirs):
    page = staff_client.get(url("triggers_trigger", "add"))

    response = staff_client.post(
        url("triggers_trigger", "add"), post_data(page, agent=str(theirs.agent.pk), name="Sneaky")
    )

    assert response.status_code == 200
    assert "Select a valid choice" in text(response)
    assert not Trigger.objects.filter(name="Sneaky").exists()


def test_staff_create_agents_they_own_without_an_owner_field(staff_client, staff, other_staff):
    page = staff_client.get(url("agents_agent", "add"))
    assert "owner" not in page.context["adminform"].form.fields

    response = staff_client.post(
        url("agents_agent", "add"),
        post_data(page, name="Night shift", owner=str(other_staff.pk), **{"crm_access-0-lead_fields": "[7, 8]"}),
    )

    assert response.status_code == 302
    agent = Agent.objects.get(name="Night shift")
    assert agent.owner == staff
    assert agent.crm_access.lead_fields == [7, 8]
    assert LiveEvent.objects.filter(owner=staff, type="agent.changed", payload__agent_id=agent.id).exists()


def test_a_superuser_chooses_the_owner_of_a_new_agent(super_client, staff):
    page = super_client.get(url("agents_agent", "add"))

    response = super_client.post(url("agents_agent", "add"), post_data(page, name="For staff", owner=str(staff.pk)))

    assert response.status_code == 302
    assert Agent.objects.get(name="For staff").owner == staff


# --- Saves go through the services --------------------------------------------------------


def test_changing_an_agent_in_the_admin_announces_it_like_the_api(staff_client, staff, mine):
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))

    response = staff_client.post(url("agents_agent", "change", mine.agent.pk), post_data(page, name="Renamed"))

    assert response.status_code == 302
    mine.agent.refresh_from_db()
    assert mine.agent.name == "Renamed"
    event = LiveEvent.objects.filter(owner=staff, type="agent.changed").latest("id")
    assert event.payload == {"agent_id": mine.agent.id, "name": "Renamed", "active": True, "change": "updated"}


def test_the_crm_access_inline_is_saved_through_agent_update(staff_client, mine, monkeypatch):
    import agents.admin

    calls = []
    original = agents.admin.agent_update
    monkeypatch.setattr(agents.admin, "agent_update", lambda **kw: calls.append(kw) or original(**kw))
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))

    response = staff_client.post(
        url("agents_agent", "change", mine.agent.pk),
        post_data(page, **{"crm_access-0-lead_fields": "[5, 6]", "crm_access-0-contact_fields": "[]"}),
    )

    assert response.status_code == 302
    assert {"lead_fields": [5, 6], "contact_fields": []} in [call.get("crm_access") for call in calls]
    assert AgentCrmAccess.objects.get(agent=mine.agent).lead_fields == [5, 6]


def test_the_crm_access_inline_refuses_a_bad_field_list(staff_client, mine):
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))

    response = staff_client.post(
        url("agents_agent", "change", mine.agent.pk), post_data(page, **{"crm_access-0-lead_fields": '[101, "abc"]'})
    )

    assert response.status_code == 200
    assert 'lead_fields[1]: expected a CRM field id (a positive whole number), got "abc"' in text(response)
    assert AgentCrmAccess.objects.get(agent=mine.agent).lead_fields == [101, 102]


def test_triggers_sequences_and_integrations_added_on_the_agent_page_go_through_their_services(
    staff_client, staff, mine, monkeypatch
):
    import agents.admin

    calls = []
    for name in ("trigger_create", "sequence_create", "integration_create"):
        original = getattr(agents.admin, name)
        monkeypatch.setattr(
            agents.admin, name, lambda *, _name=name, _original=original, **kw: calls.append(_name) or _original(**kw)
        )
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))
    triggers, sequences, integrations = (inline_prefix(page, model) for model in (Trigger, Sequence, Integration))
    data = post_data(
        page,
        **{
            f"{triggers}-TOTAL_FORMS": "2",
            f"{triggers}-1-name": "Won",
            f"{triggers}-1-active": "on",
            f"{triggers}-1-event": "lead_status_changed",
            f"{triggers}-1-conditions": "[]",
            f"{triggers}-1-actions": '[{"type": "change_stage", "pipeline_id": 1, "status_id": 142}]',
            f"{sequences}-TOTAL_FORMS": "2",
            f"{sequences}-1-name": "Nudge",
            f"{sequences}-1-trigger_config": "{}",
            f"{sequences}-1-steps": '[{"type": "delay", "hours": 2}]',
            f"{integrations}-TOTAL_FORMS": "2",
            f"{integrations}-1-integration_type": "google_calendar",
            f"{integrations}-1-config": '{"calendar_id": "sales@example.com"}',
        },
    )

    response = staff_client.post(url("agents_agent", "change", mine.agent.pk), data)

    assert response.status_code == 302, response.context and response.context["errors"]
    assert sorted(calls) == ["integration_create", "sequence_create", "trigger_create"]
    assert mine.agent.triggers.get(name="Won").actions[0]["type"] == "change_stage"
    assert mine.agent.sequences.get(name="Nudge").steps == [{"type": "delay", "hours": 2}]
    assert mine.agent.integrations.get(integration_type="google_calendar").credentials == {}
    assert LiveEvent.objects.filter(owner=staff, type="integration.changed", payload__change="created").exists()


def test_an_inline_change_goes_through_the_update_service(staff_client, mine, monkeypatch):
    import agents.admin

    calls = []
    original = agents.admin.trigger_update
    monkeypatch.setattr(agents.admin, "trigger_update", lambda **kw: calls.append(kw) or original(**kw))
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))
    prefix = inline_prefix(page, Trigger)

    staff_client.post(url("agents_agent", "change", mine.agent.pk), post_data(page, **{f"{prefix}-0-active": None}))

    assert [call["trigger"].pk for call in calls] == [mine.trigger.pk]
    mine.trigger.refresh_from_db()
    assert mine.trigger.active is False


@pytest.mark.parametrize(
    ("name", "service", "changes"),
    [
        ("triggers_trigger", "trigger_update", {"name": "Renamed trigger"}),
        ("sequences_sequence", "sequence_update", {"name": "Renamed sequence"}),
        ("integrations_integration", "integration_update", {"active": None}),
    ],
)
def test_saving_on_an_objects_own_page_goes_through_its_service(
    staff_client, mine, monkeypatch, name, service, changes
):
    module = __import__(name.split("_")[0] + ".admin", fromlist=["admin"])
    calls = []
    original = getattr(module, service)
    monkeypatch.setattr(module, service, lambda **kw: calls.append(kw) or original(**kw))
    obj = OBJECTS[name](mine)
    page = staff_client.get(url(name, "change", obj.pk))

    response = staff_client.post(url(name, "change", obj.pk), post_data(page, **changes))

    assert response.status_code == 302
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("name", "service", "fields"),
    [
        (
            "triggers_trigger",
            "trigger_create",
            {"name": "New trigger", "event": "lead_added", "actions": "[]", "conditions": "[]"},
        ),
        ("sequences_sequence", "sequence_create", {"name": "New sequence", "steps": "[]", "trigger_config": "{}"}),
        ("integrations_integration", "integration_create", {"integration_type": "kommo", "config": "{}"}),
    ],
)
def test_adding_on_an_objects_own_page_goes_through_its_service(staff_client, mine, monkeypatch, name, service, fields):
    module = __import__(name.split("_")[0] + ".admin", fromlist=["admin"])
    calls = []
    original = getattr(module, service)
    monkeypatch.setattr(module, service, lambda **kw: calls.append(kw) or original(**kw))
    page = staff_client.get(url(name, "add"))

    response = staff_client.post(url(name, "add"), post_data(page, agent=str(mine.agent.pk), **fields))

    assert response.status_code == 302
    assert len(calls) == 1
    created = OBJECTS[name](mine).__class__.objects.exclude(pk=OBJECTS[name](mine).pk).get()
    assert response["Location"] == url(name, "changelist")
    assert created.agent == mine.agent


def test_deleting_an_agent_goes_through_the_service(staff_client, staff, mine):
    confirm = staff_client.get(url("agents_agent", "delete", mine.agent.pk))
    response = staff_client.post(url("agents_agent", "delete", mine.agent.pk), {"post": "yes"})

    assert not confirm.context["perms_lacking"]
    assert response.status_code == 302
    assert not Agent.objects.filter(pk=mine.agent.pk).exists()
    assert not ExecutionLog.objects.filter(pk=mine.log.pk).exists()
    event = LiveEvent.objects.filter(owner=staff, type="agent.changed").latest("id")
    assert event.payload["change"] == "deleted"


def test_deleting_selected_agents_goes_through_the_service(staff_client, staff, mine):
    second = make_agent(owner=staff)

    response = staff_client.post(
        url("agents_agent", "changelist"),
        {"action": "delete_selected", "_selected_action": [mine.agent.pk, second.pk], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Agent.objects.filter(owner=staff).exists()
    deleted = LiveEvent.objects.filter(owner=staff, type="agent.changed", payload__change="deleted")
    assert sorted(e.payload["agent_id"] for e in deleted) == sorted([mine.agent.pk, second.pk])


def test_execution_logs_are_deleted_by_superusers_only(staff_client, super_client, mine):
    assert staff_client.post(url("agents_executionlog", "delete", mine.log.pk), {"post": "yes"}).status_code == 403
    assert ExecutionLog.objects.filter(pk=mine.log.pk).exists()

    assert super_client.post(url("agents_executionlog", "delete", mine.log.pk), {"post": "yes"}).status_code == 302
    assert not ExecutionLog.objects.filter(pk=mine.log.pk).exists()


# --- Actions -------------------------------------------------------------------------------


def test_activate_and_deactivate_say_how_many_agents_changed(staff_client, staff, mine):
    paused = make_agent(owner=staff, active=False)
    selected = [mine.agent.pk, paused.pk]
    changelist = url("agents_agent", "changelist")

    activated = staff_client.post(changelist, {"action": "activate", "_selected_action": selected}, follow=True)
    assert "1 agent activated." in text(activated)
    assert Agent.objects.filter(owner=staff, active=True).count() == 2

    deactivated = staff_client.post(changelist, {"action": "deactivate", "_selected_action": selected}, follow=True)
    assert "2 agents deactivated." in text(deactivated)
    assert Agent.objects.filter(owner=staff, active=True).count() == 0
    assert LiveEvent.objects.filter(owner=staff, payload__change="deactivated").count() == 2


def test_duplicate_copies_the_selected_agent_inactive_with_its_rules(staff_client, staff, mine):
    response = staff_client.post(
        url("agents_agent", "changelist"), {"action": "duplicate", "_selected_action": [mine.agent.pk]}, follow=True
    )

    assert "1 agent duplicated." in text(response)
    copy = Agent.objects.get(name=f"{mine.agent.name} (copy)")
    assert copy.owner == staff
    assert copy.active is False
    assert [t.name for t in copy.triggers.all()] == [mine.trigger.name]
    assert [s.name for s in copy.sequences.all()] == [mine.sequence.name]
    assert copy.crm_access.lead_fields == [101, 102]


# --- List pages ----------------------------------------------------------------------------


def test_the_agent_list_counts_triggers_and_sequences_without_a_query_per_agent(staff_client, staff, mine):
    make_trigger(agent=mine.agent)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(url("agents_agent", "changelist")).status_code == 200
        return len(queries)

    one_agent = count_queries()
    for _ in range(3):
        agent = make_agent(owner=staff)
        make_trigger(agent=agent)
        make_sequence(agent=agent)
    response = staff_client.get(url("agents_agent", "changelist"))

    assert count_queries() == one_agent
    row = next(agent for agent in response.context["cl"].result_list if agent.pk == mine.agent.pk)
    assert (row.trigger_count, row.sequence_count) == (2, 1)


def test_execution_logs_are_found_by_crm_lead_id_and_filtered_by_status(staff_client, mine):
    other = make_log(agent=mine.agent, crm_lead_id=555, status="success")
    changelist = url("agents_executionlog", "changelist")

    by_lead = staff_client.get(changelist, {"q": "555"})
    failed = staff_client.get(changelist, {"status__exact": "failed"})
    by_words = staff_client.get(changelist, {"q": "said no"})

    assert [log.pk for log in by_lead.context["cl"].result_list] == [other.pk]
    assert [log.pk for log in failed.context["cl"].result_list] == [mine.log.pk]
    assert [log.pk for log in by_words.context["cl"].result_list] == [mine.log.pk]
    assert "42 ms" in text(failed) and "CRM said no" in text(failed) and "trigger" in text(failed)


@pytest.mark.parametrize(
    ("name", "query", "found"),
    [
        ("agents_agent", {"active__exact": "1"}, "agent"),
        ("triggers_trigger", {"q": "Trigger"}, "trigger"),
        ("sequences_sequence", {"active__exact": "1"}, "sequence"),
        ("integrations_integration", {"integration_type__exact": "telegram"}, "integration"),
    ],
)
def test_list_pages_filter_and_search(staff_client, mine, theirs, name, query, found):
    response = staff_client.get(url(name, "changelist"), query)

    assert response.status_code == 200
    assert [obj.pk for obj in response.context["cl"].result_list] == [getattr(mine, found).pk]


# --- JSON columns ---------------------------------------------------------------------------

BAD_JSON = [
    (
        "triggers_trigger",
        "trigger",
        "actions",
        '[{"type": "sendd"}]',
        'actions[0].type: unknown action "sendd" (known: add_note, add_tags, change_stage, create_calendar_event',
    ),
    (
        "triggers_trigger",
        "trigger",
        "conditions",
        '[{"field": "price", "operator": "bigger", "value": 5}]',
        'conditions[0].operator: unknown operator "bigger"',
    ),
    (
        "agents_agent",
        "agent",
        "schedule",
        '{"timezone": "Mars/Olympus", "days": {}}',
        'schedule.timezone: unknown time zone "Mars/Olympus"',
    ),
    (
        "sequences_sequence",
        "sequence",
        "steps",
        '[{"type": "delay"}]',
        "steps[0]: a delay needs minutes, hours or days greater than 0",
    ),
    (
        "sequences_sequence",
        "sequence",
        "trigger_config",
        '{"event": "lead_exploded"}',
        'trigger_config.event: unknown event "lead_exploded"',
    ),
    (
        "integrations_integration",
        "integration",
        "config",
        '{"base_url": "ftp://bot.example"}',
        'config.base_url: expected an http(s) URL, got "ftp://bot.example"',
    ),
]


@pytest.mark.parametrize(("name", "attr", "field", "value", "message"), BAD_JSON)
def test_a_wrong_json_shape_shows_the_field_level_message(staff_client, mine, name, attr, field, value, message):
    obj = getattr(mine, attr)
    before = getattr(obj, field)
    page = staff_client.get(url(name, "change", obj.pk))

    response = staff_client.post(url(name, "change", obj.pk), post_data(page, **{field: value}))

    assert response.status_code == 200
    assert any(message in error for error in response.context["adminform"].form.errors[field])
    assert message in text(response)
    obj.refresh_from_db()
    assert getattr(obj, field) == before


def test_a_wrong_shape_in_an_inline_on_the_agent_page_shows_the_message(staff_client, mine):
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))
    prefix = inline_prefix(page, Trigger)

    response = staff_client.post(
        url("agents_agent", "change", mine.agent.pk), post_data(page, **{f"{prefix}-0-actions": '[{"type": "sendd"}]'})
    )

    assert response.status_code == 200
    assert 'actions[0].type: unknown action "sendd"' in text(response)


def test_malformed_json_is_refused_and_shown_as_typed(staff_client, mine):
    page = staff_client.get(url("triggers_trigger", "change", mine.trigger.pk))

    response = staff_client.post(
        url("triggers_trigger", "change", mine.trigger.pk), post_data(page, actions='[{"type": "create_task",]')
    )

    assert response.status_code == 200
    assert "Enter a valid JSON." in text(response)
    assert '[{"type": "create_task",]' in text(response)


def test_an_emptied_json_textarea_stores_the_columns_empty_value(staff_client, mine):
    page = staff_client.get(url("triggers_trigger", "change", mine.trigger.pk))

    response = staff_client.post(url("triggers_trigger", "change", mine.trigger.pk), post_data(page, conditions=""))

    assert response.status_code == 302
    mine.trigger.refresh_from_db()
    assert mine.trigger.conditions == []


def test_json_columns_are_edited_as_indented_json(staff_client, mine):
    response = staff_client.get(url("triggers_trigger", "change", mine.trigger.pk))
    mine.trigger.refresh_from_db()  # PostgreSQL's jsonb keeps keys in its own order

    expected = json.dumps(mine.trigger.actions, indent=2)
    assert expected in text(response)
    assert "\n" in expected


def test_read_only_json_is_shown_indented(staff_client, mine):
    mine.log.detail = {"lead": {"id": 123}}
    mine.log.save()

    response = staff_client.get(url("agents_executionlog", "change", mine.log.pk))

    assert json.dumps({"lead": {"id": 123}}, indent=2) in text(response)


# --- Credentials ---------------------------------------------------------------------------


def _pages_around_an_integration(client, tenant) -> dict[str, str]:
    integration = tenant.integration
    pages = {
        "integration list": url("integrations_integration", "changelist"),
        "integration search": url("integrations_integration", "changelist") + "?q=telegram",
        "integration page": url("integrations_integration", "change", integration.pk),
        "integration history": url("integrations_integration", "history", integration.pk),
        "integration delete": url("integrations_integration", "delete", integration.pk),
        "agent list": url("agents_agent", "changelist"),
        "agent page": url("agents_agent", "change", tenant.agent.pk),
        "agent history": url("agents_agent", "history", tenant.agent.pk),
        "agent delete": url("agents_agent", "delete", tenant.agent.pk),
        "live events": url("agents_liveevent", "changelist"),
        "index": reverse("admin:index"),
    }
    return {label: client.get(path).content.decode() for label, path in pages.items()}


def test_no_admin_page_shows_a_stored_secret(admin_user_client, mine):
    # a change through the admin first, so that the histories have entries
    page = admin_user_client.get(url("integrations_integration", "change", mine.integration.pk))
    admin_user_client.post(
        url("integrations_integration", "change", mine.integration.pk),
        post_data(page, config='{"base_url": "https://tg.example"}'),
    )

    pages = _pages_around_an_integration(admin_user_client, mine)

    leaking = [label for label, content in pages.items() if SECRET in content or SECRET in html.unescape(content)]
    assert leaking == []
    assert "Telegram" in pages["integration history"]


def test_stored_credentials_are_shown_by_key_and_masked(staff_client, mine):
    response = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    assert "bot_token: ••••••••" in text(response)
    assert SECRET not in response.content.decode()


def test_the_integration_list_shows_which_credential_keys_are_set(staff_client, mine):
    make_integration(agent=mine.agent, integration_type="twilio_whatsapp", credentials={"sid": "AC1", "token": "t0k"})

    response = staff_client.get(url("integrations_integration", "changelist"))

    assert "sid, token" in text(response)
    assert "bot_token" in text(response)
    assert "t0k" not in text(response)


def test_new_credentials_replace_the_stored_ones_and_are_not_shown_afterwards(staff_client, staff, mine):
    page = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    response = staff_client.post(
        url("integrations_integration", "change", mine.integration.pk),
        post_data(
            page, new_credentials='{"bot_token": "NEW-SECRET-one", "webhook_secret": "NEW-SECRET-two"}', _continue="1"
        ),
        follow=True,
    )

    mine.integration.refresh_from_db()
    assert mine.integration.credentials == {"bot_token": "NEW-SECRET-one", "webhook_secret": "NEW-SECRET-two"}
    assert "NEW-SECRET" not in response.content.decode()
    assert "webhook_secret: ••••••••" in text(response)
    assert LiveEvent.objects.filter(owner=staff, type="integration.changed", payload__change="updated").exists()


def test_an_empty_object_as_new_credentials_removes_them(staff_client, mine):
    page = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    staff_client.post(
        url("integrations_integration", "change", mine.integration.pk), post_data(page, new_credentials="{}")
    )

    mine.integration.refresh_from_db()
    assert mine.integration.credentials == {}


def test_blank_new_credentials_keep_the_stored_ones(staff_client, mine):
    page = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    response = staff_client.post(
        url("integrations_integration", "change", mine.integration.pk),
        post_data(page, active=None, new_credentials="  "),
    )

    assert response.status_code == 302
    mine.integration.refresh_from_db()
    assert mine.integration.active is False
    assert mine.integration.credentials == {"bot_token": SECRET}


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ('{"bot_token": 987654321987}', "credentials.bot_token: expected a string"),
        ('{"bot_token": ""}', "credentials.bot_token: must not be empty"),
        ('{"bot_token": "NEW-SECRET-unclosed}', "not valid JSON"),
        ('"NEW-SECRET-bare-string"', "credentials: expected an object of secrets"),
    ],
)
def test_wrong_new_credentials_are_refused_without_echoing_them(staff_client, mine, typed, message):
    page = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    response = staff_client.post(
        url("integrations_integration", "change", mine.integration.pk), post_data(page, new_credentials=typed)
    )

    assert response.status_code == 200
    assert message in text(response)
    assert "NEW-SECRET" not in response.content.decode()
    assert "987654321987" not in response.content.decode()
    mine.integration.refresh_from_db()
    assert mine.integration.credentials == {"bot_token": SECRET}


def test_typed_credentials_are_not_sent_back_when_another_field_is_wrong(staff_client, mine):
    page = staff_client.get(url("integrations_integration", "change", mine.integration.pk))

    response = staff_client.post(
        url("integrations_integration", "change", mine.integration.pk),
        post_data(page, config='{"base_url": "ftp://x"}', new_credentials='{"bot_token": "NEW-SECRET-typed"}'),
    )

    assert response.status_code == 200
    assert "NEW-SECRET-typed" not in response.content.decode()


def test_an_integration_added_with_credentials_stores_them(staff_client, mine):
    page = staff_client.get(url("integrations_integration", "add"))

    response = staff_client.post(
        url("integrations_integration", "add"),
        post_data(
            page,
            agent=str(mine.agent.pk),
            integration_type="whatsapp_cloud",
            config='{"phone_number_id": "1055"}',
            new_credentials='{"access_token": "NEW-SECRET-wa"}',
        ),
    )

    assert response.status_code == 302
    created = Integration.objects.get(integration_type="whatsapp_cloud")
    assert created.credentials == {"access_token": "NEW-SECRET-wa"}
    assert created.config == {"phone_number_id": "1055"}


def test_the_agent_page_neither_shows_nor_accepts_credentials(staff_client, mine):
    page = staff_client.get(url("agents_agent", "change", mine.agent.pk))
    prefix = inline_prefix(page, Integration)
    inline_fields = next(
        i.formset.form.base_fields for i in page.context["inline_admin_formsets"] if i.formset.model is Integration
    )

    response = staff_client.post(
        url("agents_agent", "change", mine.agent.pk),
        post_data(
            page, **{f"{prefix}-0-credentials": '{"bot_token": "NEW-SECRET-inline"}', f"{prefix}-0-active": None}
        ),
    )

    assert "credentials" not in inline_fields
    assert "bot_token" in text(page)
    assert SECRET not in page.content.decode()
    assert response.status_code == 302
    mine.integration.refresh_from_db()
    assert mine.integration.active is False
    assert mine.integration.credentials == {"bot_token": SECRET}
