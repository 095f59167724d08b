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
