"""No secret reaches the logs: real requests (API calls with a token, an integration created
with credentials, webhook deliveries with their keys, a Kommo OAuth callback) and outside
calls that fail while echoing the secret they were sent (Kommo, Telegram, OpenAI), with
everything logged at DEBUG captured twice: the records (caplog on the root logger) and
what the configured console handler writes.

The same story with the masking filter switched off shows the secrets: the test sees the
places where they would leak, so it fails if masking goes."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents.ai import base as ai_base
from agents.models import ConversationMessage
from config.logging import MaskSecrets
from crm import intake
from integrations.models import Integration
from tests.crm.webhook_helpers import FORM, body
from tests.factories import PASSWORD, make_agent, make_user
from tests.fake_ai_server import FakeAIServer
from tests.observability.logs import console_output

CRM = "https://acme.kommo.com"
CHANNEL_FIXTURES = Path(__file__).resolve().parents[1] / "integrations" / "channels" / "fixtures"

# Secrets shaped like the real ones, each used once in the story below.
BOT_TOKEN = "7351942866:AAF-x9Qm2LwZr4TqVbN8sYcP3eKdJ0uHhWg"
TELEGRAM_SECRET = "tg-secret-header-Vq8d2Lx0Pz"
KOMMO_CLIENT_ID = "5e1c7a7e-1f2b-4c3d-9e8f-0a1b2c3d4e5f"
KOMMO_CLIENT_SECRET = "Zq7Lm3Nx9Vb2Kd8Rt4Wy6Hs1Gf5Jc0Pa"
OAUTH_CODE = "def50200b7e1a4c9d2f6083e5a1b9c7d4e2f"
KOMMO_ACCESS = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiI1ZTFjN2E3ZSIsImp0aSI6IjQ0In0.c2lnbmF0dXJlLXBhcnQ"
KOMMO_REFRESH = "def502006c1f9e3b8a7d5c4b3a29180706f5e4d3"
OPENAI_KEY = "sk-proj-Rk4sT9vLmQ2wXz7NbC3yHd8F"


class EchoingTelegram:
    """A Bot API double that refuses every call, quoting the URL (token included) back, as a
    proxy or a misconfigured server may."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.paths.append(self.path)
                data = json.dumps({"ok": False, "error_code": 401, "description": f"Unauthorized: {self.path}"})
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, format: str, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> EchoingTelegram:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def telegram_server():
    with EchoingTelegram() as server:
        yield server


@pytest.fixture
def ai_server(settings):
    with FakeAIServer() as server:
        settings.OPENAI_API_KEY = OPENAI_KEY
        settings.OPENAI_BASE_URL = server.url + "/v1"
        settings.AI_MAX_RETRIES = 0
        ai_base.clear_client_cache()
        yield server
        ai_base.clear_client_cache()


@pytest.fixture
def kommo_api(telegram_server):
    """Kommo: the code is exchanged, then the new token is refused with the token quoted
    back, and so is its refresh, quoting the refresh token and the client secret."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(telegram_server.url)
        mock.post(
            f"{CRM}/oauth2/access_token",
            json={"access_token": KOMMO_ACCESS, "refresh_token": KOMMO_REFRESH, "expires_in": 86400},
        )
        mock.post(
            f"{CRM}/oauth2/access_token",
            status=401,
            json={"hint": f"refresh_token={KOMMO_REFRESH} revoked for client_secret={KOMMO_CLIENT_SECRET}"},
        )
        mock.get(
            f"{CRM}/api/v4/account",
            status=401,
            json={"title": "Unauthorized", "detail": f"Authorization: Bearer {KOMMO_ACCESS} is not valid"},
        )
        yield mock


@pytest.fixture
def masking_off(monkeypatch):
    monkeypatch.setattr(MaskSecrets, "filter", lambda self, record: True)


def telegram_update(n: int) -> bytes:
    update = json.loads((CHANNEL_FIXTURES / "telegram_text_message.json").read_bytes())
    update["update_id"] += n
    update["message"]["message_id"] += n
    return json.dumps(update).encode()


def tell_the_story(django_capture_on_commit_callbacks, telegram_server, ai_server) -> dict[str, str]:
    """Everything a tenant and the outside world do with secrets; returns the secrets used."""
    owner = make_user(is_staff=True)
    chat_agent = make_agent(owner=owner, ai_model="openai:gpt-4o-mini")
    crm_agent = make_agent(owner=owner)

    # the API: a token for a password, then calls with the token
    token = APIClient().post("/api/auth/token/", {"username": owner.username, "password": PASSWORD}).json()["token"]
    assert token == Token.objects.get(user=owner).key
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/api/agents/").status_code == 200
    created = api.post(
        "/api/integrations/",
        {
            "agent": chat_agent.pk,
            "integration_type": "telegram",
            "config": {"base_url": telegram_server.url},
            "credentials": {"bot_token": BOT_TOKEN, "secret_token": TELEGRAM_SECRET},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    kommo_created = api.post(
        "/api/integrations/",
        {
            "agent": crm_agent.pk,
            "integration_type": "kommo",
            "config": {"base_url": CRM},
            "credentials": {"client_id": KOMMO_CLIENT_ID, "client_secret": KOMMO_CLIENT_SECRET},
        },
        format="json",
    )
    assert kommo_created.status_code == 201, kommo_created.content
    telegram = Integration.objects.get(pk=created.json()["id"])
    kommo = Integration.objects.get(pk=kommo_created.json()["id"])

    # Kommo's OAuth: the consent page's link back with a code, Kommo then refusing the
    # token it gave (quoting it) and its refresh (quoting the refresh token and secret)
    browser = Client()
    browser.force_login(owner)
    consent = browser.get(f"/crm/oauth/start/{kommo.pk}")
    state = parse_qs(urlsplit(consent["Location"]).query)["state"][0]
    callback = browser.get("/crm/oauth/callback", {"code": OAUTH_CODE, "state": state, "referer": "acme.kommo.com"})
    assert callback.status_code == 302
    kommo.refresh_from_db()
    assert kommo.credentials["access_token"] == KOMMO_ACCESS

    # webhooks: a CRM delivery, and two Telegram messages (with the secret header); the
    # first is answered by the model and refused by Telegram, the second refused by OpenAI
    # quoting the key it was sent
    intake.webhook_targets_forget()
    with django_capture_on_commit_callbacks(execute=True):
        crm_delivery = Client().post(
            f"/api/webhooks/crm/{kommo.webhook_key}", body("lead_added"), content_type=FORM
        )
    assert crm_delivery.status_code == 200
    for n in (1, 2):
        if n == 2:
            ai_server.fail(401, message=f"Incorrect API key provided: {OPENAI_KEY}. Bearer {OPENAI_KEY}")
        with django_capture_on_commit_callbacks(execute=True):
            delivered = Client().post(
                f"/api/webhooks/telegram/{telegram.webhook_key}",
                telegram_update(n),
                content_type="application/json",
                HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN=TELEGRAM_SECRET,
            )
        assert delivered.status_code == 200
    refused = Client().post(f"/api/webhooks/telegram/{telegram.webhook_key}", b"{}", content_type="application/json")
    assert refused.status_code == 403

    assert telegram_server.paths == [f"/bot{BOT_TOKEN}/sendMessage"]  # Telegram was asked once, and refused
    assert len(ai_server.requests) == 2
    errors = list(ConversationMessage.objects.filter(direction="in").order_by("id").values_list("error", flat=True))
    assert "Telegram" in errors[0] and "401" in errors[0]
    assert "OpenAI" in errors[1] or "openai" in errors[1]
    return {
        "DRF token": token,
        "password": PASSWORD,
        "bot token": BOT_TOKEN,
        "bot token's secret half": BOT_TOKEN.split(":", 1)[1],
        "Telegram secret header": TELEGRAM_SECRET,
        "Telegram webhook key": telegram.webhook_key,
        "CRM webhook key": kommo.webhook_key,
        "Kommo client secret": KOMMO_CLIENT_SECRET,
        "OAuth code": OAUTH_CODE,
        "Kommo access token": KOMMO_ACCESS,
        "Kommo refresh token": KOMMO_REFRESH,
        "OpenAI key": OPENAI_KEY,
    }


def everything_logged(caplog, console_text: str) -> str:
    """The console's lines, pytest's own rendering of the records, and every record's
    message, traceback and fields holding text, numbers, lists or dicts: whatever a
    formatter prints as it is. (Objects, such as the request Django's request lines carry,
    are printed by no handler as they are: StructuredFormatter skips the request and
    writes other objects' text masked, which the console's lines show.)"""
    parts = [console_text, caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), record.exc_text or "", record.stack_info or ""]
        parts += [
            repr(value)
            for key, value in vars(record).items()
            if key not in ("msg", "args", "exc_info") and isinstance(value, str | int | float | list | tuple | dict)
        ]
    return "\n".join(parts)


@pytest.mark.django_db
def test_no_secret_of_requests_or_failed_outside_calls_reaches_the_logs(
    caplog, django_capture_on_commit_callbacks, telegram_server, ai_server, kommo_api
):
    caplog.set_level(logging.DEBUG)

    with console_output() as console:
        secrets = tell_the_story(django_capture_on_commit_callbacks, telegram_server, ai_server)

    logged = everything_logged(caplog, console.getvalue())
    leaked = [name for name, secret in secrets.items() if secret in logged]
    assert leaked == []
    # the places they would have been: each line is there, masked
    text = console.getvalue()
    assert "path=/api/webhooks/crm/<key> status=200" in text
    assert "path=/api/webhooks/telegram/<key> status=403" in text
    assert "integration.call_failed integration_type=telegram call=sendMessage kind=auth status=401" in text
    assert "integration.call_failed integration_type=kommo call=\"GET /api/v4/account\" kind=auth status=401" in text
    assert "integration.status_changed" in text and "status=needs_reconnect" in text
    assert "outcome=config_error" in text  # OpenAI refused the key


@pytest.mark.django_db
def test_without_the_masking_filter_the_same_story_leaks(
    masking_off, caplog, django_capture_on_commit_callbacks, telegram_server, ai_server, kommo_api
):
    caplog.set_level(logging.DEBUG)

    with console_output() as console:
        secrets = tell_the_story(django_capture_on_commit_callbacks, telegram_server, ai_server)

    logged = everything_logged(caplog, console.getvalue())
    leaked = {name for name, secret in secrets.items() if secret in logged}
    assert {"Telegram webhook key", "CRM webhook key", "bot token"} <= leaked


# --- what the filter does with each kind of secret --------------------------------------------


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.DEBUG)
    with console_output() as console:
        yield lambda: everything_logged(caplog, console.getvalue())


def test_credentials_given_as_extra_or_as_an_argument_are_masked(lines):
    credentials = {"bot_token": BOT_TOKEN, "access_token": "opaque-token-value-1234", "client_id": "public-id"}

    logging.getLogger("tests.observability").info(
        "saved %s", {"credentials": credentials}, extra={"credentials": credentials, "config": {"api_key": "k-9f8e7d"}}
    )

    text = lines()
    assert BOT_TOKEN not in text and "opaque-token-value-1234" not in text and "k-9f8e7d" not in text
    assert credentials["access_token"] == "opaque-token-value-1234"  # the caller's dict is left alone


def test_a_traceback_quoting_a_token_is_masked(lines):
    logger = logging.getLogger("tests.observability")
    try:
        requests.post(f"http://127.0.0.1:9/bot{BOT_TOKEN}/sendMessage", timeout=0.5)
    except requests.ConnectionError:
        logger.exception("telegram.send.failed")

    text = lines()
    assert "telegram.send.failed" in text and "ConnectionError" in text
    assert BOT_TOKEN.split(":", 1)[1] not in text


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer {s}",
        "{{'Authorization': 'Token {s}'}}",
        "POST https://generativelanguage.googleapis.com/v1beta/models/gemini:generateContent?key={s}",
        'token endpoint said {{"access_token": "{s}", "expires_in": 86400}}',
        "password={s}&username=anna",
        "redis://default:{s}@cache:6379/0",
    ],
)
def test_secrets_in_headers_bodies_and_urls_are_masked(line, lines):
    secret = "Xk29fLq81ZwPv5Nd"

    logging.getLogger("tests.observability").warning(line.format(s=secret))

    assert secret not in lines()


@pytest.mark.parametrize(
    "name",
    ["SECRET_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLIENT_SECRET", "METRICS_TOKEN"],
)
def test_the_configured_secrets_are_masked_whatever_their_shape(name, settings, lines):
    secret = f"plain words {name.lower()} 42"
    setattr(settings, name, secret)

    logging.getLogger("tests.observability").error("the server said: %s", f"unknown value '{secret}'")

    assert secret not in lines()


def test_the_encryption_keys_are_masked(settings, lines):
    key = settings.ENCRYPTION_KEYS[0].partition(":")[2]

    logging.getLogger("tests.observability").error("cannot decrypt with %s", key)

    assert key not in lines()


def test_counts_named_like_tokens_are_not_masked(lines):
    logging.getLogger("tests.observability").info("ai.request", extra={"input_tokens": 31, "output_tokens": 14})

    assert "input_tokens=31 output_tokens=14" in lines()
