"""Staff see conversations per lead, retry failed messages and hand conversations back;
lost messages are queued again by the sweeper."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.conversations import LOST_AFTER, messages_sweep
from agents.models import Conversation, ConversationMessage
from tests.factories import make_agent, make_integration, make_user


@pytest.fixture
def conversation(agent):
    channel = make_integration(agent, integration_type="telegram")
    return Conversation.objects.create(agent=agent, integration=channel, chat_id="42", crm_lead_id=777)


def message(conversation, status="failed", **fields) -> ConversationMessage:
    defaults = {"direction": "in", "author": "lead", "text": "Hello", "status": status, "error": "AI provider: 500"}
    return ConversationMessage.objects.create(conversation=conversation, **(defaults | fields))


@pytest.fixture
def staff_client(client, user):
    user.is_staff = True
    user.save()
    client.force_login(user)
    return client


def test_a_conversation_page_shows_the_exchange(staff_client, conversation):
    message(conversation, status="answered", text="How much?", error="")
    ConversationMessage.objects.create(
        conversation=conversation, direction="out", author="agent", text="490 ₽", status="sent",
        ai_provider="openai", ai_model="gpt-4o-mini", input_tokens=120, output_tokens=18, latency_ms=640,
    )  # fmt: skip

    page = staff_client.get(f"/admin/agents/conversation/{conversation.id}/change/").content.decode()

    for shown in ("How much?", "490 ₽", "openai:gpt-4o-mini", "120 / 18", "640 ms"):
        assert shown in page


def test_conversations_are_found_by_crm_lead(staff_client, conversation):
    page = staff_client.get("/admin/agents/conversation/", {"q": "777"}).content.decode()

    assert f"/admin/agents/conversation/{conversation.id}/change/" in page


def test_another_users_conversations_are_not_shown(client, conversation):
    other = make_user(is_staff=True)
    client.force_login(other)

    assert client.get(f"/admin/agents/conversation/{conversation.id}/change/").status_code in (302, 404)
    assert "Hello" not in client.get("/admin/agents/conversationmessage/").content.decode()


def test_retrying_failed_messages_queues_them_again(staff_client, conversation, django_capture_on_commit_callbacks):
    failed, answered = message(conversation, attempts=5), message(conversation, status="answered", external_id="2")

    with django_capture_on_commit_callbacks() as queued:
        staff_client.post(
            "/admin/agents/conversationmessage/",
            {"action": "retry", "_selected_action": [failed.id, answered.id]},
        )

    failed.refresh_from_db()
    answered.refresh_from_db()
    assert (failed.status, failed.attempts, failed.error) == ("received", 0, "")
    assert answered.status == "answered"
    assert len(queued) == 1


def test_handing_a_conversation_back_lets_the_agent_answer_again(staff_client, conversation):
    Conversation.objects.filter(pk=conversation.pk).update(
        handoff_until=timezone.now() + timedelta(hours=5), handoff_reason="lead_asked"
    )

    staff_client.post("/admin/agents/conversation/", {"action": "hand_back", "_selected_action": [conversation.id]})

    conversation.refresh_from_db()
    assert (conversation.handoff_until, conversation.handoff_reason) == (None, "")


def test_the_sweeper_queues_messages_whose_processing_was_lost(conversation, django_capture_on_commit_callbacks):
    old = timezone.now() - LOST_AFTER - timedelta(minutes=1)
    never_started = message(conversation, status="received", attempts=0, external_id="1")
    worker_died = message(conversation, status="processing", attempts=1, external_id="2", claimed_at=old)
    waiting_retry = message(conversation, status="received", attempts=2, external_id="3")
    recent = message(conversation, status="received", attempts=0, external_id="4")
    busy = message(conversation, status="processing", attempts=1, external_id="5", claimed_at=timezone.now())
    ConversationMessage.objects.filter(pk__in=[never_started.pk, worker_died.pk, waiting_retry.pk]).update(
        created_at=old
    )

    with django_capture_on_commit_callbacks() as queued:
        assert messages_sweep() == 2

    assert len(queued) == 2
    worker_died.refresh_from_db()
    busy.refresh_from_db()
    assert (worker_died.status, busy.status) == ("received", "processing")
    assert recent.status == "received" and waiting_retry.status == "received"


def test_a_sweep_with_nothing_lost_does_nothing(agent):
    make_agent()

    assert messages_sweep() == 0


# --- the staff test chat -----------------------------------------------------------------


@pytest.fixture
def fake_model(monkeypatch):
    from agents import pipeline
    from agents.ai import Completion

    asked = []

    def complete(*, model_spec, system, messages, **kwargs):
        asked.append((system, [m.text for m in messages]))
        return Completion(
            text="We deliver in 2 days.", provider="openai", model="gpt-4o-mini",
            input_tokens=50, output_tokens=7, latency_ms=300,
        )  # fmt: skip

    monkeypatch.setattr(pipeline.ai, "complete", complete)
    return asked


def test_staff_talk_to_an_agent_in_the_admin_through_the_pipeline(staff_client, agent, fake_model):
    url = f"/admin/agents/agent/{agent.id}/test-chat/"

    response = staff_client.post(url, {"text": "Do you deliver?", "send": "Send"})

    assert response.status_code == 302
    page = staff_client.get(url).content.decode()
    assert "Do you deliver?" in page and "We deliver in 2 days." in page
    assert fake_model[0][0].startswith("Sell politely.")  # the agent's instructions
    conversation = Conversation.objects.get(agent=agent)
    assert conversation.is_test
    assert list(conversation.messages.values_list("direction", "status")) == [("in", "answered"), ("out", "sent")]


def test_starting_the_test_chat_over_forgets_it(staff_client, agent, fake_model):
    url = f"/admin/agents/agent/{agent.id}/test-chat/"
    staff_client.post(url, {"text": "Hello", "send": "Send"})

    staff_client.post(url, {"text": "", "reset": "Start over"})

    assert not Conversation.objects.filter(agent=agent).exists()


def test_an_empty_test_message_is_refused_with_a_field_error(staff_client, agent, fake_model):
    response = staff_client.post(f"/admin/agents/agent/{agent.id}/test-chat/", {"text": "", "send": "Send"})

    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert fake_model == []


def test_another_users_agent_has_no_test_chat(client, agent, fake_model):
    client.force_login(make_user(is_staff=True))

    response = client.get(f"/admin/agents/agent/{agent.id}/test-chat/")

    assert response.status_code == 404


def test_the_agent_page_links_to_its_test_chat(staff_client, agent):
    page = staff_client.get(f"/admin/agents/agent/{agent.id}/change/").content.decode()

    assert f"../{agent.id}/test-chat/" in page


def test_staff_can_hand_a_conversation_off_to_the_team(staff_client, conversation, agent):
    agent.handoff_minutes = 90
    agent.save()

    staff_client.post("/admin/agents/conversation/", {"action": "hand_off", "_selected_action": [conversation.id]})

    conversation.refresh_from_db()
    assert conversation.handoff_reason == "staff"
    left = conversation.handoff_until - timezone.now()
    assert timedelta(minutes=89) < left <= timedelta(minutes=90)
