"""Live events to a user's browsers, after the transaction commits.

``send_event_on_commit(owner_id=…, type=…, payload=…)`` is the one way to push an event.
It stores the event (``LiveEvent``) in the caller's transaction, so an event exists only
if the change it reports was committed, and then delivers it:

* with a channel layer that crosses processes (Redis, ``REDIS_URL``), it is sent to the
  owner's group on commit, from whichever process raised it (web or worker);
* with the in-memory layer (the embedded default), another process cannot reach the
  ASGI server's sockets, so every ASGI process that has sockets open runs a relay that
  reads new ``LiveEvent`` rows from the database every ``LIVE_EVENTS_POLL_SECONDS`` and
  sends them to its own in-memory groups. An event raised in the worker reaches the
  browser within that interval.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction

from .models import LiveEvent

logger = logging.getLogger(__name__)

# The relay re-reads this many ids below the newest one it has seen, so that an event
# whose transaction commits after a later one (PostgreSQL without Redis) is not skipped.
RELAY_LOOKBACK_IDS = 200


def group_name(user_id: int) -> str:
    return f"user.{user_id}"


def as_message(event: LiveEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
    }


def layer_is_shared() -> bool:
    """True when the channel layer reaches every process (so no database relay is needed)."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def send_event_on_commit(*, owner_id: int, type: str, payload: dict[str, Any]) -> LiveEvent:
    event = LiveEvent.objects.create(owner_id=owner_id, type=type, payload=payload)
    if layer_is_shared():
        transaction.on_commit(lambda: _deliver(event))
    return event


def send_events_on_commit(events: list[dict[str, Any]]) -> list[LiveEvent]:
    """``send_event_on_commit`` for many events (dicts of its arguments): one insert, and
    one hand-over to the channel layer on commit."""
    if not events:
        return []
    stored = LiveEvent.objects.bulk_create([LiveEvent(**event) for event in events])
    if layer_is_shared():
        transaction.on_commit(lambda: _deliver(*stored))
    return stored


def _deliver(*events: LiveEvent) -> None:
    async def send() -> None:
        layer = get_channel_layer()
        for event in events:
            try:
                await layer.group_send(group_name(event.owner_id), {"type": "live.event", "event": as_message(event)})
            except Exception:  # the change is committed; a lost push must not fail it
                logger.exception("realtime.deliver.failed", extra={"event_id": event.id})

    try:
        async_to_sync(send)()
    except Exception:
        logger.exception("realtime.deliver.failed", extra={"event_ids": [event.id for event in events]})


class DatabaseRelay:
    """Per event loop: polls LiveEvent rows and sends them to the in-memory layer."""

    _by_loop: dict[asyncio.AbstractEventLoop, DatabaseRelay] = {}

    def __init__(self) -> None:
        self.users = 0
        self.task: asyncio.Task | None = None
        self.cursor = 0
        self.seen: set[int] = set()
        self.ready: asyncio.Future | None = None

    @classmethod
    async def attach(cls) -> None:
        if layer_is_shared():
            return
        loop = asyncio.get_running_loop()
        relay = cls._by_loop.setdefault(loop, cls())
        relay.users += 1
        if relay.task is None or relay.task.done():
            relay.ready = loop.create_future()
            relay.task = loop.create_task(relay.run())
        # a socket is "connected" once the relay knows where the news starts
        await asyncio.shield(relay.ready)

    @classmethod
    async def detach(cls) -> None:
        loop = asyncio.get_running_loop()
        relay = cls._by_loop.get(loop)
        if relay is None:
            return
        relay.users -= 1
        if relay.users <= 0:
            cls._by_loop.pop(loop, None)
            if relay.task:
                relay.task.cancel()

    async def run(self) -> None:
        layer = get_channel_layer()
        # A failed start (database restarting) is retried, not fatal: a dead relay would
        # leave every open socket of this process without events. It must not poll before
        # it knows where the news starts, or it would resend every stored event. Sockets
        # are not kept waiting for the retries.
        while True:
            try:
                await database_sync_to_async(self.start_at_newest)()
                break
            except Exception:
                logger.exception("realtime.relay.start_failed")
            finally:
                if not self.ready.done():
                    self.ready.set_result(None)
            await asyncio.sleep(settings.LIVE_EVENTS_POLL_SECONDS)
        while True:
            try:
                for event in await database_sync_to_async(self.fetch_new)():
                    await layer.group_send(
                        group_name(event.owner_id), {"type": "live.event", "event": as_message(event)}
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("realtime.relay.failed")
            await asyncio.sleep(settings.LIVE_EVENTS_POLL_SECONDS)

    def start_at_newest(self) -> None:
        """Events that exist before the first socket connects are history, not news."""
        self.cursor = LiveEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        self.seen = set(
            LiveEvent.objects.filter(id__gt=self.cursor - RELAY_LOOKBACK_IDS).values_list("id", flat=True)
        )

    def fetch_new(self) -> list[LiveEvent]:
        floor = self.cursor - RELAY_LOOKBACK_IDS
        fresh = set(LiveEvent.objects.filter(id__gt=floor).values_list("id", flat=True)) - self.seen
        if not fresh:
            return []
        events = list(LiveEvent.objects.filter(id__in=fresh).order_by("id"))
        self.seen |= fresh
        self.cursor = max(self.cursor, max(fresh))
        self.seen = {i for i in self.seen if i > self.cursor - RELAY_LOOKBACK_IDS}
        return events
