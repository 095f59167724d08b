"""Messenger webhooks: authenticated the channel's way, each message stored once, with
its reply queued; nothing stored for a request that fails a check."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.test import Client

from agents.models import Conversation, ConversationMessage
from integrations.channels import twilio
from tests.factories import make_integration

FIXTURES = Path(__file__).resolve().parents[1] / "integrations" / "channels" / "fixtures"
SECRET = "s3cret-token_for-telegram"
APP_SECRET = "meta-app-secret-123"
VERIFY_TOKEN = "verify-me-please"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def path_of(integration) -> str:
    return urlsplit(integration.webhook_url).path


@pytest.fixture
def client():
    return Client()


@pytest.fixture
def telegram(agent):
    return make_integration(
        agent,
        integration_type="telegram",
        config={},
        credentials={"bot_token": "123456:ABC-def", "secret_token": SECRET},
    )


@pytest.fixture
def whatsapp(agent):
    return make_integration(
        agent,
        integration_type="whatsapp_cloud",
        config={"phone_number_id": "106540352242922"},
        credentials={"access_token": "EAAG-token", "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
    )


@pytest.fixture
def twilio_wa(agent):
    return make_integration(
        agent,
        integration_type="twilio_whatsapp",
        config={"from_number": "+14155238886"},
        credentials={"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": AUTH_TOKEN},
    )


def post_telegram(client, integration, body: bytes, secret: str | None = SECRET):
    headers = {"HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN": secret} if secret is not None else {}
    return client.post(path_of(integration), data=body, content_type="application/json", **headers)


def meta_signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_whatsapp(client, integration, body: bytes, signature: str | None = None):
    signature = meta_signature(body) if signature is None else signature
    headers = {"HTTP_X_HUB_SIGNATURE_256": signature} if signature else {}
    return client.post(path_of(integration), data=body, content_type="application/json", **headers)


def post_twilio(client, integration, body: bytes, token: str = AUTH_TOKEN):
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    signature = twilio.compute_signature(integration.webhook_url, params, token)
    return client.post(
        path_of(integration),
        data=body,
        content_type="application/x-www-form-urlencoded",
        HTTP_X_TWILIO_SIGNATURE=signature,
    )


def inbound() -> list[tuple]:
    return list(
        ConversationMessage.objects.filter(direction="in")
        .order_by("id")
        .values_list("conversation__chat_id", "text", "status")
    )


# --- Telegram ------------------------------------------------------------------------------


def test_a_telegram_message_is_stored_with_its_conversation_and_its_reply_queued(
    client, telegram, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_telegram(client, telegram, fixture("telegram_text_message.json"))

    assert response.status_code == 200
    assert inbound() == [("287431920", "Здравствуйте! Сколько стоит доставка в Казань?", "received")]
    conversation = Conversation.objects.get()
    assert (conversation.agent_id, conversation.integration_id) == (telegram.agent_id, telegram.id)
    assert conversation.sender_name == "Анна Петрова"
    assert conversation.last_inbound_at is not None
    assert len(callbacks) == 1  # the reply task, queued once the message is committed


def test_a_redelivered_telegram_update_is_stored_once(client, telegram):
    for _ in range(2):
        assert post_telegram(client, telegram, fixture("telegram_text_message.json")).status_code == 200

    assert len(inbound()) == 1


@pytest.mark.parametrize("secret", ["wrong-secret", "", None])
def test_a_telegram_request_without_the_right_secret_is_403_and_stores_nothing(client, telegram, secret):
    response = post_telegram(client, telegram, fixture("telegram_text_message.json"), secret=secret)

    assert response.status_code == 403
    assert not ConversationMessage.objects.exists()


def test_an_unknown_or_inactive_key_is_404(client, telegram):
    assert post_telegram(client, telegram, b"{}", secret=SECRET).status_code != 404
    telegram.active = False
    telegram.save()

    assert post_telegram(client, telegram, fixture("telegram_text_message.json")).status_code == 404
    assert client.post("/api/webhooks/telegram/nope", data=b"{}", content_type="application/json").status_code == 404


def test_a_telegram_update_that_is_not_a_text_message_is_acknowledged_and_ignored(client, telegram):
    for name in ("telegram_photo_message.json", "telegram_group_message.json", "telegram_edited_message.json"):
        assert post_telegram(client, telegram, fixture(name)).status_code == 200

    assert not ConversationMessage.objects.exists()


def test_a_telegram_body_that_is_not_an_update_is_400(client, telegram):
    assert post_telegram(client, telegram, b"not json").status_code == 400
    assert post_telegram(client, telegram, b'{"message": {}}').status_code == 400


def test_a_huge_body_is_413(client, telegram):
    body = json.dumps({"update_id": 1, "pad": "x" * (1024 * 1024 + 10)}).encode()

    assert post_telegram(client, telegram, body).status_code == 413


def test_get_on_a_telegram_webhook_is_405(client, telegram):
    assert client.get(path_of(telegram)).status_code == 405


# --- WhatsApp Cloud ------------------------------------------------------------------------


def test_metas_verification_handshake_echoes_the_challenge(client, whatsapp):
    response = client.get(
        path_of(whatsapp), {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    )

    assert (response.status_code, response.content) == (200, b"1158201444")


def test_a_handshake_with_the_wrong_verify_token_is_403(client, whatsapp):
    response = client.get(
        path_of(whatsapp), {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158201444"}
    )

    assert response.status_code == 403


def test_a_signed_whatsapp_message_is_stored(client, whatsapp):
    response = post_whatsapp(client, whatsapp, fixture("whatsapp_text_message.json"))

    assert response.status_code == 200
    ((chat_id, text, status),) = inbound()
    assert (chat_id, status) == ("5511987654321", "received")
    assert Conversation.objects.get().phone == "+5511987654321"


@pytest.mark.parametrize("signature", ["sha256=" + "0" * 64, "", "sha1=abc", meta_signature(b"other body")])
def test_a_whatsapp_post_with_a_bad_or_missing_signature_is_403_and_stores_nothing(client, whatsapp, signature):
    response = post_whatsapp(client, whatsapp, fixture("whatsapp_text_message.json"), signature=signature)

    assert response.status_code == 403
    assert not ConversationMessage.objects.exists()


def test_a_whatsapp_failure_status_marks_our_message_not_sent(client, whatsapp):
    statuses = json.loads(fixture("whatsapp_statuses.json"))
    failed = next(
        s
        for entry in statuses["entry"]
        for change in entry["changes"]
        for s in change["value"].get("statuses", [])
        if s["status"] == "failed"
    )
    conversation = Conversation.objects.create(agent=whatsapp.agent, integration=whatsapp, chat_id="5511987654321")
    sent = ConversationMessage.objects.create(
        conversation=conversation, direction="out", author="agent", external_id=failed["id"], text="Hi", status="sent"
    )

    assert post_whatsapp(client, whatsapp, fixture("whatsapp_statuses.json")).status_code == 200

    sent.refresh_from_db()
    assert sent.status == "not_sent"
    assert sent.error


# --- Twilio --------------------------------------------------------------------------------


def test_a_signed_twilio_message_is_stored_and_answered_with_empty_twiml(client, twilio_wa):
    response = post_twilio(client, twilio_wa, fixture("twilio_inbound_text.txt"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    assert b"<Response></Response>" in response.content
    ((chat_id, text, status),) = inbound()
    assert (text, status) == ("Olá! Vocês entregam em Campinas?", "received")


def test_a_twilio_post_signed_with_another_token_is_403_and_stores_nothing(client, twilio_wa):
    response = post_twilio(client, twilio_wa, fixture("twilio_inbound_text.txt"), token="not-the-token")

    assert response.status_code == 403
    assert not ConversationMessage.objects.exists()


def test_a_twilio_post_without_a_signature_is_403(client, twilio_wa):
    response = client.post(
        path_of(twilio_wa), data=fixture("twilio_inbound_text.txt"), content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 403


def test_each_channel_integration_shows_its_webhook_url(telegram, whatsapp, twilio_wa):
    assert telegram.webhook_url.endswith(f"/api/webhooks/telegram/{telegram.webhook_key}")
    assert whatsapp.webhook_url.endswith(f"/api/webhooks/whatsapp/{whatsapp.webhook_key}")
    assert twilio_wa.webhook_url.endswith(f"/api/webhooks/twilio/{twilio_wa.webhook_key}")


def test_a_twilio_media_only_message_is_acknowledged_and_stores_nothing(client, twilio_wa):
    response = post_twilio(client, twilio_wa, fixture("twilio_inbound_image.txt"))

    assert response.status_code == 200
    assert not ConversationMessage.objects.exists()


def test_a_shared_phone_number_is_kept_on_the_conversation_and_not_answered(
    client, telegram, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as queued:
        assert post_telegram(client, telegram, fixture("telegram_contact_shared.json")).status_code == 200

    conversation = Conversation.objects.get()
    assert conversation.phone.startswith("+")
    assert list(conversation.messages.values_list("status", flat=True)) == ["skipped"]
    assert queued == []
