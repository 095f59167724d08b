"""The messenger integrations' config: base_url, phone_number_id and from_number are checked."""

from __future__ import annotations

import pytest

from integrations.schemas import check_config


@pytest.mark.parametrize(
    ("integration_type", "config"),
    [
        ("telegram", {}),
        ("telegram", {"base_url": "http://127.0.0.1:8081"}),
        ("whatsapp_cloud", {"phone_number_id": "106540352242922", "base_url": "https://graph.facebook.com/v21.0"}),
        ("twilio_whatsapp", {"from_number": "+14155238886", "base_url": "https://api.twilio.com"}),
        ("twilio_whatsapp", {"from_number": "whatsapp:+14155238886"}),
    ],
)
def test_a_good_config_has_no_problems(integration_type, config):
    assert check_config(config, integration_type) == []


@pytest.mark.parametrize("integration_type", ["telegram", "whatsapp_cloud", "twilio_whatsapp"])
def test_base_url_must_be_an_http_url(integration_type):
    assert check_config({"base_url": "ftp://bot.example"}, integration_type) == [
        (("base_url",), 'expected an http(s) URL, got "ftp://bot.example"')
    ]


@pytest.mark.parametrize("integration_type", ["telegram", "whatsapp_cloud", "twilio_whatsapp"])
def test_the_old_api_base_url_key_is_refused_with_its_new_name(integration_type):
    assert check_config({"api_base_url": "https://x.example"}, integration_type) == [
        (("api_base_url",), "renamed: use base_url")
    ]


@pytest.mark.parametrize("value", ["10654035224292a", "+106540352242922", "", "١٢٣"])
def test_phone_number_id_must_be_digits(value):
    problems = check_config({"phone_number_id": value}, "whatsapp_cloud")

    assert problems == [(("phone_number_id",), f'expected the number\'s Phone number ID (digits only), got "{value}"')]


@pytest.mark.parametrize("value", ["14155238886", "+0155238886", "+1 415 523 8886", "+1415", "whatsapp:14155238886"])
def test_from_number_must_be_an_international_phone_number(value):
    problems = check_config({"from_number": value}, "twilio_whatsapp")

    assert problems == [
        (("from_number",), f'expected a phone number in international format like +14155238886, got "{value}"')
    ]


def test_a_number_given_as_a_number_is_a_type_error_not_coerced():
    problems = check_config({"phone_number_id": 106540352242922}, "whatsapp_cloud")

    assert [loc for loc, _ in problems] == [("phone_number_id",)]
