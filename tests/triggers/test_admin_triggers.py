"""The trigger pages of the admin: CRM names to pick from next to the JSON, the rule in
words, errors at their field, the "Test" dry run, and the firings, read-only and scoped
to their owner."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import responses
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import ExecutionLog
from crm.models import CrmEvent, CrmSnapshot
from tests.admin_forms import post_data
from tests.factories import make_agent, make_integration, make_log, make_trigger, make_user
from triggers.models import ActionRun, Trigger, TriggerFiring

pytestmark = pytest.mark.django_db

CRM = "https://acme.kommo.com"
FIXTURES = Path(__file__).resolve().parents[1] / "crm" / "fixtures"
API_LEAD, API_CONTACT = 18425309, 21542119  # the ids in client_lead.json / client_contact.json
SALES, NEW, WON = 7290366, 61057622, 142  # the lead in client_lead.json is NEW in SALES
OLGA = 9587231
BUDGET_SOURCE, BIRTHDAY = 1138421, 563150


def text(response) -> str:
    """The page as a reader sees it (entities decoded)."""
    return html.unescape(response.content.decode())


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def kommo_of(agent):
    return make_integration(
        agent, integration_type="kommo", config={"base_url": CRM}, credentials={"access_token": "t"}
    )


def synced(integration) -> CrmSnapshot:
    return CrmSnapshot.objects.create(
        integration=integration,
        pipelines=[
            {
                "id": SALES,
                "name": "Sales",
                "statuses": [{"id": NEW, "name": "Qualified"}, {"id": WON, "name": "Won"}, {"id": 143, "name": "Lost"}],
            }
        ],
        users=[{"id": OLGA, "name": "Olga", "email": "olga@example.com"}],
        lead_fields=[{"id": BUDGET_SOURCE, "name": "Budget source", "type": "select", "enums": []}],
        contact_fields=[{"id": BIRTHDAY, "name": "Birthday", "type": "birthday", "enums": []}],
        lead_tags=[{"id": 26703, "name": "hot", "color": None}],
        contact_tags=[{"id": 26800, "name": "returning", "color": None}],
        synced_at=timezone.now(),
    )


@pytest.fixture
def staff(db):
    return make_user(is_staff=True)


@pytest.fixture
def staff_client(staff) -> Client:
    return client_for(staff)


@pytest.fixture
def my_agent(staff):
    return make_agent(owner=staff)


@pytest.fixture
def kommo(my_agent):
    return kommo_of(my_agent)


@pytest.fixture
def their_trigger(db):
    return make_trigger(make_agent(owner=make_user(is_staff=True)))


def change_url(trigger: Trigger) -> str:
    return reverse("admin:triggers_trigger_change", args=[trigger.pk])


def dry_run_url(trigger: Trigger) -> str:
    return reverse("admin:triggers_trigger_test", args=[trigger.pk])


def snippets(response) -> dict[str, list[dict]]:
    """target ("conditions" / "actions") → the items the picker's buttons would append."""
    found: dict[str, list[dict]] = {"conditions": [], "actions": []}
    for target, snippet in re.findall(r'data-target="(\w+)" data-snippet="([^"]+)"', response.content.decode()):
        found[target].append(json.loads(html.unescape(snippet)))
    return found


# --- Picking from the CRM -------------------------------------------------------------------


def test_the_editor_offers_the_agents_crm_names_with_ready_made_items(staff_client, my_agent, kommo):
    synced(kommo)
    trigger = make_trigger(my_agent)

    page = staff_client.get(change_url(trigger))

    shown = text(page)
    for name in ("Sales", "Qualified", "Won", "Budget source", "Birthday", "Olga", "hot", "returning"):
        assert name in shown
    offered = snippets(page)
    assert {"field": "status", "operator": "changed_to", "value": {"pipeline_id": SALES, "status_id": WON}} in (
        offered["conditions"]
    )
    assert {"field": "pipeline", "operator": "equals", "value": SALES} in offered["conditions"]
    assert {"field": "responsible_user", "operator": "changed_to", "value": OLGA} in offered["conditions"]
    assert {"field": f"lead.cf.{BUDGET_SOURCE}", "operator": "equals", "value": ""} in offered["conditions"]
    assert {"field": f"contact.cf.{BIRTHDAY}", "operator": "equals", "value": ""} in offered["conditions"]
    assert {"field": "tags", "operator": "contains", "value": "hot"} in offered["conditions"]
    assert {"type": "change_stage", "pipeline_id": SALES, "status_id": WON} in offered["actions"]
    assert {"type": "add_tags", "tags": ["hot"]} in offered["actions"]


def test_picked_items_save_as_they_are(staff_client, my_agent, kommo):
    synced(kommo)
    trigger = make_trigger(my_agent, event="lead_status_changed", conditions=[], actions=[])
    page = staff_client.get(change_url(trigger))
    offered = snippets(page)
    conditions = [c for c in offered["conditions"] if c["field"] in ("status", "pipeline", "tags")]
    actions = [a for a in offered["actions"] if a["type"] in ("change_stage", "create_task", "add_tags")]

    response = staff_client.post(
        change_url(trigger), post_data(page, conditions=json.dumps(conditions), actions=json.dumps(actions))
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    trigger.refresh_from_db()
    assert trigger.conditions == conditions and trigger.actions == actions


def test_a_new_trigger_offers_the_names_of_the_users_agents_only(staff_client, staff, kommo):
    synced(kommo)
    make_agent(owner=staff, name="Not synced")
    someone_elses = kommo_of(make_agent(owner=make_user(is_staff=True)))
    CrmSnapshot.objects.create(
        integration=someone_elses, users=[{"id": 1, "name": "Stranger"}], synced_at=timezone.now()
    )

    page = staff_client.get(reverse("admin:triggers_trigger_add"))
    asked_for_theirs = staff_client.get(reverse("admin:triggers_trigger_add"), {"agent": someone_elses.agent_id})

    assert page.status_code == 200
    picker = page.context["crm_picker"]
    assert [panel["agent"] for panel in picker["panels"]] == [kommo.agent]
    assert "Olga" in text(page) and "Stranger" not in text(page)
    assert "Stranger" not in text(asked_for_theirs)


def test_without_a_synced_crm_the_editor_says_how_to_get_names(staff_client, my_agent):
    kommo = kommo_of(my_agent)
    CrmSnapshot.objects.create(integration=kommo, users=[{"id": OLGA, "name": "Olga"}])  # never synced
    trigger = make_trigger(my_agent)

    page = staff_client.get(change_url(trigger))

    assert page.status_code == 200
    assert "has not been synced yet" in text(page)
    assert page.context["crm_picker"]["missing"] is True
    assert snippets(page) == {"conditions": [], "actions": []}
    assert "Olga" not in text(page)


def test_the_saved_rule_is_shown_in_words_with_crm_names(staff_client, my_agent, kommo):
    synced(kommo)
    trigger = make_trigger(
        my_agent,
        event="lead_status_changed",
        conditions=[
            {"field": "status", "operator": "changed_to", "value": {"pipeline_id": SALES, "status_id": WON}},
            {
                "any": [
                    {"field": "responsible_user", "operator": "equals", "value": OLGA},
                    {"field": f"lead.cf.{BUDGET_SOURCE}", "operator": "equals", "value": "Bank loan"},
                ]
            },
        ],
        actions=[{"type": "create_task", "text": "Call back", "responsible_user_id": OLGA, "due_in_minutes": 30}],
    )

    shown = text(staff_client.get(change_url(trigger)))

    assert "status changed to Won (pipeline Sales)" in shown
    assert "responsible user is Olga" in shown
    assert "lead field “Budget source” is “Bank loan”" in shown
    assert "create a task “Call back” for Olga, due in 30 minutes" in shown


@pytest.mark.parametrize(
    ("event", "conditions", "message"),
    [
        (
            "lead_status_changed",
            [{"field": "lead.cf.999", "operator": "equals", "value": "x"}],
            "conditions[0].field: lead field 999 is not in the CRM (known: Budget source (1138421))",
        ),
        (
            "lead_status_changed",
            [{"field": "status", "operator": "equals", "value": {"pipeline_id": SALES, "status_id": 5}}],
            "conditions[0].value.status_id: status 5 is not in pipeline “Sales”",
        ),
        (
            "lead_status_changed",
            [{"field": "message.text", "operator": "contains", "value": "price"}],
            "conditions[0].field: the message's text is only known for incoming_message",
        ),
        (
            "lead_status_changed",
            [{"field": "price", "operator": "bigger", "value": 5}],
            'conditions[0].operator: unknown operator "bigger"',
        ),
    ],
)
def test_a_condition_the_rule_cannot_have_is_refused_at_its_field(
    staff_client, my_agent, kommo, event, conditions, message
):
    synced(kommo)
    trigger = make_trigger(my_agent)
    page = staff_client.get(change_url(trigger))

    response = staff_client.post(
        change_url(trigger), post_data(page, event=event, conditions=json.dumps(conditions))
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert any(message in error for error in errors["conditions"]), errors
    assert message in text(response)
    trigger.refresh_from_db()
    assert trigger.conditions != conditions


def test_another_users_trigger_offers_no_test_page(staff_client, their_trigger):
    assert staff_client.get(dry_run_url(their_trigger)).status_code == 404
    assert staff_client.post(dry_run_url(their_trigger), {"sample": '{"lead": {"id": 1}}'}).status_code == 404


# --- The dry run ---------------------------------------------------------------------------


def test_the_trigger_page_links_to_its_test_page(staff_client, my_agent):
    trigger = make_trigger(my_agent)

    page = staff_client.get(change_url(trigger))

    assert f'href="{dry_run_url(trigger)}"' in page.content.decode()
    assert staff_client.get(dry_run_url(trigger)).status_code == 200


def test_a_sample_event_is_explained_test_by_test(staff_client, my_agent):
    my_agent.schedule = {"timezone": "Asia/Tokyo", "days": {"mon": [{"start": "09:00", "end": "18:00"}]}}
    my_agent.save()
    trigger = make_trigger(
        my_agent,
        event="lead_field_changed",
        conditions=[
            {"field": "price", "operator": "changed_to", "value": 500},
            {
                "any": [
                    {"field": "tags", "operator": "contains", "value": "vip"},
                    {"field": "time_of_day", "operator": "gte", "value": "09:00"},
                ]
            },
        ],
        actions=[{"type": "add_note", "text": "Price now {{lead.price}} for {{contact.name}}"}],
    )
    sample = {"lead": {"id": 5, "price": 500, "tags": ["hot"]}, "previous": {"price": 100}, "contact": {"name": "Ann"}}

    response = staff_client.post(dry_run_url(trigger), {"sample": json.dumps(sample), "at": "2026-03-02T10:15"})

    shown = text(response)
    assert response.status_code == 200
    assert "Matched" in shown and "Not matched" not in shown
    assert "The lead's price (budget) changed from 100 to 500" in shown
    assert "conditions[1].any[0]" in shown and "The lead's tags are 'hot', not containing 'vip'" in shown
    assert "'10:15'" in shown  # the time typed is the agent's local time
    assert "Asia/Tokyo" in shown
    assert "Price now 500 for Ann" in shown
    rows = response.context["condition_rows"]
    assert [(row["path"], row["passed"]) for row in rows] == [
        ("conditions[0]", True),
        ("conditions[1].any", True),
        ("conditions[1].any[0]", False),
        ("conditions[1].any[1]", True),
    ]


def test_a_sample_that_does_not_match_says_which_test_failed(staff_client, my_agent):
    trigger = make_trigger(
        my_agent,
        event="lead_status_changed",
        conditions=[{"field": "time_of_day", "operator": "gte", "value": "09:00"}],
    )

    response = staff_client.post(dry_run_url(trigger), {"sample": '{"lead": {"id": 5}}', "at": "2026-03-02T08:30"})

    shown = text(response)
    assert "Not matched" in shown
    assert "It would not fire:" in shown and "'08:30'" in shown
    assert "not run: the conditions do not hold" in shown


@pytest.fixture
def crm_api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{CRM}/api/v4/leads/{API_LEAD}", body=(FIXTURES / "client_lead.json").read_text())
        mock.get(f"{CRM}/api/v4/contacts/{API_CONTACT}", body=(FIXTURES / "client_contact.json").read_text())
        yield mock


def test_a_crm_lead_is_read_and_explained_without_writing_anything(staff_client, my_agent, kommo, crm_api):
    synced(kommo)
    trigger = make_trigger(
        my_agent,
        event="lead_status_changed",
        conditions=[
            {"field": f"lead.cf.{BUDGET_SOURCE}", "operator": "equals", "value": "bank loan"},
            {"field": "status", "operator": "equals", "value": {"pipeline_id": SALES, "status_id": WON}},
        ],
        actions=[{"type": "create_task", "text": "Call {{contact.first_name}} about {{lead.name}}"}],
    )
    logs = ExecutionLog.objects.count()

    response = staff_client.post(dry_run_url(trigger), {"lead_id": str(API_LEAD)})

    shown = text(response)
    assert response.status_code == 200
    assert f"Not matched for lead {API_LEAD}" in shown
    assert "'Bank loan'" in shown and "lead field “Budget source”" in shown
    assert "Won (pipeline Sales)" in shown
    assert "status 61057622 in pipeline 7290366, not equal to status 142 in pipeline 7290366" in shown
    assert "Call Maria about Solar panels for a house" in shown
    assert "responsible user: Olga (9587231)" in shown
    assert [call.request.method for call in crm_api.calls] == ["GET", "GET"]
    assert ExecutionLog.objects.count() == logs and not TriggerFiring.objects.exists()


def test_a_message_text_can_go_with_a_crm_lead(staff_client, my_agent, kommo, crm_api):
    trigger = make_trigger(
        my_agent,
        event="incoming_message",
        conditions=[
            {"field": "message.text", "operator": "contains", "value": "price"},
            {"field": "tags", "operator": "contains", "value": "hot"},
        ],
        actions=[],
    )

    response = staff_client.post(
        dry_run_url(trigger), {"lead_id": str(API_LEAD), "sample": '{"text": "What is the price?"}'}
    )

    assert response.context["report"]["matched"] is True, response.context["form"].errors
    assert "The message's text is 'What is the price?': containing 'price'" in text(response)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({}, None, "Give a CRM lead id or a sample event."),
        ({"lead_id": "0"}, "lead_id", "Ensure this value is greater than or equal to 1."),
        ({"sample": "[1, 2]"}, "sample", "expected an object"),
        ({"sample": '{"lead": {"colour": "red"}}'}, "sample", "lead.colour: unknown field"),
        ({"sample": '{"lead": {"price": "lots"}}'}, "sample", "lead.price: A valid number is required."),
        ({"sample": '{"lead": '}, "sample", "Enter a valid JSON."),
        ({"lead_id": "7", "sample": '{"lead": {"id": 7}}'}, "sample", 'a sample gives only "text"'),
        ({"lead_id": "7"}, "lead_id", "the agent has no active Kommo integration to read the lead from"),
        ({"at": "yesterday", "lead_id": "7"}, "at", "Enter a valid date/time."),
    ],
)
def test_bad_test_input_is_shown_at_its_field(staff_client, my_agent, data, field, message):
    trigger = make_trigger(my_agent)

    response = staff_client.post(dry_run_url(trigger), data)

    assert response.status_code == 200
    form = response.context["form"]
    errors = form.non_field_errors() if field is None else form.errors[field]
    assert any(message in error for error in errors), form.errors
    assert message in text(response)
    assert response.context["report"] is None


def test_a_lead_the_crm_does_not_have_is_shown_at_the_lead_id(staff_client, my_agent, kommo, crm_api):
    crm_api.get(f"{CRM}/api/v4/leads/404404", status=404)
    trigger = make_trigger(my_agent)

    response = staff_client.post(dry_run_url(trigger), {"lead_id": "404404"})

    assert response.context["form"].errors["lead_id"] == ["lead 404404 is not in the CRM"]


def test_the_test_page_says_when_the_crm_cannot_be_read(staff_client, my_agent, kommo, crm_api, monkeypatch):
    from crm.client import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "attempts", 1)
    crm_api.get(f"{CRM}/api/v4/leads/77", status=503)
    trigger = make_trigger(my_agent)

    response = staff_client.post(dry_run_url(trigger), {"lead_id": "77"})

    assert response.status_code == 200
    assert "The CRM could not be read just now" in text(response)
    assert response.context["report"] is None


# --- Firings -------------------------------------------------------------------------------


def fire(trigger: Trigger, *, lead_id: int = 9, status: str = "failed") -> TriggerFiring:
    integration = kommo_of(trigger.agent)
    event = CrmEvent.objects.create(
        integration=integration,
        kind="lead_status_changed",
        entity_type="lead",
        entity_id=lead_id,
        lead_id=lead_id,
        data={"id": str(lead_id)},
        dedupe_key=f"key-{trigger.pk}-{lead_id}",
    )
    firing = TriggerFiring.objects.create(
        trigger=trigger,
        event=event,
        agent=trigger.agent,
        crm_lead_id=lead_id,
        status=status,
        actions=trigger.actions,
        explanation={
            "path": "conditions",
            "passed": True,
            "reason": "every condition holds",
            "children": [
                {
                    "path": "conditions[0]",
                    "passed": True,
                    "reason": "The lead's price (budget) is 500: greater than 100",
                    "field": "price",
                    "operator": "gt",
                    "value": 100,
                    "seen": "500",
                }
            ],
        },
    )
    ActionRun.objects.create(
        firing=firing, index=0, type="create_task", status="done", attempts=1, result={"task_id": 9001}
    )
    ActionRun.objects.create(
        firing=firing, index=1, type="add_note", status="failed", attempts=3, error="CRM said 400: note too long"
    )
    return firing


def test_firings_are_listed_for_their_owner_only(staff_client, my_agent, their_trigger):
    mine = fire(make_trigger(my_agent))
    fire(their_trigger)
    changelist = reverse("admin:triggers_triggerfiring_changelist")

    listed = staff_client.get(changelist)
    failed = staff_client.get(changelist, {"status__exact": "failed"})
    done = staff_client.get(changelist, {"status__exact": "done"})

    assert [f.pk for f in listed.context["cl"].result_list] == [mine.pk]
    assert [f.pk for f in failed.context["cl"].result_list] == [mine.pk]
    assert list(done.context["cl"].result_list) == []
    assert their_trigger.agent.name not in text(listed)


def test_another_users_firing_reads_as_missing(staff_client, their_trigger):
    theirs = fire(their_trigger)

    response = staff_client.get(reverse("admin:triggers_triggerfiring_change", args=[theirs.pk]), follow=True)

    assert response.redirect_chain == [(reverse("admin:index"), 302)]
    assert "doesn’t exist" in text(response)


def test_a_firing_shows_why_it_matched_and_its_actions_read_only(staff_client, my_agent):
    firing = fire(make_trigger(my_agent))
    page_url = reverse("admin:triggers_triggerfiring_change", args=[firing.pk])

    page = staff_client.get(page_url)
    post = staff_client.post(page_url, {"status": "done"})

    shown = text(page)
    assert page.status_code == 200
    assert "The lead's price (budget) is 500: greater than 100" in shown
    assert "CRM said 400: note too long" in shown and "9001" in shown
    assert 'name="_save"' not in page.content.decode()
    assert post.status_code == 403
    assert staff_client.get(reverse("admin:triggers_triggerfiring_add")).status_code == 403
    firing.refresh_from_db()
    assert firing.status == "failed"


def test_the_trigger_page_lists_recent_firings_and_links_to_its_log(staff_client, my_agent):
    trigger = make_trigger(my_agent)
    firing = fire(trigger, lead_id=4242)
    other = fire(make_trigger(my_agent), lead_id=5353)
    its_log = make_log(agent=my_agent, ref_type="trigger", ref_id=trigger.pk)
    make_log(agent=my_agent, ref_type="trigger", ref_id=trigger.pk + 1000)
    make_log(agent=my_agent, ref_type="sequence", ref_id=trigger.pk)

    page = staff_client.get(change_url(trigger))

    shown = text(page)
    assert "4242" in shown and "5353" not in shown
    assert reverse("admin:triggers_triggerfiring_change", args=[firing.pk]) in shown
    log_link, firings_link = (
        re.search(r'href="([^"]*executionlog/\?[^"]*)"', shown).group(1),
        re.search(r'href="([^"]*triggerfiring/\?[^"]*)"', shown).group(1),
    )
    logs = staff_client.get(log_link)
    firings = staff_client.get(firings_link)
    assert [log.pk for log in logs.context["cl"].result_list] == [its_log.pk]
    assert [f.pk for f in firings.context["cl"].result_list] == [firing.pk]
    assert other.pk not in [f.pk for f in firings.context["cl"].result_list]
