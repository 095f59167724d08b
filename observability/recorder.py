"""Metric counts kept in memory by each process and added to the database in batches.

Web servers, django-q2's worker processes and other machines all count the same
metrics, so the counts live in the database (``MetricBucket``: one row per metric,
label set, UTC hour and histogram bucket). Writing a row per request would put a
statement on every hot path; instead each process adds to a dictionary here, and a
daemon thread writes what has gathered every METRICS_FLUSH_SECONDS, in one transaction
of ``INSERT … ON CONFLICT DO UPDATE SET count = count + excluded.count`` statements
(SQLite and PostgreSQL alike): increments from any number of processes add up, whatever
the interleaving. What is left is written when the process exits (atexit, and
multiprocessing's finalizers for django-q2's forked workers, which end with os._exit).

A process killed outright (SIGKILL, a worker timing out) loses at most the last
METRICS_FLUSH_SECONDS of its counts. A forked child starts with an empty buffer: the
parent's counts are the parent's to write.
"""

from __future__ import annotations

import atexit
import bisect
import datetime
import json
import logging
import multiprocessing.util
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from django.conf import settings
from django.db import close_old_connections, connection, transaction

logger = logging.getLogger(__name__)

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)  # the hour of folded totals (retention)
INF = "+Inf"
COUNT_ROW = ""  # the ``le`` of a series' count-and-sum row
WRITE_BATCH = 500  # rows a statement: 7 parameters each, far below SQLite's and PostgreSQL's limits

# (metric, labels as canonical JSON, agent id, hour, le) → [count, total]
Key = tuple[str, str, int | None, datetime.datetime, str]


def bound_text(bound: float) -> str:
    """A histogram bucket's upper bound as stored in ``MetricBucket.le``."""
    return INF if bound == float("inf") else repr(float(bound))


def hour_of(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(timestamp // 3600) * 3600, tz=datetime.UTC)


class Recorder:
    """One process's pending counts. Thread-safe; ``flush`` may run in any thread."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Key, list[float]] = {}
        self._flusher: threading.Thread | None = None

    # --- recording ---------------------------------------------------------------------------

    def count(self, metric: str, labels: Mapping[str, str], value: float = 1, *, at: float | None = None) -> None:
        self._add(self._series(metric, labels, at), ((COUNT_ROW, value),))

    def observe(
        self,
        metric: str,
        labels: Mapping[str, str],
        value: float,
        buckets: Sequence[float],
        *,
        at: float | None = None,
    ) -> None:
        index = bisect.bisect_left(buckets, value)
        le = bound_text(buckets[index]) if index < len(buckets) else INF
        self._add(self._series(metric, labels, at), ((COUNT_ROW, value), (le, 0)))

    @staticmethod
    def _series(metric: str, labels: Mapping[str, str], at: float | None) -> tuple:
        agent = labels.get("agent")
        return (
            metric,
            json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            int(agent) if agent else None,
            hour_of(time.time() if at is None else at),
        )

    def _add(self, series: tuple, rows: Iterable[tuple[str, float]]) -> None:
        """One event: each (le, value) row of the series counted once, ``value`` added."""
        with self._lock:
            for le, value in rows:
                key = (*series, le)
                entry = self._pending.get(key)
                if entry is None:
                    self._pending[key] = [1, value]
                else:
                    entry[0] += 1
                    entry[1] += value
            start = self._flusher is None
            if start:
                self._flusher = _NO_FLUSHER
        if start:
            self._start_flushing()

    def pending(self) -> dict[Key, list[float]]:
        with self._lock:
            return {key: list(value) for key, value in self._pending.items()}

    def discard(self) -> None:
        """Forget what is pending (tests)."""
        with self._lock:
            self._pending = {}

    # --- writing -------------------------------------------------------------------------------

    def flush(self) -> int:
        """Add the pending counts to the database; the number of rows written. On failure
        the counts are kept for the next flush and the error is raised."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            write(pending)
        except BaseException:
            with self._lock:
                for key, (n, total) in pending.items():
                    entry = self._pending.setdefault(key, [0, 0.0])
                    entry[0] += n
                    entry[1] += total
            raise
        return len(pending)

    def flush_quietly(self) -> None:
        """A flush from the background thread or at exit: a failure is logged, not raised,
        and the thread's database connection is handled the way Django handles a
        request's (closed when broken or past its age; returned to the pool)."""
        try:
            close_old_connections()
            self.flush()
        except Exception:
            logger.exception("metrics.flush_failed", extra={"pending": len(self._pending)})
            try:
                connection.close()
            except Exception:
                pass
        finally:
            try:
                close_old_connections()
            except Exception:
                pass

    # --- the background thread ---------------------------------------------------------

    def _start_flushing(self) -> None:
        interval = float(getattr(settings, "METRICS_FLUSH_SECONDS", 0) or 0)
        if interval <= 0:
            return  # only explicit flushes (tests)
        thread = threading.Thread(target=self._run, args=(interval,), name="metrics-flush", daemon=True)
        with self._lock:
            self._flusher = thread
        thread.start()
        atexit.register(self.flush_quietly)
        # django-q2's workers are forked multiprocessing children, which leave through
        # os._exit: atexit does not run there, multiprocessing's finalizers do
        multiprocessing.util.Finalize(None, self.flush_quietly, exitpriority=10)

    def _run(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            if self._pending:
                self.flush_quietly()

    def _after_fork_in_child(self) -> None:
        # the parent's thread does not exist here, its lock may have been held at the
        # fork, and its counts are the parent's to write
        self._reset()


_NO_FLUSHER = threading.Thread()  # marks "starting" (or "not flushing": METRICS_FLUSH_SECONDS=0)

default = Recorder()
os.register_at_fork(after_in_child=default._after_fork_in_child)


def write(pending: Mapping[Key, Sequence[float]]) -> None:
    """Add counts to their buckets: one transaction, rows in a fixed order (two processes
    writing the same rows cannot deadlock), existing rows incremented in the statement."""
    rows = sorted(
        (metric, labels, agent, hour, le, int(n), float(total))
        for (metric, labels, agent, hour, le), (n, total) in pending.items()
    )
    with transaction.atomic():
        for start in range(0, len(rows), WRITE_BATCH):
            _upsert(rows[start : start + WRITE_BATCH])


def _upsert(rows: Iterable[tuple]) -> None:
    from .models import MetricBucket

    qn = connection.ops.quote_name
    table = qn(MetricBucket._meta.db_table)
    columns = ("metric", "labels", "agent_id", "hour", "le", "count", "total")
    count, total = qn("count"), qn("total")
    params: list = []
    values: list[str] = []
    for metric, labels, agent, hour, le, n, value in rows:
        params += [metric, labels, agent, connection.ops.adapt_datetimefield_value(hour), le, n, value]
        values.append("(%s, %s, %s, %s, %s, %s, %s)")
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) VALUES {', '.join(values)} "
        f"ON CONFLICT ({', '.join(qn(c) for c in ('metric', 'labels', 'hour', 'le'))}) DO UPDATE SET "
        f"{count} = {table}.{count} + excluded.{count}, {total} = {table}.{total} + excluded.{total}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
