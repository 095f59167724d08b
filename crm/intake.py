"""Webhook intake: find the integration a delivery is for, store its changes as CRM
events once, and queue a drain of them unless one is waiting (crm/drain.py). No CRM or AI call happens here: this runs
inside the webhook request, the hottest path of the product.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from django.utils.http import parse_header_parameters
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.tasks import async_task

from config.logging import QUEUED_IN_STATEMENT
from config.tasks import enqueue_with_transaction, queues_in_database
from integrations.models import Integration

from .drain import DRAIN_ROW, DRAIN_TASK
from .models import CrmEvent, EventDrain
from .webhooks import Change, WebhookParseError, parse_delivery

logger = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"

# 11 parameters a row: 500 rows stay under SQLite's 32,766 and PostgreSQL's 65,535
INSERT_BATCH = 500
_INSERT_FIELDS = (
    "integration",
    "kind",
    "entity_type",
    "entity_id",
    "lead_id",
    "data",
    "dedupe_key",
    "status",
    "attempts",
    "error",
    "received_at",
)


@dataclass(frozen=True)
class WebhookTarget:
    """What the intake needs of an integration (its credentials are not loaded)."""

    integration_id: int
    agent_id: int
    account_id: str  # config["account_id"] as text; "" when not set

    def accepts_account(self, account_id: int | None) -> bool:
        return not self.account_id or self.account_id == str(account_id)


@dataclass(frozen=True)
class StoredDelivery:
    event_ids: tuple[int, ...]  # the new events, in order
    duplicates: int  # changes already stored (or repeated within the delivery)


# Integrations found by webhook key, for a few seconds: a busy integration's deliveries
# (Kommo sends bursts) then cost no query each. A change saved in this process drops its
# entries at once (the signals below); other processes see it within the TTL.
TARGET_CACHE_SIZE = 1024
_targets: dict[str, tuple[float, WebhookTarget]] = {}


@dataclass(frozen=True)
class Answer:
    """What the webhook endpoint answers, whichever server front (crm/views.py under
    WSGI and tests, crm/asgi.py under ASGI) received the delivery."""

    status: int
    text: str = ""


def delivery_precheck(*, content_type: str, content_length: str | None) -> Answer | None:
    """The answer for a delivery refused on its headers alone (413, 415), or None."""
    try:
        declared = int(content_length or 0)
    except ValueError:
        declared = 0
    if declared > settings.CRM_WEBHOOK_MAX_BYTES:
        return _reject(413, "too_large", message="the body is too large")
    media_type, _ = parse_header_parameters(content_type or "")
    if media_type != FORM:
        return _reject(415, "content_type", message=f"expected {FORM}")
    return None


def delivery_receive(*, key: str, body: bytes) -> Answer:
    """Check and store one delivery: 200 once its changes are stored (or were before),
    404 for a key that is not an active Kommo integration's, 413/400/403 for a body too
    large, not parsing, or from another account. The caller reads at most
    ``CRM_WEBHOOK_MAX_BYTES + 1`` bytes. The body is never logged: it holds personal data."""
    target = webhook_target_get(key=key)
    if target is None:
        # nothing that tells a scanner whether the key, the type or the state was wrong
        logger.warning("crm.webhook.rejected", extra={"reason": "unknown_key"})
        return Answer(404)
    if len(body) > settings.CRM_WEBHOOK_MAX_BYTES:
        return _reject(413, "too_large", target.integration_id, "the body is too large")
    try:
        delivery = parse_delivery(body)
    except WebhookParseError as exc:
        return _reject(400, "bad_body", target.integration_id, str(exc))
    if not target.accepts_account(delivery.account_id):
        return _reject(403, "wrong_account", target.integration_id, "the account does not match this integration")
    stored = delivery_store(integration_id=target.integration_id, changes=delivery.changes)
    logger.info(
        "crm.webhook.accepted",
        extra={
            "integration_id": target.integration_id,
            "changes": len(delivery.changes),
            "stored": len(stored.event_ids),
            "duplicates": stored.duplicates,
            "skipped": delivery.skipped,
        },
    )
    return Answer(200)


def _reject(status: int, reason: str, integration_id: int | None = None, message: str = "") -> Answer:
    logger.warning(
        "crm.webhook.rejected", extra={"reason": reason, "integration_id": integration_id, "detail": message}
    )
    return Answer(status, message or reason)


def webhook_target_get(*, key: str) -> WebhookTarget | None:
    """The active Kommo integration whose secret webhook key this is, or None.

    Cached in this process for ``CRM_WEBHOOK_TARGET_CACHE_SECONDS`` (default 2 s; 0
    turns the cache off): a key regenerated or an integration deactivated in another
    process may still be accepted for that long. Unknown keys are never cached."""
    if not key or len(key) > Integration._meta.get_field("webhook_key").max_length:
        return None
    ttl = settings.CRM_WEBHOOK_TARGET_CACHE_SECONDS
    now = time.monotonic()
    if ttl > 0:
        cached = _targets.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
    target = _webhook_target_query(key)
    if ttl > 0 and target is not None:
        if len(_targets) >= TARGET_CACHE_SIZE:
            _targets.clear()
        _targets[key] = (now + ttl, target)
    return target


def webhook_targets_forget(*, integration_id: int | None = None) -> None:
    """Drop the cached targets of this integration (of all integrations: None)."""
    if integration_id is None:
        _targets.clear()
        return
    for key, (_, target) in list(_targets.items()):
        if target.integration_id == integration_id:
            _targets.pop(key, None)


@receiver(post_save, sender=Integration, dispatch_uid="crm.intake.integration_saved")
@receiver(post_delete, sender=Integration, dispatch_uid="crm.intake.integration_deleted")
def _integration_changed(sender, instance: Integration, using: str, **kwargs) -> None:
    # now, for this transaction's own later requests, and again once it commits, in case
    # a concurrent request cached the row as it was before the commit
    integration_id = instance.pk
    webhook_targets_forget(integration_id=integration_id)
    transaction.on_commit(lambda: webhook_targets_forget(integration_id=integration_id), using=using)


def _webhook_target_query(key: str) -> WebhookTarget | None:
    # Raw SQL: building this query through the ORM takes ~0.2 ms, twice the query's own
    # round trip (measured on PostgreSQL), on every delivery
    meta = Integration._meta
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {qn('id')}, {qn('agent_id')}, {qn('config')} FROM {qn(meta.db_table)} "
            f"WHERE {qn('webhook_key')} = %s AND {qn('active')} AND {qn('integration_type')} = %s",
            [key, Integration.Type.KOMMO],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    integration_id, agent_id, config = row
    config = meta.get_field("config").from_db_value(config, None, connection)
    account = config.get("account_id") if isinstance(config, dict) else None
    return WebhookTarget(
        integration_id=integration_id,
        agent_id=agent_id,
        account_id="" if account in (None, "") else str(account).strip(),
    )


def delivery_store(*, integration_id: int, changes: Sequence[Change]) -> StoredDelivery:
    """Store each change not stored before as a pending CRM event and, when some were new
    and no drain is waiting, queue one (crm/drain.py), all or nothing.

    A change is "the same" when its dedupe key is (crm/webhooks.py). The unique
    (integration, dedupe_key) constraint decides, inside the database, which of two
    racing deliveries stores a change: ``INSERT … ON CONFLICT DO NOTHING RETURNING``
    returns only the rows this transaction inserted.
    """
    now = timezone.now()
    unique: dict[str, Change] = {}
    for change in changes:
        unique.setdefault(change.dedupe_key(integration_id, received_at=now.timestamp()), change)
    if not unique:
        return StoredDelivery(event_ids=(), duplicates=0)
    rows = [
        {
            "integration": integration_id,
            "kind": change.kind,
            "entity_type": change.entity_type,
            "entity_id": change.entity_id,
            "lead_id": change.lead_id,
            "data": change.data,
            "dedupe_key": key,
            "status": CrmEvent.Status.PENDING,
            "attempts": 0,
            "error": "",
            "received_at": now,
        }
        for key, change in unique.items()
    ]
    using = DEFAULT_DB_ALIAS
    if len(rows) <= INSERT_BATCH and _queue_in_statement(using):
        new_by_key = _insert_new_and_queue(rows, using=using)
        event_ids = tuple(new_by_key[key] for key in unique if key in new_by_key)
        return StoredDelivery(event_ids=event_ids, duplicates=len(changes) - len(event_ids))
    with transaction.atomic(using=using):
        new_by_key: dict[str, int] = {}
        for start in range(0, len(rows), INSERT_BATCH):
            new_by_key.update(_insert_new(rows[start : start + INSERT_BATCH], using=using))
        # in delivery order, which is the CRM's order of the changes
        event_ids = tuple(new_by_key[key] for key in unique if key in new_by_key)
        if event_ids and _drain_mark(using=using):
            enqueue_with_transaction(DRAIN_TASK, using=using)
    return StoredDelivery(event_ids=event_ids, duplicates=len(changes) - len(event_ids))


def _insert_new(rows: list[dict[str, Any]], *, using: str) -> dict[str, int]:
    """Insert the rows whose dedupe key is new; {dedupe_key: id} of those inserted.

    Raw SQL because the ORM's ``bulk_create(ignore_conflicts=True)`` does not say which
    rows it inserted, and selecting them again afterwards cannot tell our rows from a
    racing request's. SQLite (≥ 3.35) and PostgreSQL both speak this statement.
    """
    connection = connections[using]
    if connection.vendor not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"webhook intake needs PostgreSQL or SQLite, not {connection.vendor}")
    sql, params = _insert_statement(rows, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {key: pk for pk, key in cursor.fetchall()}


def _insert_statement(rows: list[dict[str, Any]], connection) -> tuple[str, list[Any]]:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING id, dedupe_key`` of the rows, and its parameters."""
    meta = CrmEvent._meta
    fields = [meta.get_field(name) for name in _INSERT_FIELDS]
    qn = connection.ops.quote_name
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES {', '.join([placeholders] * len(rows))} "
        f"ON CONFLICT ({qn('integration_id')}, {qn('dedupe_key')}) DO NOTHING "
        f"RETURNING {qn(meta.pk.column)}, {qn('dedupe_key')}"
    )
    params: list[Any] = []
    for row in rows:
        params.extend(field.get_db_prep_save(row[field.name], connection) for field in fields)
    return sql, params


def _drain_mark(*, using: str) -> bool:
    """Mark a drain waiting unless one is; True when this call marked it (and so queues it)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(_drain_mark_sql(connection.vendor, connection.ops.quote_name), _drain_mark_params(connection))
        return cursor.fetchone() is not None


def _drain_mark_params(connection) -> list[Any]:
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    return [DRAIN_ROW, now] if connection.vendor == "sqlite" else [now, DRAIN_ROW, DRAIN_ROW, now, DRAIN_ROW]


@functools.cache
def _drain_mark_sql(vendor: str, qn: Callable[[str], str]) -> str:
    table, queued_at, pk = qn(EventDrain._meta.db_table), qn("queued_at"), qn("id")
    if vendor == "sqlite":  # one writer at a time: the upsert's lock costs nothing
        return (
            f"INSERT INTO {table} ({pk}, {queued_at}) VALUES (%s, %s) ON CONFLICT ({pk}) DO UPDATE SET "
            f"{queued_at} = excluded.{queued_at} WHERE {table}.{queued_at} IS NULL RETURNING {pk}"
        )
    return f"WITH {_drain_mark_ctes(qn, '')} SELECT {pk} FROM marked UNION ALL SELECT {pk} FROM made"


def _drain_mark_ctes(qn: Callable[[str], str], only_if: str) -> str:
    """PostgreSQL: ``marked`` (the row went from no drain waiting to one) and ``made`` (the
    row was missing, a flushed table say). A plain UPDATE, not an upsert: an upsert locks
    the row in every delivery's transaction, and deliveries would commit one at a time;
    this one touches it only when no drain is waiting. Parameters: the time, the row's id,
    the row's id, the time, the row's id."""
    table, queued_at, pk = qn(EventDrain._meta.db_table), qn("queued_at"), qn("id")
    return (
        f"marked AS (UPDATE {table} SET {queued_at} = %s WHERE {pk} = %s AND {queued_at} IS NULL{only_if} "
        f"RETURNING {pk}), "
        f"made AS (INSERT INTO {table} ({pk}, {queued_at}) SELECT %s, %s WHERE NOT EXISTS "
        f"(SELECT 1 FROM {table} WHERE {pk} = %s){only_if} ON CONFLICT ({pk}) DO NOTHING RETURNING {pk})"
    )


def _queue_in_statement(using: str) -> bool:
    """Whether the drain can be queued by the statement that stores the events: on
    PostgreSQL with django-q2's ORM broker on the same database."""
    return connections[using].vendor == "postgresql" and queues_in_database(using)


class _Capture:
    """A stand-in broker for ``async_task``: keeps the signed package django-q2 builds,
    which the caller then writes into the ORM broker's table itself."""

    def __init__(self):
        self.list_key = Conf.CLUSTER_NAME
        self.package: str | None = None

    def enqueue(self, package: str) -> str:
        self.package = package
        return QUEUED_IN_STATEMENT  # django-q2 logs "Enqueued [..] <this>": not shown


def _insert_new_and_queue(rows: list[dict[str, Any]], *, using: str) -> dict[str, int]:
    """PostgreSQL: ``_insert_new``, ``_drain_mark`` and queueing the drain in one
    statement, which is atomic by itself: one round trip, and no ORM save. The drain's
    task row is written only when the events were new and no drain was waiting."""
    connection = connections[using]
    meta = CrmEvent._meta
    qn = connection.ops.quote_name
    capture = _Capture()
    async_task(DRAIN_TASK, save=False, broker=capture)
    insert, params = _insert_statement(rows, connection)
    queue = OrmQ._meta
    sql = (
        f"WITH new AS ({insert}), "
        f"{_drain_mark_ctes(qn, ' AND EXISTS (SELECT 1 FROM new)')}, "
        f"queued AS (INSERT INTO {qn(queue.db_table)} ({qn('key')}, {qn('payload')}, {qn('lock')}) "
        f"SELECT %s, %s, %s WHERE EXISTS (SELECT 1 FROM marked) OR EXISTS (SELECT 1 FROM made)) "
        f"SELECT {qn(meta.pk.column)}, {qn('dedupe_key')} FROM new"
    )
    params += _drain_mark_params(connection)
    # as django-q2's ORM broker writes a task (django_q/brokers/orm.py)
    params += [capture.list_key or Conf.CLUSTER_NAME, capture.package, timezone.now()]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {key: pk for pk, key in cursor.fetchall()}
