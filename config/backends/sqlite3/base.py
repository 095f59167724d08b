"""Django's SQLite backend, waiting for the write lock in short steps.

SQLite lets one connection write at a time. Waiting for the lock is SQLite's busy
handler's job, and it sleeps 1, 2, 5, 10… ms between tries: a worker that finds the lock
taken for a tenth of a millisecond sleeps a whole millisecond or more. With two worker
processes writing several short transactions per CRM event, those sleeps left the
processes idle about 40 % of the time (measured with bench_triggers.py).

Here SQLite's own wait is off and a statement that finds the database locked is tried
again every LOCK_POLL_SECONDS, up to the connection's ``timeout`` (OPTIONS, seconds).
A statement refused with "database is locked" has done nothing, so trying it again is
safe: in WAL mode with ``transaction_mode: IMMEDIATE`` that is a transaction's BEGIN or
a statement outside a transaction, which take the lock.
"""
from __future__ import annotations

import sqlite3
import time

from django.db.backends.sqlite3 import base

LOCK_POLL_SECONDS = 0.0002


def _locked(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "database is locked" in str(exc)
    )


def _patiently(call, timeout: float):
    deadline = None
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + timeout
            if now >= deadline:
                raise
            time.sleep(LOCK_POLL_SECONDS)


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    lock_timeout = 5.0

    def execute(self, query, params=None):
        return _patiently(lambda: super(SQLiteCursorWrapper, self).execute(query, params), self.lock_timeout)

    def executemany(self, query, param_list):
        param_list = list(param_list)  # tried again: a generator would be spent
        return _patiently(lambda: super(SQLiteCursorWrapper, self).executemany(query, param_list), self.lock_timeout)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock_timeout = float((self.settings_dict.get("OPTIONS") or {}).get("timeout", 5.0))

    def get_new_connection(self, conn_params):
        # SQLite's own busy handler waits through the connection's set-up (init_command's
        # PRAGMA journal_mode takes a lock), then is turned off: _patiently waits instead
        connection = super().get_new_connection(conn_params)
        connection.execute("PRAGMA busy_timeout = 0")
        return connection

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.lock_timeout = self.lock_timeout
        return cursor

    def _commit(self):
        if self.connection is not None:
            with self.wrap_database_errors:
                return _patiently(self.connection.commit, self.lock_timeout)
