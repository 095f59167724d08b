"""The secret webhook key in webhook URLs (the CRM, the messengers) never reaches a log line."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from config.logging import MaskWebhookKeys
from tests.factories import make_integration


@pytest.mark.django_db
def test_a_rejected_delivery_logs_its_path_without_the_key(caplog):
    integration = make_integration(integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    caplog.set_level(logging.INFO)

    response = Client().post(
        f"/api/webhooks/crm/{integration.webhook_key}", "not=kommo", content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 400
    assert "Bad Request: /api/webhooks/crm/<key>" in caplog.text
    assert integration.webhook_key not in caplog.text


def test_uvicorn_access_lines_are_masked():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/api/webhooks/crm/SECRET-KEY-123?x=1", "1.1", 200),
        None,
    )

    MaskWebhookKeys().filter(record)

    assert record.getMessage() == '127.0.0.1:5000 - "POST /api/webhooks/crm/<key>?x=1 HTTP/1.1" 200'


@pytest.mark.parametrize("name", ["uvicorn.access", "django.server"])
def test_request_loggers_keep_a_handler_and_mask(name):
    # naming a logger in LOGGING drops the handlers it had: without one of ours, the
    # server's access lines would vanish (they do not propagate)
    logger = logging.getLogger(name)

    assert logger.handlers
    assert any(isinstance(f, MaskWebhookKeys) for f in logger.filters)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("integration_type", "path"),
    [("telegram", "telegram"), ("whatsapp_cloud", "whatsapp"), ("twilio_whatsapp", "twilio")],
)
def test_a_refused_messenger_webhook_logs_its_path_without_the_key(integration_type, path, caplog):
    integration = make_integration(integration_type=integration_type, config={}, credentials={})
    caplog.set_level(logging.INFO)

    response = Client().post(f"/api/webhooks/{path}/{integration.webhook_key}", "{}", content_type="application/json")

    assert response.status_code == 403  # no secret, no signature
    assert f"/api/webhooks/{path}/<key>" in caplog.text
    assert integration.webhook_key not in caplog.text
