"""POST /api/webhooks/crm/<key>: a Kommo delivery is stored once and acknowledged."""
from __future__ import annotations

import io
import logging
import threading
import time

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test import Client, RequestFactory
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from crm import intake, views
from crm.models import CrmEvent
from crm.webhooks import parse_delivery
from integrations.models import Integration
from integrations.services import integration_regenerate_webhook_key, integration_update
from tests.crm import recording_handlers as recording
from tests.crm.webhook_helpers import (
    ACCOUNT_ID,
    FORM,
    KINDS,
    body,
    form,
    make_kommo_integration,
    post,
    webhook_path,
)
from tests.factories import make_agent, make_integration


@pytest.fixture
def kommo(agent):
    return make_kommo_integration(agent)


@pytest.fixture
def client():
    return Client()


@pytest.fixture(autouse=True)
def _no_cached_targets():
    """Each test starts and ends with an empty cache of integrations by webhook key."""
    intake.webhook_targets_forget()
    yield
    intake.webhook_targets_forget()


def integration_lookups(queries) -> int:
    return sum(1 for q in queries if 'FROM "integrations_integration"' in q["sql"])


def stored(integration) -> list[tuple]:
    return list(
        CrmEvent.objects.filter(integration=integration)
        .order_by("id")
        .values_list("kind", "entity_type", "entity_id", "lead_id", "status")
    )


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_of_delivery_is_stored_as_its_events_and_acknowledged(
    name, client, kommo, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, kommo, body(name))

    assert response.status_code == 200
    expected = parse_delivery(body(name)).changes
    events = list(CrmEvent.objects.filter(integration=kommo).order_by("id"))
    assert [(e.kind, e.entity_type, e.entity_id, e.lead_id, e.data) for e in events] == [
        (c.kind, c.entity_type, c.entity_id, c.lead_id, c.data) for c in expected
    ]
    # queued after commit and, with synchronous tasks, processed by crm.handlers.log_event
    assert {e.status for e in events} <= {"done"}
    assert all(e.processed_at for e in events)


def test_the_integrations_webhook_url_reaches_the_intake(client, kommo, django_capture_on_commit_callbacks):
    assert kommo.webhook_url.endswith(f"/api/webhooks/crm/{kommo.webhook_key}")

    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_added")).status_code == 200

    assert stored(kommo) == [("lead_added", "lead", 23416597, 23416597, "done")]


def test_a_duplicate_delivery_is_stored_and_processed_once(
    client, kommo, recorded, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, kommo, body("lead_status_changed"))
        again = post(client, kommo, body("lead_status_changed"))

    assert (first.status_code, again.status_code) == (200, 200)
    events = list(CrmEvent.objects.filter(integration=kommo).order_by("id"))
    assert len(events) == 2
    assert recorded == [("first", events[0].id), ("first", events[1].id)]


def test_a_change_repeated_inside_one_delivery_is_stored_once(
    client, kommo, recorded, django_capture_on_commit_callbacks
):
    item = [("id", "23416597"), ("status_id", "142"), ("last_modified", "1717079340")]
    data = form(*[(f"leads[status][{i}][{k}]", v) for i in (0, 1) for k, v in item])

    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, data).status_code == 200

    assert len(stored(kommo)) == 1
    assert len(recorded) == 1


def test_a_delivery_overlapping_an_earlier_one_stores_only_the_new_change(
    client, kommo, recorded, django_capture_on_commit_callbacks
):
    one = [("leads[status][0][id]", "1"), ("leads[status][0][last_modified]", "100")]
    two = [("leads[status][1][id]", "2"), ("leads[status][1][last_modified]", "100")]
    with django_capture_on_commit_callbacks(execute=True):
        post(client, kommo, form(*one))
        post(client, kommo, form(*one, *two))

    assert [row[2] for row in stored(kommo)] == [1, 2]
    assert [call[0] for call in recorded] == ["first", "first"]


def test_the_same_change_for_two_integrations_is_two_events(client, kommo, django_capture_on_commit_callbacks):
    other = make_kommo_integration(make_agent())
    with django_capture_on_commit_callbacks(execute=True):
        post(client, kommo, body("lead_added"))
        post(client, other, body("lead_added"))

    assert len(stored(kommo)) == len(stored(other)) == 1


def test_an_unknown_key_is_404_with_an_empty_body(client, kommo):
    response = client.post("/api/webhooks/crm/not-a-key", data=body("lead_added"), content_type=FORM)

    assert response.status_code == 404
    assert response.content == b""
    assert not CrmEvent.objects.exists()


def test_a_replaced_key_is_404(client, kommo):
    old_path = webhook_path(kommo)
    integration_regenerate_webhook_key(integration=kommo)

    response = client.post(old_path, data=body("lead_added"), content_type=FORM)

    assert (response.status_code, response.content) == (404, b"")


def test_an_inactive_integration_is_404(client, agent):
    inactive = make_kommo_integration(agent, active=False)

    response = post(client, inactive, body("lead_added"))

    assert (response.status_code, response.content) == (404, b"")
    assert not CrmEvent.objects.exists()


def test_a_non_kommo_integrations_key_is_404(client, agent):
    telegram = make_integration(agent)  # has a webhook key, but no CRM webhook

    response = client.post(f"/api/webhooks/crm/{telegram.webhook_key}", data=body("lead_added"), content_type=FORM)

    assert (response.status_code, response.content) == (404, b"")


def test_a_body_that_does_not_parse_is_400_logged_and_nothing_is_stored(client, kommo, caplog):
    caplog.set_level(logging.WARNING, logger="crm.intake")

    response = post(client, kommo, b"leads[status][0][name]=Lead+without+an+id&account[id]=31416592")

    assert response.status_code == 400
    assert b"without an id" in response.content
    assert not CrmEvent.objects.exists()
    (record,) = [r for r in caplog.records if r.getMessage() == "crm.webhook.rejected"]
    assert (record.reason, record.integration_id) == ("bad_body", kommo.id)


def test_a_body_over_the_limit_is_413_and_not_stored(client, kommo, settings):
    settings.CRM_WEBHOOK_MAX_BYTES = 1000
    data = body("lead_updated")
    assert len(data) > 1000

    response = post(client, kommo, data)

    assert response.status_code == 413
    assert not CrmEvent.objects.exists()


def test_a_body_over_the_limit_without_a_content_length_is_413_after_reading_only_the_limit(kommo, settings):
    # chunked uploads have no Content-Length: the view reads at most the limit plus one byte
    settings.CRM_WEBHOOK_MAX_BYTES = 1000
    data = body("lead_updated")
    request = RequestFactory().post(webhook_path(kommo), data=data, content_type=FORM)
    del request.META["CONTENT_LENGTH"]
    stream = io.BytesIO(data)
    request._stream = stream

    response = views.webhook(request, key=kommo.webhook_key)

    assert response.status_code == 413
    assert stream.tell() == 1001
    assert not CrmEvent.objects.exists()


def test_a_body_at_the_limit_is_accepted(client, kommo, settings, django_capture_on_commit_callbacks):
    data = body("lead_added")
    settings.CRM_WEBHOOK_MAX_BYTES = len(data)

    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, data).status_code == 200


def test_a_body_that_is_not_form_data_is_415(client, kommo):
    response = post(client, kommo, b'{"leads": {}}', content_type="application/json")

    assert response.status_code == 415
    assert not CrmEvent.objects.exists()


def test_form_data_with_a_charset_is_accepted(client, kommo, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, kommo, body("lead_added"), content_type=f"{FORM}; charset=UTF-8")

    assert response.status_code == 200


def test_another_accounts_delivery_is_403_logged_and_nothing_is_stored(client, kommo, caplog):
    caplog.set_level(logging.WARNING, logger="crm.intake")

    response = post(client, kommo, body("lead_added").replace(b"31416592", b"99999999"))

    assert response.status_code == 403
    assert not CrmEvent.objects.exists()
    (record,) = [r for r in caplog.records if r.getMessage() == "crm.webhook.rejected"]
    assert (record.reason, record.integration_id) == ("wrong_account", kommo.id)


def test_a_delivery_without_an_account_is_403_when_the_integration_knows_its_account(client, kommo):
    response = post(client, kommo, b"leads[delete][0][id]=1")

    assert response.status_code == 403


@pytest.mark.parametrize("account_id", [ACCOUNT_ID, str(ACCOUNT_ID), None, ""])
def test_the_configured_account_may_be_a_number_or_text_or_unset(
    account_id, client, agent, django_capture_on_commit_callbacks
):
    integration = make_kommo_integration(agent, config={} if account_id is None else {"account_id": account_id})

    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, integration, body("lead_added"))

    assert response.status_code == 200
    assert len(stored(integration)) == 1


def test_get_is_405(client, kommo):
    assert client.get(webhook_path(kommo)).status_code == 405


def test_a_delivery_with_only_changes_we_do_not_handle_is_acknowledged_and_stores_nothing(client, kommo):
    assert post(client, kommo, form(("leads[merge][0][id]", "1"))).status_code == 200
    assert post(client, kommo, form(("unsorted[add][0][uid]", "x"))).status_code == 200

    assert not CrmEvent.objects.exists()


def test_the_body_never_reaches_the_log(client, kommo, caplog, django_capture_on_commit_callbacks):
    caplog.set_level(logging.DEBUG)

    with django_capture_on_commit_callbacks(execute=True):
        post(client, kommo, body("contact_added"))
        post(client, kommo, body("incoming_message"))
    post(client, kommo, b"leads[status][0][name]=Maria+Lopez&account[id]=31416592")

    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for personal in ("maria.lopez@example.com", "1234 5678", "Мария", "cuánto", "Maria Lopez"):
        assert personal not in logged
    accepted = [r for r in caplog.records if r.getMessage() == "crm.webhook.accepted"]
    assert [(r.changes, r.stored) for r in accepted] == [(1, 1), (1, 1)]


def test_intake_reads_the_integration_once_and_inserts_the_events_in_one_statement(
    client, kommo, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(10) as captured:
        response = post(client, kommo, body("lead_status_changed"))

    assert response.status_code == 200
    statements = [q["sql"] for q in captured.captured_queries]
    data_statements = [s for s in statements if not s.upper().startswith(("SAVEPOINT", "RELEASE"))]
    assert "integrations_integration" in data_statements[0]
    assert len(data_statements) == 3, statements
    assert data_statements[1].startswith('INSERT INTO "crm_crmevent"')
    # a drain is waiting now (SQLite: an upsert; PostgreSQL: an update, or an insert when the row is missing)
    assert data_statements[2].startswith(('INSERT INTO "crm_eventdrain"', 'WITH marked AS (UPDATE "crm_eventdrain"'))
    assert "credentials" not in data_statements[0]  # no decryption on the hot path


def test_with_the_database_broker_the_task_is_queued_in_the_transaction_of_its_events(
    client, kommo, monkeypatch, recorded
):
    monkeypatch.setattr(Conf, "SYNC", False)
    assert Conf.ORM == "default"

    assert post(client, kommo, body("lead_status_changed")).status_code == 200

    (queued,) = OrmQ.objects.all()
    task = SignedPackage.loads(queued.payload)
    assert (task["func"], task["args"], task["save"]) == ("crm.tasks.drain_events", (), False)
    assert recorded == []  # the worker processes it, not the request
    assert CrmEvent.objects.count() == 2


def test_deliveries_while_a_drain_waits_queue_no_other_one(client, kommo, monkeypatch, recorded):
    """A burst of deliveries costs one task: the drain queued by the first takes the
    events of all of them. Once it has started, the next delivery queues another."""
    from crm.drain import events_drain
    from crm.models import EventDrain

    monkeypatch.setattr(Conf, "SYNC", False)
    for name in ("lead_status_changed", "lead_added", "contact_added"):
        assert post(client, kommo, body(name)).status_code == 200
    assert OrmQ.objects.count() == 1
    assert EventDrain.objects.get(pk=1).queued_at is not None

    counts = events_drain()

    assert counts == {"done": 4, "failed": 0, "retrying": 0, "batches": 1}
    assert sorted(call[1] for call in recorded) == sorted(CrmEvent.objects.values_list("id", flat=True))
    assert EventDrain.objects.get(pk=1).queued_at is None
    assert post(client, kommo, body("incoming_message")).status_code == 200
    assert OrmQ.objects.count() == 2


def test_a_delivery_makes_the_drain_row_when_it_is_missing(client, kommo, monkeypatch):
    from crm.models import EventDrain

    monkeypatch.setattr(Conf, "SYNC", False)
    EventDrain.objects.all().delete()  # a flushed table, say

    assert post(client, kommo, body("lead_added")).status_code == 200

    assert EventDrain.objects.get(pk=1).queued_at is not None
    assert OrmQ.objects.count() == 1


def test_with_the_database_broker_a_rolled_back_delivery_queues_nothing(kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    changes = parse_delivery(body("lead_added")).changes

    with pytest.raises(RuntimeError), transaction.atomic():
        intake.delivery_store(integration_id=kommo.id, changes=changes)
        raise RuntimeError("the surrounding transaction fails")

    assert not OrmQ.objects.exists()
    assert not CrmEvent.objects.exists()


def test_nothing_is_queued_when_every_change_is_a_duplicate(kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    changes = parse_delivery(body("lead_added")).changes

    first = intake.delivery_store(integration_id=kommo.id, changes=changes)
    again = intake.delivery_store(integration_id=kommo.id, changes=changes)

    assert (len(first.event_ids), first.duplicates) == (1, 0)
    assert (again.event_ids, again.duplicates) == ((), 1)
    assert OrmQ.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_deliveries_of_the_same_change_store_and_process_it_once(monkeypatch, settings):
    """Two requests with the same body, the second arriving while the first has inserted
    but not committed: the database's unique constraint decides, and exactly one of them
    stores and queues the change."""
    settings.CRM_EVENT_HANDLERS = [recording.FIRST]
    recording.reset()
    integration = make_kommo_integration(make_agent())
    inserted = threading.Event()
    insert = intake._insert_new

    def slow_first_insert(rows, *, using):
        result = insert(rows, using=using)
        if not inserted.is_set():
            inserted.set()
            time.sleep(0.5)  # hold the transaction open while the other request inserts
        return result

    monkeypatch.setattr(intake, "_insert_new", slow_first_insert)
    statuses: list[int] = []

    def deliver(wait: bool) -> None:
        try:
            if wait:
                inserted.wait(5)
            statuses.append(post(Client(), integration, body("lead_updated")).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(wait,)) for wait in (False, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert statuses == [200, 200]
    assert CrmEvent.objects.filter(integration=integration).count() == 1
    assert len(recording.calls) == 1
    recording.reset()


# --- the integration found by key is cached for a few seconds, in the process --------------


def test_a_busy_integrations_key_is_looked_up_once_within_the_cache_time(
    client, kommo, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    one = [("leads[status][0][id]", "1"), ("leads[status][0][last_modified]", "100")]
    two = [("leads[status][0][id]", "2"), ("leads[status][0][last_modified]", "100")]
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(20) as captured:
        assert post(client, kommo, form(*one)).status_code == 200
        assert post(client, kommo, form(*two)).status_code == 200

    assert integration_lookups(captured.captured_queries) == 1
    assert [row[2] for row in stored(kommo)] == [1, 2]


def test_without_the_cache_every_delivery_looks_the_key_up(
    client, kommo, settings, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    settings.CRM_WEBHOOK_TARGET_CACHE_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=False), django_assert_max_num_queries(20) as captured:
        post(client, kommo, form(("leads[status][0][id]", "1"), ("leads[status][0][last_modified]", "1")))
        post(client, kommo, form(("leads[status][0][id]", "2"), ("leads[status][0][last_modified]", "1")))

    assert integration_lookups(captured.captured_queries) == 2


def test_a_cached_key_is_looked_up_again_once_its_time_is_over(client, kommo, monkeypatch, settings):
    settings.CRM_WEBHOOK_TARGET_CACHE_SECONDS = 2
    clock = [1000.0]
    monkeypatch.setattr(intake.time, "monotonic", lambda: clock[0])
    assert intake.webhook_target_get(key=kommo.webhook_key) is not None
    # changed behind the cache's back (no signal), as by another process
    Integration.objects.filter(pk=kommo.pk).update(active=False)

    clock[0] += 1.9
    assert intake.webhook_target_get(key=kommo.webhook_key) is not None
    clock[0] += 0.2
    assert intake.webhook_target_get(key=kommo.webhook_key) is None


def test_a_key_regenerated_after_deliveries_is_404_at_once(client, kommo, django_capture_on_commit_callbacks):
    old_path = webhook_path(kommo)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_added")).status_code == 200

    integration_regenerate_webhook_key(integration=kommo)

    response = client.post(old_path, data=body("lead_status_changed"), content_type=FORM)
    assert (response.status_code, response.content) == (404, b"")
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_status_changed")).status_code == 200


def test_an_integration_deactivated_after_deliveries_is_404_at_once(
    client, kommo, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_added")).status_code == 200

    integration_update(integration=kommo, data={"active": False})

    response = post(client, kommo, body("lead_status_changed"))
    assert (response.status_code, response.content) == (404, b"")
    assert len(stored(kommo)) == 1


def test_an_account_changed_after_deliveries_is_checked_at_once(client, kommo, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_added")).status_code == 200

    integration_update(integration=kommo, data={"config": {"account_id": 99999999}})

    assert post(client, kommo, body("lead_status_changed")).status_code == 403


def test_a_deleted_integrations_key_is_404_at_once(client, kommo, django_capture_on_commit_callbacks):
    path = webhook_path(kommo)
    with django_capture_on_commit_callbacks(execute=True):
        assert post(client, kommo, body("lead_added")).status_code == 200

    kommo.delete()

    response = client.post(path, data=body("lead_status_changed"), content_type=FORM)
    assert (response.status_code, response.content) == (404, b"")


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_in_another_thread_empties_the_cache_at_commit():
    """A delivery cached the integration while the change was not yet committed: the
    entry is dropped again when the change commits."""
    integration = make_kommo_integration(make_agent())
    key = integration.webhook_key
    cached_during_change: list[bool] = []

    def deliver_meanwhile() -> None:
        try:
            cached_during_change.append(intake.webhook_target_get(key=key) is not None)
        finally:
            connection.close()

    with transaction.atomic():
        integration.active = False
        integration.save(update_fields=["active"])  # the signal forgets the key now …
        thread = threading.Thread(target=deliver_meanwhile)
        thread.start()  # … and another request caches the row as committed before
        thread.join(10)
        assert intake._targets.get(key) is not None

    assert cached_during_change == [True]
    assert intake._targets.get(key) is None  # … and at commit it is forgotten again
    assert intake.webhook_target_get(key=key) is None


def test_the_cache_keeps_a_bounded_number_of_keys(kommo, monkeypatch):
    monkeypatch.setattr(intake, "TARGET_CACHE_SIZE", 3)
    others = [make_kommo_integration(make_agent()) for _ in range(3)]
    for integration in [kommo, *others]:
        assert intake.webhook_target_get(key=integration.webhook_key) is not None
        assert len(intake._targets) <= 3
    assert intake.webhook_target_get(key="not-a-key") is None
    assert "not-a-key" not in intake._targets


# --- PostgreSQL with the database broker: events and task in one statement ----------------

postgres_only = pytest.mark.skipif(
    "postgresql" not in django_settings.DATABASES["default"]["ENGINE"], reason="the one-statement path is PostgreSQL's"
)


def queued_tasks() -> list[dict]:
    return [SignedPackage.loads(q.payload) for q in OrmQ.objects.order_by("id")]


@postgres_only
def test_on_postgresql_a_delivery_costs_one_statement(kommo, monkeypatch, django_assert_num_queries, recorded):
    monkeypatch.setattr(Conf, "SYNC", False)
    changes = parse_delivery(body("lead_status_changed")).changes

    with django_assert_num_queries(1) as captured:
        stored = intake.delivery_store(integration_id=kommo.id, changes=changes)

    (statement,) = (q["sql"] for q in captured.captured_queries)
    assert statement.startswith('WITH new AS (INSERT INTO "crm_crmevent"') and '"django_q_ormq"' in statement
    assert [task["func"] for task in queued_tasks()] == ["crm.tasks.drain_events"]
    assert len(stored.event_ids) == len(changes)
    with django_assert_num_queries(1):  # a drain waits: stored, nothing more queued
        intake.delivery_store(integration_id=kommo.id, changes=parse_delivery(body("lead_added")).changes)
    assert OrmQ.objects.count() == 1


@postgres_only
def test_on_postgresql_the_drain_takes_what_the_deliveries_stored(kommo, monkeypatch, recorded):
    from crm.drain import events_drain
    from crm.models import EventDrain

    monkeypatch.setattr(Conf, "SYNC", False)
    first, second = parse_delivery(body("lead_status_changed")).changes
    (earlier,) = intake.delivery_store(integration_id=kommo.id, changes=[first]).event_ids
    stored_now = intake.delivery_store(integration_id=kommo.id, changes=[first, second])
    assert stored_now.duplicates == 1

    assert events_drain() == {"done": 2, "failed": 0, "retrying": 0, "batches": 1}
    assert [call[1] for call in recorded] == [earlier, *stored_now.event_ids]
    assert EventDrain.objects.get(pk=1).queued_at is None


@postgres_only
def test_on_postgresql_a_delivery_makes_the_drain_row_when_it_is_missing(kommo, monkeypatch):
    from crm.models import EventDrain

    monkeypatch.setattr(Conf, "SYNC", False)
    EventDrain.objects.all().delete()

    intake.delivery_store(integration_id=kommo.id, changes=parse_delivery(body("lead_added")).changes)

    assert EventDrain.objects.get(pk=1).queued_at is not None
    assert [task["func"] for task in queued_tasks()] == ["crm.tasks.drain_events"]


@postgres_only
def test_on_postgresql_an_all_duplicate_delivery_queues_nothing(kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    changes = parse_delivery(body("lead_status_changed")).changes
    intake.delivery_store(integration_id=kommo.id, changes=changes)

    again = intake.delivery_store(integration_id=kommo.id, changes=changes)

    assert (again.event_ids, again.duplicates) == ((), len(changes))
    assert OrmQ.objects.count() == 1


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_racing_statements_store_and_queue_a_change_once(monkeypatch):
    """One delivery's statement inserted a change and its transaction is still open; the
    same change arriving meanwhile waits on the unique index, then stores and queues nothing."""
    monkeypatch.setattr(Conf, "SYNC", False)
    integration = make_kommo_integration(make_agent())
    changes = parse_delivery(body("lead_updated")).changes
    inserted, results = threading.Event(), {}

    def first() -> None:
        try:
            with transaction.atomic():
                results["first"] = intake.delivery_store(integration_id=integration.id, changes=changes)
                inserted.set()
                time.sleep(0.5)
        finally:
            connection.close()

    def second() -> None:
        try:
            inserted.wait(5)
            results["second"] = intake.delivery_store(integration_id=integration.id, changes=changes)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results["first"].event_ids) == len(changes)
    assert (results["second"].event_ids, results["second"].duplicates) == ((), len(changes))
    assert CrmEvent.objects.filter(integration=integration).count() == len(changes)
    assert OrmQ.objects.count() == 1


@postgres_only
def test_on_postgresql_a_delivery_logs_one_line_not_django_qs_enqueued_too(client, kommo, monkeypatch, caplog):
    monkeypatch.setattr(Conf, "SYNC", False)
    caplog.set_level(logging.INFO)

    assert post(client, kommo, body("lead_added")).status_code == 200

    assert OrmQ.objects.count() == 1
    # the intake's line and the request line every request has (observability/requestlog.py)
    assert [r.getMessage() for r in caplog.records] == ["crm.webhook.accepted", "http.request"]
