"""Twilio WhatsApp: X-Twilio-Signature, the webhook's parameters, and TwilioClient.

Webhook bodies are Twilio's form encoding (fixtures/twilio_*.txt); answers its JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from django.http import QueryDict
from responses import matchers

from integrations import ratelimit
from integrations.channels.base import InboundMessage, MalformedPayload, SentMessage, StatusError, StatusUpdate
from integrations.channels.twilio import (
    OutsideCustomerWindow,
    TwilioClient,
    check_signature,
    compute_signature,
    parse_inbound,
    parse_status,
)
from integrations.errors import AuthError, PermanentError, RateLimited, Unconfirmed

from .conftest import assert_secret_free, fixture_bytes, fixture_form, fixture_json

BASE = "https://api.twilio.com"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SEND = f"{BASE}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
SENDER = "+14155238886"
CUSTOMER = "+5511987654321"
WEBHOOK = "https://app.example.com/api/webhooks/twilio/KEY123"


@pytest.fixture
def client(acquired, retry) -> TwilioClient:
    return TwilioClient(ACCOUNT, AUTH_TOKEN, SENDER, BASE, acquire=acquired, retry=retry)


def by_the_spec(url: str, params: dict[str, str], token: str) -> str:
    """The algorithm as Twilio's security page states it, written out separately."""
    data = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode("utf-8"), hashlib.sha1).digest()).decode()


def twilio_error(code: int, message: str, status: int) -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


# --- The signature -----------------------------------------------------------------------------

# Twilio's published example (the security docs and its SDKs' tests): auth token 12345.
DOCS_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOCS_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOCS_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilios_published_example_signature_is_accepted():
    assert compute_signature(DOCS_URL, DOCS_PARAMS, "12345") == DOCS_SIGNATURE
    assert check_signature(DOCS_URL, DOCS_PARAMS, DOCS_SIGNATURE, "12345") is True


def test_a_real_inbound_message_signed_as_the_spec_says_is_accepted():
    params = fixture_form("twilio_inbound_text.txt")

    assert check_signature(WEBHOOK, params, by_the_spec(WEBHOOK, params, AUTH_TOKEN), AUTH_TOKEN) is True


def test_the_parameters_of_djangos_request_post_are_signed_the_same():
    params = QueryDict(fixture_bytes("twilio_inbound_text.txt").decode())  # what request.POST is

    assert check_signature(WEBHOOK, params, by_the_spec(WEBHOOK, params.dict(), AUTH_TOKEN), AUTH_TOKEN) is True


def test_a_url_signed_with_its_default_port_is_accepted_without_it_and_the_other_way():
    signed_with_port = by_the_spec("https://app.example.com:443/hook?x=1", DOCS_PARAMS, AUTH_TOKEN)
    signed_without = by_the_spec("https://app.example.com/hook?x=1", DOCS_PARAMS, AUTH_TOKEN)

    assert check_signature("https://app.example.com/hook?x=1", DOCS_PARAMS, signed_with_port, AUTH_TOKEN) is True
    assert check_signature("https://app.example.com:443/hook?x=1", DOCS_PARAMS, signed_without, AUTH_TOKEN) is True


@pytest.mark.parametrize(
    "change",
    [
        lambda url, params: (url, params | {"Body": "Transfer R$ 10.000"}),  # a tampered parameter
        lambda url, params: (url, params | {"Extra": "1"}),  # an added one
        lambda url, params: (url.replace("KEY123", "KEY124"), params),  # another URL
        lambda url, params: (url + "?x=1", params),  # a query string Twilio did not call
    ],
    ids=["tampered", "added", "other-url", "other-query"],
)
def test_a_signature_of_another_request_is_refused(change):
    params = fixture_form("twilio_inbound_text.txt")
    signature = by_the_spec(WEBHOOK, params, AUTH_TOKEN)
    url, changed = change(WEBHOOK, params)

    assert check_signature(url, changed, signature, AUTH_TOKEN) is False


def test_a_signature_made_with_another_auth_token_is_refused():
    assert check_signature(DOCS_URL, DOCS_PARAMS, DOCS_SIGNATURE, "54321") is False


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_signature_is_refused(header):
    assert check_signature(DOCS_URL, DOCS_PARAMS, header, "12345") is False


@pytest.mark.parametrize("header", ["not base64 !", DOCS_SIGNATURE[:-1], "sha1=" + DOCS_SIGNATURE, "ünïcödé"])
def test_a_malformed_signature_is_refused(header):
    assert check_signature(DOCS_URL, DOCS_PARAMS, header, "12345") is False


def test_nothing_is_accepted_without_an_auth_token():
    assert check_signature(DOCS_URL, DOCS_PARAMS, by_the_spec(DOCS_URL, DOCS_PARAMS, ""), "") is False


# --- Webhook parameters ------------------------------------------------------------------------


def test_an_inbound_text_message_is_parsed():
    message = parse_inbound(fixture_form("twilio_inbound_text.txt"))

    assert message == InboundMessage(
        channel="twilio_whatsapp",
        external_id="SM7f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99",
        message_id="SM7f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99",
        chat_id=CUSTOMER,
        sender_id="5511987654321",
        sender_name="Maria Souza",
        text="Olá! Vocês entregam em Campinas?",
        sent_at=None,
        phone=CUSTOMER,
        recipient=SENDER,
    )


def test_an_image_without_text_is_not_taken():
    assert parse_inbound(fixture_form("twilio_inbound_image.txt")) is None


def test_an_sms_to_the_same_number_is_not_taken_for_whatsapp():
    params = fixture_form("twilio_inbound_text.txt") | {"From": CUSTOMER, "To": SENDER}

    assert parse_inbound(params) is None


def test_an_inbound_request_without_its_sid_is_malformed():
    params = fixture_form("twilio_inbound_text.txt")
    del params["MessageSid"]

    with pytest.raises(MalformedPayload):
        parse_inbound(params)


def test_a_failed_status_callback_is_parsed_with_its_error():
    update = parse_status(fixture_form("twilio_status_failed.txt"))

    assert update == StatusUpdate(
        channel="twilio_whatsapp",
        message_id="SM0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        recipient_id=CUSTOMER,
        status="failed",
        errors=(
            StatusError(
                code=63016, title="Failed to send freeform message because you are outside the allowed window."
            ),
        ),
        recipient=SENDER,
    )


@pytest.mark.parametrize(("raw", "status"), [("delivered", "delivered"), ("read", "read"), ("undelivered", "failed")])
def test_status_callbacks_use_the_same_words_as_whatsapp_cloud(raw, status):
    params = {"MessageSid": "SM1", "MessageStatus": raw, "To": f"whatsapp:{CUSTOMER}"}

    assert parse_status(params).status == status


def test_steps_before_sending_are_not_status_updates():
    assert parse_status({"MessageSid": "SM1", "MessageStatus": "queued"}) is None


def test_an_incoming_image_is_neither_a_text_message_nor_a_status_update():
    # a webhook view tries parse_inbound, then parse_status: a media-only message is neither
    params = fixture_form("twilio_inbound_image.txt")

    assert parse_inbound(params) is None
    assert parse_status(params) is None


def test_a_status_callback_without_its_sid_is_malformed():
    with pytest.raises(MalformedPayload):
        parse_status({"MessageStatus": "delivered"})


# --- Sending -----------------------------------------------------------------------------------


def test_send_text_posts_a_form_with_basic_auth_and_whatsapp_addresses(api, client):
    expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT}:{AUTH_TOKEN}".encode()).decode()
    api.post(
        SEND,
        status=201,
        json=fixture_json("twilio_message_created.json"),
        match=[
            matchers.header_matcher({"Authorization": expected_auth}),
            matchers.urlencoded_params_matcher(
                {"From": f"whatsapp:{SENDER}", "To": f"whatsapp:{CUSTOMER}", "Body": "Sim, entregamos."}
            ),
        ],
    )

    sent = client.send_text("5511987654321", "Sim, entregamos.")

    assert sent == [
        SentMessage(
            channel="twilio_whatsapp", message_id="SM3d5e7f9a1b2c4d6e8f0a2b4c6d8e0f1a", chat_id=CUSTOMER,
            text="Sim, entregamos.", sent_at=datetime(2024, 6, 10, 8, 47, 40, tzinfo=UTC), status="queued",
        )
    ]  # fmt: skip


@pytest.mark.parametrize("sender", ["whatsapp:+14155238886", "+1 415 523 8886", "14155238886"])
def test_the_sender_may_be_given_with_or_without_the_whatsapp_prefix(api, acquired, sender):
    api.post(SEND, status=201, json=fixture_json("twilio_message_created.json"))

    TwilioClient(ACCOUNT, AUTH_TOKEN, sender, acquire=acquired).send_text(f"whatsapp:{CUSTOMER}", "oi")

    form = parse_qs(api.calls[0].request.body)
    assert form["From"] == ["whatsapp:+14155238886"] and form["To"] == [f"whatsapp:{CUSTOMER}"]


def test_a_body_over_1600_characters_goes_as_several_messages(api, client):
    for _ in range(2):
        api.post(SEND, status=201, json=fixture_json("twilio_message_created.json"))

    sent = client.send_text(CUSTOMER, "Uma frase sobre a entrega. " * 80)  # 2160 characters

    bodies = [parse_qs(call.request.body)["Body"][0] for call in api.calls]
    assert len(sent) == 2
    assert all(len(body) <= 1600 and body.endswith("entrega.") for body in bodies)


def test_a_body_of_exactly_1600_characters_is_one_message(api, client):
    api.post(SEND, status=201, json=fixture_json("twilio_message_created.json"))

    client.send_text(CUSTOMER, "x" * 1600)

    assert len(api.calls) == 1


def test_each_message_waits_for_the_senders_rate_limit(api, monkeypatch):
    calls = []
    monkeypatch.setattr(ratelimit, "acquire", lambda key, per_second, *, max_wait=None: calls.append(key))
    api.post(SEND, status=201, json=fixture_json("twilio_message_created.json"))

    TwilioClient(ACCOUNT, AUTH_TOKEN, SENDER).send_text(CUSTOMER, "oi")

    assert calls == [f"twilio:whatsapp:{SENDER}"]


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (401, fixture_json("twilio_error_authenticate.json"), AuthError),
        (400, fixture_json("twilio_error_invalid_to.json"), PermanentError),
        (400, twilio_error(21610, "Attempt to send to unsubscribed recipient", 400), PermanentError),
        (400, twilio_error(63016, "Failed to send freeform message outside the allowed window", 400),
         OutsideCustomerWindow),
        (500, twilio_error(20500, "Internal Server Error", 500), Unconfirmed),
        (503, None, Unconfirmed),
    ],
    ids=["20003", "21211", "21610", "63016", "500", "503-html"],
)  # fmt: skip
def test_errors_are_mapped_to_typed_errors(api, client, status, body, raised):
    if body is None:
        api.post(SEND, status=status, body="<html>Service Unavailable</html>")
    else:
        api.post(SEND, status=status, json=body)

    with pytest.raises(raised) as caught:
        client.send_text(CUSTOMER, "oi")

    assert type(caught.value) is raised and caught.value.status == status
    assert len(api.calls) == 1
    if body is not None:
        assert str(body["code"]) in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body"), [(429, twilio_error(20429, "Too Many Requests", 429)), (429, None)], ids=["20429", "bare-429"]
)
def test_too_many_requests_are_retried_then_raise_rate_limited(api, client, sleeps, status, body):
    for _ in range(3):
        api.post(SEND, status=status, json=body, headers={"Retry-After": "2"})

    with pytest.raises(RateLimited) as caught:
        client.send_text(CUSTOMER, "oi")

    assert caught.value.retry_after == 2
    assert sleeps == [2.0, 2.0]


def test_the_auth_token_never_appears_in_errors_or_logs(api, client, caplog):
    caplog.set_level(logging.DEBUG)
    api.post(SEND, status=400, json=twilio_error(21211, f"Invalid 'To' with credentials {AUTH_TOKEN}", 400))

    with pytest.raises(PermanentError) as caught:
        client.send_text(CUSTOMER, "oi")

    assert_secret_free(AUTH_TOKEN, caught.value, caplog, client)
