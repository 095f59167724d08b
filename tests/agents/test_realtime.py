"""Live events: only their owner's sockets get them, only once committed, each once.

The socket tests drive the deployed ASGI application in this process, so they run with
whatever channel layer the settings choose: the in-memory layer with the database relay
(default), or Redis (``REDIS_URL``). Cross-process delivery is in test_realtime_e2e.py.
"""
from __future__ import annotations

import asyncio
import os
import time
from unittest import mock

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.db import connection, transaction

from agents import realtime
from agents.models import LiveEvent
from agents.realtime import DatabaseRelay, group_name, send_event_on_commit
from tests.asgi_websocket import WebsocketCommunicator
from tests.live_server import login_cookie

ALLOWED_ORIGIN = b"http://localhost"
WAIT = 3  # seconds; the relay polls every 0.1 s in tests


@pytest.fixture(scope="module")
def application():
    # config.asgi turns DATABASE_POOL on for the server process it runs in; keep that out
    # of this process's environment, which the e2e tests' subprocesses inherit.
    with mock.patch.dict(os.environ):
        from config.asgi import application
    return application


@pytest.fixture
async def open_socket(application):
    """``await open_socket(cookie=…)`` → (communicator, accepted); all closed afterwards."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(*, cookie: str | None = None, origin: bytes = ALLOWED_ORIGIN):
        headers = [(b"origin", origin)] + ([(b"cookie", cookie.encode())] if cookie else [])
        communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
        opened.append(communicator)
        accepted, _ = await communicator.connect(timeout=WAIT)
        return communicator, accepted

    yield open_socket
    for communicator in opened:
        try:
            await communicator.disconnect(timeout=WAIT)
        except (asyncio.CancelledError, TimeoutError):  # already stopped by a failed receive
            pass
    # a failed test may have skipped a consumer's disconnect(); stop its relay too
    relay = DatabaseRelay._by_loop.pop(asyncio.get_running_loop(), None)
    if relay and relay.task:
        relay.task.cancel()
        await asyncio.gather(relay.task, return_exceptions=True)


def commit_event(*, owner_id: int, type: str, payload: dict | None = None) -> LiveEvent:
    with transaction.atomic():
        return send_event_on_commit(owner_id=owner_id, type=type, payload=payload or {})


raise_event = database_sync_to_async(commit_event)
cookie_for = database_sync_to_async(login_cookie)


class RolledBack(Exception):
    pass


@database_sync_to_async
def raise_event_and_roll_back(*, owner_id: int) -> None:
    with pytest.raises(RolledBack), transaction.atomic():
        send_event_on_commit(owner_id=owner_id, type="rolled.back", payload={})
        raise RolledBack


def as_sent(event: LiveEvent) -> dict:
    return {
        "id": event.id,
        "type": event.type,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
    }


# --- the socket -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_anonymous_connection_is_refused(open_socket):
    _, accepted = await open_socket(cookie=None)

    assert not accepted


@pytest.mark.django_db(transaction=True)
async def test_connection_with_an_invalid_session_is_refused(open_socket):
    _, accepted = await open_socket(cookie="sessionid=not-a-session")

    assert not accepted


@pytest.mark.django_db(transaction=True)
async def test_connection_from_a_foreign_origin_is_refused(open_socket, user):
    _, accepted = await open_socket(cookie=await cookie_for(user), origin=b"https://evil.example")

    assert not accepted


@pytest.mark.django_db(transaction=True)
async def test_event_reaches_its_owner_and_no_one_else(open_socket, user, other_user):
    owner, accepted = await open_socket(cookie=await cookie_for(user))
    assert accepted
    stranger, accepted = await open_socket(cookie=await cookie_for(other_user))
    assert accepted

    event = await raise_event(owner_id=user.id, type="agent.updated", payload={"agent_id": 7, "name": "Anna"})

    assert await owner.receive_json_from(timeout=WAIT) == as_sent(event)
    # had the stranger got the event, it would come before an event raised after it
    marker = await raise_event(owner_id=other_user.id, type="marker")
    assert await stranger.receive_json_from(timeout=WAIT) == as_sent(marker)
    assert await owner.receive_nothing(timeout=0.3)  # three relay polls: not sent twice


@pytest.mark.django_db(transaction=True)
async def test_each_socket_of_the_owner_gets_the_event(open_socket, user):
    cookie = await cookie_for(user)
    tabs = [(await open_socket(cookie=cookie))[0] for _ in range(2)]

    event = await raise_event(owner_id=user.id, type="sequence.step_done")

    for tab in tabs:
        assert await tab.receive_json_from(timeout=WAIT) == as_sent(event)


@pytest.mark.django_db(transaction=True)
async def test_event_of_a_rolled_back_transaction_is_never_delivered(open_socket, user):
    owner, accepted = await open_socket(cookie=await cookie_for(user))
    assert accepted

    await raise_event_and_roll_back(owner_id=user.id)
    assert not await database_sync_to_async(LiveEvent.objects.filter(type="rolled.back").exists)()
    marker = await raise_event(owner_id=user.id, type="marker")

    # had the rolled-back event been sent, it would come before the one raised after it
    assert await owner.receive_json_from(timeout=WAIT) == as_sent(marker)


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="only the Redis layer reads with a timeout")
@pytest.mark.django_db(transaction=True)
async def test_socket_idle_for_longer_than_redis_read_timeout_still_gets_events(open_socket, user):
    owner, accepted = await open_socket(cookie=await cookie_for(user))
    assert accepted

    await asyncio.sleep(5.5)  # redis-py 8 reads with a 5 s timeout unless told otherwise
    event = await raise_event(owner_id=user.id, type="agent.updated")

    assert await owner.receive_json_from(timeout=WAIT) == as_sent(event)


def commit_event_on_own_connection(**kwargs) -> LiveEvent:
    try:
        return commit_event(**kwargs)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
async def test_event_raised_as_soon_as_the_socket_opens_is_delivered(open_socket, user, monkeypatch):
    """The socket opens only once the relay knows where news starts, however slow that is."""
    start_at_newest = DatabaseRelay.start_at_newest

    def slow_start(self):
        time.sleep(0.3)
        start_at_newest(self)

    monkeypatch.setattr(DatabaseRelay, "start_at_newest", slow_start)
    owner, accepted = await open_socket(cookie=await cookie_for(user))
    assert accepted

    # another thread, like a request served next to the socket: it does not queue behind
    # the relay's start on the consumer's database thread
    event = await asyncio.to_thread(commit_event_on_own_connection, owner_id=user.id, type="agent.updated")

    assert await owner.receive_json_from(timeout=WAIT) == as_sent(event)


# --- the database relay ---------------------------------------------------------------


def make_event(owner, **fields) -> LiveEvent:
    return LiveEvent.objects.create(owner=owner, type=fields.pop("type", "agent.updated"), **fields)


def ids(events: list[LiveEvent]) -> list[int]:
    return [event.id for event in events]


@pytest.mark.django_db
def test_relay_does_not_replay_events_stored_before_it_started(user):
    make_event(user)
    make_event(user)
    relay = DatabaseRelay()
    relay.start_at_newest()

    assert relay.fetch_new() == []
    news = make_event(user)
    assert ids(relay.fetch_new()) == [news.id]


@pytest.mark.django_db
def test_relay_started_on_an_empty_table_delivers_the_first_event(user):
    relay = DatabaseRelay()
    relay.start_at_newest()

    first = make_event(user)

    assert ids(relay.fetch_new()) == [first.id]


@pytest.mark.django_db
def test_relay_delivers_each_event_once_in_id_order(user, other_user):
    relay = DatabaseRelay()
    relay.start_at_newest()
    batch = [make_event(user), make_event(other_user), make_event(user)]

    assert ids(relay.fetch_new()) == ids(batch)
    assert relay.fetch_new() == []
    later = make_event(other_user)
    assert ids(relay.fetch_new()) == [later.id]
    assert relay.fetch_new() == []


@pytest.mark.django_db
def test_relay_delivers_an_event_committed_after_a_newer_one_once(user):
    """PostgreSQL hands out ids at insert, so a lower id can become visible after a higher one."""
    relay = DatabaseRelay()
    relay.start_at_newest()
    first, late, last = make_event(user), make_event(user), make_event(user)
    late_id = late.id
    late.delete()  # its transaction has not committed yet: invisible to the relay

    assert ids(relay.fetch_new()) == [first.id, last.id]
    assert relay.cursor == last.id
    make_event(user, id=late_id, type="late")  # now it commits, below the cursor
    assert ids(relay.fetch_new()) == [late_id]
    assert relay.fetch_new() == []


@pytest.mark.django_db
def test_relay_remembers_only_ids_inside_its_lookback_window(user, monkeypatch):
    monkeypatch.setattr(realtime, "RELAY_LOOKBACK_IDS", 3)
    relay = DatabaseRelay()
    relay.start_at_newest()
    events = [make_event(user) for _ in range(8)]

    assert ids(relay.fetch_new()) == ids(events)
    assert relay.fetch_new() == []
    assert relay.seen == {event.id for event in events if event.id > events[-1].id - 3}


@pytest.mark.django_db(transaction=True)
async def test_relay_retries_a_failed_start_and_then_delivers_news_only(user, settings, monkeypatch):
    """A database hiccup when the first socket connects must not leave the relay dead, nor
    make it poll from id 0 (which would resend every stored event)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    await database_sync_to_async(make_event)(user, type="history")
    start_at_newest, calls = DatabaseRelay.start_at_newest, []

    def start_failing_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database is restarting")
        start_at_newest(self)

    monkeypatch.setattr(DatabaseRelay, "start_at_newest", start_failing_once)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(user.id), channel)
    await DatabaseRelay.attach()
    try:
        await asyncio.sleep(0.5)  # a retried start, then polls: room to replay history, were it wrong
        news = await raise_event(owner_id=user.id, type="news")

        message = await asyncio.wait_for(layer.receive(channel), WAIT)
    finally:
        await DatabaseRelay.detach()

    assert message["event"] == as_sent(news)


@pytest.mark.django_db
def test_many_events_are_stored_together_and_each_reaches_its_owner_on_commit(
    user, other_user, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []

    class Layer:
        async def group_send(self, group, message):
            if message["event"]["payload"].get("n") == 2:
                raise ConnectionError("the layer dropped one")  # the others still go
            sent.append((group, message["event"]["type"], message["event"]["payload"]))

    monkeypatch.setattr(realtime, "layer_is_shared", lambda: True)
    monkeypatch.setattr(realtime, "get_channel_layer", lambda: Layer())
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        stored = realtime.send_events_on_commit(
            [
                {"owner_id": user.id, "type": "trigger.fired", "payload": {"n": 1}},
                {"owner_id": other_user.id, "type": "trigger.fired", "payload": {"n": 2}},
                {"owner_id": other_user.id, "type": "trigger.fired", "payload": {"n": 3}},
            ]
        )
        assert sent == []  # nothing before the commit
    assert len(callbacks) == 1 and all(event.id for event in stored)
    assert LiveEvent.objects.count() == 3
    assert sent == [
        (group_name(user.id), "trigger.fired", {"n": 1}),
        (group_name(other_user.id), "trigger.fired", {"n": 3}),
    ]
