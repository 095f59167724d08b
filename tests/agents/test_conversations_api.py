"""/api/conversations/: the agents' chats per lead, and the team writing to a lead."""
from __future__ import annotations

import json

import pytest
import responses
from django.utils import timezone

from agents.models import Conversation, ConversationMessage
from tests.factories import make_agent, make_integration, make_user

SEND = "https://api.telegram.org/bot123456:ABC-def/sendMessage"
SENT = {"ok": True, "result": {"message_id": 77, "chat": {"id": 42, "type": "private"}, "date": 1, "text": "x"}}


@pytest.fixture
def conversation(agent):
    channel = make_integration(agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def"})
    conversation = Conversation.objects.create(
        agent=agent, integration=channel, chat_id="42", crm_lead_id=777, last_inbound_at=timezone.now()
    )
    ConversationMessage.objects.create(
        conversation=conversation, direction="in", author="lead", text="Hi", status="answered", external_id="1"
    )
    return conversation


def test_conversations_are_listed_by_crm_lead_with_their_messages(api, conversation):
    listed = api.get("/api/conversations/", {"crm_lead_id": 777}).json()

    assert [c["id"] for c in listed["results"]] == [conversation.id]
    messages = api.get(f"/api/conversations/{conversation.id}/messages/").json()
    assert [(m["author"], m["text"]) for m in messages] == [("lead", "Hi")]


def test_another_users_conversations_are_404(api, conversation):
    other = Conversation.objects.create(agent=make_agent(make_user()), chat_id="9")

    assert api.get(f"/api/conversations/{other.id}/").status_code == 404
    assert api.get(f"/api/conversations/{other.id}/messages/").status_code == 404
    assert api.post(f"/api/conversations/{other.id}/messages/", {"text": "x"}, format="json").status_code == 404


@responses.activate
def test_the_team_writing_to_a_lead_sends_it_and_hands_the_conversation_off(api, conversation, agent):
    call = responses.post(SEND, json=SENT)

    response = api.post(f"/api/conversations/{conversation.id}/messages/", {"text": "Anna here, hi!"}, format="json")

    assert response.status_code == 201
    assert response.json()["author"] == "team"
    assert json.loads(call.calls[0].request.body)["text"] == "Anna here, hi!"
    conversation.refresh_from_db()
    assert conversation.handoff_reason == "team_wrote"
    assert conversation.handoff_until > timezone.now()


def test_an_empty_team_message_is_a_field_error(api, conversation):
    response = api.post(f"/api/conversations/{conversation.id}/messages/", {"text": "  "}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["text"]


@responses.activate
def test_a_channel_that_refuses_the_message_is_an_error_and_nothing_changes(api, conversation):
    refusal = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    responses.post(SEND, status=400, json=refusal)

    response = api.post(f"/api/conversations/{conversation.id}/messages/", {"text": "Hello"}, format="json")

    assert response.status_code == 400
    assert "chat not found" in response.json()["text"][0]
    conversation.refresh_from_db()
    assert conversation.handoff_until is None
    assert not conversation.messages.filter(author="team").exists()


@responses.activate
@pytest.mark.parametrize("status, said", [(503, "did not take"), (502, "may have reached the lead")])
def test_a_channel_failure_says_whether_the_message_may_have_gone(api, conversation, status, said):
    # a 429 longer than the client waits was refused; a 5xx after the message left is unconfirmed
    if status == 503:
        responses.post(SEND, status=429, json={"ok": False, "error_code": 429, "parameters": {"retry_after": 600}})
    else:
        responses.post(SEND, status=500, json={"ok": False, "error_code": 500, "description": "Internal"})

    response = api.post(f"/api/conversations/{conversation.id}/messages/", {"text": "Hello"}, format="json")

    assert response.status_code == status and said in response.json()["detail"]
    assert len(responses.calls) == 1
