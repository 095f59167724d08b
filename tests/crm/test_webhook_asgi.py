"""The webhook intake's ASGI front (crm/asgi.py): the same answers as the Django view,
without Django's middleware, and the body read no further than the limit."""
from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from unittest import mock

import pytest
from django.core.asgi import get_asgi_application
from django_q.conf import Conf
from django_q.models import OrmQ

from crm import intake
from crm.asgi import WebhookIntake
from crm.models import CrmEvent
from crm.webhooks import parse_delivery
from tests.crm.webhook_helpers import FORM, body, make_kommo_integration, webhook_path
from tests.live_server import AsgiServer, _http

pytestmark = pytest.mark.django_db(transaction=True)  # the front stores from its own thread


@dataclass
class Reply:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    passed_on: bool = False  # the front handed the request to the app behind it
    bytes_read: int = 0  # of the request body, by whoever answered


class Behind:
    """The app behind the front: records what it was given and answers 299."""

    def __init__(self):
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"behind"})


@pytest.fixture
def front():
    app = WebhookIntake(Behind())
    yield app
    if app._executor is not None:
        app._executor.shutdown(wait=True)


@pytest.fixture(autouse=True)
def _no_cached_targets():
    intake.webhook_targets_forget()
    yield
    intake.webhook_targets_forget()


@pytest.fixture
def kommo(agent):
    return make_kommo_integration(agent)


def call(
    app,
    path: str,
    chunks: list[bytes] | None = None,
    *,
    method: str = "POST",
    content_type: str | None = FORM,
    content_length: bool = True,
    host: str = "testserver",
    disconnect_after: int | None = None,
) -> Reply:
    """One request through ``app`` as an ASGI server would make it. ``chunks`` are the
    body's parts (sent with more_body); ``disconnect_after`` N parts, the client leaves."""
    chunks = [b""] if chunks is None else chunks
    headers = [(b"host", host.encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    if content_length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    if disconnect_after is not None:
        messages = [*messages[:disconnect_after], {"type": "http.disconnect"}]
    reply = Reply()

    async def receive():
        if not messages:
            await asyncio.Future()  # the client stays, as a real one would; never returns
        message = messages.pop(0)
        reply.bytes_read += len(message.get("body", b""))
        return message

    async def send(message):
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    behind = getattr(app, "app", None)
    reply.passed_on = isinstance(behind, Behind) and bool(behind.scopes)
    return reply


def test_a_delivery_is_stored_and_acknowledged_without_django(front, kommo):
    data = body("lead_status_changed")

    reply = call(front, webhook_path(kommo), [data])

    assert (reply.status, reply.body, reply.passed_on) == (200, b"", False)
    assert reply.headers["content-length"] == "0"
    expected = [(kommo.id, c.kind, c.lead_id) for c in parse_delivery(data).changes]
    assert list(CrmEvent.objects.order_by("id").values_list("integration_id", "kind", "lead_id")) == expected


def test_a_body_in_several_parts_is_read_whole(front, kommo):
    data = body("lead_status_changed")

    reply = call(front, webhook_path(kommo), [data[:100], data[100:700], data[700:]])

    assert reply.status == 200
    assert CrmEvent.objects.count() == len(parse_delivery(data).changes)


def test_a_repeated_delivery_is_stored_once(front, kommo):
    for _ in range(2):
        assert call(front, webhook_path(kommo), [body("lead_updated")]).status == 200

    assert CrmEvent.objects.count() == 1


def test_with_the_database_broker_the_delivery_queues_one_task(front, kommo, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)

    assert call(front, webhook_path(kommo), [body("lead_added")]).status == 200

    assert OrmQ.objects.count() == 1
    assert CrmEvent.objects.get().status == CrmEvent.Status.PENDING


def test_an_unknown_key_is_404_with_an_empty_body(front, kommo):
    reply = call(front, "/api/webhooks/crm/not-a-key", [body("lead_added")])

    assert (reply.status, reply.body, reply.passed_on) == (404, b"", False)
    assert not CrmEvent.objects.exists()


def test_a_body_that_does_not_parse_is_400_and_logged(front, kommo, caplog):
    caplog.set_level(logging.WARNING, logger="crm.intake")

    reply = call(front, webhook_path(kommo), [b"leads[status][0][name]=no+id&account[id]=31416592"])

    assert reply.status == 400
    assert b"without an id" in reply.body
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert [r.reason for r in caplog.records if r.getMessage() == "crm.webhook.rejected"] == ["bad_body"]
    assert not CrmEvent.objects.exists()


def test_another_accounts_delivery_is_403(front, kommo):
    reply = call(front, webhook_path(kommo), [body("lead_added").replace(b"31416592", b"99999999")])

    assert reply.status == 403
    assert not CrmEvent.objects.exists()


def test_a_body_that_is_not_form_data_is_415_unread(front, kommo):
    reply = call(front, webhook_path(kommo), [b'{"leads": {}}'], content_type="application/json")

    assert (reply.status, reply.bytes_read) == (415, 0)


def test_a_declared_body_over_the_limit_is_413_unread(front, kommo, settings):
    settings.CRM_WEBHOOK_MAX_BYTES = 1000

    reply = call(front, webhook_path(kommo), [body("lead_updated")])

    assert (reply.status, reply.bytes_read) == (413, 0)
    assert not CrmEvent.objects.exists()


def test_a_chunked_body_over_the_limit_is_413_after_reading_only_about_the_limit(front, kommo, settings):
    settings.CRM_WEBHOOK_MAX_BYTES = 1000
    chunks = [b"x" * 300] * 100  # 30 kB, no Content-Length

    reply = call(front, webhook_path(kommo), chunks, content_length=False)

    assert reply.status == 413
    assert reply.bytes_read == 1200  # four parts: the first that crosses the limit ends the read
    assert not CrmEvent.objects.exists()


def test_a_body_at_the_limit_is_accepted(front, kommo, settings):
    data = body("lead_added")
    settings.CRM_WEBHOOK_MAX_BYTES = len(data)

    assert call(front, webhook_path(kommo), [data], content_length=False).status == 200


def test_a_sender_that_leaves_mid_body_gets_no_answer_and_nothing_is_stored(front, kommo):
    data = body("lead_added")

    reply = call(front, webhook_path(kommo), [data[:50], data[50:]], disconnect_after=1)

    assert reply.status is None
    assert not CrmEvent.objects.exists()


@pytest.mark.parametrize(
    ("method", "path", "host"),
    [
        ("GET", "/api/webhooks/crm/KEY", "testserver"),  # Django answers 405
        ("POST", "/api/webhooks/crm/KEY/extra", "testserver"),  # and 404
        ("POST", "/api/webhooks/crm/", "testserver"),
        ("POST", "/api/agents/", "testserver"),
        ("POST", "/api/webhooks/crm/KEY", "evil.example.com"),  # and 400 DisallowedHost
    ],
)
def test_anything_else_goes_to_django(front, kommo, method, path, host):
    path = path.replace("KEY", kommo.webhook_key)

    reply = call(front, path, [body("lead_added")], method=method, host=host)

    assert (reply.status, reply.passed_on) == (299, True)
    assert not CrmEvent.objects.exists()


def test_websocket_and_lifespan_scopes_go_to_the_app_behind():
    seen = []

    async def behind(scope, receive, send):
        seen.append(scope["type"])

    app = WebhookIntake(behind)
    for kind in ("websocket", "lifespan"):
        asyncio.run(app({"type": kind, "path": "/api/webhooks/crm/x"}, None, None))

    assert seen == ["websocket", "lifespan"]


def test_in_front_of_django_the_other_answers_are_djangos(kommo):
    app = WebhookIntake(get_asgi_application())
    try:
        assert call(app, webhook_path(kommo), method="GET").status == 405
        assert call(app, webhook_path(kommo) + "/extra", [body("lead_added")]).status == 404
        assert call(app, webhook_path(kommo), [body("lead_added")], host="evil.example.com").status == 400
        assert call(app, webhook_path(kommo), [body("lead_added")]).status == 200
    finally:
        if app._executor is not None:
            app._executor.shutdown(wait=True)
    assert CrmEvent.objects.count() == 1


def test_the_deployed_asgi_application_has_the_front():
    # config.asgi turns DATABASE_POOL on for its process: kept out of this one's environment
    with mock.patch.dict(os.environ):
        from config.asgi import application

    assert isinstance(application.application_mapping["http"], WebhookIntake)


@pytest.mark.e2e
def test_under_the_real_asgi_server_a_delivery_is_answered_by_the_front(kommo, tmp_path):
    """uvicorn with config.asgi: a delivery is stored, and the answer carries none of
    the headers Django's middleware adds (so the front answered, not the view); a GET
    still reaches Django."""
    server = AsgiServer.start(log_path=tmp_path / "uvicorn.log")
    try:
        url = server.origin + webhook_path(kommo)
        request = urllib.request.Request(
            url, data=body("lead_added"), headers={"Content-Type": FORM}, method="POST"
        )
        with _http.open(request, timeout=10) as response:
            assert response.status == 200
            assert "X-Frame-Options" not in response.headers
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http.open(url, timeout=10)
        assert refused.value.code == 405
        assert "X-Frame-Options" in refused.value.headers
    finally:
        server.stop()
    assert CrmEvent.objects.filter(integration=kommo).count() == 1
