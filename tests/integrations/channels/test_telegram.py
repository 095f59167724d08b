"""Telegram: the webhook's secret and updates, and TelegramClient against Bot API answers.

Payloads are Bot API shapes (fixtures/telegram_*.json).
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from datetime import UTC, datetime

import pytest
import requests
from responses import matchers

from integrations import ratelimit
from integrations.channels.base import InboundMessage, MalformedPayload, SentMessage
from integrations.channels.telegram import BotInfo, TelegramClient, check_secret, parse_update
from integrations.errors import AuthError, PermanentError, RateLimited, TransientError, Unconfirmed

from .conftest import assert_secret_free, fixture_bytes, fixture_json

BASE = "https://api.telegram.org"
BOT_ID = "7012345678"
TOKEN = f"{BOT_ID}:AAHk3Vd-9xQm2Lr_4TzPq8Wn0YbCf5Ej1uG"
SEND = f"{BASE}/bot{TOKEN}/sendMessage"
CHAT = 287431920
TWO_PARTS = "a " * 1500 + "\n\n" + "b " * 1500  # 3000 characters a paragraph
THREE_PARTS = TWO_PARTS + "\n\n" + "c " * 1500


@pytest.fixture
def client(acquired, retry) -> TelegramClient:
    return TelegramClient(TOKEN, BASE, acquire=acquired, retry=retry)


def sent_ok(message_id: int = 1366, chat_id: int = CHAT, text: str = "ok") -> dict:
    body = fixture_json("telegram_send_message_ok.json")
    body["result"] |= {"message_id": message_id, "text": text}
    body["result"]["chat"]["id"] = chat_id
    return body


def error(code: int, description: str, **parameters) -> dict:
    body = {"ok": False, "error_code": code, "description": description}
    return body | ({"parameters": parameters} if parameters else {})


# --- The webhook's secret ----------------------------------------------------------------------


def test_the_secret_token_we_set_is_accepted():
    assert check_secret("s3cr3t-Token_value", "s3cr3t-Token_value") is True


@pytest.mark.parametrize("header", ["wrong", "s3cr3t-Token_valuE", "s3cr3t-Token_value ", "ß-not-ascii"])
def test_another_secret_token_is_refused(header):
    assert check_secret(header, "s3cr3t-Token_value") is False


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_secret_header_is_refused(header):
    assert check_secret(header, "s3cr3t-Token_value") is False


@pytest.mark.parametrize("expected", [None, ""])
def test_nothing_is_accepted_when_no_secret_was_configured(expected):
    assert check_secret("", expected) is False
    assert check_secret("anything", expected) is False


# --- Updates -----------------------------------------------------------------------------------


def test_a_text_message_is_parsed_with_its_sender():
    message = parse_update(fixture_bytes("telegram_text_message.json"))

    assert message == InboundMessage(
        channel="telegram",
        external_id=f"{CHAT}:1365",
        message_id="1365",
        chat_id=str(CHAT),
        sender_id=str(CHAT),
        sender_name="Анна Петрова",
        sender_username="anna_petrova",
        text="Здравствуйте! Сколько стоит доставка в Казань?",
        sent_at=datetime(2024, 6, 10, 8, 47, 25, tzinfo=UTC),
        phone=None,
        language="ru",
        delivery_id="814302761",
    )


def test_a_contact_the_sender_shares_of_themselves_gives_their_phone():
    message = parse_update(fixture_bytes("telegram_contact_shared.json"))

    assert message is not None
    assert message.phone == "+79161234567"
    assert message.text == ""
    assert message.external_id == f"{CHAT}:1367"


def test_a_contact_of_someone_else_is_not_taken_for_the_senders_phone():
    update = fixture_json("telegram_contact_shared.json")
    update["message"]["contact"]["user_id"] = 999

    assert parse_update(json.dumps(update).encode()) is None


@pytest.mark.parametrize(
    "name", ["telegram_edited_message.json", "telegram_group_message.json", "telegram_photo_message.json"]
)
def test_edits_group_messages_and_photos_are_not_taken(name):
    assert parse_update(fixture_bytes(name)) is None


def test_an_update_of_another_kind_is_not_taken():
    body = {"update_id": 9, "my_chat_member": {"chat": {"id": CHAT, "type": "private"}, "date": 1}}

    assert parse_update(json.dumps(body).encode()) is None


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"message": {}}', b'{"update_id": 1, "message": {"text": "hi"}}'],
    ids=["not-json", "not-an-object", "no-update-id", "no-chat"],
)
def test_a_body_that_is_not_an_update_is_malformed(body):
    with pytest.raises(MalformedPayload):
        parse_update(body)


# --- Sending -----------------------------------------------------------------------------------


def test_send_message_posts_the_chat_and_text_and_returns_the_sent_message(api, client):
    api.post(
        SEND, json=sent_ok(text="Доставка"), match=[matchers.json_params_matcher({"chat_id": CHAT, "text": "Доставка"})]
    )

    sent = client.send_message(CHAT, "Доставка")

    assert sent == [
        SentMessage(
            channel="telegram", message_id="1366", chat_id=str(CHAT), text="Доставка",
            sent_at=datetime(2024, 6, 10, 8, 47, 40, tzinfo=UTC),
        )
    ]  # fmt: skip


def test_a_long_message_goes_as_several_in_order(api, client):
    paragraphs = ["Абзац номер один. " * 150, "Абзац номер два. " * 150]  # about 2700 characters each
    api.post(SEND, json=sent_ok(message_id=1))
    api.post(SEND, json=sent_ok(message_id=2))

    sent = client.send_message(CHAT, "\n\n".join(paragraphs))

    assert [s.message_id for s in sent] == ["1", "2"]
    texts = [json.loads(call.request.body)["text"] for call in api.calls]
    assert texts == [p.strip() for p in paragraphs]


def test_an_empty_text_is_refused_before_calling_telegram(api, client):
    with pytest.raises(PermanentError, match="empty"):
        client.send_message(CHAT, "  \n ")

    assert len(api.calls) == 0


def test_each_message_waits_for_the_chat_and_the_bot_rate_limits(api, client, acquired):
    api.post(SEND, json=sent_ok())
    api.post(SEND, json=sent_ok())

    client.send_message(CHAT, TWO_PARTS)

    chat_key, bot_key = f"telegram:{BOT_ID}:chat:{CHAT}", f"telegram:{BOT_ID}"
    assert acquired == [(chat_key, 1.0), (bot_key, 30.0), (chat_key, 1.0), (bot_key, 30.0)]
    assert all(TOKEN.split(":")[1] not in key for key, _ in acquired)


def test_the_shared_rate_limiter_is_used_by_default(api, monkeypatch):
    calls = []
    monkeypatch.setattr(ratelimit, "acquire", lambda key, per_second, *, max_wait=None: calls.append((key, per_second)))
    api.post(SEND, json=sent_ok(chat_id=-1001987654321))

    TelegramClient(TOKEN).send_message(-1001987654321, "hello group")

    # a group gets 20 messages a minute
    assert calls == [(f"telegram:{BOT_ID}:chat:-1001987654321", pytest.approx(20 / 60)), (f"telegram:{BOT_ID}", 30.0)]


@pytest.mark.django_db
def test_the_second_part_of_a_long_message_waits_a_second_for_the_chat(api, monkeypatch, settings):
    settings.REDIS_URL = ""  # the database limiter; the test's transaction keeps its rows to itself
    waits = []
    real_acquire = ratelimit.acquire
    monkeypatch.setattr(ratelimit, "acquire", functools.partial(real_acquire, sleep=waits.append))
    api.post(SEND, json=sent_ok(message_id=1))
    api.post(SEND, json=sent_ok(message_id=2))

    TelegramClient(TOKEN).send_message(4242, TWO_PARTS)

    # the chat's second slot is one interval (1/s plus the limiter's margin) after the first;
    # the bot's 30/s slots are far shorter, so the only real wait is the chat's
    assert max(waits) == pytest.approx(ratelimit.MARGIN / 1.0, abs=0.05)


def test_a_429_waits_as_long_as_retry_after_says_then_sends(api, client, sleeps, acquired):
    api.post(SEND, status=429, json=fixture_json("telegram_error_too_many_requests.json"))
    api.post(SEND, json=sent_ok())

    sent = client.send_message(CHAT, "hello")

    assert sleeps == [3.0]
    assert len(sent) == 1 and len(api.calls) == 2
    assert len(acquired) == 4  # each attempt waited its turn again


def test_a_429_that_persists_raises_rate_limited_with_retry_after(api, client, sleeps):
    for _ in range(3):
        api.post(SEND, status=429, json=error(429, "Too Many Requests: retry after 3", retry_after=3))

    with pytest.raises(RateLimited) as caught:
        client.send_message(CHAT, "hello")

    assert caught.value.retry_after == 3
    assert sleeps == [3.0, 3.0]
    assert caught.value.sent == ()


def test_a_retry_after_longer_than_the_client_waits_goes_to_the_caller_at_once(api, client, sleeps):
    api.post(SEND, status=429, json=error(429, "Too Many Requests: retry after 600", retry_after=600))

    with pytest.raises(RateLimited) as caught:
        client.send_message(CHAT, "hello")

    assert caught.value.retry_after == 600
    assert sleeps == [] and len(api.calls) == 1


def test_a_5xx_on_send_is_not_retried_since_the_message_may_have_gone(api, client, sleeps):
    api.post(SEND, status=502, body="<html>Bad Gateway</html>")

    with pytest.raises(Unconfirmed, match="may have been done") as caught:
        client.send_message(CHAT, "hello")

    assert caught.value.status == 502 and not isinstance(caught.value, TransientError)
    assert len(api.calls) == 1 and sleeps == []


def test_a_send_whose_connection_was_refused_is_retried(api, client, sleeps):
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    api.post(SEND, body=requests.ConnectionError(MaxRetryError(None, SEND, NewConnectionError(None, "refused"))))
    api.post(SEND, json=fixture_json("telegram_send_message_ok.json"))

    client.send_message(CHAT, "hello")

    assert len(api.calls) == 2


def test_a_5xx_on_get_me_is_retried(api, client, sleeps):
    api.post(f"{BASE}/bot{TOKEN}/getMe", status=500, json=error(500, "Internal Server Error"))
    api.post(f"{BASE}/bot{TOKEN}/getMe", json=fixture_json("telegram_get_me_ok.json"))

    assert client.get_me() == BotInfo(
        id=7012345678, username="acme_sales_bot", first_name="Acme Sales", can_join_groups=True
    )
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "description", "raised"),
    [
        (401, "Unauthorized", AuthError),
        (404, "Not Found", AuthError),
        (400, "Bad Request: chat not found", PermanentError),
        (403, "Forbidden: bot was blocked by the user", PermanentError),
        (500, "Internal Server Error", Unconfirmed),  # it may have gone out
    ],
)
def test_errors_are_mapped_to_typed_errors_with_telegrams_description(api, client, status, description, raised):
    api.post(SEND, status=status, json=error(status, description))

    with pytest.raises(raised) as caught:
        client.send_message(CHAT, "hello")

    assert description in str(caught.value)
    assert caught.value.status == status
    if raised is PermanentError:
        assert type(caught.value) is PermanentError  # not an auth problem: the integration is fine


def test_a_failure_in_the_middle_of_a_long_message_tells_which_parts_went(api, client):
    api.post(SEND, json=sent_ok(message_id=1))
    api.post(SEND, status=403, json=error(403, "Forbidden: bot was blocked by the user"))

    with pytest.raises(PermanentError) as caught:
        client.send_message(CHAT, THREE_PARTS)

    assert [s.message_id for s in caught.value.sent] == ["1"]
    assert len(api.calls) == 2


def test_a_malformed_token_is_an_auth_error_that_does_not_quote_it():
    with pytest.raises(AuthError) as caught:
        TelegramClient("not-a-token-SECRETVALUE")

    assert "SECRETVALUE" not in str(caught.value)


# --- Webhook management ----------------------------------------------------------------------


def test_set_webhook_sends_the_url_secret_and_allowed_updates(api, client):
    api.post(
        f"{BASE}/bot{TOKEN}/setWebhook",
        json={"ok": True, "result": True, "description": "Webhook was set"},
        match=[
            matchers.json_params_matcher(
                {
                    "url": "https://app.example.com/api/webhooks/telegram/KEY",
                    "secret_token": "s3cr3t-Token_value",
                    "allowed_updates": ["message"],
                    "drop_pending_updates": False,
                }
            )
        ],
    )

    client.set_webhook("https://app.example.com/api/webhooks/telegram/KEY", "s3cr3t-Token_value", ["message"])


def test_a_secret_token_telegram_would_refuse_is_refused_without_calling_it(api, client):
    with pytest.raises(PermanentError) as caught:
        client.set_webhook("https://app.example.com/hook", "has spaces and ünïcode")

    assert "ünïcode" not in str(caught.value)
    assert len(api.calls) == 0


def test_an_error_setting_the_webhook_does_not_echo_its_url_or_secret(api, client, caplog):
    url, secret = "https://app.example.com/api/webhooks/telegram/KEY-abcdef123", "s3cr3t-Token_value"
    api.post(f"{BASE}/bot{TOKEN}/setWebhook", status=400, json=error(400, f"Bad Request: bad webhook {url} {secret}"))

    with pytest.raises(PermanentError) as caught:
        client.set_webhook(url, secret)

    assert_secret_free("KEY-abcdef123", caught.value, caplog)
    assert_secret_free(secret, caught.value, caplog)


def test_delete_webhook_calls_delete_webhook(api, client):
    api.post(f"{BASE}/bot{TOKEN}/deleteWebhook", json={"ok": True, "result": True})

    client.delete_webhook()

    assert len(api.calls) == 1


def test_the_base_url_comes_from_the_config(api, acquired):
    api.post(f"http://tg.local:8081/bot{TOKEN}/getMe", json=fixture_json("telegram_get_me_ok.json"))

    assert TelegramClient(TOKEN, "http://tg.local:8081/", acquire=acquired).get_me().id == 7012345678


# --- The token stays secret ------------------------------------------------------------------


def _fail_401(api):
    api.post(SEND, status=401, json=error(401, f"Unauthorized: token {TOKEN} revoked"))


def _fail_400_echoing(api):
    api.post(SEND, status=400, json=error(400, f"Bad Request: /bot{TOKEN}/sendMessage"))


def _fail_500_echoing(api):
    api.post(SEND, status=500, json=error(500, f"upstream said bot{TOKEN}"))


def _fail_connection(api):
    api.post(SEND, body=requests.ConnectionError(f"Max retries exceeded with url: /bot{TOKEN}/sendMessage"))


def _fail_timeout(api):
    api.post(SEND, body=requests.ReadTimeout(f"HTTPSConnectionPool: Read timed out. (url: /bot{TOKEN}/sendMessage)"))


def _fail_429_forever(api):
    for _ in range(3):
        api.post(SEND, status=429, json=error(429, f"Too Many Requests for {TOKEN}", retry_after=1))


@pytest.mark.parametrize(
    "fail", [_fail_401, _fail_400_echoing, _fail_500_echoing, _fail_connection, _fail_timeout, _fail_429_forever]
)
def test_the_token_never_appears_in_errors_or_logs(api, client, caplog, fail):
    caplog.set_level(logging.DEBUG)
    fail(api)

    with pytest.raises((AuthError, PermanentError, TransientError, RateLimited, Unconfirmed)) as caught:
        client.send_message(CHAT, "hello")

    assert_secret_free(TOKEN, caught.value, caplog, client)
    assert_secret_free(TOKEN.split(":")[1], caught.value, caplog, client)


def test_a_url_the_library_refuses_is_not_quoted_back(api, acquired, caplog):
    # a base URL without a host passes as "http(s)"; requests refuses it quoting the whole URL
    client = TelegramClient(TOKEN, "https://", acquire=acquired)

    with pytest.raises(PermanentError, match="could not be sent") as caught:
        client.send_message(CHAT, "hello")

    assert_secret_free(TOKEN, caught.value, caplog, client)
    assert len(api.calls) == 0


class _BotApi(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(sent_ok()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test's output quiet
        pass


@pytest.fixture
def bot_api_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BotApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urllib3s_debug_request_lines_do_not_show_the_token(bot_api_server, acquired, caplog):
    caplog.set_level(logging.DEBUG)

    TelegramClient(TOKEN, bot_api_server, acquire=acquired).send_message(CHAT, "hello")

    request_lines = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool"]
    assert any("/sendMessage" in line for line in request_lines)  # the line is there, masked
    assert TOKEN.split(":")[1] not in caplog.text
    assert f"/bot{BOT_ID}:[redacted]/sendMessage" in caplog.text


def test_every_request_has_the_shared_sessions_timeout(api, client, settings):
    api.post(SEND, json=sent_ok())

    client.send_message(CHAT, "hello")

    expected = (settings.HTTP_CONNECT_TIMEOUT_SECONDS, settings.HTTP_READ_TIMEOUT_SECONDS)
    assert api.calls[0].request.req_kwargs["timeout"] == expected
