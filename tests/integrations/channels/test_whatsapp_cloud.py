"""WhatsApp Cloud API: the webhook's handshake, signature and payloads, and the client.

Payloads are Meta's shapes (fixtures/whatsapp_*.json).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from responses import matchers

from integrations import ratelimit
from integrations.channels.base import InboundMessage, MalformedPayload, SentMessage, StatusError, StatusUpdate
from integrations.channels.whatsapp_cloud import (
    OutsideCustomerWindow,
    WhatsAppCloudClient,
    check_signature,
    parse_webhook,
    verify_subscription,
    within_customer_window,
)
from integrations.errors import AuthError, PermanentError, RateLimited, Unconfirmed

from .conftest import assert_secret_free, fixture_bytes, fixture_json

BASE = "https://graph.facebook.com/v21.0"
NUMBER_ID = "106540352242922"
SEND = f"{BASE}/{NUMBER_ID}/messages"
TOKEN = "EAAGm0PX4ZCpsBAKZBZCx7rZCqU9ZA2Z" + "CbZAvZBLm0eQ3XyZA" * 3
APP_SECRET = "3f9a1c0e5b7d4e2f8a6c1b0d9e7f5a3c"
CUSTOMER = "5511987654321"
WAMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjQxQkVFRDVBQTVDODFDOTg3MQA="


@pytest.fixture
def client(acquired, retry) -> WhatsAppCloudClient:
    return WhatsAppCloudClient(TOKEN, NUMBER_ID, BASE, acquire=acquired, retry=retry)


def signed(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def graph_error(code: int, message: str = "error", details: str | None = None) -> dict:
    error: dict = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "Ax1"}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


# --- The verification handshake ---------------------------------------------------------------


def test_the_handshake_with_our_verify_token_returns_the_challenge():
    params = {"hub.mode": "subscribe", "hub.verify_token": "our-verify-token", "hub.challenge": "1158201444"}

    assert verify_subscription(params, "our-verify-token") == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "not-ours", "hub.challenge": "1158201444"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "our-verify-token", "hub.challenge": "1158201444"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
        {},
        {"hub.mode": "subscribe", "hub.verify_token": "our-verify-token", "hub.challenge": "<script>alert(1)</script>"},
        {"hub.mode": "subscribe", "hub.verify_token": "our-verify-token"},
    ],
    ids=["wrong-token", "wrong-mode", "no-token", "nothing", "markup-challenge", "no-challenge"],
)
def test_the_handshake_is_refused_otherwise(params):
    assert verify_subscription(params, "our-verify-token") is None


def test_the_handshake_is_refused_when_no_verify_token_is_configured():
    assert verify_subscription({"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}, "") is None


# --- The signature -----------------------------------------------------------------------------


def test_a_body_signed_with_the_app_secret_is_accepted():
    body = fixture_bytes("whatsapp_text_message.json")

    assert check_signature(body, signed(body), APP_SECRET) is True


def test_a_signature_made_with_another_secret_is_refused():
    body = fixture_bytes("whatsapp_text_message.json")

    assert check_signature(body, signed(body, "another-secret"), APP_SECRET) is False


def test_the_signature_is_of_the_raw_bytes_not_of_the_decoded_json():
    body = fixture_bytes("whatsapp_text_message.json")
    reencoded = json.dumps(json.loads(body)).encode()  # same JSON, other bytes (ã escaped, spacing)

    assert check_signature(reencoded, signed(body), APP_SECRET) is False


def test_a_tampered_body_is_refused():
    body = fixture_bytes("whatsapp_text_message.json")

    assert check_signature(body.replace(b"Maria", b"Mario"), signed(body), APP_SECRET) is False


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_signature_is_refused(header):
    assert check_signature(b"{}", header, APP_SECRET) is False


@pytest.mark.parametrize(
    "header",
    [
        "sha256=",
        "sha256=not-hex-at-all",
        "sha1=" + "0" * 40,
        hmac.new(APP_SECRET.encode(), b"{}", hashlib.sha256).hexdigest(),  # the hex without "sha256="
        "sha256=" + hmac.new(APP_SECRET.encode(), b"{}", hashlib.sha256).hexdigest()[:-2],
        "sha256=ünïcödé",
    ],
    ids=["empty", "not-hex", "sha1", "no-prefix", "truncated", "non-ascii"],
)
def test_a_malformed_signature_is_refused(header):
    assert check_signature(b"{}", header, APP_SECRET) is False


def test_nothing_is_accepted_without_an_app_secret():
    assert check_signature(b"{}", signed(b"{}", ""), "") is False


# --- Payloads ----------------------------------------------------------------------------------


def test_a_text_message_is_parsed_with_the_senders_profile_name():
    (message,) = parse_webhook(fixture_bytes("whatsapp_text_message.json"))

    assert message == InboundMessage(
        channel="whatsapp_cloud",
        external_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDNzQ5RjQ5QjNCMTU2OTlERDcA",
        message_id="wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDNzQ5RjQ5QjNCMTU2OTlERDcA",
        chat_id=CUSTOMER,
        sender_id=CUSTOMER,
        sender_name="Maria Souza",
        text="Olá! Qual é o prazo de entrega para São Paulo?",
        sent_at=datetime(2024, 6, 10, 8, 47, 25, tzinfo=UTC),
        phone="+5511987654321",
        recipient=NUMBER_ID,
    )


def test_status_callbacks_are_parsed_with_the_errors_of_a_failure():
    updates = parse_webhook(fixture_bytes("whatsapp_statuses.json"))

    assert [u.status for u in updates] == ["sent", "delivered", "read", "failed"]
    assert all(isinstance(u, StatusUpdate) and u.recipient_id == CUSTOMER for u in updates)
    assert updates[0].message_id == WAMID and updates[0].at == datetime(2024, 6, 10, 8, 47, 42, tzinfo=UTC)
    assert updates[3].errors == (
        StatusError(
            code=131047,
            title="Re-engagement message",
            details="Message failed to send because more than 24 hours have passed since the customer last "
            "replied to this number.",
        ),
    )


def test_messages_other_than_text_are_left_out():
    assert parse_webhook(fixture_bytes("whatsapp_image_message.json")) == []


def test_other_change_fields_are_left_out():
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "account_update", "value": {"phone_number": "15550783881", "event": "VERIFIED_ACCOUNT"}}
    ]}]}  # fmt: skip

    assert parse_webhook(json.dumps(body).encode()) == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"object": "page", "entry": []}', b'{"object": "whatsapp_business_account"}'],
    ids=["not-json", "another-object", "no-entries"],
)
def test_a_body_that_is_not_a_whatsapp_webhook_is_malformed(body):
    with pytest.raises(MalformedPayload):
        parse_webhook(body)


def test_a_message_without_its_sender_is_left_out_with_a_warning_and_the_rest_is_kept(caplog):
    delivery = fixture_json("whatsapp_text_message.json")
    messages = delivery["entry"][0]["changes"][0]["value"]["messages"]
    messages.insert(0, {"id": "wamid.X", "timestamp": "1718009200", "type": "text", "text": {"body": "no sender"}})

    items = parse_webhook(json.dumps(delivery).encode())

    assert [item.text for item in items] == ["Olá! Qual é o prazo de entrega para São Paulo?"]
    assert [r.msg for r in caplog.records] == ["channels.whatsapp_cloud.item_skipped"]


# --- The customer service window --------------------------------------------------------------

NOW = datetime(2024, 6, 11, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ago", "open_"),
    [
        (timedelta(minutes=5), True),
        (timedelta(hours=23, minutes=59), True),
        (timedelta(hours=24), False),
        (timedelta(days=3), False),
    ],
)
def test_the_customer_window_is_open_for_24_hours_after_the_customers_last_message(ago, open_):
    assert within_customer_window(NOW - ago, NOW) is open_


def test_the_window_is_closed_for_a_customer_who_never_wrote():
    assert within_customer_window(None, NOW) is False


# --- Sending -----------------------------------------------------------------------------------


def test_send_text_posts_a_text_message_with_the_bearer_token(api, client):
    api.post(
        SEND,
        json=fixture_json("whatsapp_send_ok.json"),
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"}),
            matchers.json_params_matcher(
                {
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": CUSTOMER,
                    "type": "text",
                    "text": {"preview_url": False, "body": "Entregamos em 2 dias."},
                }
            ),
        ],
    )

    sent = client.send_text("+55 11 98765-4321", "Entregamos em 2 dias.")

    assert sent == [
        SentMessage(channel="whatsapp_cloud", message_id=WAMID, chat_id=CUSTOMER, text="Entregamos em 2 dias.")
    ]


def test_a_text_over_4096_characters_goes_as_two_messages(api, client):
    api.post(SEND, json=fixture_json("whatsapp_send_ok.json"))
    api.post(SEND, json=fixture_json("whatsapp_send_ok.json"))

    sent = client.send_text(CUSTOMER, "Frase curta. " * 400)  # 5200 characters

    bodies = [json.loads(call.request.body)["text"]["body"] for call in api.calls]
    assert len(sent) == 2 and all(len(body) <= 4096 for body in bodies)
    assert all(body.endswith("curta.") for body in bodies)


def test_each_message_waits_for_the_numbers_rate_limit(api, monkeypatch):
    calls = []
    monkeypatch.setattr(ratelimit, "acquire", lambda key, per_second, *, max_wait=None: calls.append(key))
    api.post(SEND, json=fixture_json("whatsapp_send_ok.json"))

    WhatsAppCloudClient(TOKEN, NUMBER_ID).send_text(CUSTOMER, "oi")

    assert calls == [f"whatsapp_cloud:{NUMBER_ID}"]


def test_a_message_outside_the_24_hour_window_raises_outside_customer_window(api, client):
    api.post(SEND, status=400, json=fixture_json("whatsapp_error_re_engagement.json"))

    with pytest.raises(OutsideCustomerWindow) as caught:
        client.send_text(CUSTOMER, "oi")

    assert isinstance(caught.value, PermanentError)
    assert "24 hours" in str(caught.value) and "131047" in str(caught.value)
    assert len(api.calls) == 1


def test_an_expired_token_raises_auth_error(api, client):
    api.post(SEND, status=401, json=fixture_json("whatsapp_error_token_expired.json"))

    with pytest.raises(AuthError, match="190"):
        client.send_text(CUSTOMER, "oi")


@pytest.mark.parametrize(("code", "status"), [(130429, 400), (131056, 400), (4, 400), (80007, 400), (1, 429)])
def test_rate_limit_codes_are_retried_then_raise_rate_limited(api, client, sleeps, code, status):
    for _ in range(3):
        api.post(SEND, status=status, json=graph_error(code, "Rate limit hit"))

    with pytest.raises(RateLimited):
        client.send_text(CUSTOMER, "oi")

    assert len(api.calls) == 3 and len(sleeps) == 2


def test_a_rate_limit_that_clears_lets_the_message_through(api, client, sleeps):
    api.post(SEND, status=400, json=graph_error(131056, "(Business Account, Consumer Account) pair rate limit hit"))
    api.post(SEND, json=fixture_json("whatsapp_send_ok.json"))

    assert len(client.send_text(CUSTOMER, "oi")) == 1
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (500, graph_error(131000, "Something went wrong"), Unconfirmed),
        (503, {"error": {"message": "Service temporarily unavailable", "code": 2}}, Unconfirmed),
        (502, None, Unconfirmed),
        (403, graph_error(10, "Permission denied"), AuthError),
        (400, graph_error(100, "Invalid parameter", "Parameter 'to' is invalid"), PermanentError),
        (400, graph_error(131026, "Message undeliverable"), PermanentError),
    ],
    ids=["500", "code-2", "502-html", "permission", "invalid-parameter", "undeliverable"],
)
def test_errors_are_mapped_by_metas_code_then_by_status(api, client, status, body, raised):
    if body is None:
        api.post(SEND, status=status, body="<html>Bad Gateway</html>")
    else:
        api.post(SEND, status=status, json=body)

    with pytest.raises(raised) as caught:
        client.send_text(CUSTOMER, "oi")

    assert type(caught.value) is raised
    assert caught.value.status == status
    assert len(api.calls) == 1  # a send that may have gone through is not repeated


def test_a_recipient_that_is_not_a_number_is_refused_before_calling_meta(api, client):
    with pytest.raises(PermanentError):
        client.send_text("Maria", "oi")

    assert len(api.calls) == 0


def test_a_phone_number_id_that_is_not_digits_is_refused():
    with pytest.raises(PermanentError):
        WhatsAppCloudClient(TOKEN, "../me")


def test_the_token_never_appears_in_errors_or_logs(api, client, caplog):
    caplog.set_level(logging.DEBUG)
    api.post(SEND, status=400, json=graph_error(100, f"Invalid OAuth access token - {TOKEN}", f"token {TOKEN}"))

    with pytest.raises(PermanentError) as caught:
        client.send_text(CUSTOMER, "oi")

    assert_secret_free(TOKEN, caught.value, caplog, client)
