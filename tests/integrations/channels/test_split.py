"""split_text: long replies become several messages, cut where a reader expects a break."""

from __future__ import annotations

import re

import pytest

from integrations.channels.base import split_text, utf16_len


def words(text: str) -> list[str]:
    return text.split()


def test_a_text_exactly_at_the_limit_is_one_message():
    text = "a" * 10

    assert split_text(text, 10) == [text]


def test_a_text_one_character_over_the_limit_is_two_messages():
    text = "word " * 20 + "x"  # 101 characters

    parts = split_text(text, 100)

    assert len(parts) == 2
    assert all(len(part) <= 100 for part in parts)
    assert words(" ".join(parts)) == words(text)


def test_no_word_is_cut_in_two():
    text = " ".join(f"word{i:03d}" for i in range(300))  # words of 7 characters

    parts = split_text(text, 50)

    assert all(len(part) <= 50 for part in parts)
    assert all(re.fullmatch(r"word\d{3}( word\d{3})*", part) for part in parts)
    assert words(" ".join(parts)) == words(text)


def test_a_word_longer_than_the_limit_is_cut_and_nothing_is_lost():
    url = "https://example.com/" + "x" * 130

    parts = split_text(f"Here is the link: {url} — open it.", 60)

    # the words before it are not glued to its first piece; the words after it follow its last
    assert parts == ["Here is the link:", url[:60], url[60:120], url[120:] + " — open it."]


def test_a_paragraph_break_is_preferred_to_a_line_break_or_a_sentence():
    first = "First paragraph. It has two sentences.\nAnd a second line."
    second = "Second paragraph goes on for a while."

    parts = split_text(f"{first}\n\n{second}", len(first) + 10)

    assert parts == [first, second]


def test_a_line_break_is_preferred_to_a_sentence_end():
    text = "Line one. Still line one.\nLine two is here and it is long enough."

    parts = split_text(text, 40)

    assert parts[0] == "Line one. Still line one."


def test_a_sentence_end_is_preferred_to_a_space():
    text = "The first sentence is here. The second one is longer than what is left of the room."

    parts = split_text(text, 50)

    assert parts[0] == "The first sentence is here."


def test_a_paragraph_break_near_the_start_does_not_leave_a_tiny_message():
    text = "Hi!\n\n" + " ".join(["lorem"] * 40)

    parts = split_text(text, 100)

    assert len(parts[0]) > 50
    assert parts[0].startswith("Hi!\n\nlorem")


def test_blank_text_gives_no_messages():
    assert split_text(" \n\n ", 10) == []


def test_emoji_count_twice_in_utf16():
    text = "😀" * 3000  # 3000 characters, 6000 UTF-16 code units

    assert len(text) < 4096
    parts = split_text(text, 4096, utf16_len)

    assert [utf16_len(part) for part in parts] == [4096, 1904]
    assert "".join(parts) == text  # no emoji broken into halves


def test_a_text_of_4096_utf16_units_is_one_message_and_4097_is_two():
    exactly = "😀" * 2000 + "a" * 96  # 4000 + 96

    assert split_text(exactly, 4096, utf16_len) == [exactly]
    assert len(split_text(exactly + "b", 4096, utf16_len)) == 2


def test_cyrillic_long_reply_is_split_at_sentences_within_the_limit():
    sentence = "Доставка по Москве занимает один день, по России — от двух до пяти дней. "
    text = sentence * 80

    parts = split_text(text, 4096, utf16_len)

    assert len(parts) == 2
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert all(part.endswith("дней.") for part in parts)


@pytest.mark.parametrize("limit", [0, -5])
def test_a_limit_below_one_is_refused(limit):
    with pytest.raises(ValueError):
        split_text("text", limit)
