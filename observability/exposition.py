"""The Prometheus text exposition of /metrics: a collector that reads the database at each
(uncached) scrape, rendered by prometheus_client.

Every process's counts meet in the database, so whichever web process answers a scrape
shows the same numbers: nothing is kept in a process's own registry. Counters are
all-time totals: the rows the product keeps, and the recorded buckets with those past
retention folded in (observability/services.py), so they do not go down. Exceptions:
a sequence run that failed and is retried later leaves the "failed" count, and deleting
an agent deletes its rows (Prometheus takes a decrease for a reset).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agents.models import Agent

from . import selectors
from .metrics import PREFIX, RECORDED
from .metrics import Metric as Recorded
from .selectors import Histogram


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._agents()
        yield from self._integrations()
        yield self._reply_times()
        yield from self._triggers()
        yield from self._sequences()
        for metric, series in selectors.recorded(RECORDED).items():
            yield _recorded_family(next(m for m in RECORDED if m.name == metric), series)

    def _agents(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(PREFIX + "agents_active", "Agents switched on.", value=selectors.agents_active())
        info = GaugeMetricFamily(
            PREFIX + "agent_info", "Each agent's name and owner (1), to label the agent ids of other metrics.",
            labels=("agent", "name", "owner", "active"),
        )  # fmt: skip
        for agent_id, name, owner_id, active in Agent.objects.order_by("id").values_list(
            "id", "name", "owner_id", "active"
        ):
            info.add_metric([str(agent_id), name, str(owner_id), str(active).lower()], 1)
        yield info

    def _integrations(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            PREFIX + "integrations",
            "Switched-on integrations by type and health (new, connected, needs_reconnect, failing).",
            labels=("integration_type", "status"),
        )
        for (kind, status), n in sorted(selectors.integrations_by_status().items()):
            family.add_metric([kind, status], n)
        yield family

    def _reply_times(self) -> Metric:
        family = HistogramMetricFamily(
            PREFIX + "reply_duration_seconds",
            "Seconds from a lead's message arriving to the agent's reply being sent, by agent.",
            labels=("agent",),
        )
        for agent_id, histogram in sorted(selectors.reply_times().items()):
            family.add_metric([str(agent_id)], _buckets(histogram), histogram.sum)
        return family

    def _triggers(self) -> Iterator[Metric]:
        firings = CounterMetricFamily(
            PREFIX + "trigger_firings",
            "Finished trigger firings by agent and outcome (done, failed).",
            labels=("agent", "status"),
        )
        for (agent_id, status), n in sorted(selectors.trigger_firings().items()):
            firings.add_metric([str(agent_id), status], n)
        yield firings
        actions = CounterMetricFamily(
            PREFIX + "trigger_actions",
            "Finished actions of trigger firings by agent, action type and outcome (done, failed).",
            labels=("agent", "type", "status"),
        )
        for (agent_id, kind, status), n in sorted(selectors.trigger_actions().items()):
            actions.add_metric([str(agent_id), kind, status], n)
        yield actions

    def _sequences(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            PREFIX + "sequence_runs",
            "Ended sequence runs by agent and outcome (done, failed, exited, cancelled).",
            labels=("agent", "status"),
        )
        for (agent_id, status), n in sorted(selectors.sequence_runs().items()):
            runs.add_metric([str(agent_id), status], n)
        yield runs
        steps = CounterMetricFamily(
            PREFIX + "sequence_steps",
            "Finished sequence steps by agent, step type and outcome (done, failed).",
            labels=("agent", "type", "status"),
        )
        for (agent_id, kind, status), n in sorted(selectors.sequence_steps().items()):
            steps.add_metric([str(agent_id), kind, status], n)
        yield steps


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        *((floatToGoString(bound), n) for bound, n in zip(histogram.bounds, histogram.cumulative, strict=True)),
        ("+Inf", histogram.count),
    ]


def _recorded_family(metric: Recorded, series: list[selectors.Series]) -> Metric:
    name = PREFIX + metric.name
    if metric.kind == "histogram":
        family = HistogramMetricFamily(name, metric.help, labels=metric.labels)
        for one in series:
            histogram = one.histogram(metric.buckets)
            family.add_metric([one.labels.get(label, "") for label in metric.labels], _buckets(histogram), one.total)
        return family
    family = CounterMetricFamily(name, metric.help, labels=metric.labels)
    for one in series:
        family.add_metric([one.labels.get(label, "") for label in metric.labels], one.total)
    return family


def render() -> bytes:
    """The text exposition of every metric, read from the database now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry)
