"""The language a reply is written in (flow 2.5): with the agent's language detection on,
the lead's, detected by lingua (https://github.com/pemistahl/lingua-py); otherwise, and
whenever a message is too short or too ambiguous to tell, the conversation's last known
language, then the agent's ``default_language``.

The detector knows only ``LANGUAGE_DETECTION_LANGUAGES`` and uses lingua's low-accuracy
(trigram) models: ~10 MB of memory a process for a dozen languages, against ~320 MB for
the full models, and still right on the short sales messages it sees (tests).
"""
from __future__ import annotations

import functools
import logging

from django.conf import settings
from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

logger = logging.getLogger(__name__)

MIN_LETTERS = 4  # "ok", "да", "👍" say nothing about a language
MIN_CONFIDENCE = 0.5


def language_codes(value: str) -> tuple[str, ...]:
    """``"en, ru,pt"`` → ("en", "ru", "pt"); an unknown code is a configuration error."""
    codes = tuple(dict.fromkeys(c.strip().lower() for c in value.split(",") if c.strip()))
    unknown = [c for c in codes if not hasattr(IsoCode639_1, c.upper())]
    if unknown:
        raise ValueError(f"LANGUAGE_DETECTION_LANGUAGES: unknown ISO 639-1 code(s): {', '.join(unknown)}")
    if len(codes) < 2:
        raise ValueError("LANGUAGE_DETECTION_LANGUAGES: name at least two languages")
    return codes


@functools.cache
def _detector(codes: tuple[str, ...]) -> LanguageDetector:
    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in codes]
    return LanguageDetectorBuilder.from_languages(*languages).with_low_accuracy_mode().build()


def detect(text: str) -> str | None:
    """The ISO 639-1 code of the language ``text`` is written in, or None when it cannot
    be told with confidence."""
    if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        return None
    detector = _detector(language_codes(settings.LANGUAGE_DETECTION_LANGUAGES))
    values = detector.compute_language_confidence_values(text)
    if not values or values[0].value < MIN_CONFIDENCE:
        return None
    return values[0].language.iso_code_639_1.name.lower()


def reply_language(*, detection: bool, default: str, text: str, previous: str = "") -> str:
    """The language to answer ``text`` in."""
    if not detection:
        return default
    return detect(text) or previous or default
