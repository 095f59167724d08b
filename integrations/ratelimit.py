"""Request spacing shared by every process that talks to one outside account.

``acquire(key, per_second)`` reserves the next free slot for ``key`` and sleeps until it:
requests are spread ``1/per_second`` apart however many processes send them. The slot
lives in Redis when ``REDIS_URL`` is set (one atomic script, on the Redis server's
clock), otherwise in the database (``RateSlot``, one row per key, moved by one atomic
upsert statement: on PostgreSQL on the server's clock, on SQLite on this machine's).

Inside an open transaction (``transaction.atomic``) the database variant must not write
through the caller's connection on PostgreSQL: the row would stay locked until the
caller commits, so every other process sending to the same account would wait for the
caller's whole transaction, and a rollback would forget a request that was really sent.
There the slot is taken on a short-lived connection of its own (a few milliseconds to
open), which commits at once. SQLite has one writer at a time: inside a transaction
(begun IMMEDIATE) this process already holds the write lock, so a second connection
could only wait for it; the slot is taken through the caller's connection and is
forgotten if the caller rolls back (one request may then follow another sooner than the
spacing). Calling an outside service inside a transaction holds that transaction open
for the call's length in any case; services make their calls outside transactions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from .errors import RateLimited, TransientError

logger = logging.getLogger(__name__)

# A hair over 1/rate: requests leave a little later than their slot (sleep overshoot,
# thread scheduling, connection set-up), and an early slot after a late one must not
# put rate + 1 requests into one second. 5 % also absorbs some network jitter on the way
# to the CRM, for about 95 % of the allowance (the burst benchmark measures it).
MARGIN = 1.05
# A key outlives its last reserved slot by this much, so a quiet account's key expires.
REDIS_KEY_TTL_SECONDS = 60

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_at)
local ttl_ms = math.ceil((slot + interval - now) * 1000) + tonumber(ARGV[2]) * 1000
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', ttl_ms)
return {string.format('%.6f', slot), string.format('%.6f', now)}
"""


@dataclass(frozen=True)
class Reservation:
    """A reserved slot, on the store's clock (Unix time): Redis's or PostgreSQL's, or this
    machine's for SQLite."""

    slot: float  # when the request may leave
    now: float  # when the slot was reserved

    @property
    def wait(self) -> float:
        return max(self.slot - self.now, 0.0)


@functools.lru_cache(maxsize=4)
def _redis_script(url: str):
    import redis

    return redis.Redis.from_url(url).register_script(_RESERVE)


def _reserve_redis(key: str, interval: float) -> Reservation:
    import redis

    try:
        script = _redis_script(settings.REDIS_URL)
        slot, now = script(keys=[f"ratelimit:{key}"], args=[interval, REDIS_KEY_TTL_SECONDS])
        return Reservation(slot=float(slot), now=float(now))
    except redis.RedisError as exc:
        # never str(exc): a connection error can quote the URL, password included
        raise TransientError(f"rate limiter for {key}: Redis is unavailable ({type(exc).__name__})") from None


_POSTGRESQL = """
WITH clock AS (SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now)
INSERT INTO {table} ({key}, {next_at})
SELECT %s, clock.now + %s FROM clock
ON CONFLICT ({key}) DO UPDATE SET {next_at} = GREATEST({table}.{next_at} + %s, EXCLUDED.{next_at})
RETURNING {next_at}, (SELECT now FROM clock)
"""

_SQLITE = """
INSERT INTO {table} ({key}, {next_at}) VALUES (%s, %s)
ON CONFLICT ({key}) DO UPDATE SET {next_at} = MAX({table}.{next_at} + %s, excluded.{next_at})
RETURNING {next_at}
"""


def _statement(template: str, connection) -> str:
    from .models import RateSlot

    quote = connection.ops.quote_name
    return template.format(
        table=quote(RateSlot._meta.db_table),
        key=quote(RateSlot._meta.get_field("key").column),
        next_at=quote(RateSlot._meta.get_field("next_at").column),
    )


def _upsert(connection, key: str, interval: float) -> Reservation:
    """One statement: the slot is max(now, the key's next slot); the key's next slot
    moves one interval past it. Concurrent callers queue on the row, each sees the
    value the previous one wrote."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_statement(_POSTGRESQL, connection), [key, interval, interval])
            next_at, now = cursor.fetchall()[0]
        elif connection.vendor == "sqlite":
            now = time.time()  # one file, one machine: every process reads the same clock
            cursor.execute(_statement(_SQLITE, connection), [key, now + interval, interval])
            # fetchall: SQLite commits an autocommit INSERT … RETURNING when it is read to the end
            (next_at,) = cursor.fetchall()[0]
        else:
            raise NotImplementedError(f"no rate limiter for {connection.vendor}; set REDIS_URL")
    return Reservation(slot=float(next_at) - interval, now=float(now))


def _own_connection(connection):
    """A new connection to the same database, in autocommit, not shared with anyone."""
    settings_dict = dict(connection.settings_dict)
    options = dict(settings_dict.get("OPTIONS") or {})
    options.pop("pool", None)  # a plain connection: it is closed right after one statement
    settings_dict["OPTIONS"] = options
    settings_dict["CONN_MAX_AGE"] = 0
    return type(connection)(settings_dict, alias=f"{connection.alias}:ratelimit")


def _reserve_database(key: str, interval: float) -> Reservation:
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.in_atomic_block and connection.vendor != "sqlite":
        own = _own_connection(connection)
        try:
            return _upsert(own, key, interval)
        finally:
            own.close()
    return _upsert(connection, key, interval)  # autocommit, or SQLite's one writer


def reserve_slot(key: str, per_second: float) -> Reservation:
    """Reserve the next slot of ``key``."""
    if per_second <= 0:
        raise ValueError(f"per_second must be positive, not {per_second}")
    interval = MARGIN / per_second
    if settings.REDIS_URL:
        return _reserve_redis(key, interval)
    return _reserve_database(key, interval)


def reserve(key: str, per_second: float) -> float:
    """Reserve the next slot; return how many seconds to wait for it."""
    return reserve_slot(key, per_second).wait


def acquire(
    key: str, per_second: float, *, max_wait: float | None = None, sleep: Callable[[float], None] = time.sleep
) -> Reservation:
    """Block until ``key`` may send one request. A queue longer than ``max_wait`` seconds
    raises RateLimited (the slot is still spent, so callers do not pile up further)."""
    reservation = reserve_slot(key, per_second)
    wait = reservation.wait
    if max_wait is not None and wait > max_wait:
        logger.warning("ratelimit.queue_too_long", extra={"key": key, "wait": round(wait, 1)})
        raise RateLimited(f"{key}: the request queue is {wait:.1f}s long", retry_after=wait)
    if wait > 0:
        sleep(wait)
    return reservation


def limiter(key: str, per_second: float, *, max_wait: float | None = None) -> Callable[[], Reservation]:
    """``acquire`` for one key, ready to give a client (``KommoClient(acquire=...)``)."""
    return functools.partial(acquire, key, per_second, max_wait=max_wait)
