"""Shapes of the agent's JSON columns: working hours, the AI model, CRM field lists.

The documentation of these shapes is docs/json-fields.md; keep both in step.
"""
from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from pydantic import Field

from config.validation import Problem, Schema, check_schema, show, unique_problems

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Interval(Schema):
    start: str
    end: str

    def problems(self) -> list[Problem]:
        problems = []
        for key in ("start", "end"):
            value = getattr(self, key)
            if not _TIME.match(value) or (key == "start" and value == "24:00"):
                problems.append(((key,), f"expected a time as HH:MM (00:00–24:00), got {show(value)}"))
        if not problems and _minutes(self.start) >= _minutes(self.end):
            problems.append(((), f"start {self.start} is not before end {self.end}"))
        return problems

    @property
    def span(self) -> tuple[int, int]:
        return _minutes(self.start), _minutes(self.end)


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


class Schedule(Schema):
    """Working hours: a time zone and, per weekday, non-overlapping intervals.

    A day that is absent or has an empty list is a day off. An empty schedule ({})
    means no restriction: the agent works around the clock.
    """

    timezone: str
    days: dict[str, list[Interval]] = Field(default_factory=dict)

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.timezone not in _zones():
            problems.append(
                (("timezone",), f'unknown time zone {show(self.timezone)} (use an IANA name such as "Europe/Moscow")')
            )
        for day, intervals in self.days.items():
            if day not in DAYS:
                problems.append((("days", day), f"unknown day {show(day)} (use {', '.join(DAYS)})"))
                continue
            spans = []
            for index, interval in enumerate(intervals):
                own = interval.problems()
                problems.extend((("days", day, index) + loc, msg) for loc, msg in own)
                if not own:
                    spans.append((interval.span, index, interval))
            spans.sort()
            for (prev_span, _, prev), (span, index, interval) in zip(spans, spans[1:], strict=False):
                if span[0] < prev_span[1]:
                    problems.append(
                        (("days", day, index), f"{interval.start}–{interval.end} overlaps {prev.start}–{prev.end}")
                    )
        return problems

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_open(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return any(
            start <= minute < end for start, end in (i.span for i in self.days.get(DAYS[local.weekday()], []))
        )

    def next_open(self, moment: datetime) -> datetime | None:
        """The first moment at or after ``moment`` inside working hours (None: never open)."""
        if not any(self.days.get(day) for day in DAYS):
            return None
        local = moment.astimezone(self.zone)
        for offset in range(8):
            date = (local + timedelta(days=offset)).date()
            for start, end in sorted(i.span for i in self.days.get(DAYS[date.weekday()], [])):
                opens = datetime.combine(date, time(0), tzinfo=self.zone) + timedelta(minutes=start)
                closes = datetime.combine(date, time(0), tzinfo=self.zone) + timedelta(minutes=end)
                if offset == 0 and local >= closes:
                    continue
                return max(opens, local).astimezone(moment.tzinfo)
        return None


def parse_schedule(value: Any) -> Schedule | None:
    """The schedule object of a valid column value; None for "no restriction"."""
    if not value:
        return None
    return Schedule.model_validate(value)


def check_schedule(value: Any) -> list[Problem]:
    if value in ({}, None):
        return []
    if not isinstance(value, dict):
        return [((), f"expected an object with timezone and days, got {show(value)}")]
    return check_schema(Schedule, value)[1]


AI_PROVIDERS = {
    "openai": "OpenAI (and OpenAI-compatible servers)",
    "anthropic": "Anthropic Claude",
    "gemini": "Google Gemini",
}
DEFAULT_AI_MODEL = "openai:gpt-4o-mini"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,99}$")


def check_ai_model(value: str) -> list[Problem]:
    provider, sep, model = (value or "").partition(":")
    if not sep:
        return [((), f"expected provider:model, e.g. {DEFAULT_AI_MODEL!r}, got {show(value)}")]
    if provider not in AI_PROVIDERS:
        return [((), f"unknown provider {show(provider)} (known: {', '.join(AI_PROVIDERS)})")]
    if not _MODEL_NAME.match(model):
        return [((), f"model name {show(model)} is empty or has characters a model name cannot have")]
    return []


def check_field_ids(value: Any) -> list[Problem]:
    """A list of CRM custom field ids (positive integers, each once)."""
    if not isinstance(value, list):
        return [((), f"expected a list of CRM field ids, got {show(value)}")]
    problems: list[Problem] = [
        ((index,), f"expected a CRM field id (a positive whole number), got {show(item)}")
        for index, item in enumerate(value)
        if not (isinstance(item, int) and not isinstance(item, bool) and item > 0)
    ]
    return problems or unique_problems(value)


LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
