"""CRM metadata (fields, pipelines, users, tags): cached for an hour, snapshotted in the DB.

The cache answers the editors quickly; the snapshot (``CrmSnapshot``) keeps the last
known names when the cache is cold and the CRM is unreachable, and is what the admin's
field pickers read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from integrations.models import Integration

from . import connection
from .client import KommoClient
from .models import CrmSnapshot

# kind → (snapshot column, client call)
METADATA: dict[str, tuple[str, Callable[[KommoClient], list[Any]]]] = {
    "lead_fields": ("lead_fields", KommoClient.lead_custom_fields),
    "contact_fields": ("contact_fields", KommoClient.contact_custom_fields),
    "pipelines": ("pipelines", KommoClient.pipelines),
    "users": ("users", KommoClient.users),
    "lead_tags": ("lead_tags", KommoClient.lead_tags),
    "contact_tags": ("contact_tags", KommoClient.contact_tags),
}


def cache_key(integration: Integration, kind: str) -> str:
    return f"crm:meta:{integration.id}:{kind}"


def _fetch(integration: Integration, kind: str, max_wait: float = 120) -> list[dict[str, Any]]:
    _, call = METADATA[kind]
    items = connection.call(integration, call, max_wait=max_wait)
    return [dataclasses.asdict(item) for item in items]


def metadata(integration: Integration, kind: str, *, max_wait: float = 5) -> list[dict[str, Any]]:
    """One kind of metadata: from the cache, else from the CRM (then cached and snapshotted).

    Callers in a web request keep ``max_wait`` short: a busy account answers RateLimited
    (the views then serve the snapshot) instead of holding the request."""
    if kind not in METADATA:
        raise ValueError(f"unknown CRM metadata kind {kind!r}")
    key = cache_key(integration, kind)
    cached = cache.get(key)
    if cached is not None:
        return cached
    items = _fetch(integration, kind, max_wait)
    cache.set(key, items, settings.CRM_METADATA_CACHE_SECONDS)
    column, _ = METADATA[kind]
    snapshot, _ = CrmSnapshot.objects.get_or_create(integration=integration)
    setattr(snapshot, column, items)
    snapshot.synced_at = timezone.now()
    snapshot.save(update_fields=[column, "synced_at"])
    return items


def snapshot_metadata(integration: Integration, kind: str) -> list[dict[str, Any]] | None:
    snapshot = CrmSnapshot.objects.filter(integration=integration).first()
    return getattr(snapshot, METADATA[kind][0]) if snapshot and snapshot.synced_at else None


def sync_metadata(integration: Integration) -> CrmSnapshot:
    """Fetch every kind from the CRM, refresh the cache and the snapshot (all or nothing)."""
    fetched = {kind: _fetch(integration, kind) for kind in METADATA}
    account = connection.call(integration, lambda client: client.account())
    for kind, items in fetched.items():
        cache.set(cache_key(integration, kind), items, settings.CRM_METADATA_CACHE_SECONDS)
    snapshot, _ = CrmSnapshot.objects.get_or_create(integration=integration)
    for kind, items in fetched.items():
        setattr(snapshot, METADATA[kind][0], items)
    snapshot.synced_at = timezone.now()
    snapshot.save()
    config = dict(integration.config or {})
    if config.get("account_id") != account.id:
        config["account_id"] = account.id
        Integration.objects.filter(pk=integration.pk).update(config=config)
        integration.config = config
    return snapshot


def field_names(integration: Integration, kind: str) -> dict[int, str]:
    """Field id → name from the snapshot (for editors), empty when never synced."""
    items = snapshot_metadata(integration, kind) or []
    return {int(item["id"]): item.get("name") or str(item["id"]) for item in items}


def field_names_for_agent(agent_id: int) -> dict[str, dict[int, str]] | None:
    """Lead and contact field names from the snapshot of the agent's Kommo integration
    (the active one synced last), or None when there is none to offer."""
    snapshot = (
        CrmSnapshot.objects.filter(
            integration__agent_id=agent_id,
            integration__integration_type=Integration.Type.KOMMO,
            synced_at__isnull=False,
        )
        .order_by("-integration__active", "-synced_at")
        .first()
    )
    if snapshot is None:
        return None
    return {
        "lead_fields": {int(f["id"]): f.get("name") or str(f["id"]) for f in snapshot.lead_fields},
        "contact_fields": {int(f["id"]): f.get("name") or str(f["id"]) for f in snapshot.contact_fields},
    }


def write_find(
    integration: Integration, kind: str, lead_id: int, text: str, *, since: int, max_wait: float = 120
) -> int | None:
    """The id of the lead's task (``kind`` "task") or note ("note") with this text, changed
    since ``since`` (Unix time), or None; NotFound when the lead is gone.

    How a write whose answer never came (``integrations.errors.Unconfirmed``, or a worker
    that died while making it) is found done instead of being done a second time."""
    if kind == "task":
        items = connection.call(integration, lambda c: c.recent_tasks(lead_id, since=since), max_wait=max_wait)
    elif kind == "note":
        items = connection.call(integration, lambda c: c.recent_notes(lead_id, since=since), max_wait=max_wait)
    else:
        raise ValueError(f"no look-up for {kind!r}")
    wanted = text.strip()
    return next((item_id for item_id, item_text in items if item_text.strip() == wanted), None)


def write_once(
    integration: Integration,
    kind: str,
    lead_id: int,
    text: str,
    write: Callable[[KommoClient], int],
    *,
    verify_since: int | None,
    max_wait: float = 120,
) -> tuple[int, bool]:
    """(id, whether it was found already done) of a task or note made by ``write``. With
    ``verify_since`` (an earlier attempt's write was not confirmed, or its worker died),
    the lead's tasks or notes since then are looked at first, and the write is done only
    when it is not there."""
    if verify_since is not None:
        found = write_find(integration, kind, lead_id, text, since=verify_since, max_wait=max_wait)
        if found is not None:
            return found, True
    return connection.call(integration, write, max_wait=max_wait), False
