"""Django's PostgreSQL backend, working under row-level security.

Before a query runs, the connection is given what tenancy/context.py says it should
have, unless it has it already:

* the role ``OPTIONS["app_role"]`` (``DATABASE_APP_ROLE``): a role without SUPERUSER or
  BYPASSRLS, so that the policies apply (``SET ROLE``). While ``migrate`` runs, and for a
  ``flush``, the connection works as the login role instead: the tables' owner, which
  alone may change them;
* ``app.user_id`` and ``app.system``, from the current scope (session settings, so that
  they hold across the transactions of a request in autocommit).

Both go in one statement, sent only when the scope or the role changes: once when a
request starts using a connection, not per query. What a connection holds is written on
the psycopg connection itself, so it stays true across the pool's round trips; it is
forgotten whenever the server may have undone it: a rolled back transaction or savepoint
undoes settings made inside it, and the pool rolls back a connection given back inside a
transaction. A user's scope is also cleared from a connection when its request ends
(tenancy/signals.py) and before a pooled connection goes back to the pool, so an idle
connection never holds a user's rights.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured
from django.db import DataError
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base, operations
from psycopg.pq import TransactionStatus

from tenancy import context

logger = logging.getLogger(__name__)

STATE = "_tenancy_state"  # on the psycopg connection: (role, app.user_id, app.system) it holds
ROLE_UNCHANGED = None  # no DATABASE_APP_ROLE: the login role is the application's role

_warned_bypass = False


class DatabaseOperations(operations.DatabaseOperations):
    def execute_sql_flush(self, sql_list):
        # TRUNCATE is the owner's: the application role has no right to it (tests' flush)
        with self.connection.tenancy_as_owner():
            super().execute_sql_flush(sql_list)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tenancy_owner = False  # True while migrate runs: the login role, system context
        if self.alias != NO_DB_ALIAS:  # the "postgres" database, for creating test databases
            self.execute_wrappers.append(self._tenancy_execute)

    @property
    def app_role(self) -> str | None:
        return self.settings_dict["OPTIONS"].get("app_role") or None

    def get_connection_params(self):
        params = super().get_connection_params()
        params.pop("app_role", None)  # ours, not a libpq parameter
        return params

    # --- migrate and flush run as the owner ----------------------------------------------

    def prepare_database(self):
        # called by migrate before it reads or changes anything; post_migrate ends it
        super().prepare_database()
        self.tenancy_owner = True

    @contextmanager
    def tenancy_as_owner(self):
        previous, self.tenancy_owner = self.tenancy_owner, True
        try:
            yield
        finally:
            self.tenancy_owner = previous

    # --- the state a connection should hold, and holds -----------------------------------

    def tenancy_wanted(self) -> tuple[str | None, str, str]:
        role = self.app_role
        if self.tenancy_owner:
            return ("none" if role else ROLE_UNCHANGED, "", "on")
        scope = context.current()
        return (role, "" if scope.user_id is None else str(scope.user_id), "on" if scope.system else "")

    def _tenancy_execute(self, execute, sql, params, many, context_):
        raw = self.connection
        if raw is not None:
            wanted = self.tenancy_wanted()
            # in a failed transaction nothing runs but the rollback, which needs no scope
            if getattr(raw, STATE, None) != wanted and raw.info.transaction_status != TransactionStatus.INERROR:
                self._tenancy_apply(raw, wanted)
        return execute(sql, params, many, context_)

    def _tenancy_apply(self, raw, wanted: tuple[str | None, str, str]) -> None:
        role, user_id, system = wanted
        setters = ["set_config('app.user_id', %s, false)", "set_config('app.system', %s, false)"]
        params = [user_id, system]
        if role is not ROLE_UNCHANGED:
            setters.insert(0, "set_config('role', %s, false)")
            params.insert(0, role)
        setattr(raw, STATE, None)  # unknown until the statement has run
        try:
            with self.wrap_database_errors, raw.cursor() as cursor:
                cursor.execute(f"SELECT {', '.join(setters)}", params)
        except DataError as exc:
            if role and f'role "{role}" does not exist' in str(exc):
                raise ImproperlyConfigured(
                    f"The database role {role} (DATABASE_APP_ROLE) does not exist: `manage.py migrate` creates it "
                    "when the migrating user may create roles (see the README)."
                ) from exc
            raise
        setattr(raw, STATE, wanted)
        if not self.tenancy_owner and raw.info.parameter_status("is_superuser") == "on":
            _warn_bypass(role)

    def tenancy_forget(self) -> None:
        if self.connection is not None:
            setattr(self.connection, STATE, None)

    def tenancy_release(self, *, closing: bool = False) -> None:
        """Take a user's scope off the open connection: at the end of a request, and
        before a pooled connection goes back to the pool."""
        raw = self.connection
        state = getattr(raw, STATE, None) if raw is not None else None
        if state is None:
            return
        status = raw.info.transaction_status
        if status == TransactionStatus.INERROR or (closing and status != TransactionStatus.IDLE):
            self.tenancy_forget()  # rolled back next (by Django or the pool), settings with it
            return
        if state[1] == "":
            return  # nobody's or system: no user's rights to leave behind
        try:
            self._tenancy_apply(raw, (state[0], "", ""))
        except Exception:
            # a broken connection: the pool checks it; whoever uses it next sets their own scope
            self.tenancy_forget()
            logger.warning("tenancy.release_failed", exc_info=True)

    # --- what the server undoes, forgotten --------------------------------------------------

    def _rollback(self):
        try:
            super()._rollback()
        finally:
            self.tenancy_forget()

    def _savepoint_rollback(self, sid):
        try:
            super()._savepoint_rollback(sid)
        finally:
            self.tenancy_forget()

    def _close(self):
        if self.pool is not None and self.connection is not None:
            self.tenancy_release(closing=True)
        super()._close()


def _warn_bypass(role: str | None) -> None:
    global _warned_bypass
    if not _warned_bypass:
        _warned_bypass = True
        logger.warning(
            "tenancy.rls_bypassed",
            extra={
                "reason": "the application works as a superuser: row-level security does not apply",
                "app_role": role or "",
            },
        )
