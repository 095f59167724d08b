"""The reply pipeline: a lead's message → the lead in the CRM → the agent's reply from
its instructions and only the CRM fields it may read → sent back on the same channel."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import responses
from django.utils import timezone
from django_q.models import Schedule

from agents import pipeline
from agents.ai import Completion
from agents.ai.errors import AIConfigError, AITransientError
from agents.conversations import inbound_store
from agents.models import AgentCrmAccess, Conversation, ConversationMessage, ExecutionLog
from integrations.channels.base import Channel, InboundMessage
from tests.factories import make_integration

CRM = "https://acme.kommo.com"
TELEGRAM = "https://api.telegram.org/bot123456:ABC-def"
CRM_FIXTURES = Path(__file__).resolve().parents[1] / "crm" / "fixtures"
CHANNEL_FIXTURES = Path(__file__).resolve().parents[1] / "integrations" / "channels" / "fixtures"
LEAD_ID, CONTACT_ID = 18425309, 21542119


def crm_fixture(name: str):
    return json.loads((CRM_FIXTURES / f"client_{name}.json").read_text())


class FakeModel:
    """Stands in for agents.ai.complete: records each request, answers in turn."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[object] = []

    def __call__(self, *, model_spec: str, system: str, messages, **kwargs) -> Completion:
        self.requests.append({"model_spec": model_spec, "system": system, "messages": list(messages)})
        answer = self.answers.pop(0) if self.answers else "Delivery to Kazan is 490 ₽, 2–3 days."
        if isinstance(answer, Exception):
            raise answer
        return Completion(
            text=answer, provider="openai", model="gpt-4o-mini", input_tokens=120, output_tokens=18, latency_ms=640
        )


@pytest.fixture
def model(monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(pipeline.ai, "complete", fake)
    return fake


@pytest.fixture
def channel(agent):
    return make_integration(
        agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def", "secret_token": "s"}
    )


@pytest.fixture
def kommo(agent):
    AgentCrmAccess.objects.filter(agent=agent).update(lead_fields=[1138421], contact_fields=[563143])
    return make_integration(
        agent, integration_type="kommo", config={"base_url": CRM}, credentials={"access_token": "crm-token"}
    )


@pytest.fixture
def crm_api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{CRM}/api/v4/leads/{LEAD_ID}", json=crm_fixture("lead"))
        mock.get(f"{CRM}/api/v4/contacts/{CONTACT_ID}", json=crm_fixture("contact"))
        mock.get(f"{CRM}/api/v4/contacts", json=crm_fixture("contacts_search"))
        mock.post(f"{CRM}/api/v4/leads/complex", json=crm_fixture("leads_complex"))
        mock.post(f"{CRM}/api/v4/leads/{LEAD_ID}/notes", json=crm_fixture("note_created"))
        mock.post(f"{CRM}/api/v4/tasks", json=crm_fixture("task_created"))
        mock.post(
            f"{TELEGRAM}/sendMessage",
            json=json.loads((CHANNEL_FIXTURES / "telegram_send_message_ok.json").read_text()),
        )
        yield mock


def receive(channel, text: str, *, n: int = 1, chat_id: str = "287431920") -> ConversationMessage:
    stored = inbound_store(
        integration=channel,
        message=InboundMessage(
            channel=Channel.TELEGRAM,
            external_id=f"{chat_id}:{n}",
            message_id=str(n),
            chat_id=chat_id,
            sender_id=chat_id,
            sender_name="Анна Петрова",
            text=text,
            sent_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        ),
    )
    return ConversationMessage.objects.get(pk=stored.message_id)


def calls_to(mock, suffix: str, method: str = "POST") -> list:
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


def link_to_lead(message: ConversationMessage) -> None:
    Conversation.objects.filter(pk=message.conversation_id).update(crm_lead_id=LEAD_ID, crm_contact_id=CONTACT_ID)


def test_the_reply_goes_back_on_the_channel_and_is_recorded(channel, kommo, crm_api, model):
    message = receive(channel, "How much is delivery to Kazan?")
    link_to_lead(message)

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (sent,) = calls_to(crm_api, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == "Delivery to Kazan is 490 ₽, 2–3 days."
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("answered", 1)
    reply = message.replies.get()
    assert (reply.direction, reply.status, reply.ai_model, reply.input_tokens, reply.output_tokens) == (
        "out",
        "sent",
        "gpt-4o-mini",
        120,
        18,
    )
    (note,) = calls_to(crm_api, f"/leads/{LEAD_ID}/notes")
    assert "How much is delivery to Kazan?" in note.request.body.decode()
    log = ExecutionLog.objects.get(kind="reply")
    assert (log.status, log.crm_lead_id, log.ref_id) == ("success", LEAD_ID, message.id)


def test_only_the_crm_fields_the_agent_may_read_reach_the_model(channel, kommo, crm_api, model):
    message = receive(channel, "Hello")
    link_to_lead(message)

    pipeline.message_reply(message_id=message.id)

    (request,) = model.requests
    everything_sent = request["system"] + " ".join(m.text for m in request["messages"])
    assert "Budget source: Bank loan" in everything_sent  # lead field 1138421, granted
    assert "+1 (415) 555-0132" in everything_sent  # contact phone 563143, granted
    for secret in ("Solar panels", "Battery", "Interested in", "maria.lopez@example.com"):
        assert secret not in everything_sent  # fields not granted never reach the model


def test_an_unknown_person_gets_a_lead_and_contact_created_in_the_crm(channel, kommo, crm_api, model):
    message = receive(channel, "Hi, I want solar panels")

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (created,) = calls_to(crm_api, "/leads/complex")
    body = json.loads(created.request.body)
    assert body[0]["_embedded"]["contacts"][0]["name"] == "Анна Петрова"
    conversation = Conversation.objects.get()
    assert (conversation.crm_lead_id, conversation.crm_contact_id) == (18425401, 21542301)


def test_the_conversation_so_far_is_given_to_the_model_in_order(channel, crm_api, model):
    first = receive(channel, "Hello", n=1)
    pipeline.message_reply(message_id=first.id)
    second = receive(channel, "And delivery?", n=2)

    pipeline.message_reply(message_id=second.id)

    turns = [(m.role, m.text) for m in model.requests[-1]["messages"]]
    assert turns == [
        ("user", "Hello"),
        ("assistant", "Delivery to Kazan is 490 ₽, 2–3 days."),
        ("user", "And delivery?"),
    ]


def test_with_language_detection_the_model_is_told_the_leads_language(channel, crm_api, model, agent):
    agent.language_detection = True
    agent.save()
    message = receive(channel, "Здравствуйте! Сколько стоит доставка в Казань?")

    pipeline.message_reply(message_id=message.id)

    assert "“ru”" in model.requests[0]["system"]
    assert Conversation.objects.get().language == "ru"


def test_without_language_detection_the_default_language_is_used(channel, crm_api, model, agent):
    agent.default_language = "pt-BR"
    agent.save()
    message = receive(channel, "Здравствуйте! Сколько стоит доставка в Казань?")

    pipeline.message_reply(message_id=message.id)

    assert "“pt-BR”" in model.requests[0]["system"]


def test_a_lead_asking_for_a_person_is_handed_off_with_a_task_and_the_agent_then_stays_quiet(
    channel, kommo, crm_api, model
):
    first = receive(channel, "Can I talk to a manager please?", n=1)
    link_to_lead(first)

    assert pipeline.message_reply(message_id=first.id) == "answered"

    (task,) = calls_to(crm_api, "/api/v4/tasks")
    assert json.loads(task.request.body)[0]["responsible_user_id"] == 9587231
    assert "team member" in model.requests[0]["system"]
    conversation = Conversation.objects.get()
    assert conversation.handoff_until > timezone.now()
    second = receive(channel, "Hello?", n=2)
    assert pipeline.message_reply(message_id=second.id) == "skipped"
    assert len(model.requests) == 1


@pytest.fixture
def closed_now(agent):
    """Working hours that are never now: one minute on a day that is not today."""
    other_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(timezone.now().weekday() + 3) % 7]
    agent.schedule = {"timezone": "UTC", "days": {other_day: [{"start": "03:00", "end": "03:01"}]}}
    agent.save()
    return agent


def test_outside_working_hours_a_silent_agent_does_not_answer(channel, crm_api, model, closed_now):
    closed_now.outside_hours = "silent"
    closed_now.save()
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "skipped"

    assert model.requests == [] and calls_to(crm_api, "/sendMessage") == []
    message.refresh_from_db()
    assert "outside working hours" in message.error


def test_outside_working_hours_the_away_message_is_sent_once(channel, crm_api, model, closed_now):
    closed_now.outside_hours, closed_now.away_message = "away_once", "We answer from 9 to 18."
    closed_now.save()

    first = receive(channel, "Hello", n=1)
    assert pipeline.message_reply(message_id=first.id) == "answered"
    second = receive(channel, "Anyone?", n=2)
    assert pipeline.message_reply(message_id=second.id) == "skipped"

    sent = calls_to(crm_api, "/sendMessage")
    assert [json.loads(c.request.body)["text"] for c in sent] == ["We answer from 9 to 18."]
    assert model.requests == []


def test_outside_working_hours_an_answering_agent_answers(channel, crm_api, model, closed_now):
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "answered"


def test_a_provider_failure_keeps_the_message_and_schedules_another_attempt(channel, crm_api, model):
    model.answers = [AITransientError("OpenAI answered 500", provider="openai", model="gpt-4o-mini")]
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "received"

    message.refresh_from_db()
    assert (message.status, message.attempts) == ("received", 1)
    assert "500" in message.error
    (retry,) = Schedule.objects.filter(func="agents.tasks.reply_to_message")
    assert retry.next_run > timezone.now()
    assert ExecutionLog.objects.get(kind="reply").status == "retrying"

    assert pipeline.message_reply(message_id=message.id) == "answered"  # the retry succeeds
    assert len(calls_to(crm_api, "/sendMessage")) == 1


def test_after_the_last_attempt_the_message_is_failed_with_the_reason(channel, crm_api, model):
    message = receive(channel, "Hello")
    ConversationMessage.objects.filter(pk=message.pk).update(attempts=pipeline.MAX_ATTEMPTS - 1)
    model.answers = [AITransientError("OpenAI answered 503", provider="openai", model="gpt-4o-mini")]

    assert pipeline.message_reply(message_id=message.id) == "failed"

    message.refresh_from_db()
    assert message.status == "failed"
    assert "503" in message.error and f"after {pipeline.MAX_ATTEMPTS} attempts" in message.error


def test_a_missing_api_key_fails_the_message_at_once(channel, crm_api, model):
    model.answers = [AIConfigError("OPENAI_API_KEY is not set", provider="openai")]
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "failed"

    message.refresh_from_db()
    assert "OPENAI_API_KEY is not set" in message.error
    assert not Schedule.objects.filter(func="agents.tasks.reply_to_message").exists()


def test_a_message_already_answered_is_not_answered_again(channel, crm_api, model):
    message = receive(channel, "Hello")
    pipeline.message_reply(message_id=message.id)

    assert pipeline.message_reply(message_id=message.id) == "not_waiting"
    assert len(calls_to(crm_api, "/sendMessage")) == 1


def test_a_switched_off_agent_does_not_answer(channel, crm_api, model, agent):
    agent.active = False
    agent.save()
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "skipped"
    assert model.requests == []


def test_a_chat_reads_its_lead_from_the_crm_once_until_the_crm_says_it_changed(
    channel, kommo, crm_api, model
):
    from agents.handlers import forget_changed_lead
    from crm.models import CrmEvent

    for n in (1, 2):
        message = receive(channel, f"Question {n}", n=n)
        link_to_lead(message)
        pipeline.message_reply(message_id=message.id)
    assert len(calls_to(crm_api, f"/leads/{LEAD_ID}", method="GET")) == 1

    event = CrmEvent.objects.create(
        integration=kommo, kind="lead_updated", entity_type="lead", entity_id=LEAD_ID, lead_id=LEAD_ID,
        dedupe_key="x", data={},
    )  # fmt: skip
    forget_changed_lead(event)
    third = receive(channel, "Question 3", n=3)
    pipeline.message_reply(message_id=third.id)

    assert len(calls_to(crm_api, f"/leads/{LEAD_ID}", method="GET")) == 2


def test_a_contact_change_also_refreshes_the_lead_of_its_conversations(channel, kommo, crm_api, model):
    from agents.handlers import forget_changed_lead
    from crm.models import CrmEvent

    first = receive(channel, "Question 1", n=1)
    link_to_lead(first)
    pipeline.message_reply(message_id=first.id)
    event = CrmEvent.objects.create(
        integration=kommo, kind="contact_updated", entity_type="contact", entity_id=CONTACT_ID, dedupe_key="y",
        data={},
    )  # fmt: skip
    forget_changed_lead(event)
    second = receive(channel, "Question 2", n=2)
    pipeline.message_reply(message_id=second.id)

    assert len(calls_to(crm_api, f"/leads/{LEAD_ID}", method="GET")) == 2


# --- through the real SDKs, against a local server speaking each provider's wire format -----

PROVIDER_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


@pytest.fixture
def ai_server(settings):
    from agents.ai import base
    from tests.fake_ai_server import FakeAIServer

    base.clear_client_cache()
    with FakeAIServer() as server:
        for provider in PROVIDER_MODELS:
            setattr(settings, f"{provider.upper()}_API_KEY", f"test-{provider}-key")
            setattr(settings, f"{provider.upper()}_BASE_URL", server.url + ("/v1" if provider == "openai" else ""))
        settings.AI_TIMEOUT_SECONDS, settings.AI_MAX_RETRIES = 5, 0
        server.reply_text = "Delivery to Kazan is 490 ₽."
        yield server
    base.clear_client_cache()


@pytest.mark.parametrize("provider", sorted(PROVIDER_MODELS))
def test_a_lead_gets_a_reply_from_each_provider(provider, channel, kommo, crm_api, ai_server, agent):
    agent.ai_model = f"{provider}:{PROVIDER_MODELS[provider]}"
    agent.save()
    message = receive(channel, "How much is delivery to Kazan?")
    link_to_lead(message)

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (sent,) = calls_to(crm_api, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == "Delivery to Kazan is 490 ₽."
    reply = message.replies.get()
    assert (reply.ai_provider, reply.ai_model) == (provider, PROVIDER_MODELS[provider])
    assert reply.input_tokens and reply.output_tokens
    (request,) = ai_server.requests
    sent_to_model = json.dumps(request.json, ensure_ascii=False)
    assert "Budget source: Bank loan" in sent_to_model and "maria.lopez@example.com" not in sent_to_model


def test_after_a_provider_500_the_message_is_answered_on_the_next_attempt(channel, crm_api, ai_server, agent):
    agent.ai_model = "openai:gpt-4o-mini"
    agent.save()
    ai_server.fail(500)
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "received"
    assert pipeline.message_reply(message_id=message.id) == "answered"

    message.refresh_from_db()
    assert message.attempts == 2
    assert len(calls_to(crm_api, "/sendMessage")) == 1


def test_an_unexpected_error_is_retried_not_left_processing(channel, crm_api, model, monkeypatch):
    model.answers = [ZeroDivisionError("a bug")]
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "received"

    message.refresh_from_db()
    assert (message.status, message.error) == ("received", "unexpected error: ZeroDivisionError")
    assert Schedule.objects.filter(func="agents.tasks.reply_to_message").exists()


def test_a_long_reply_cut_off_midway_keeps_what_was_sent_and_is_not_written_again(channel, crm_api, model):
    model.answers = [("A long answer sentence. " * 250).strip()]  # ~6,000 characters: two Telegram messages
    crm_api.remove(responses.POST, f"{TELEGRAM}/sendMessage")
    first_part = json.loads((CHANNEL_FIXTURES / "telegram_send_message_ok.json").read_text())
    crm_api.post(f"{TELEGRAM}/sendMessage", json=first_part)
    refusal = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    crm_api.post(f"{TELEGRAM}/sendMessage", status=400, json=refusal)
    message = receive(channel, "Tell me everything")

    assert pipeline.message_reply(message_id=message.id) == "failed"

    message.refresh_from_db()
    assert "1 part(s) of the message sent" in message.error
    reply = message.replies.get()
    assert reply.status == "sent" and 3000 < len(reply.text) <= 4096
    assert not Schedule.objects.filter(func="agents.tasks.reply_to_message").exists()


def test_a_reply_the_messenger_did_not_confirm_is_not_sent_again(
    channel, crm_api, model, django_capture_on_commit_callbacks
):
    """A 5xx or a timeout after the reply left: it may have reached the lead. The message
    fails visibly instead of being answered a second time; staff can retry it."""
    from agents.conversations import message_retry, messages_sweep

    crm_api.replace(responses.POST, f"{TELEGRAM}/sendMessage", status=502, json={"ok": False, "error_code": 502})
    message = receive(channel, "Hello")

    assert pipeline.message_reply(message_id=message.id) == "failed"

    message.refresh_from_db()
    assert "did not confirm" in message.error and "not sent again" in message.error
    reply = message.replies.get()
    assert reply.status == "sending" and "may have reached the lead" in reply.error
    assert not Schedule.objects.filter(func="agents.tasks.reply_to_message").exists()
    assert messages_sweep() == 0 and pipeline.message_reply(message_id=message.id) == "not_waiting"
    assert len(calls_to(crm_api, "/sendMessage")) == 1

    crm_api.replace(
        responses.POST,
        f"{TELEGRAM}/sendMessage",
        json=json.loads((CHANNEL_FIXTURES / "telegram_send_message_ok.json").read_text()),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert message_retry(message=message) is True  # staff: the lead did not get it

    message.refresh_from_db()
    assert message.status == "answered" and len(calls_to(crm_api, "/sendMessage")) == 2
    assert sorted(message.replies.values_list("status", flat=True)) == ["not_sent", "sent"]


def test_a_reply_sent_by_an_attempt_that_died_before_recording_it_is_not_sent_again(channel, crm_api, model):
    message = receive(channel, "Hello")
    pipeline.message_reply(message_id=message.id)
    # as if the worker had died after sending, before the message was marked answered
    ConversationMessage.objects.filter(pk=message.pk).update(status="received")

    assert pipeline.message_reply(message_id=message.id) == "answered"

    message.refresh_from_db()
    assert "had been sent" in message.error or message.error == ""
    assert len(model.requests) == 1 and len(calls_to(crm_api, "/sendMessage")) == 1
    assert message.replies.count() == 1


@pytest.mark.parametrize("created", [True, False], ids=["it was created", "it was not"])
def test_a_lead_creation_that_was_not_confirmed_is_looked_for_by_the_next_attempt(
    channel, kommo, crm_api, model, created
):
    crm_api.replace(responses.POST, f"{CRM}/api/v4/leads/complex", body=requests.ReadTimeout("read timed out"))
    crm_api.get(f"{CRM}/api/v4/contacts", status=204)
    message = receive(channel, "Hi, I want solar panels")

    assert pipeline.message_reply(message_id=message.id) == "received"  # tried again later

    assert "not confirmed" in ConversationMessage.objects.get(pk=message.pk).error
    assert calls_to(crm_api, "/sendMessage") == [] and Conversation.objects.get().crm_lead_id is None
    found = {
        "id": 18425401, "name": "Chat: Анна Петрова", "price": 0, "status_id": 1, "pipeline_id": 2,
        "responsible_user_id": 9587231, "_embedded": {"contacts": [{"id": 21542301, "is_main": True}]},
    }  # fmt: skip
    other = {**found, "id": 777, "name": "Chat: Анна Петрова-Сидорова"}  # the search matches more than names
    leads = [found, other] if created else [other]
    crm_api.get(f"{CRM}/api/v4/leads", json={"_embedded": {"leads": leads}})
    crm_api.replace(responses.POST, f"{CRM}/api/v4/leads/complex", json=crm_fixture("leads_complex"))

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (search,) = calls_to(crm_api, "/api/v4/leads", "GET")
    assert "query=Chat" in search.request.url and "filter%5Bcreated_at%5D%5Bfrom%5D=" in search.request.url
    assert len(calls_to(crm_api, "/leads/complex")) == (1 if created else 2)
    conversation = Conversation.objects.get()
    assert (conversation.crm_lead_id, conversation.crm_contact_id) == (18425401, 21542301)


def test_a_hand_off_task_that_was_not_confirmed_is_not_made_twice_and_the_reply_goes_once(
    channel, kommo, crm_api, model
):
    crm_api.replace(responses.POST, f"{CRM}/api/v4/tasks", status=503)
    first = receive(channel, "Can I talk to a manager please?", n=1)
    link_to_lead(first)

    assert pipeline.message_reply(message_id=first.id) == "received"  # nothing sent yet: tried again
    assert calls_to(crm_api, "/sendMessage") == []

    crm_api.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [
        {"id": 5, "text": "The lead asked for a person in the chat: “Can I talk to a manager please?”"}]}})  # fmt: skip
    assert pipeline.message_reply(message_id=first.id) == "answered"

    assert len(calls_to(crm_api, "/api/v4/tasks")) == 1 and len(calls_to(crm_api, "/api/v4/tasks", "GET")) == 1
    assert len(calls_to(crm_api, "/sendMessage")) == 1


def outgoing_event(kommo, author_type: str = "internal"):
    from crm.models import CrmEvent

    return CrmEvent.objects.create(
        integration=kommo, kind="outgoing_message", entity_type="message", lead_id=LEAD_ID,
        dedupe_key=f"out-{author_type}", data={"type": "outgoing", "author": {"type": author_type, "name": "Anna"}},
    )  # fmt: skip


def test_a_manager_writing_to_the_lead_in_kommo_makes_the_agent_stay_quiet(channel, kommo, crm_api, model):
    from agents.handlers import hand_off_when_the_team_writes

    message = receive(channel, "Hello", n=1)
    link_to_lead(message)
    hand_off_when_the_team_writes(outgoing_event(kommo))

    assert pipeline.message_reply(message_id=message.id) == "skipped"

    conversation = Conversation.objects.get()
    assert conversation.handoff_reason == "team_wrote_in_crm"
    assert model.requests == []


def test_a_kommo_bot_writing_does_not_hand_the_conversation_off(channel, kommo, crm_api, model):
    from agents.handlers import hand_off_when_the_team_writes

    message = receive(channel, "Hello", n=1)
    link_to_lead(message)
    hand_off_when_the_team_writes(outgoing_event(kommo, author_type="bot"))

    assert pipeline.message_reply(message_id=message.id) == "answered"


def test_the_handlers_are_configured():
    from django.conf import settings

    assert "agents.handlers.hand_off_when_the_team_writes" in settings.CRM_EVENT_HANDLERS
    assert "agents.handlers.forget_changed_lead" in settings.CRM_EVENT_HANDLERS


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("Can I talk to a human?", True),
        ("Позовите менеджера, пожалуйста", True),
        ("Quero falar com um atendente", True),
        ("Is this a humanitarian project?", False),
        ("How much is delivery?", False),
    ],
)
def test_asking_for_a_person_is_recognised(text, asks):
    assert pipeline.asks_for_human(text) is asks
