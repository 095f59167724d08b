"""Row-level security (PostgreSQL): the database itself keeps tenants apart, behind the
API's own scoping. Raw SQL without any filter, run for one user, shows none of another
user's rows and cannot write them; system context sees everything; the API, the admin,
WebSockets and the worker still work; no connection carries a user's scope past its
request. The first two tests run on SQLite too: they keep the list of tables complete."""
from __future__ import annotations

import datetime
import json
import urllib.request
from dataclasses import dataclass, field

import pytest
import responses
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, connections, models, transaction
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

import tenancy
from agents.models import Agent, Conversation, ConversationMessage, LiveEvent, Meeting
from crm.models import CrmEvent, CrmSnapshot
from observability.models import MetricBucket
from sequences.models import SequenceRun, SequenceStep
from tenancy.middleware import WebSocketTenancyMiddleware
from tenancy.operations import TenantTable
from tests.asgi_websocket import WebsocketCommunicator
from tests.crm.webhook_helpers import ACCOUNT_ID, webhook_path
from tests.factories import make_agent, make_integration, make_log, make_sequence, make_trigger, make_user
from tests.live_server import AsgiServer, _http, login_cookie
from triggers.models import ActionRun, EntityState, OwnChange, TriggerFiring

User = get_user_model()

# Tables linked to a user that are not a tenant's data, and why they have no policy.
NOT_TENANT_DATA = {
    "authtoken_token": "a user's API key: read to authenticate a request, before anyone's scope is known",
    "django_admin_log": "the admin's record of staff actions, read by the admin only",
    "auth_user_groups": "authorization, read while authenticating",
    "auth_user_user_permissions": "authorization, read while authenticating",
}

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="row-level security is PostgreSQL's: on SQLite the API's own scoping is the only line",
)


# --- which tables are a tenant's --------------------------------------------------------


def owner_path(model: type[models.Model], seen: frozenset = frozenset()) -> str | None:
    """The ORM path from a model to the user its rows belong to (``agent__owner``), or
    None for a model that belongs to no one. A bare ``agent_id``/``owner_id`` column
    without a foreign key counts too (``agent_id`` then stands for the agent)."""
    if model in seen:
        return None
    for f in model._meta.concrete_fields:
        if f.is_relation and f.related_model is not None:
            if f.related_model is User:
                return f.name
            further = owner_path(f.related_model, seen | {model})
            if further is not None:
                return f"{f.name}__{further}"
        elif f.column in ("agent_id", "owner_id"):
            return f.column
    return None


def tenant_models() -> dict[str, type[models.Model]]:
    return {
        m._meta.db_table: m
        for m in apps.get_models(include_auto_created=True)
        if m._meta.managed and not m._meta.proxy and owner_path(m) is not None
    }


def protected_tables() -> dict[str, TenantTable]:
    """Every table a migration puts under row-level security."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return {
        op.table: op
        for migration in loader.disk_migrations.values()
        for op in migration.operations
        if isinstance(op, TenantTable)
    }


PROTECTED = sorted(protected_tables())


def test_every_table_that_hangs_off_an_agent_or_a_user_has_a_policy():
    missing = sorted(set(tenant_models()) - set(protected_tables()) - set(NOT_TENANT_DATA))

    assert not missing, (
        f"{missing} hold rows of an agent or a user but have no row-level security policy: add a "
        "tenancy.operations.TenantTable(...) for each in a migration (or, if it is not tenant data, "
        "to NOT_TENANT_DATA here, with the reason)"
    )


def test_every_policy_is_for_a_table_that_exists_and_belongs_to_a_tenant():
    tables = set(tenant_models())

    assert set(protected_tables()) <= tables
    assert set(NOT_TENANT_DATA) <= tables
    assert not set(NOT_TENANT_DATA) & set(protected_tables())


# --- two tenants with a row in every tenant table ---------------------------------------


@dataclass
class Tenant:
    user: User
    agent: Agent
    rows: dict[str, set[int]] = field(default_factory=dict)


def make_tenant_rows(user) -> Tenant:
    """One of everything for ``user``, as the ORM writes it (in system context)."""
    now = timezone.now()
    agent = make_agent(owner=user)  # with its CRM access
    kommo = make_integration(agent, integration_type="kommo", config={"account_id": ACCOUNT_ID}, credentials={})
    telegram = make_integration(agent)
    conversation = Conversation.objects.create(agent=agent, integration=telegram, chat_id=f"chat-{user.pk}")
    question = ConversationMessage.objects.create(
        conversation=conversation, direction="in", author="lead", text="Hello", status="received", external_id="m1"
    )
    ConversationMessage.objects.create(
        conversation=conversation, direction="out", author="agent", text="Hi", status="sent", reply_to=question
    )
    Meeting.objects.create(
        agent=agent,
        calendar=telegram,
        start=now,
        end=now + datetime.timedelta(hours=1),
        summary="Demo",
        event_id=f"event-{user.pk}",
        booked_by="trigger",
        key=f"meeting-{user.pk}",
    )
    trigger = make_trigger(agent)
    run = SequenceRun.objects.create(
        sequence=make_sequence(agent), agent=agent, integration=kommo, crm_lead_id=7, started_by="api"
    )
    SequenceStep.objects.create(run=run, index=0, type="delay")
    event = CrmEvent.objects.create(
        integration=kommo, kind="lead_added", entity_type="lead", entity_id=7, lead_id=7, dedupe_key=f"k{user.pk}"
    )
    CrmSnapshot.objects.create(integration=kommo)
    EntityState.objects.create(integration=kommo, entity_type="lead", entity_id=7, values={"status_id": 1})
    OwnChange.objects.create(
        integration=kommo, crm_lead_id=7, trigger=trigger, depth=1, kinds=["lead_status_changed"], expect={}
    )
    firing = TriggerFiring.objects.create(trigger=trigger, event=event, agent=agent, crm_lead_id=7, log=make_log(agent))
    ActionRun.objects.create(firing=firing, index=0, type="create_task")
    LiveEvent.objects.create(owner=user, type="agent.changed", payload={})
    MetricBucket.objects.create(
        metric="replies_total", labels=f'{{"agent": "{agent.pk}"}}', agent_id=agent.pk, hour=now.replace(minute=0)
    )
    tenant = Tenant(user=user, agent=agent)
    for table, model in tenant_models().items():
        path = owner_path(model)
        if path == "agent_id":  # a label, not a foreign key
            rows = model.objects.filter(agent_id__in=Agent.objects.filter(owner=user).values("id"))
        else:
            rows = model.objects.filter(**{path: user})
        tenant.rows[table] = set(rows.values_list("pk", flat=True))
    return tenant


@pytest.fixture
def mine(db) -> Tenant:
    return make_tenant_rows(make_user())


@pytest.fixture
def theirs(db) -> Tenant:
    return make_tenant_rows(make_user())


def ids_seen(table: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {connection.ops.quote_name(table)}")  # no filter at all
        return {row[0] for row in cursor.fetchall()}


def link_columns(table: str) -> list[str]:
    """The columns that tie a row to a tenant: whose it is (owner_id, agent_id,
    integration_id, run_id…) and every other reference to a tenant's row."""
    model = tenant_models()[table]
    tenant = {User, *tenant_models().values()}
    return [
        f.column
        for f in model._meta.concrete_fields
        if (f.is_relation and f.related_model in tenant and f.related_model is not model)
        or (not f.is_relation and f.column in ("agent_id", "owner_id"))
    ]


# --- the database keeps tenants apart ------------------------------------------------------


@postgres_only
@pytest.mark.parametrize("table", PROTECTED)
def test_raw_sql_without_a_filter_shows_a_user_only_their_own_rows(table, mine, theirs):
    assert mine.rows[table] and theirs.rows[table], "make_tenant_rows() must write a row in every tenant table"

    with tenancy.acting_for(mine.user):
        seen = ids_seen(table)

    assert seen == mine.rows[table]
    assert not seen & theirs.rows[table]


@postgres_only
@pytest.mark.parametrize("table", PROTECTED)
def test_a_user_cannot_change_delete_insert_or_take_over_another_users_rows(table, mine, theirs):
    qn = connection.ops.quote_name
    victim, own = min(theirs.rows[table]), min(mine.rows[table])
    columns = link_columns(table)
    with connection.cursor() as cursor:  # system context: a copy of their row, and what it points at
        cursor.execute(f"CREATE TEMP TABLE rls_copy AS SELECT * FROM {qn(table)} WHERE id = %s", [victim])
        cursor.execute("UPDATE rls_copy SET id = -id")
        cursor.execute(f"SELECT {', '.join(qn(c) for c in columns)} FROM {qn(table)} WHERE id = %s", [victim])
        their_links = dict(zip(columns, cursor.fetchone(), strict=True))
        cursor.execute(f"SELECT * FROM {qn(table)} WHERE id = %s", [victim])
        before = cursor.fetchone()
    assert None not in their_links.values(), "make_tenant_rows() must fill every reference"

    with tenancy.acting_for(mine.user), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {qn(table)} SET id = id WHERE id = %s", [victim])
        updated = cursor.rowcount
        cursor.execute(f"DELETE FROM {qn(table)} WHERE id = %s", [victim])
        deleted = cursor.rowcount
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            cursor.execute(f"INSERT INTO {qn(table)} SELECT * FROM rls_copy")
        for column, value in their_links.items():  # my row, pointed at theirs
            with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
                cursor.execute(f"UPDATE {qn(table)} SET {qn(column)} = %s WHERE id = %s", [value, own])

    assert (updated, deleted) == (0, 0)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {qn(table)} WHERE id = %s", [victim])
        assert cursor.fetchone() == before
        cursor.execute("DROP TABLE rls_copy")


@postgres_only
def test_system_context_sees_every_row_and_nobody_sees_none(mine, theirs):
    for table in PROTECTED:
        with tenancy.system():
            assert ids_seen(table) >= mine.rows[table] | theirs.rows[table], table
        with tenancy.nobody():
            assert ids_seen(table) == set(), table


@postgres_only
def test_every_tenant_table_forces_its_policy_on_everyone_but_the_system(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, count(p.oid) "
            "FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid "
            "WHERE c.relname = ANY(%s) AND c.relkind = 'r' GROUP BY c.relname, c.relrowsecurity, c.relforcerowsecurity",
            [PROTECTED],
        )
        found = {name: (enabled, forced, policies) for name, enabled, forced, policies in cursor.fetchall()}

    assert found == {table: (True, True, 1) for table in PROTECTED}


@postgres_only
def test_the_application_works_as_a_role_that_cannot_bypass_the_policies_nor_own_the_tables(db):
    role = connection.settings_dict["OPTIONS"]["app_role"]
    with tenancy.acting_for(1), connection.cursor() as cursor:
        cursor.execute("SELECT current_user, session_user")
        current, login = cursor.fetchone()
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        attributes = cursor.fetchone()
        cursor.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'agents_agent'")
        (owner,) = cursor.fetchone()
        cursor.execute("SELECT has_table_privilege(current_user, 'agents_agent', 'TRUNCATE')")
        (may_truncate,) = cursor.fetchone()

    assert current == role != login
    assert attributes == (False, False)
    assert owner == login  # migrate ran as the login role
    assert may_truncate is False


# --- no scope outlives its request or transaction ----------------------------------------


def held_user_id() -> str | None:
    """app.user_id as the server holds it, asked past the backend (which would set it)."""
    return connection.connection.execute("SELECT current_setting('app.user_id', true)").fetchone()[0]


def client_of(tenant: Tenant) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=tenant.user).key}")
    return client


def agent_ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


@postgres_only
def test_requests_of_two_users_on_one_connection_each_see_their_own_and_leave_no_scope_behind(mine, theirs):
    one, two = client_of(mine), client_of(theirs)

    for client, tenant in [(one, mine), (two, theirs), (one, mine)]:
        assert agent_ids(client.get("/api/agents/")) == {tenant.agent.pk}
        assert held_user_id() in (None, "")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_does_not_leave_the_connection_in_the_previous_users_scope():
    one, two = make_tenant_rows(make_user()), make_tenant_rows(make_user())
    with tenancy.acting_for(two.user):
        assert ids_seen("agents_agent") == {two.agent.pk}  # autocommit: kept by the session

    with tenancy.acting_for(one.user):
        with pytest.raises(RuntimeError), transaction.atomic():
            assert ids_seen("agents_agent") == {one.agent.pk}  # set inside the transaction
            raise RuntimeError("rolled back")
        assert held_user_id() == str(two.user.pk)  # the rollback undid it: two's scope again

        assert ids_seen("agents_agent") == {one.agent.pk}


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_goes_back_without_the_users_scope_and_serves_the_next_user_right():
    one, two = make_tenant_rows(make_user()), make_tenant_rows(make_user())
    alias = "rls_pool_test"
    default = connections["default"]
    settings_dict = default.settings_dict | {
        "CONN_MAX_AGE": 0,
        "OPTIONS": default.settings_dict["OPTIONS"] | {"pool": {"min_size": 1, "max_size": 1}},
    }
    pooled = type(default)(settings_dict, alias=alias)
    try:
        raws = []
        for tenant in (one, two, one):
            with tenancy.acting_for(tenant.user):
                with pooled.cursor() as cursor:
                    cursor.execute("SELECT id FROM agents_agent")
                    assert {row[0] for row in cursor.fetchall()} == {tenant.agent.pk}
                raws.append(pooled.connection)
                pooled.close()  # back to the pool, as at the end of a request
            raw = pooled.pool.getconn()
            try:
                assert raw.execute("SELECT current_setting('app.user_id', true)").fetchone()[0] == ""
            finally:
                pooled.pool.putconn(raw)
        assert raws[0] is raws[1] is raws[2]  # one connection served all three
    finally:
        pooled.close()
        pooled.close_pool()


@postgres_only
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_asgi_server_keeps_two_users_apart_over_one_pooled_connection(monkeypatch, tmp_path):
    one, two = make_tenant_rows(make_user()), make_tenant_rows(make_user())
    keys = [Token.objects.create(user=tenant.user).key for tenant in (one, two)]
    monkeypatch.setenv("DATABASE_POOL_MIN_SIZE", "1")  # one connection serves every request
    monkeypatch.setenv("DATABASE_POOL_MAX_SIZE", "1")
    server = AsgiServer.start(tmp_path / "uvicorn.log")
    try:
        for key, tenant in [(keys[0], one), (keys[1], two), (keys[0], one), (keys[1], two)]:
            request = urllib.request.Request(f"{server.origin}/api/agents/", headers={"Authorization": f"Token {key}"})
            with _http.open(request, timeout=10) as response:
                assert {row["id"] for row in json.load(response)["results"]} == {tenant.agent.pk}
    finally:
        server.stop()


# --- the product still works -----------------------------------------------------------------


@postgres_only
def test_each_user_works_through_the_api_with_their_token_and_sees_only_their_own(mine, theirs):
    for tenant, other in [(mine, theirs), (theirs, mine)]:
        client = client_of(tenant)
        conversation = Conversation.objects.get(agent=tenant.agent)
        run = SequenceRun.objects.get(agent=tenant.agent)

        assert agent_ids(client.get("/api/agents/")) == {tenant.agent.pk}
        messages = client.get(f"/api/conversations/{conversation.pk}/messages/")
        assert messages.status_code == 200 and messages.json()
        detail = client.get(f"/api/sequence-runs/{run.pk}/")
        assert detail.status_code == 200 and len(detail.json()["steps"]) == 1
        assert client.get(f"/api/agents/{other.agent.pk}/").status_code == 404
        created = client.post(
            "/api/triggers/", {"agent": tenant.agent.pk, "name": "New", "event": "lead_added"}, format="json"
        )
        assert created.status_code == 201, created.content
        renamed = client.patch(f"/api/agents/{tenant.agent.pk}/", {"name": "Renamed"}, format="json")
        assert renamed.status_code == 200, renamed.content

    with tenancy.system():
        assert set(Agent.objects.values_list("name", flat=True)) == {"Renamed"}


@postgres_only
def test_staff_see_their_own_rows_in_the_admin_and_a_superuser_sees_everyones(mine, theirs):
    User.objects.filter(pk=mine.user.pk).update(is_staff=True)
    staff, superuser = Client(), Client()
    staff.force_login(User.objects.get(pk=mine.user.pk))
    superuser.force_login(make_user(is_staff=True, is_superuser=True))
    run = SequenceRun.objects.get(agent=mine.agent)

    staff_list = staff.get("/admin/agents/agent/")
    super_list = superuser.get("/admin/agents/agent/")
    run_page = staff.get(f"/admin/sequences/sequencerun/{run.pk}/change/")

    assert staff_list.status_code == super_list.status_code == run_page.status_code == 200
    assert mine.agent.name in staff_list.text and theirs.agent.name not in staff_list.text
    assert mine.agent.name in super_list.text and theirs.agent.name in super_list.text
    assert staff.get(f"/admin/agents/agent/{theirs.agent.pk}/change/").status_code in (302, 404)


def test_a_requests_scope_is_its_users_once_known_and_system_for_listed_anonymous_views(rf, db):
    from django.urls import resolve

    from tenancy.middleware import RequestScope

    user, superuser = make_user(), make_user(is_superuser=True, is_staff=True)
    request = rf.get("/api/agents/")
    request.resolver_match = resolve("/api/agents/")
    scope = RequestScope(request, frozenset(settings.TENANCY_SYSTEM_VIEWS))

    assert scope.scope() == tenancy.NOBODY  # no user looked up yet: nobody
    request.user = user  # what DRF does once it has authenticated the request
    assert scope.scope() == tenancy.Scope(user_id=user.pk)
    request.user = superuser
    assert scope.scope() == tenancy.SYSTEM

    webhook = rf.post("/api/webhooks/crm/some-key")
    webhook.resolver_match = resolve("/api/webhooks/crm/some-key")
    assert RequestScope(webhook, frozenset(settings.TENANCY_SYSTEM_VIEWS)).scope() == tenancy.SYSTEM


class AgentsConsumer(AsyncJsonWebsocketConsumer):
    """Answers with the agents its connection's scope shows."""

    async def connect(self):
        await self.accept()
        await self.send_json(await database_sync_to_async(self.visible)())

    def visible(self):
        return sorted(Agent.objects.values_list("id", flat=True))


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_websocket_connection_runs_in_its_users_scope():
    one, two = make_tenant_rows(make_user()), make_tenant_rows(make_user())
    application = AuthMiddlewareStack(WebSocketTenancyMiddleware(AgentsConsumer.as_asgi()))

    async def agents_seen(cookie: str):
        headers = [(b"cookie", cookie.encode()), (b"host", b"localhost")]
        communicator = WebsocketCommunicator(application, "/ws/test/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        seen = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return seen

    assert async_to_sync(agents_seen)(login_cookie(one.user)) == [one.agent.pk]
    assert async_to_sync(agents_seen)(login_cookie(two.user)) == [two.agent.pk]


CRM = "https://acme.kommo.com"
LEAD = 23416597


@postgres_only
def test_a_crm_event_is_processed_by_a_task_in_system_context_and_fires_the_trigger(
    settings, agent, theirs, django_capture_on_commit_callbacks
):
    from urllib.parse import urlencode

    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers"]
    kommo = make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": ACCOUNT_ID},
        credentials={"access_token": "crm-token"},
    )
    trigger = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[{"field": "status", "operator": "changed_to", "value": {"status_id": 142}}],
        actions=[{"type": "create_task", "text": "Call back", "due_in_minutes": 30}],
    )
    lead = {"id": LEAD, "name": "Lead", "pipeline_id": 1, "status_id": 142, "old_status_id": 1, "last_modified": 1}
    form = urlencode(
        [(f"leads[status][0][{k}]", str(v)) for k, v in lead.items()]
        + [("account[subdomain]", "acme"), ("account[id]", str(ACCOUNT_ID))]
    ).encode()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as crm:
        crm.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        # outside any request and for no one: only the task's own system context can find the event
        with tenancy.nobody(), django_capture_on_commit_callbacks(execute=True):
            response = Client().post(
                webhook_path(kommo), data=form, content_type="application/x-www-form-urlencoded"
            )
        assert response.status_code == 200
        assert [c.request.method for c in crm.calls if c.request.url.startswith(f"{CRM}/api/v4/tasks")] == ["POST"]

    firing = TriggerFiring.objects.get(event__integration=kommo)
    assert (firing.trigger_id, firing.status) == (trigger.pk, "done")
    assert list(firing.action_runs.values_list("status", flat=True)) == ["done"]
    assert CrmEvent.objects.get(integration=kommo).status == "done"


def test_a_task_runs_in_system_context_whoever_queued_it(db):
    from django_q.tasks import async_task

    seen.clear()
    with tenancy.acting_for(make_user()):
        async_task("tests.test_rls.remember_scope", sync=True)
        after = tenancy.current()

    assert seen == [tenancy.SYSTEM]
    assert after != tenancy.SYSTEM  # the caller's scope is back


seen: list = []


def remember_scope():
    seen.append(tenancy.current())

