"""The SQLite backend waits for the write lock in short steps (config/backends/sqlite3)."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.conf import settings
from django.db import OperationalError, connection, connections

from config.backends.sqlite3 import base

pytestmark = [
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's lock"),
    pytest.mark.django_db(transaction=True),
]


def other_writer_holds_the_lock(seconds: float, started: threading.Event, *, exclusive=False) -> threading.Thread:
    """Another connection to the database file takes the write lock for ``seconds``
    (``exclusive``: locks out readers too, as a checkpoint or a recovery does)."""

    def hold() -> None:
        other = sqlite3.connect(connection.settings_dict["NAME"])  # the test database's file
        try:
            if exclusive:
                other.execute("PRAGMA locking_mode = EXCLUSIVE")
            other.execute("BEGIN EXCLUSIVE")
            started.set()
            time.sleep(seconds)
            other.rollback()
        finally:
            other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait(5)
    return thread


def test_the_busy_handler_of_sqlite_is_off_and_the_backends_wait_is_on():
    connection.ensure_connection()
    assert isinstance(connection.cursor().cursor, base.SQLiteCursorWrapper)
    assert connection.lock_timeout == settings.DATABASES["default"]["OPTIONS"]["timeout"]
    assert connection.connection.execute("PRAGMA busy_timeout").fetchone() == (0,)


def test_a_new_connection_is_made_while_another_process_writes():
    """The connection's set-up (PRAGMA journal_mode=WAL) waits for the lock too: a worker
    connecting while another writes must not fail with "database is locked"."""
    connection.close()
    holder = other_writer_holds_the_lock(0.2, threading.Event(), exclusive=True)
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        holder.join()


def test_a_write_waits_for_the_lock_in_short_steps_and_then_succeeds():
    from integrations.models import RateSlot

    holder = other_writer_holds_the_lock(0.05, threading.Event())
    started = time.monotonic()
    RateSlot.objects.create(key="waited", slots="")
    waited = time.monotonic() - started
    holder.join()

    assert RateSlot.objects.filter(key="waited").exists()
    assert 0.03 < waited < 1.0


def test_a_write_gives_up_after_the_timeout(monkeypatch):
    from integrations.models import RateSlot

    monkeypatch.setattr(connections["default"], "lock_timeout", 0.05)  # the wrapper itself, not the proxy
    holder = other_writer_holds_the_lock(0.5, threading.Event())
    try:
        with pytest.raises(OperationalError, match="locked"):
            RateSlot.objects.create(key="gave up", slots="")
    finally:
        holder.join()
    assert not RateSlot.objects.filter(key="gave up").exists()


def test_many_rows_from_a_generator_are_written_once_after_a_wait():
    holder = other_writer_holds_the_lock(0.05, threading.Event())
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO integrations_rateslot (key, slots) VALUES (%s, %s)", ((f"k{n}", "") for n in range(3))
        )
    holder.join()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM integrations_rateslot WHERE key LIKE 'k%%'")
        assert cursor.fetchone()[0] == 3
