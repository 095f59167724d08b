"""The monitoring page's numbers: those of /metrics (observability/selectors.py) over the
last 24 hours and the last 7 days, summed over the agents shown, with what the charts need.

A staff member who is not a superuser sees their own agents only; the numbers that
belong to no agent (HTTP requests, failed calls to outside services) are the system's
and shown to superusers only.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from agents.models import Agent

from . import selectors
from .metrics import (
    AI_REQUESTS,
    AI_TOKENS,
    HTTP_DURATION,
    HTTP_REQUESTS,
    INTEGRATION_ERRORS,
    INTEGRATION_STATUS_CHANGES,
)
from .selectors import Histogram, visible_agents

__all__ = ["Window", "agent_scope", "integrations_now", "visible_agents", "window_numbers", "windows"]


@dataclass(frozen=True)
class Window:
    key: str
    title: str
    hours: int
    slot: str  # "hour" or "day": a bar of the timeline

    def since(self, now: datetime.datetime) -> datetime.datetime:
        """The window's start: on the hour, so that it covers the recorded buckets exactly."""
        return now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=self.hours - 1)

    def slots(self, now: datetime.datetime) -> list[datetime.datetime]:
        if self.slot == "hour":
            start = self.since(now)
            return [start + datetime.timedelta(hours=i) for i in range(self.hours)]
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        days = self.hours // 24
        return [today - datetime.timedelta(days=days - 1 - i) for i in range(days)]


WINDOWS = (Window("24h", "Last 24 hours", 24, "hour"), Window("7d", "Last 7 days", 7 * 24, "day"))


def agent_scope(*, user: AbstractBaseUser, agent: Agent | None) -> list[int] | None:
    """The agent ids the page adds up (None: all). ``agent`` must be one the user may see."""
    if agent is not None:
        return [agent.pk]
    if user.is_superuser:
        return None
    return list(visible_agents(user=user).values_list("pk", flat=True))


def windows(*, user: AbstractBaseUser, agent: Agent | None = None, now=None) -> list[dict[str, Any]]:
    """The page's numbers for each window."""
    now = now or timezone.now()
    agent_ids = agent_scope(user=user, agent=agent)
    return [window_numbers(window, now=now, agent_ids=agent_ids, system=user.is_superuser) for window in WINDOWS]


def integrations_now(*, user: AbstractBaseUser, agent: Agent | None = None) -> list[dict[str, Any]]:
    counts = selectors.integrations_by_status(agent_ids=agent_scope(user=user, agent=agent))
    return [{"integration_type": kind, "status": status, "count": n} for (kind, status), n in sorted(counts.items())]


def window_numbers(
    window: Window, *, now: datetime.datetime, agent_ids: Sequence[int] | None, system: bool
) -> dict[str, Any]:
    since = window.since(now)
    scope = {"since": since, "agent_ids": agent_ids}

    firings = _sum_by(selectors.trigger_firings(**scope), status=1)
    actions = _sum_by(selectors.trigger_actions(**scope), status=2)
    runs = _sum_by(selectors.sequence_runs(**scope), status=1)
    steps = _sum_by(selectors.sequence_steps(**scope), status=2)
    replies = _sum_histograms(selectors.reply_times(**scope).values(), selectors.REPLY_BUCKETS)
    recorded = selectors.recorded((AI_REQUESTS, AI_TOKENS, INTEGRATION_STATUS_CHANGES), **scope)

    numbers: dict[str, Any] = {
        "key": window.key,
        "title": window.title,
        "since": since,
        "agents_active": selectors.agents_active(agent_ids=agent_ids),
        "replies": _histogram_view(replies),
        "triggers": {
            "done": firings["done"],
            "failed": firings["failed"],
            "success_rate": _rate(firings["done"], firings["failed"]),
            "actions_done": actions["done"],
            "actions_failed": actions["failed"],
        },
        "sequences": {
            "done": runs["done"],
            "failed": runs["failed"],
            "exited": runs["exited"],
            "cancelled": runs["cancelled"],
            "success_rate": _rate(runs["done"], runs["failed"]),
            "steps_done": steps["done"],
            "steps_failed": steps["failed"],
        },
        "ai": _ai(recorded[AI_REQUESTS.name], recorded[AI_TOKENS.name]),
        "status_changes": _table(recorded[INTEGRATION_STATUS_CHANGES.name], ("integration_type", "status")),
        "timeline": _timeline(window, now, agent_ids),
    }
    if system:
        numbers["system"] = _system(since)
    return numbers


def _sum_by(counts: dict[tuple, int], *, status: int) -> defaultdict[str, int]:
    """Counts keyed by tuples, summed by the tuple's item at ``status``."""
    summed: defaultdict[str, int] = defaultdict(int)
    for key, n in counts.items():
        summed[key[status]] += n
    return summed


def _rate(done: int, failed: int) -> float | None:
    """Percent done of done and failed; None before anything finished."""
    return round(100 * done / (done + failed), 1) if done + failed else None


def _sum_histograms(histograms: Iterable[Histogram], bounds: Sequence[float]) -> Histogram:
    total = Histogram(tuple(bounds))
    for histogram in histograms:
        total.add(histogram)
    return total


def _histogram_view(histogram: Histogram) -> dict[str, Any]:
    buckets = histogram.per_bucket()
    highest = max((n for _, n in buckets), default=0)
    return {
        "count": histogram.count,
        "average_seconds": None if histogram.average is None else round(histogram.average, 3),
        "bars": [
            {"label": _duration_label(bound), "count": n, "percent": _percent(n, highest)} for bound, n in buckets
        ],
    }


def _duration_label(bound: str) -> str:
    if bound == "+Inf":
        return "longer"
    seconds = float(bound)
    if seconds < 1:
        return f"≤ {seconds * 1000:g} ms"
    if seconds < 60:
        return f"≤ {seconds:g} s"
    if seconds < 3600:
        return f"≤ {seconds / 60:g} min"
    return f"≤ {seconds / 3600:g} h"


def _percent(n: float, highest: float) -> float:
    return round(100 * n / highest, 1) if highest else 0.0


def _ai(requests: list[selectors.Series], tokens: list[selectors.Series]) -> dict[str, Any]:
    models: dict[tuple[str, str], dict[str, Any]] = {}

    def row(labels: dict[str, str]) -> dict[str, Any]:
        key = (labels["provider"], labels["model"])
        if key not in models:
            models[key] = {"provider": key[0], "model": key[1], "requests": 0, "failed": 0, "input": 0, "output": 0}
        return models[key]

    for series in requests:
        entry = row(series.labels)
        entry["requests"] += int(series.total)
        if series.labels["outcome"] != "success":
            entry["failed"] += int(series.total)
    for series in tokens:
        row(series.labels)[series.labels["direction"]] += int(series.total)
    rows = sorted(models.values(), key=lambda r: (-(r["input"] + r["output"]), r["provider"], r["model"]))
    highest = max((r["input"] + r["output"] for r in rows), default=0)
    for r in rows:
        r["percent"] = _percent(r["input"] + r["output"], highest)
    return {
        "requests": sum(r["requests"] for r in rows),
        "failed": sum(r["failed"] for r in rows),
        "input_tokens": sum(r["input"] for r in rows),
        "output_tokens": sum(r["output"] for r in rows),
        "by_model": rows,
    }


def _table(series: list[selectors.Series], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Counter series summed by ``labels``, largest first."""
    summed: defaultdict[tuple[str, ...], int] = defaultdict(int)
    for one in series:
        summed[tuple(one.labels[label] for label in labels)] += int(one.total)
    rows = [{**dict(zip(labels, key, strict=True)), "count": n} for key, n in summed.items()]
    return sorted(rows, key=lambda r: (-r["count"], *(r[label] for label in labels)))


def _timeline(window: Window, now: datetime.datetime, agent_ids: Sequence[int] | None) -> dict[str, Any]:
    slots = selectors.timeline(since=window.since(now), slot=window.slot, agent_ids=agent_ids, tokens=AI_TOKENS)
    bars = []
    for at in window.slots(now):
        values = slots.get(at, {})
        bars.append(
            {
                "at": at,
                "replies": values.get("replies", 0),
                "firings_done": values.get("firings_done", 0),
                "firings_failed": values.get("firings_failed", 0),
                "tokens": int(values.get("tokens", 0)),
            }
        )
    for name in ("replies", "tokens"):
        highest = max(bar[name] for bar in bars)
        for bar in bars:
            bar[f"{name}_percent"] = _percent(bar[name], highest)
    highest = max(bar["firings_done"] + bar["firings_failed"] for bar in bars)
    for bar in bars:
        bar["firings_done_percent"] = _percent(bar["firings_done"], highest)
        bar["firings_failed_percent"] = _percent(bar["firings_failed"], highest)
    return {"slot": window.slot, "bars": bars}


def _system(since: datetime.datetime) -> dict[str, Any]:
    recorded = selectors.recorded((HTTP_REQUESTS, HTTP_DURATION, INTEGRATION_ERRORS), since=since)
    by_class = {row["status_class"]: row["count"] for row in _table(recorded[HTTP_REQUESTS.name], ("status_class",))}
    errors = [
        row
        for row in _table(recorded[HTTP_REQUESTS.name], ("view", "status_class"))
        if row["status_class"] in ("4xx", "5xx")
    ]
    durations = _sum_histograms(
        (series.histogram(HTTP_DURATION.buckets) for series in recorded[HTTP_DURATION.name]), HTTP_DURATION.buckets
    )
    return {
        "requests": sum(by_class.values()),
        "by_class": dict(sorted(by_class.items())),
        "errors_by_view": errors[:15],
        "durations": _histogram_view(durations),
        "integration_errors": _table(recorded[INTEGRATION_ERRORS.name], ("integration_type", "kind")),
    }
