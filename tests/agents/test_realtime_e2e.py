"""Live events raised in another process (the worker) reach the browser's socket on a real
ASGI server: through Redis when ``REDIS_URL`` is set, else through the database relay."""
from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.live_server import AsgiServer, login_cookie, run_worker_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WAIT = 5  # seconds for an event to arrive

# Stands in for a django-q2 task: raises events the way services do, in their own
# transactions, after a transaction that rolls back. Prints what it committed.
WORKER = """
import json, sys
from django.db import transaction
from agents.realtime import as_message, send_event_on_commit

owner_id, stranger_id = int(sys.argv[1]), int(sys.argv[2])

class RolledBack(Exception):
    pass

try:
    with transaction.atomic():
        send_event_on_commit(owner_id=owner_id, type="rolled.back", payload={})
        raise RolledBack
except RolledBack:
    pass
with transaction.atomic():
    event = send_event_on_commit(owner_id=owner_id, type="sequence.step_done", payload={"run_id": 42})
with transaction.atomic():
    stranger_marker = send_event_on_commit(owner_id=stranger_id, type="marker", payload={})
with transaction.atomic():
    owner_marker = send_event_on_commit(owner_id=owner_id, type="marker", payload={})
print(json.dumps([as_message(e) for e in (event, stranger_marker, owner_marker)]))
"""


@pytest.fixture
def server(transactional_db, tmp_path):
    server = AsgiServer.start(log_path=tmp_path / "uvicorn.log")
    try:
        yield server
    finally:
        server.stop()  # before the test database is flushed or dropped


@pytest.fixture
def cookies(user, other_user) -> tuple[str, str]:
    return login_cookie(user), login_cookie(other_user)


def socket(server: AsgiServer, cookie: str | None):
    headers = {"Cookie": cookie} if cookie else {}
    return connect(
        server.ws_url("/ws/events/"), origin=server.origin, additional_headers=headers,
        proxy=None, open_timeout=WAIT,
    )  # fmt: skip


async def next_event(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def test_event_raised_in_the_worker_reaches_its_owner_socket_only(server, cookies, user, other_user):
    owner_cookie, stranger_cookie = cookies

    async with socket(server, owner_cookie) as owner, socket(server, stranger_cookie) as stranger:
        output = await asyncio.to_thread(run_worker_script, WORKER, str(user.id), str(other_user.id))
        event, stranger_marker, owner_marker = json.loads(output)

        # in commit order: nothing rolled back, nothing of someone else's, nothing twice
        assert await next_event(owner) == event, server.log()
        assert await next_event(owner) == owner_marker
        assert await next_event(stranger) == stranger_marker


async def test_server_refuses_a_socket_without_a_session(server):
    with pytest.raises(InvalidStatus) as refused:
        async with socket(server, cookie=None):
            pass

    assert refused.value.response.status_code == 403
