"""Migration operations for row-level security. PostgreSQL only: elsewhere they do nothing.

``CreateAppRole()`` creates the application role (``DATABASE_APP_ROLE``) and grants it
the rights to the tables; ``TenantTable(table, owned_when, refs)`` puts a table under
row-level security: a row is visible and writable in system context, or when
``owned_when`` holds for the current user. Every model that hangs off an agent or an
owner needs one in a migration (tests/test_rls.py fails otherwise), e.g.:

    TenantTable("app_widget", "agent_id IN (SELECT id FROM agents_agent WHERE owner_id = tenancy_user_id())")

``tenancy_user_id()`` is ``app.user_id`` as a bigint (NULL when unset) and
``tenancy_is_system()`` tells whether ``app.system`` is on (migration 0001 creates both).
A policy is parsed when it is created: later changes to the search path do not change
which table or function it names.
"""
from __future__ import annotations

import re

from django.core.exceptions import ImproperlyConfigured
from django.db.migrations.operations.base import Operation

POLICY = "tenant_isolation"
ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _postgresql(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


class TenantTable(Operation):
    """Row-level security on ``table``: a row is visible, and may be written, in system
    context or when ``owned_when`` (SQL, true for the current user's rows) holds. A row
    written must also point only at rows the user may see through ``refs``, its other
    foreign keys to tenant tables (``[(column, table), …]``): a user's trigger firing
    cannot name another user's trigger, their run another user's integration."""

    reversible = True
    reduces_to_sql = True

    def __init__(self, table: str, owned_when: str, refs: list[tuple[str, str]] | tuple = ()) -> None:
        self.table = table
        self.owned_when = owned_when
        self.refs = [tuple(ref) for ref in refs]

    def deconstruct(self):
        kwargs = {"refs": self.refs} if self.refs else {}
        return self.__class__.__qualname__, [self.table, self.owned_when], kwargs

    def state_forwards(self, app_label, state) -> None:
        pass  # the database's rules only: no model changes

    def rules(self, quote_name) -> tuple[str, str]:
        """(USING, WITH CHECK) of the policy."""
        owned = f"({self.owned_when})"
        refs = [
            f"({quote_name(column)} IS NULL OR EXISTS (SELECT 1 FROM {quote_name(parent)} r "
            f"WHERE r.id = {quote_name(self.table)}.{quote_name(column)}))"
            for column, parent in self.refs
        ]
        return f"tenancy_is_system() OR {owned}", f"tenancy_is_system() OR ({' AND '.join([owned, *refs])})"

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        table = schema_editor.quote_name(self.table)
        using, check = self.rules(schema_editor.quote_name)
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        # the owner too: without FORCE the tables' owner would bypass the policy
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        schema_editor.execute(f"CREATE POLICY {POLICY} ON {table} FOR ALL USING ({using}) WITH CHECK ({check})")

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        table = schema_editor.quote_name(self.table)
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self) -> str:
        return f"Row-level security on {self.table}"

    @property
    def migration_name_fragment(self) -> str:
        return f"rls_{self.table}"


class CreateScopeFunctions(Operation):
    """``tenancy_user_id()`` and ``tenancy_is_system()``: the scope the application set
    (tenancy/backends/postgresql), as the policies read it. Plain SQL functions, which
    the planner inlines: an index on an owner column still serves ``= tenancy_user_id()``."""

    reversible = True
    reduces_to_sql = True

    def deconstruct(self):
        return self.__class__.__qualname__, [], {}

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        # missing_ok: a connection that never set them has none (NULL); '' after a reset
        schema_editor.execute(
            "CREATE OR REPLACE FUNCTION tenancy_user_id() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE "
            "AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::bigint $$"
        )
        schema_editor.execute(
            "CREATE OR REPLACE FUNCTION tenancy_is_system() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE "
            "AS $$ SELECT coalesce(current_setting('app.system', true) = 'on', false) $$"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        schema_editor.execute("DROP FUNCTION IF EXISTS tenancy_is_system()")
        schema_editor.execute("DROP FUNCTION IF EXISTS tenancy_user_id()")

    def describe(self) -> str:
        return "Create tenancy_user_id() and tenancy_is_system()"


class CreateAppRole(Operation):
    """The role the application works as (``OPTIONS["app_role"]``, from
    ``DATABASE_APP_ROLE``): created when missing and the migrating user may, never
    altered or dropped (it is cluster-wide: other databases may use it), refused when it
    is a superuser or bypasses row-level security. It gets the rights to read and write
    the rows of every table and sequence, and of those later migrations create, but no
    right to change, truncate or own them."""

    reversible = True
    reduces_to_sql = False

    def deconstruct(self):
        return self.__class__.__qualname__, [], {}

    def state_forwards(self, app_label, state) -> None:
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        role = schema_editor.connection.settings_dict["OPTIONS"].get("app_role")
        if not role:
            return  # the login role is the application's: see the README
        if not ROLE_NAME.match(role):
            raise ImproperlyConfigured(f"DATABASE_APP_ROLE {role!r} is not a plain role name")
        quoted = schema_editor.quote_name(role)
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [role])
            found = cursor.fetchone()
            cursor.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            superuser, createrole = cursor.fetchone()
        if found and (found[0] or found[1]):
            raise ImproperlyConfigured(
                f"The role {role} (DATABASE_APP_ROLE) is a superuser or has BYPASSRLS: row-level security "
                "would not apply to it. Choose another name or ALTER ROLE it NOSUPERUSER NOBYPASSRLS."
            )
        if not found:
            if not (superuser or createrole):
                raise ImproperlyConfigured(
                    f"The role {role} (DATABASE_APP_ROLE) does not exist and the migrating user may not create "
                    f"it: CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS; GRANT {role} TO <this user>; "
                    "then migrate again."
                )
            # Two test runs on one cluster may create it at once: the loser's error is no error.
            schema_editor.execute(
                "DO $$ BEGIN "
                f"CREATE ROLE {quoted} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
        if not superuser:
            with schema_editor.connection.cursor() as cursor:
                cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [role])
                (member,) = cursor.fetchone()
            if not member:
                schema_editor.execute(f"GRANT {quoted} TO CURRENT_USER")  # so that it may SET ROLE to it
        for statement in (
            f"GRANT USAGE ON SCHEMA public TO {quoted}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {quoted}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {quoted}",
        ):
            schema_editor.execute(statement)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgresql(schema_editor):
            return
        role = schema_editor.connection.settings_dict["OPTIONS"].get("app_role")
        if not role:
            return
        quoted = schema_editor.quote_name(role)
        # the role stays (other databases may use it); this database's grants go
        for statement in (
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {quoted}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {quoted}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {quoted}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}",
            f"REVOKE USAGE ON SCHEMA public FROM {quoted}",
        ):
            schema_editor.execute(statement)

    def describe(self) -> str:
        return "Create the application role (DATABASE_APP_ROLE) and grant it the tables' rows"
