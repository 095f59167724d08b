"""The dry run (what a trigger would do, doing nothing) and the actions that write to
the lead: a message in its chat, from a template or written by the agent's model."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import responses
from django.utils import timezone

from agents.ai import Completion
from agents.models import AgentCrmAccess, Conversation, ConversationMessage, ExecutionLog, LiveEvent
from crm.models import CrmSnapshot
from tests.factories import make_integration, make_trigger
from tests.triggers.test_execution import CRM, LEAD, NEW, PIPELINE, WON, calls, lead_form, run
from triggers import actions
from triggers.models import ActionRun, EntityState, OwnChange

FIXTURES = Path(__file__).resolve().parents[1] / "crm" / "fixtures"
TELEGRAM = "https://api.telegram.org/bot123456:ABC-def"
API_LEAD, API_CONTACT = 18425309, 21542119  # the ids in client_lead.json / client_contact.json


def fixture(name: str):
    return json.loads((FIXTURES / f"client_{name}.json").read_text())


@pytest.fixture
def kommo(agent, settings):
    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers"]
    AgentCrmAccess.objects.filter(agent=agent).update(lead_fields=[1138421], contact_fields=[])
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": 31416592},
        credentials={"access_token": "crm-token"},
    )


@pytest.fixture
def telegram(agent):
    return make_integration(
        agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def", "secret_token": "s"}
    )


@pytest.fixture
def vendors():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{CRM}/api/v4/leads/{API_LEAD}", json=fixture("lead"))
        mock.get(f"{CRM}/api/v4/contacts/{API_CONTACT}", json=fixture("contact"))
        mock.patch(f"{CRM}/api/v4/leads/{LEAD}", json={"id": LEAD})
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.post(f"{CRM}/api/v4/leads/{LEAD}/notes", json={"_embedded": {"notes": [{"id": 7001}]}})
        mock.post(
            f"{TELEGRAM}/sendMessage",
            json=json.loads(
                (FIXTURES.parents[1] / "integrations/channels/fixtures/telegram_send_message_ok.json").read_text()
            ),
        )
        yield mock


def chat(agent, telegram, lead_id: int = LEAD, **fields) -> Conversation:
    defaults = {"chat_id": "287431920", "sender_name": "Анна", "last_inbound_at": timezone.now()}
    return Conversation.objects.create(agent=agent, integration=telegram, crm_lead_id=lead_id, **(defaults | fields))


# --- send_message ---------------------------------------------------------------------------


def test_a_template_message_goes_to_the_leads_chat_and_is_stored(agent, kommo, telegram, vendors):
    conversation = chat(agent, telegram)
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "send_message", "text": "{{lead.name}}: thank you! Price {{lead.price}}."}],
    )

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    (sent,) = calls(vendors, "/sendMessage")
    assert json.loads(sent.request.body) == {
        "chat_id": "287431920",
        "text": "Заявка с сайта: thank you! Price 15000.",
    }
    stored = ConversationMessage.objects.get(conversation=conversation)
    assert (stored.direction, stored.author, stored.status) == ("out", "agent", "sent")
    assert ActionRun.objects.get().result["message_id"] == stored.id


def test_a_lead_without_a_chat_gets_a_clear_failure(agent, kommo, telegram, vendors):
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "send_message", "text": "Hi"}])

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    run_ = ActionRun.objects.get()
    assert run_.status == "failed" and f"lead {LEAD} has no chat with this agent" in run_.error
    assert calls(vendors, "/sendMessage") == []


def test_whatsapp_outside_the_customer_window_is_not_attempted(agent, kommo, vendors):
    whatsapp = make_integration(
        agent,
        integration_type="whatsapp_cloud",
        config={"phone_number_id": "1"},
        credentials={"access_token": "t", "app_secret": "s"},
    )
    chat(agent, whatsapp, chat_id="5215512345678", last_inbound_at=timezone.now() - timedelta(days=2))
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "send_message", "text": "Hi"}])

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    run_ = ActionRun.objects.get()
    assert run_.status == "failed" and "24 hours" in run_.error


def test_an_ai_message_is_written_from_the_instruction_and_allowed_fields_only(
    agent, kommo, telegram, vendors, monkeypatch
):
    chat(agent, telegram, lead_id=API_LEAD)
    requests = []

    def model(model_spec, system, messages, **kwargs):
        requests.append({"system": system, "messages": list(messages)})
        return Completion(
            text="Hola! ¿Seguimos?", provider="openai", model="gpt-4o-mini", input_tokens=90, output_tokens=7,
            latency_ms=300,
        )

    monkeypatch.setattr(actions.ai, "complete", model)
    make_trigger(
        agent,
        event="note_added",
        conditions=[],
        actions=[{"type": "send_message", "ai_instruction": "Ask if they still want the panels"}],
    )
    note = (
        f"leads[note][0][note][text]=Call+me&leads[note][0][note][element_type]=2&leads[note][0][note][element_id]="
        f"{API_LEAD}&leads[note][0][note][id]=5&account[id]=31416592&account[subdomain]=acme"
    ).encode()

    run(kommo, note)

    (request,) = requests
    assert "Budget source: Bank loan" in request["system"]
    assert "Interested in" not in request["system"]  # not granted to the agent
    assert "Ask if they still want the panels" in request["messages"][-1].text
    (sent,) = calls(vendors, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == "Hola! ¿Seguimos?"
    stored = ConversationMessage.objects.get(direction="out")
    assert (stored.ai_model, stored.input_tokens) == ("gpt-4o-mini", 90)


# --- create_task in working hours ---------------------------------------------------------------


def test_a_task_due_outside_working_hours_moves_to_the_next_opening(agent, kommo, vendors, monkeypatch):
    agent.schedule = {"timezone": "Europe/Moscow", "days": {"mon": [{"start": "09:00", "end": "18:00"}]}}
    agent.save()
    friday_evening = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)  # 20:00 in Moscow
    monkeypatch.setattr(actions.timezone, "now", lambda: friday_evening)
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "create_task", "text": "Call", "due_in_minutes": 30, "within_working_hours": True}],
    )

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    (task,) = calls(vendors, "/api/v4/tasks")
    due = datetime.fromtimestamp(json.loads(task.request.body)[0]["complete_till"], tz=UTC)
    assert due == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # Monday 09:00 Moscow


# --- the dry run ---------------------------------------------------------------------------


def test_the_dry_run_for_a_crm_lead_explains_and_renders_without_doing_anything(api, agent, kommo, telegram, vendors):
    chat(agent, telegram, lead_id=API_LEAD)
    CrmSnapshot.objects.create(
        integration=kommo,
        pipelines=[{"id": 7290366, "name": "Sales", "statuses": [{"id": 61057622, "name": "Qualified"}]}],
        users=[{"id": 9587231, "name": "Olga"}],
        lead_fields=[{"id": 1138421, "name": "Budget source"}],
        synced_at=timezone.now(),
    )
    trigger = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[
            {"field": "lead.cf.1138421", "operator": "equals", "value": "bank loan"},
            {
                "any": [
                    {"field": "price", "operator": "gt", "value": 20000},
                    {"field": "tags", "operator": "contains", "value": "hot"},
                ]
            },
            {"field": "status", "operator": "equals", "value": {"pipeline_id": 7290366, "status_id": 142}},
        ],
        actions=[
            {"type": "send_message", "text": "Hi {{contact.first_name}}, about {{lead.name}} ({{lead.status}})"},
            {"type": "create_task", "text": "Call {{contact.phone}} for {{responsible.name}}"},
        ],
    )
    fired = LiveEvent.objects.filter(type="trigger.fired")
    before = ExecutionLog.objects.count(), fired.count(), OwnChange.objects.count()

    response = api.post(f"/api/triggers/{trigger.id}/test/", {"lead_id": API_LEAD}, format="json")

    assert response.status_code == 200, response.json()
    report = response.json()
    assert report["matched"] is False and report["would_run"] is False
    first, group, stage = report["conditions"]
    assert first["passed"] is True and first["seen"] == "'Bank loan'"
    assert group["passed"] is True and [c["passed"] for c in group["children"]] == [False, True]
    assert stage["passed"] is False
    assert stage["reason"] == (
        "The lead's stage (pipeline and status) is status 61057622 in pipeline 7290366, "
        "not equal to status 142 in pipeline 7290366"
    )
    message, task = report["actions"]
    assert message["text"] == "Hi Maria, about Solar panels for a house (Qualified)"
    assert message["to"]["channel"] == "telegram"
    assert task["text"].startswith("Call +") and task["text"].endswith("for Olga")
    assert task["responsible_user_id"] == 9587231
    # nothing was done
    assert [c.request.method for c in vendors.calls] == ["GET", "GET"]
    assert (ExecutionLog.objects.count(), fired.count(), OwnChange.objects.count()) == before
    assert not EntityState.objects.exists()


def test_the_dry_run_with_a_sample_event(api, agent):
    trigger = make_trigger(
        agent,
        event="lead_field_changed",
        conditions=[
            {"field": "price", "operator": "changed_to", "value": 500},
            {"field": "time_of_day", "operator": "gte", "value": "09:00"},
        ],
        actions=[{"type": "add_note", "text": "Price now {{lead.price}}"}],
    )
    sample = {"lead": {"id": 5, "name": "Test", "price": 500}, "previous": {"price": 100}}

    response = api.post(
        f"/api/triggers/{trigger.id}/test/", {"event": sample, "at": "2026-11-24T10:00:00Z"}, format="json"
    )

    report = response.json()
    assert report["matched"] is True and report["would_run"] is True
    assert report["conditions"][0]["reason"] == "The lead's price (budget) changed from 100 to 500"
    assert report["actions"] == [{"index": 0, "type": "add_note", "text": "Price now 500"}]


def test_the_dry_run_refuses_bad_input_field_by_field(api, agent, kommo, vendors, other_api):
    trigger = make_trigger(agent)
    vendors.get(f"{CRM}/api/v4/leads/404404", status=404)

    both = api.post(f"/api/triggers/{trigger.id}/test/", {"lead_id": 1, "event": {"lead": {"id": 1}}}, format="json")
    neither = api.post(f"/api/triggers/{trigger.id}/test/", {}, format="json")
    missing = api.post(f"/api/triggers/{trigger.id}/test/", {"lead_id": 404404}, format="json")
    unknown_key = api.post(f"/api/triggers/{trigger.id}/test/", {"event": {"lead": {"colour": 1}}}, format="json")
    foreign = other_api.post(f"/api/triggers/{trigger.id}/test/", {"lead_id": 1}, format="json")

    assert both.status_code == neither.status_code == 400
    assert both.json() == {"event": ["with lead_id, only event.text (a message's or note's text) may be given"]}
    assert neither.json() == {"lead_id": ["give either lead_id or event"]}
    assert (missing.status_code, missing.json()) == (400, {"lead_id": ["lead 404404 is not in the CRM"]})
    assert unknown_key.status_code == 400 and "colour" in json.dumps(unknown_key.json())
    assert foreign.status_code == 404


def test_the_dry_run_says_when_the_crm_is_down(api, agent, kommo, vendors, monkeypatch):
    trigger = make_trigger(agent)
    vendors.get(f"{CRM}/api/v4/leads/77", status=429, headers={"Retry-After": "0"})

    response = api.post(f"/api/triggers/{trigger.id}/test/", {"lead_id": 77}, format="json")

    assert response.status_code == 503 and "the CRM could not be read" in response.json()["detail"]


def test_won_in_any_pipeline(agent, kommo, vendors):
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[{"field": "status", "operator": "changed_to", "value": {"status_id": WON}}],
        actions=[{"type": "add_note", "text": "won"}],
    )

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW, pipeline_id=999))
    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW, pipeline_id=PIPELINE, modified=1717079999))

    assert len(calls(vendors, "/notes")) == 2


def _interrupted_send(agent, kommo, telegram, *, row_status: str | None):
    """A send_message action left "running" by a killed worker, with or without its row."""
    from crm.models import CrmEvent
    from crm.tasks import process_events
    from tests.triggers.test_execution import deliver
    from triggers import execution
    from triggers.models import TriggerFiring

    conversation = chat(agent, telegram)
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "send_message", "text": "Hi"}])
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execution, "firing_run", lambda firing, ctx, final=False: "running")  # dies before acting
        process_events([event_id])
    firing = TriggerFiring.objects.get()
    ActionRun.objects.filter(firing=firing, index=0).update(  # made with the firing; the worker claimed it
        status="running", attempts=1, claimed_at=timezone.now() - timedelta(minutes=10)
    )
    if row_status:
        ConversationMessage.objects.create(
            conversation=conversation, direction="out", author="agent", text="Hi", status=row_status,
            key=f"trigger-firing-{firing.pk}-action-0",
        )
    CrmEvent.objects.filter(pk=event_id).update(status="pending")
    process_events([event_id])
    return ActionRun.objects.get()


def test_an_interrupted_trigger_message_that_never_went_out_is_sent_once(agent, kommo, telegram, vendors):
    run_ = _interrupted_send(agent, kommo, telegram, row_status=None)

    assert run_.status == "done" and len(calls(vendors, "/sendMessage")) == 1


def test_an_interrupted_trigger_message_caught_mid_send_is_not_repeated(agent, kommo, telegram, vendors):
    run_ = _interrupted_send(agent, kommo, telegram, row_status="sending")

    assert run_.status == "failed" and "not sent again" in run_.error
    assert calls(vendors, "/sendMessage") == []


def test_an_interrupted_trigger_message_already_sent_counts_as_done(agent, kommo, telegram, vendors):
    run_ = _interrupted_send(agent, kommo, telegram, row_status="sent")

    assert run_.status == "done" and calls(vendors, "/sendMessage") == []
