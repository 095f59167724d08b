"""Every HTTP request is one structured ``http.request`` line (method, path with webhook keys
masked, status, duration, user, view), whichever server front answered it; and every
line shows its ``extra`` fields."""
from __future__ import annotations

import json
import logging
import re

import pytest
from django.core.asgi import get_asgi_application
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from config.logging import JsonFormatter, StructuredFormatter
from crm import intake
from crm.asgi import WebhookIntake
from tests.crm.test_webhook_asgi import call
from tests.crm.webhook_helpers import body, make_kommo_integration, webhook_path
from tests.factories import make_integration, make_user
from tests.observability.logs import console_output


def request_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "http.request"]


@pytest.fixture(autouse=True)
def _info(caplog):
    caplog.set_level(logging.INFO)


@pytest.mark.django_db
def test_an_api_request_is_one_line_with_its_user_status_and_duration(caplog, user, agent):
    token = Token.objects.create(user=user)

    with console_output() as console:
        response = APIClient().get("/api/agents/?page=1", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.status_code == 200
    (line,) = request_lines(caplog)
    assert (line.method, line.path, line.status, line.user, line.view) == (
        "GET",
        "/api/agents/",
        200,
        str(user.pk),
        "agent-list",
    )
    assert line.duration_ms >= 0
    assert re.search(
        rf"INFO observability.requestlog http.request method=GET path=/api/agents/ status=200 "
        rf"duration_ms=[0-9.]+ user={user.pk} view=agent-list\n",
        console.getvalue(),
    )
    assert token.key not in console.getvalue()


@pytest.mark.django_db
def test_a_refused_api_request_is_logged_as_anonymous(caplog):
    response = APIClient().post("/api/agents/", {"name": "x"}, format="json")

    assert response.status_code == 401
    (line,) = request_lines(caplog)
    assert (line.method, line.status, line.user, line.view) == ("POST", 401, "anonymous", "agent-list")


@pytest.mark.django_db
def test_an_admin_page_is_logged_with_the_signed_in_user(caplog):
    staff = make_user(is_staff=True)
    client = Client()
    client.force_login(staff)

    assert client.get("/admin/").status_code == 200

    (line,) = request_lines(caplog)
    assert (line.path, line.status, line.user, line.view) == ("/admin/", 200, str(staff.pk), "admin:index")


@pytest.mark.django_db
def test_a_path_that_matches_nothing_is_logged_as_unmatched(caplog):
    assert Client().get("/api/no-such-thing/").status_code == 404

    (line,) = request_lines(caplog)
    assert (line.path, line.status, line.view) == ("/api/no-such-thing/", 404, "unmatched")


@pytest.mark.django_db
def test_a_webhook_delivery_is_logged_once_without_its_key(caplog):
    integration = make_integration(integration_type="telegram", credentials={"secret_token": "s" * 32})

    with console_output() as console:
        response = Client().post(
            f"/api/webhooks/telegram/{integration.webhook_key}", "{}", content_type="application/json"
        )

    assert response.status_code == 403  # no secret token header
    (line,) = request_lines(caplog)
    assert (line.path, line.status, line.user, line.view) == (
        "/api/webhooks/telegram/<key>",
        403,
        "anonymous",
        "telegram-webhook",
    )
    assert "path=/api/webhooks/telegram/<key> status=403" in console.getvalue()
    assert integration.webhook_key not in console.getvalue()


# --- CRM webhooks answered before Django, under ASGI ---------------------------------------


@pytest.fixture
def asgi_front():
    front = WebhookIntake(get_asgi_application())
    intake.webhook_targets_forget()
    yield front
    intake.webhook_targets_forget()
    if front._executor is not None:
        front._executor.shutdown(wait=True)


@pytest.mark.django_db(transaction=True)  # the front stores from its own thread
def test_a_delivery_answered_before_django_is_logged_once(asgi_front, agent, caplog):
    kommo = make_kommo_integration(agent)

    with console_output() as console:
        reply = call(asgi_front, webhook_path(kommo), [body("lead_added")])

    assert reply.status == 200
    (line,) = request_lines(caplog)
    assert (line.method, line.path, line.status, line.user, line.view) == (
        "POST",
        "/api/webhooks/crm/<key>",
        200,
        "anonymous",
        "crm-webhook",
    )
    assert kommo.webhook_key not in console.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_delivery_the_front_refuses_is_logged_too(asgi_front, agent, caplog):
    reply = call(asgi_front, "/api/webhooks/crm/not-a-key", [body("lead_added")])

    assert reply.status == 404
    (line,) = request_lines(caplog)
    assert (line.path, line.status, line.view) == ("/api/webhooks/crm/<key>", 404, "crm-webhook")


@pytest.mark.django_db(transaction=True)
def test_a_request_the_front_hands_to_django_is_logged_once(asgi_front, agent, caplog):
    kommo = make_kommo_integration(agent)

    reply = call(asgi_front, webhook_path(kommo), method="GET", content_type=None)

    assert reply.status == 405  # Django's view answered
    (line,) = request_lines(caplog)
    assert (line.method, line.status, line.view) == ("GET", 405, "crm-webhook")


# --- the line formats ---------------------------------------------------------------------------


def record_with_extras() -> logging.LogRecord:
    return logging.getLogger("tests.observability").makeRecord(
        "tests.observability",
        logging.INFO,
        __file__,
        1,
        "crm.retry",
        (),
        None,
        extra={"path": "/api/v4/leads", "attempt": 2, "error": "Kommo said: try later", "ids": [1, 2], "gone": None},
    )


def test_the_plain_line_ends_with_the_extra_fields():
    line = StructuredFormatter("%(levelname)s %(name)s %(message)s").format(record_with_extras())

    assert line == (
        'INFO tests.observability crm.retry path=/api/v4/leads attempt=2 error="Kommo said: try later" '
        "ids=[1,2] gone=null"
    )


def test_the_json_line_holds_the_extra_fields():
    data = json.loads(JsonFormatter().format(record_with_extras()))

    assert {k: data[k] for k in ("level", "logger", "message", "path", "attempt", "error", "ids", "gone")} == {
        "level": "INFO",
        "logger": "tests.observability",
        "message": "crm.retry",
        "path": "/api/v4/leads",
        "attempt": 2,
        "error": "Kommo said: try later",
        "ids": [1, 2],
        "gone": None,
    }
    assert data["time"].endswith("+00:00")


def test_a_line_without_extras_is_the_usual_line():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "plain %s", ("text",), None)

    assert StructuredFormatter("%(levelname)s %(message)s").format(record) == "WARNING plain text"
