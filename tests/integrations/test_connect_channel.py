"""`manage.py connect_channel`: a messenger pointed at its integration's webhook URL."""
from __future__ import annotations

import json
from io import StringIO

import pytest
import responses
from django.core.management import CommandError, call_command

from integrations.models import Integration
from tests.factories import make_integration


def run(integration_id: int) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("connect_channel", "--integration", str(integration_id), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@responses.activate
def test_telegram_is_given_the_webhook_url_and_a_new_secret_token(agent):
    bot = make_integration(agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def"})
    call = responses.post("https://api.telegram.org/bot123456:ABC-def/setWebhook", json={"ok": True, "result": True})

    out, _ = run(bot.id)

    sent = json.loads(call.calls[0].request.body)
    bot.refresh_from_db()
    assert sent["url"] == bot.webhook_url
    assert sent["secret_token"] == bot.credentials["secret_token"] and len(sent["secret_token"]) >= 32
    assert bot.status == Integration.Status.CONNECTED
    assert "Telegram delivers" in out


@responses.activate
def test_a_refused_telegram_webhook_is_one_line_and_marks_the_integration_failing(agent):
    bot = make_integration(agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def"})
    responses.post(
        "https://api.telegram.org/bot123456:ABC-def/setWebhook",
        status=400,
        json={"ok": False, "error_code": 400, "description": "Bad Request: bad webhook: HTTPS url must be provided"},
    )

    with pytest.raises(CommandError, match="Telegram refused the webhook") as refused:
        run(bot.id)

    assert "ABC-def" not in str(refused.value)
    bot.refresh_from_db()
    assert bot.status == Integration.Status.FAILING


def test_for_whatsapp_the_url_and_a_verify_token_are_printed(agent):
    wa = make_integration(agent, integration_type="whatsapp_cloud", config={"phone_number_id": "1065"})

    out, _ = run(wa.id)

    wa.refresh_from_db()
    assert wa.webhook_url in out and wa.credentials["verify_token"] in out


def test_for_twilio_the_url_is_printed(agent):
    tw = make_integration(agent, integration_type="twilio_whatsapp", config={"from_number": "+14155238886"})

    out, err = run(tw.id)

    assert tw.webhook_url in out
    assert "not https" in err  # the test server's PUBLIC_BASE_URL is http


def test_an_integration_that_is_not_a_messenger_is_refused(agent):
    kommo = make_integration(agent, integration_type="kommo", config={}, credentials={})

    with pytest.raises(CommandError, match="not a messenger"):
        run(kommo.id)


def test_an_unknown_integration_is_refused(db):
    with pytest.raises(CommandError, match="no integration with id 999999"):
        run(999999)
