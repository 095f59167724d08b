"""WebSocket consumer of live events: it authenticates, joins the user's group, relays."""
from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

import tenancy

from .realtime import DatabaseRelay, group_name

UNAUTHORIZED = 4401


class EventsConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=UNAUTHORIZED)
            return
        self.group = group_name(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        # Accept only once the relay has read where the news starts: an event committed
        # after the client sees the socket open must not be taken for history.
        with tenancy.system():  # the relay it may start reads every socket's events
            await DatabaseRelay.attach()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is None:
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await DatabaseRelay.detach()

    async def receive_json(self, content, **kwargs) -> None:
        if content == {"type": "ping"}:
            await self.send_json({"type": "pong"})

    async def live_event(self, message: dict) -> None:
        await self.send_json(message["event"])
