"""Request rate limits shared across threads and processes (integrations/ratelimit.py):
at most ``count`` requests in any ``window``.

Every test runs on the database variant, and on the Redis one when REDIS_URL is set (CI's
second pass). The limit is checked on the store's own clock (the reserved slots), which no
scheduling delay can blur; only the two-process test also looks at real send times, with
generous bounds. No speed is asserted.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import uuid

import pytest
from django.db import connection, transaction

from integrations import ratelimit
from integrations.errors import RateLimited, TransientError
from tests.live_server import ROOT, process_env

NO_REDIS = "REDIS_URL is not set: the Redis variant runs when it is (CI's second pass sets it)"
EXACT = 1e-4  # slots are stored to the microsecond


def new_key() -> str:
    return f"test:{uuid.uuid4().hex}"


def window(per_second: float) -> float:
    return ratelimit.window_of(per_second)[1]


def tightest(slots: list[float], count: int) -> float:
    """The shortest time that holds count + 1 of the slots: never under the window."""
    ordered = sorted(slots)
    return min(b - a for a, b in zip(ordered, ordered[count:], strict=False))


def use_backend(name: str, settings) -> None:
    if name == "database":
        settings.REDIS_URL = ""
    elif not settings.REDIS_URL:
        pytest.skip(NO_REDIS)


@pytest.fixture(params=["database", "redis"])
def backend(request, settings, db) -> str:
    """The limiter's store; the test's own transaction (django_db) wraps every call."""
    use_backend(request.param, settings)
    return request.param


@pytest.fixture(params=["database", "redis"])
def shared_backend(request, settings, transactional_db) -> str:
    """The limiter's store, with committed tables: for other threads and processes."""
    use_backend(request.param, settings)
    return request.param


@pytest.fixture(autouse=True)
def _fresh_redis_clients():
    ratelimit._redis_script.cache_clear()
    yield
    ratelimit._redis_script.cache_clear()


# --- One process ---------------------------------------------------------------------------


def test_an_idle_key_sends_a_burst_then_one_burst_per_window(backend):
    key = new_key()

    slots = [ratelimit.reserve_slot(key, 7).slot for _ in range(15)]

    first = slots[0]
    # the first seven at once (each at the moment it was asked for), then each one window
    # after the slot seven before it
    assert [round((slot - first) / window(7)) for slot in slots] == [0] * 7 + [1] * 7 + [2]
    assert slots[6] - first < window(7) / 2
    assert [b - a for a, b in zip(slots, slots[7:], strict=False)] == pytest.approx([window(7)] * 8, abs=EXACT)
    assert tightest(slots, 7) >= window(7) - EXACT


def test_kommo_s_limit_is_seven_in_any_second_with_a_margin():
    assert ratelimit.window_of(7) == (7, pytest.approx(1.05))
    assert ratelimit.window_of(1) == (1, pytest.approx(1.05))  # one a second: plain spacing
    assert ratelimit.window_of(0.5) == (1, pytest.approx(2.1))
    assert ratelimit.window_of(1000) == (ratelimit.MAX_BURST, pytest.approx(1.05 * ratelimit.MAX_BURST / 1000))


def test_no_window_ever_holds_more_than_its_count_whatever_the_arrivals():
    generator = random.Random(7)
    for count, span in [(1, 1.0), (3, 0.5), (7, 1.05)]:
        now, slots = 0.0, []
        for _ in range(500):
            now += generator.choice([0.0, 0.0, 0.01, 0.2, 1.5])
            slot = ratelimit.next_slot(slots[-count:], now, count, span)
            assert slot >= now
            slots.append(slot)
        assert slots == sorted(slots)
        assert tightest(slots, count) >= span - 1e-9


def test_acquire_sleeps_until_its_slot(backend):
    key, slept = new_key(), []

    taken = [ratelimit.acquire(key, 2, sleep=slept.append) for _ in range(6)]

    # the first two are free; with no real sleeping each pair queues one window further
    assert [reservation.wait for reservation in taken[:2]] == pytest.approx([0, 0], abs=EXACT)
    assert slept == [reservation.wait for reservation in taken[2:]]
    assert slept == pytest.approx([window(2), window(2), 2 * window(2), 2 * window(2)], abs=0.2)


def test_keys_have_their_own_slots(backend):
    first, second = new_key(), new_key()

    before = ratelimit.reserve_slot(first, 1)
    assert ratelimit.reserve(second, 1) == pytest.approx(0, abs=EXACT)
    after = ratelimit.reserve_slot(first, 1)

    assert after.slot - before.slot == pytest.approx(window(1), abs=EXACT)


def test_a_queue_longer_than_max_wait_raises_rate_limited(backend):
    key, slept = new_key(), []
    first = ratelimit.reserve_slot(key, 1)
    ratelimit.reserve(key, 1)
    ratelimit.reserve(key, 1)

    with pytest.raises(RateLimited) as caught:
        ratelimit.acquire(key, 1, max_wait=2, sleep=slept.append)

    assert caught.value.retry_after == pytest.approx(3 * window(1), abs=0.5)
    assert slept == []
    # the refused slot stays spent, so that waiting callers do not pile up further
    assert ratelimit.reserve_slot(key, 1).slot - first.slot == pytest.approx(4 * window(1), abs=EXACT)


def test_a_slot_can_be_taken_inside_a_transaction(shared_backend):
    key = new_key()

    with transaction.atomic():
        first = ratelimit.reserve_slot(key, 1)
        second = ratelimit.reserve_slot(key, 1)

    assert first.wait == pytest.approx(0, abs=EXACT)
    assert second.slot - first.slot == pytest.approx(window(1), abs=EXACT)


def test_per_second_must_be_positive():
    with pytest.raises(ValueError):
        ratelimit.reserve(new_key(), 0)


# --- Transactions on PostgreSQL ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_slot_taken_inside_a_transaction_does_not_hold_up_other_callers(settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: inside a transaction every other writer waits anyway")
    settings.REDIS_URL = ""
    key, other = new_key(), []

    def reserve_elsewhere():
        try:
            other.append(ratelimit.reserve_slot(key, 1))
        finally:
            connection.close()

    with transaction.atomic():
        mine = ratelimit.reserve_slot(key, 1)
        thread = threading.Thread(target=reserve_elsewhere)
        thread.start()
        thread.join(timeout=10)
        # before the outer transaction ends: the row was not left locked by it
        assert not thread.is_alive()
    assert len(other) == 1 and other[0].slot - mine.slot == pytest.approx(window(1), abs=EXACT)


@pytest.mark.django_db(transaction=True)
def test_a_slot_taken_in_a_transaction_that_rolls_back_still_counts(settings):
    if connection.vendor != "postgresql":
        pytest.skip("on SQLite the slot is taken in the caller's transaction and rolls back with it (documented)")
    settings.REDIS_URL = ""
    key = new_key()

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        rolled_back = ratelimit.reserve_slot(key, 1)
        raise ZeroDivisionError

    assert ratelimit.reserve_slot(key, 1).slot - rolled_back.slot == pytest.approx(window(1), abs=EXACT)


@pytest.mark.django_db(transaction=True)
def test_a_slot_swapped_in_after_someone_else_took_one_counts_theirs(settings, monkeypatch):
    """SQLite outside a transaction reads the slots and writes them back only if no one
    changed them: a reservation that lands in between makes it read again, not overwrite."""
    if connection.vendor != "sqlite":
        pytest.skip("the compare-and-swap is SQLite's (PostgreSQL locks the row)")
    settings.REDIS_URL = ""
    key, count = new_key(), ratelimit.window_of(1)[0]
    real, raced = ratelimit.next_slot, []

    def someone_else_first(recent, now, count, window):
        if not raced:
            raced.append(True)
            with transaction.atomic():  # another worker's reservation, between our read and our write
                raced.append(ratelimit._reserve_row(connection, key, count, window).slot)
        return real(recent, now, count, window)

    monkeypatch.setattr(ratelimit, "next_slot", someone_else_first)
    ours = ratelimit.reserve_slot(key, 1).slot

    theirs = raced[1]
    assert count == 1 and ours >= theirs + window(1) - EXACT  # theirs was seen, not overwritten
    stored = connection.cursor().execute("SELECT slots FROM integrations_rateslot WHERE key = %s", [key]).fetchone()
    assert float(stored[0].split()[-1]) == pytest.approx(ours, abs=EXACT)


# --- Threads and processes -----------------------------------------------------------------


def test_threads_share_one_limit(shared_backend):
    key, slots, lock = new_key(), [], threading.Lock()

    def take(count: int) -> None:
        try:
            for _ in range(count):
                slot = ratelimit.reserve_slot(key, 5).slot
                with lock:
                    slots.append(slot)
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(5,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(slots) == 20
    assert tightest(slots, 5) >= window(5) - EXACT


CHILD = """
import json, sys, time
import django
django.setup()
from integrations import ratelimit

key, count, per_second = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ratelimit.reserve("warm-up:" + key, 1000)  # connect before the start, not during it
print("ready", flush=True)
sys.stdin.readline()
slots, sent = [], []
for _ in range(count):
    slots.append(ratelimit.acquire(key, per_second).slot)
    sent.append(time.time())
print(json.dumps({"slots": slots, "sent": sent}), flush=True)
"""


def run_in_processes(key: str, *, processes: int, count: int, per_second: float, env: dict) -> dict[str, list]:
    """Start the processes, let them all begin at once; their slots and send times."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, key, str(count), str(per_second)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(processes)
    ]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise AssertionError(f"a child did not start:\n{child.communicate(timeout=10)[1][-3000:]}")
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        merged: dict[str, list] = {"slots": [], "sent": []}
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err[-3000:]
            for name, values in json.loads(out).items():
                merged[name] += values
        return merged
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_two_processes_share_one_limit(shared_backend, settings):
    env = process_env() | {"REDIS_URL": settings.REDIS_URL}

    got = run_in_processes(new_key(), processes=2, count=8, per_second=5, env=env)

    assert len(got["slots"]) == len(got["sent"]) == 16
    assert tightest(got["slots"], 5) >= window(5) - EXACT
    # Unlimited, the sixteen would leave within a few milliseconds; limited, in four bursts
    # of five (or fewer) one window apart. Real send times carry the processes' sleep and
    # scheduling jitter: loose bounds.
    assert max(got["sent"]) - min(got["sent"]) >= 0.9 * 3 * window(5)
    assert tightest(got["sent"], 5) >= 0.8 * window(5)


# --- Redis ---------------------------------------------------------------------------------


def test_a_redis_key_lives_until_its_last_slot_has_passed(settings):
    if not settings.REDIS_URL:
        pytest.skip(NO_REDIS)
    import redis

    key = new_key()
    for _ in range(100):  # a queue of about 100 s at one request a second
        ratelimit.reserve(key, 1)

    ttl_ms = redis.Redis.from_url(settings.REDIS_URL).pttl(f"ratelimit:{key}")
    assert ttl_ms >= (100 * window(1) + ratelimit.REDIS_KEY_TTL_SECONDS - 5) * 1000


def test_an_unreachable_redis_is_a_transient_error_without_the_password(settings):
    settings.REDIS_URL = "redis://:hunter2-secret@127.0.0.1:1/0"

    with pytest.raises(TransientError) as caught:
        ratelimit.reserve(new_key(), 7)

    assert "Redis is unavailable" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)
