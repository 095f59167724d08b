from __future__ import annotations

from django.db import models


class MetricBucket(models.Model):
    """One metric's counts for one label set and one UTC hour, added to by every process
    (observability/recorder.py). A histogram has a row per bucket (``le``, the bucket's
    upper bound, counting the observations that fell in it and no lower one) besides its
    count-and-sum row (``le`` empty); a counter has only the latter, ``total`` its value.
    Rows older than METRICS_RETENTION_DAYS are folded into one row per series at the hour
    1970-01-01 00:00, so all-time totals never go down."""

    metric = models.CharField(max_length=80)
    labels = models.CharField(max_length=500, help_text="The label set as JSON with sorted keys.")
    agent_id = models.BigIntegerField(
        null=True, blank=True, help_text="The ``agent`` label, when there is one: whose owner may see the row."
    )
    hour = models.DateTimeField()
    le = models.CharField(max_length=24, blank=True)
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["metric", "labels", "hour", "le"], name="metric_bucket_once"),
        ]
        indexes = [
            models.Index(fields=["hour"], name="metric_bucket_hour"),
            models.Index(fields=["agent_id", "hour"], name="metric_bucket_agent_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} {self.labels} {self.hour:%Y-%m-%d %H}:00 {self.le}".rstrip()
