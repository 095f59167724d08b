"""Webhook intake: find the integration a delivery is for, store its changes as CRM
events once, and queue their processing. No CRM or AI call happens here: this runs
inside the webhook request, the hottest path of the product.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from django_q.conf import Conf
from django_q.tasks import async_task

from integrations.models import Integration

from .dispatch import PROCESS_TASK
from .models import CrmEvent
from .webhooks import Change

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
    """Store each change not stored before as a pending CRM event and queue one task
    that processes the new ones, all or nothing.

    A change is "the same" when its dedupe key is (crm/webhooks.py). The unique
    (integration, dedupe_key) constraint decides, inside the database, which of two
    racing deliveries stores a change: ``INSERT … ON CONFLICT DO NOTHING RETURNING``
    returns only the rows this transaction inserted, so exactly one delivery queues it.
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
    with transaction.atomic(using=using):
        new_by_key: dict[str, int] = {}
        for start in range(0, len(rows), INSERT_BATCH):
            new_by_key.update(_insert_new(rows[start : start + INSERT_BATCH], using=using))
        # in delivery order, which is the CRM's order of the changes
        event_ids = tuple(new_by_key[key] for key in unique if key in new_by_key)
        if event_ids:
            _enqueue(list(event_ids), using=using)
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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {key: pk for pk, key in cursor.fetchall()}


def _enqueue(event_ids: list[int], *, using: str) -> None:
    """One task for the delivery's new events, existing only if the events do.

    django-q2's ORM broker writes the task into this same database: queued inside the
    transaction it commits or rolls back with the events, and costs ~0.5 ms instead of a
    connection check (shared/notes/measured-here.md). Any other broker, or synchronous
    tasks (tests), cannot join the transaction: those are queued once it commits.
    """
    # save=False: the events record their own outcome, and saving every successful
    # task's result costs the worker more than the task (django-q2 reads all kept
    # results on each save); failed tasks are still kept
    if Conf.ORM == using and not Conf.SYNC and not Conf.BROKER_CLASS:
        async_task(PROCESS_TASK, event_ids, save=False)
    else:
        transaction.on_commit(lambda: async_task(PROCESS_TASK, event_ids, save=False), using=using)
