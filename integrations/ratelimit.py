"""Request rate limits shared by every process that talks to one outside account.

``acquire(key, per_second)`` reserves a slot for ``key`` and sleeps until it. The limit
is a sliding window: at most ``count`` requests in any ``window`` seconds, where
``count`` is ``per_second`` (capped at MAX_BURST) and ``window`` is ``count /
per_second`` stretched by MARGIN. For Kommo's 7 requests a second that is any 7 in any
1.05 s: an idle account sends a burst of 7 at once, a busy one averages 6.67 a second,
and no second ever holds an 8th, which is all the CRM counts. A limit of one a second
(a Telegram chat) is plain spacing. Above MAX_BURST a second may hold up to
``per_second + MAX_BURST`` (only test settings go that high).

The last ``count`` slots of a key are kept in Redis when ``REDIS_URL`` is set (one
atomic script on the Redis server's clock), otherwise in the database (``RateSlot``,
one row per key, read with its row locked and rewritten in one short transaction: on
PostgreSQL on the server's clock, on SQLite on this machine's).

Inside an open transaction (``transaction.atomic``) the database variant must not write
through the caller's connection on PostgreSQL: the row would stay locked until the
caller commits, so every other process sending to the same account would wait for the
caller's whole transaction, and a rollback would forget a request that was really sent.
There the slot is taken on a short-lived connection of its own (a few milliseconds to
open), which commits at once. SQLite has one writer at a time: inside a transaction
(begun IMMEDIATE) this process already holds the write lock, so a second connection
could only wait for it; the slot is taken through the caller's connection and is
forgotten if the caller rolls back (one request may then follow another sooner than the
limit). Calling an outside service inside a transaction holds that transaction open for
the call's length in any case; services make their calls outside transactions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from .errors import RateLimited, TransientError

logger = logging.getLogger(__name__)

# The window is stretched by 5 %: requests leave a little later than their slot (sleep
# overshoot, thread scheduling, connection set-up) and reach the CRM with some network
# jitter, and a request that left late must not share the CRM's second with the next
# burst. The burst benchmark measures what it costs (about 5 % of the allowance).
MARGIN = 1.05
# The most slots kept per key: a limit above it is enforced over a shorter window.
MAX_BURST = 32
# A key outlives its last reserved slot by this much, so a quiet account's key expires.
REDIS_KEY_TTL_SECONDS = 60


def window_of(per_second: float) -> tuple[int, float]:
    """(count, seconds): at most ``count`` requests in any ``seconds``."""
    if per_second <= 0:
        raise ValueError(f"per_second must be positive, not {per_second}")
    count = max(1, min(int(per_second), MAX_BURST))
    return count, MARGIN * count / per_second


def next_slot(recent: list[float], now: float, count: int, window: float) -> float:
    """The earliest slot at or after ``now`` that keeps ``count`` in any ``window``, given
    the key's earlier slots (oldest first). Slots never go back in time, so the
    ``count``-th newest is the one the window starts from."""
    slot = now
    if len(recent) >= count:
        slot = max(slot, recent[-count] + window)
    if recent:
        slot = max(slot, recent[-1])
    return slot


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local count = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local slot = now
local newest = redis.call('LINDEX', KEYS[1], 0)
if newest then slot = math.max(slot, tonumber(newest)) end
if redis.call('LLEN', KEYS[1]) >= count then
  slot = math.max(slot, tonumber(redis.call('LINDEX', KEYS[1], count - 1)) + window)
end
redis.call('LPUSH', KEYS[1], string.format('%.6f', slot))
redis.call('LTRIM', KEYS[1], 0, count - 1)
redis.call('PEXPIRE', KEYS[1], math.ceil((slot + window - now + tonumber(ARGV[3])) * 1000))
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


def _reserve_redis(key: str, count: int, window: float) -> Reservation:
    import redis

    try:
        script = _redis_script(settings.REDIS_URL)
        slot, now = script(keys=[f"ratelimit:{key}"], args=[count, window, REDIS_KEY_TTL_SECONDS])
        return Reservation(slot=float(slot), now=float(now))
    except redis.RedisError as exc:
        # never str(exc): a connection error can quote the URL, password included
        raise TransientError(f"rate limiter for {key}: Redis is unavailable ({type(exc).__name__})") from None


def _statements(connection) -> dict[str, str]:
    from .models import RateSlot

    quote = connection.ops.quote_name
    names = {
        "table": quote(RateSlot._meta.db_table),
        "key": quote(RateSlot._meta.get_field("key").column),
        "slots": quote(RateSlot._meta.get_field("slots").column),
    }
    if connection.vendor == "postgresql":
        # the clock is read with the row: if the lock was waited for, ``now`` is a little
        # early, which can only make the caller wait longer, never send sooner
        select = (
            "SELECT {slots}, EXTRACT(EPOCH FROM clock_timestamp())::float8 FROM {table} WHERE {key} = %s FOR UPDATE"
        )
    elif connection.vendor == "sqlite":
        select = "SELECT {slots} FROM {table} WHERE {key} = %s"  # the transaction holds the write lock
    else:
        raise NotImplementedError(f"no rate limiter for {connection.vendor}; set REDIS_URL")
    return {
        "select": select.format(**names),
        "insert": "INSERT INTO {table} ({key}, {slots}) VALUES (%s, '') ON CONFLICT ({key}) DO NOTHING".format(**names),
        "update": "UPDATE {table} SET {slots} = %s WHERE {key} = %s".format(**names),
        "swap": "UPDATE {table} SET {slots} = %s WHERE {key} = %s AND {slots} = %s".format(**names),
    }


def _reserve_row(connection, key: str, count: int, window: float) -> Reservation:
    """Inside a transaction of ``connection``: lock the key's row, add a slot, write it back."""
    sql = _statements(connection)
    with connection.cursor() as cursor:
        cursor.execute(sql["select"], [key])
        row = cursor.fetchone()
        if row is None:
            cursor.execute(sql["insert"], [key])
            cursor.execute(sql["select"], [key])
            row = cursor.fetchone()
        now = float(row[1]) if connection.vendor == "postgresql" else time.time()
        recent = [float(value) for value in (row[0] or "").split()]
        slot = next_slot(recent, now, count, window)
        kept = [*recent[-(count - 1) :], slot] if count > 1 else [slot]
        cursor.execute(sql["update"], [" ".join(f"{value:.6f}" for value in kept), key])
    return Reservation(slot=slot, now=now)


SWAP_TRIES = 20


def _reserve_swap(connection, key: str, count: int, window: float) -> Reservation | None:
    """SQLite, outside a transaction: read the slots, then write them back only if no one
    changed them meanwhile (compare and swap), again if someone did. The write lock is
    held for that one statement, not across Python work as a transaction would hold it:
    with one writer at a time, that is what the other workers wait for. None after
    SWAP_TRIES lost races (the caller takes the lock instead)."""
    sql = _statements(connection)
    with connection.cursor() as cursor:
        for _ in range(SWAP_TRIES):
            cursor.execute(sql["select"], [key])
            row = cursor.fetchone()
            if row is None:
                cursor.execute(sql["insert"], [key])
                continue
            now = time.time()
            old = row[0] or ""
            recent = [float(value) for value in old.split()]
            slot = next_slot(recent, now, count, window)
            kept = [*recent[-(count - 1) :], slot] if count > 1 else [slot]
            cursor.execute(sql["swap"], [" ".join(f"{value:.6f}" for value in kept), key, old])
            if cursor.rowcount == 1:
                return Reservation(slot=slot, now=now)
    return None


def _own_connection(connection):
    """A new connection to the same database, not shared with anyone."""
    settings_dict = dict(connection.settings_dict)
    options = dict(settings_dict.get("OPTIONS") or {})
    options.pop("pool", None)  # a plain connection: it is closed right after one reservation
    settings_dict["OPTIONS"] = options
    settings_dict["CONN_MAX_AGE"] = 0
    return type(connection)(settings_dict, alias=f"{connection.alias}:ratelimit")


def _reserve_database(key: str, count: int, window: float) -> Reservation:
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.in_atomic_block:
        if connection.vendor == "sqlite":
            return _reserve_row(connection, key, count, window)  # SQLite's one writer: the caller's
        own = _own_connection(connection)
        try:
            own.set_autocommit(False)
            reservation = _reserve_row(own, key, count, window)
            own.commit()
            return reservation
        finally:
            own.close()
    if connection.vendor == "sqlite":
        reservation = _reserve_swap(connection, key, count, window)
        if reservation is not None:
            return reservation
    with transaction.atomic(using=connection.alias):
        return _reserve_row(connection, key, count, window)


def reserve_slot(key: str, per_second: float) -> Reservation:
    """Reserve the next slot of ``key``."""
    count, window = window_of(per_second)
    if settings.REDIS_URL:
        return _reserve_redis(key, count, window)
    return _reserve_database(key, count, window)


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
