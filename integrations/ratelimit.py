"""Request spacing shared by every process that talks to one outside account.

``acquire(key, per_second)`` reserves the next free slot for ``key`` and sleeps until it:
requests are spread ``1/per_second`` apart however many processes send them. The slot
lives in Redis when ``REDIS_URL`` is set (one atomic script, on the Redis server's
clock), otherwise in the database (``RateSlot``, one locked row per key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError, transaction

from .errors import RateLimited

logger = logging.getLogger(__name__)

# Kommo counts requests per calendar second; a hair over 1/rate keeps 8 requests from
# landing in one second when the spacing and the second boundary line up.
MARGIN = 1.02

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_at)
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.ceil(interval * 1000) + 60000)
return tostring(slot - now)
"""


@lru_cache(maxsize=1)
def _redis_script():
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    return client.register_script(_RESERVE)


def _reserve_redis(key: str, interval: float) -> float:
    return float(_redis_script()(keys=[f"ratelimit:{key}"], args=[interval]))


def _reserve_database(key: str, interval: float) -> float:
    from .models import RateSlot

    for _ in range(3):
        try:
            with transaction.atomic():
                slot_row = RateSlot.objects.select_for_update().filter(key=key).first()
                if slot_row is None:
                    slot_row = RateSlot.objects.create(key=key)
                now = time.time()
                slot = max(now, slot_row.next_at)
                RateSlot.objects.filter(pk=slot_row.pk).update(next_at=slot + interval)
                return slot - now
        except IntegrityError:  # two processes created the row at once; the other won
            continue
    raise RuntimeError(f"could not reserve a request slot for {key}")


def reserve(key: str, per_second: float) -> float:
    """Reserve the next slot; return how many seconds to wait for it."""
    interval = MARGIN / per_second
    if settings.REDIS_URL:
        return _reserve_redis(key, interval)
    return _reserve_database(key, interval)


def acquire(
    key: str, per_second: float, *, max_wait: float | None = None, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Block until ``key`` may send one request. A queue longer than ``max_wait`` seconds
    raises RateLimited (the slot is still spent, so callers do not pile up further)."""
    wait = reserve(key, per_second)
    if max_wait is not None and wait > max_wait:
        raise RateLimited(f"{key}: the request queue is {wait:.1f}s long", retry_after=wait)
    if wait > 0:
        sleep(wait)
