"""Writes to the metric store besides the recorder's increments: retention."""

from __future__ import annotations

import datetime
from collections import defaultdict

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import MetricBucket
from .recorder import EPOCH, write

COMPACT_BATCH = 2000


def metric_buckets_compact(*, now: datetime.datetime | None = None) -> int:
    """Fold the hourly buckets older than METRICS_RETENTION_DAYS into one all-time row per
    series (the hour 1970-01-01): the monitoring page's windows lose nothing they show,
    and /metrics's counters never go down. Returns the number of rows folded.

    Safe to run in several processes at once: each batch is locked, read, deleted and
    added in one transaction, so a row is folded once (PostgreSQL: a second compactor
    waits on the locked rows and then finds them gone; SQLite: one writer at a time)."""
    now = now or timezone.now()
    cutoff = now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(days=settings.METRICS_RETENTION_DAYS)
    folded = 0
    while True:
        with transaction.atomic():
            rows = list(
                MetricBucket.objects.select_for_update()
                .filter(hour__lt=cutoff, hour__gt=EPOCH)
                .order_by("pk")
                .values_list("pk", "metric", "labels", "agent_id", "le", "count", "total")[:COMPACT_BATCH]
            )
            if not rows:
                return folded
            totals: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0])
            for _pk, metric, labels, agent_id, le, count, total in rows:
                entry = totals[(metric, labels, agent_id, EPOCH, le)]
                entry[0] += count
                entry[1] += total
            MetricBucket.objects.filter(pk__in=[row[0] for row in rows]).delete()
            write(totals)
        folded += len(rows)
