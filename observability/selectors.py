"""Reads behind /metrics and the monitoring page: one function per number, used by both, so
that they show the same numbers (/metrics since the beginning, the page over a window).

What the product records anyway is read from its rows, never counted twice: agents,
integrations, trigger firings and their actions, sequence runs and steps, and the
agents' replies (an outbound message's ``reply_to`` is the lead's message it answers).
The rest comes from the recorded metrics (``MetricBucket``: observability/metrics.py).

``agent_ids`` scopes a read to those agents (None: all). ``since`` starts a window
(None: all time). Recorded metrics are kept by the hour, so windows start on the hour:
"the last 24 hours" is the current hour and the 23 before it, for every number.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour

from agents.models import Agent, ConversationMessage
from agents.selectors import owned
from integrations.models import Integration
from sequences.models import SequenceRun, SequenceStep
from triggers.models import ActionRun, TriggerFiring

from .metrics import REPLY_BUCKETS, Metric
from .models import MetricBucket
from .recorder import COUNT_ROW, bound_text

AgentIds = Sequence[int] | None

FIRING_OUTCOMES = (TriggerFiring.Status.DONE, TriggerFiring.Status.FAILED)
ACTION_OUTCOMES = (ActionRun.Status.DONE, ActionRun.Status.FAILED)
RUN_OUTCOMES = (
    SequenceRun.Status.DONE,
    SequenceRun.Status.FAILED,
    SequenceRun.Status.EXITED,
    SequenceRun.Status.CANCELLED,
)
STEP_OUTCOMES = (SequenceStep.Status.DONE, SequenceStep.Status.FAILED)


def visible_agents(*, user: AbstractBaseUser) -> QuerySet[Agent]:
    """The agents whose numbers ``user`` may see: a superuser's are all of them."""
    agents = Agent.objects.order_by("name", "id")
    return agents if user.is_superuser else owned(agents, user, owner_path="owner")


def _scoped(queryset: QuerySet, agent_ids: AgentIds, path: str = "agent_id") -> QuerySet:
    return queryset if agent_ids is None else queryset.filter(**{f"{path}__in": agent_ids})


def _since(queryset: QuerySet, since: datetime.datetime | None, path: str = "finished_at") -> QuerySet:
    return queryset if since is None else queryset.filter(**{f"{path}__gte": since})


# --- from the product's rows ------------------------------------------------------------------


def agents_active(*, agent_ids: AgentIds = None) -> int:
    return _scoped(Agent.objects.filter(active=True), agent_ids, "id").count()


def integrations_by_status(*, agent_ids: AgentIds = None) -> dict[tuple[str, str], int]:
    """Switched-on integrations by (type, status): their health now."""
    rows = _scoped(Integration.objects.filter(active=True), agent_ids).values_list("integration_type", "status")
    return {(kind, status): n for kind, status, n in rows.annotate(n=Count("id")).order_by()}


def trigger_firings(*, since=None, agent_ids: AgentIds = None) -> dict[tuple[int, str], int]:
    """Finished firings by (agent, done | failed); a retrying one is not finished."""
    rows = _since(_scoped(TriggerFiring.objects.filter(status__in=FIRING_OUTCOMES), agent_ids), since)
    return {(a, s): n for a, s, n in rows.values_list("agent_id", "status").annotate(n=Count("id")).order_by()}


def trigger_actions(*, since=None, agent_ids: AgentIds = None) -> dict[tuple[int, str, str], int]:
    """Finished actions of firings by (agent, action type, done | failed)."""
    rows = _since(_scoped(ActionRun.objects.filter(status__in=ACTION_OUTCOMES), agent_ids, "firing__agent_id"), since)
    rows = rows.values_list("firing__agent_id", "type", "status").annotate(n=Count("id")).order_by()
    return {(a, t, s): n for a, t, s, n in rows}


def sequence_runs(*, since=None, agent_ids: AgentIds = None) -> dict[tuple[int, str], int]:
    """Ended runs by (agent, done | failed | exited | cancelled). A failed run retried
    later leaves "failed" for good or bad: its count may go down."""
    rows = _since(_scoped(SequenceRun.objects.filter(status__in=RUN_OUTCOMES), agent_ids), since)
    return {(a, s): n for a, s, n in rows.values_list("agent_id", "status").annotate(n=Count("id")).order_by()}


def sequence_steps(*, since=None, agent_ids: AgentIds = None) -> dict[tuple[int, str, str], int]:
    """Finished steps by (agent, step type, done | failed)."""
    rows = _since(_scoped(SequenceStep.objects.filter(status__in=STEP_OUTCOMES), agent_ids, "run__agent_id"), since)
    rows = rows.values_list("run__agent_id", "type", "status").annotate(n=Count("id")).order_by()
    return {(a, t, s): n for a, t, s, n in rows}


@dataclass
class Histogram:
    """Observations: how many, their sum, and how many fell at or below each bound
    (cumulative, as Prometheus has it; the last is the count)."""

    bounds: tuple[float, ...]
    count: int = 0
    sum: float = 0.0
    cumulative: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cumulative:
            self.cumulative = [0] * len(self.bounds)

    def add(self, other: Histogram) -> None:
        self.count += other.count
        self.sum += other.sum
        self.cumulative = [a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)]

    @property
    def average(self) -> float | None:
        return self.sum / self.count if self.count else None

    def per_bucket(self) -> list[tuple[str, int]]:
        """(the bucket's bound as text, observations in it and no lower one), +Inf last."""
        below = 0
        buckets = []
        for bound, at_or_below in zip(self.bounds, self.cumulative, strict=True):
            buckets.append((bound_text(bound), at_or_below - below))
            below = at_or_below
        buckets.append(("+Inf", self.count - below))
        return buckets


def _replies() -> QuerySet[ConversationMessage]:
    """The agents' replies to leads on a messenger (staff test chats are not leads)."""
    return ConversationMessage.objects.filter(
        direction=ConversationMessage.Direction.OUTBOUND,
        author=ConversationMessage.Author.AGENT,
        reply_to__isnull=False,
        conversation__integration__isnull=False,
    )


def reply_times(*, since=None, agent_ids: AgentIds = None) -> dict[int, Histogram]:
    """Per agent: seconds from a lead's message arriving (stored) to the agent's reply
    being sent (stored after the channel took it)."""
    took = ExpressionWrapper(F("created_at") - F("reply_to__created_at"), output_field=DurationField())
    rows = _since(_scoped(_replies(), agent_ids, "conversation__agent_id"), since, "created_at")
    rows = (
        rows.annotate(took=took)
        .values("conversation__agent_id")
        .annotate(
            n=Count("id"),
            total=Sum("took"),
            **{
                f"le{i}": Count("id", filter=Q(took__lte=datetime.timedelta(seconds=bound)))
                for i, bound in enumerate(REPLY_BUCKETS)
            },
        )
        .order_by()
    )
    return {
        row["conversation__agent_id"]: Histogram(
            REPLY_BUCKETS,
            count=row["n"],
            sum=_seconds(row["total"]),
            cumulative=[row[f"le{i}"] for i in range(len(REPLY_BUCKETS))],
        )
        for row in rows
    }


def _seconds(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value) / 1_000_000  # a backend that sums durations as microseconds


# --- from the recorded metrics ------------------------------------------------------------


@dataclass
class Series:
    """One recorded series: its labels, its count and total (a counter's value is the
    total) and, for a histogram, its observations per bucket bound (not cumulative)."""

    labels: dict[str, str]
    count: int = 0
    total: float = 0.0
    buckets: dict[str, int] = field(default_factory=dict)

    def histogram(self, bounds: Sequence[float]) -> Histogram:
        cumulative, running = [], 0
        for bound in bounds:
            running += self.buckets.get(bound_text(bound), 0)
            cumulative.append(running)
        return Histogram(tuple(bounds), count=self.count, sum=self.total, cumulative=cumulative)


def recorded(metrics: Iterable[Metric], *, since=None, agent_ids: AgentIds = None) -> dict[str, list[Series]]:
    """metric name → its series, summed over the hours since ``since`` (all time: None).
    Scoped to agents, a metric without an ``agent`` label has no series."""
    names = [metric.name for metric in metrics]
    rows = _since(_scoped(MetricBucket.objects.filter(metric__in=names), agent_ids), since, "hour")
    rows = rows.values_list("metric", "labels", "le").annotate(n=Sum("count"), t=Sum("total")).order_by()
    series: dict[tuple[str, str], Series] = {}
    for metric, labels, le, n, total in rows:
        one = series.get((metric, labels))
        if one is None:
            one = series[(metric, labels)] = Series(json.loads(labels))
        if le == COUNT_ROW:
            one.count, one.total = int(n or 0), float(total or 0)
        else:
            one.buckets[le] = int(n or 0)
    found: dict[str, list[Series]] = {name: [] for name in names}
    for (metric, _labels), one in sorted(series.items()):
        found[metric].append(one)
    return found


# --- over time ---------------------------------------------------------------------------------


def timeline(
    *, since: datetime.datetime, slot: str, agent_ids: AgentIds = None, tokens: Metric
) -> dict[datetime.datetime, dict[str, float]]:
    """Per hour (``slot`` "hour") or day ("day") since ``since``: replies, finished firings
    (done, failed) and AI tokens (input and output)."""
    trunc = TruncHour if slot == "hour" else TruncDay
    slots: dict[datetime.datetime, dict[str, float]] = defaultdict(
        lambda: {"replies": 0, "firings_done": 0, "firings_failed": 0, "tokens": 0}
    )
    replies = _since(_scoped(_replies(), agent_ids, "conversation__agent_id"), since, "created_at")
    for at, n in replies.annotate(at=trunc("created_at")).values_list("at").annotate(n=Count("id")).order_by():
        slots[at]["replies"] += n
    firings = _since(_scoped(TriggerFiring.objects.filter(status__in=FIRING_OUTCOMES), agent_ids), since)
    for at, status, n in (
        firings.annotate(at=trunc("finished_at")).values_list("at", "status").annotate(n=Count("id")).order_by()
    ):
        slots[at][f"firings_{status}"] += n
    buckets = _since(_scoped(MetricBucket.objects.filter(metric=tokens.name, le=COUNT_ROW), agent_ids), since, "hour")
    for hour, total in buckets.values_list("hour").annotate(t=Sum("total")).order_by():
        at = hour if slot == "hour" else hour.replace(hour=0)
        slots[at]["tokens"] += total or 0
    return slots
