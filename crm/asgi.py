"""The Kommo webhook intake as a plain ASGI application, in front of Django's.

Under an ASGI server every Django request goes through the middleware stack, and each
of Django's own middlewares hands its work to a thread and back: about 1.7 ms of CPU
per request on this project's 2-core reference machine, before the view does anything,
which capped webhook intake near 450 deliveries/s with p99 above 200 ms
(docs/benchmarks.md). Webhooks need none of that middleware (no session, user, CSRF,
CORS or redirects), so ``POST /api/webhooks/crm/<key>`` is answered here: the headers
are checked and the body read on the event loop (never more than the limit plus one
byte, chunked or not), then crm/intake.py checks and stores the delivery in one hop to
a thread of this module's own, which keeps its database connection between deliveries.

Everything else, including any request this front is not sure about (another method, a
path with more segments, a Host not in ALLOWED_HOSTS), goes to Django unchanged, where
crm/views.py gives the same answers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host

from observability.requestlog import ANONYMOUS, log_request

from . import intake

logger = logging.getLogger(__name__)

PREFIX = "/api/webhooks/crm/"
VIEW_NAME = "crm-webhook"  # the URL name of the view (crm/views.py) answering the same requests
# At most this many deliveries are stored at a time by one server process, each thread
# holding one database connection (bounded by the pool's size when the pool is on). More
# threads only contend for the GIL and the CPU: with 2 processes on 2 cores, 3-4 threads
# took 946-1,228 deliveries/s and 8 threads 845 (docs/benchmarks.md).
MAX_THREADS = 4


class WebhookIntake:
    def __init__(self, app):
        self.app = app
        self._executor: ThreadPoolExecutor | None = None

    async def __call__(self, scope, receive, send):
        key = _webhook_key(scope)
        headers = _headers(scope) if key is not None else {}
        if key is None or not _host_allowed(headers):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        answer = intake.delivery_precheck(
            content_type=headers.get("content-type", ""), content_length=headers.get("content-length")
        )
        if answer is None:
            body = await _read_body(receive, settings.CRM_WEBHOOK_MAX_BYTES + 1)
            if body is None:
                return  # the sender went away; nothing was stored
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.executor(), _receive, key, body)
        await _respond(send, answer)
        # the request line Django's middleware writes for every other request
        log_request(
            method="POST",
            path=scope["path"],
            status=answer.status,
            seconds=time.perf_counter() - started,
            user=ANONYMOUS,
            view=VIEW_NAME,
        )

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
            size = pool.get("max_size", MAX_THREADS) if isinstance(pool, dict) else MAX_THREADS
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, min(MAX_THREADS, size)), thread_name_prefix="crm-webhook"
            )
        return self._executor


def _webhook_key(scope) -> str | None:
    """The key of a webhook delivery this front answers, else None."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path: str = scope.get("path", "")
    if not path.startswith(PREFIX):
        return None
    key = path[len(PREFIX) :]
    return key if key and "/" not in key else None


def _host_allowed(headers: dict[str, str]) -> bool:
    # otherwise Django answers 400 and logs DisallowedHost, as for any other URL
    domain, _port = split_domain_port(headers.get("host", ""))
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def _receive(key: str, body: bytes) -> intake.Answer:
    # what Django does at the start and end of each request: drop a connection that
    # broke or is past its age (with the pool: hand it back)
    close_old_connections()
    try:
        return intake.delivery_receive(key=key, body=body)
    finally:
        close_old_connections()


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}


async def _read_body(receive, limit: int) -> bytes | None:
    """The request body, cut at ``limit`` bytes (the rest is not read); None when the
    client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                return b"".join(chunks)[:limit]
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send, answer: intake.Answer) -> None:
    body = answer.text.encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
