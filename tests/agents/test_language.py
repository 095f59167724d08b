"""The language of a reply: the lead's when detection is on, else the agent's default."""
from __future__ import annotations

import re

import pytest

from agents.language import detect, language_codes, reply_language


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Hola, ¿cuánto cuesta el plan anual?", "es"),
        ("Здравствуйте, сколько стоит доставка?", "ru"),
        ("Hi, how much is the yearly plan?", "en"),
        ("Olá, quanto custa o plano anual?", "pt"),
        ("Guten Tag, was kostet das?", "de"),
        ("Bonjour, c'est combien la livraison ?", "fr"),
        ("Привіт, скільки коштує доставка?", "uk"),
        ("Merhaba, fiyatı ne kadar?", "tr"),
    ],
)
def test_a_lead_message_is_recognised_in_its_language(text, code):
    assert detect(text) == code


@pytest.mark.parametrize("text", ["ok", "да", "👍👍", "123 456", ""])
def test_a_message_too_short_to_tell_has_no_language(text):
    assert detect(text) is None


def test_with_detection_on_the_reply_follows_the_lead():
    assert reply_language(detection=True, default="en", text="Здравствуйте, сколько стоит?") == "ru"


def test_with_detection_off_the_reply_is_in_the_default_language():
    assert reply_language(detection=False, default="pt-BR", text="Здравствуйте, сколько стоит?") == "pt-BR"


def test_a_short_message_keeps_the_conversations_language_then_the_default():
    assert reply_language(detection=True, default="en", text="ok", previous="es") == "es"
    assert reply_language(detection=True, default="en", text="ok") == "en"


def test_only_the_configured_languages_are_candidates(settings):
    settings.LANGUAGE_DETECTION_LANGUAGES = "en,es"

    assert detect("Здравствуйте, сколько стоит доставка?") in (None, "en", "es")
    assert detect("Hola, ¿cuánto cuesta el plan anual?") == "es"


@pytest.mark.parametrize(
    ("value", "message"),
    [("en,xx", "unknown ISO 639-1 code(s): xx"), ("en", "at least two languages"), ("", "at least two")],
)
def test_a_bad_language_list_is_a_clear_configuration_error(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        language_codes(value)
