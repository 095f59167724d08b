"""django-q2 tasks of the metric store."""

from __future__ import annotations

from .services import metric_buckets_compact


def compact_metrics() -> int:
    """Hourly (a schedule): fold metric buckets past their retention into totals."""
    return metric_buckets_compact()
