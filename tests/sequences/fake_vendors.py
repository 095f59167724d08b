"""Kommo's task and note endpoints and Telegram's sendMessage on a local port, for a real
worker process to talk to. Every write is recorded the moment its body has arrived,
before the answer goes out: a worker killed while it waits for the answer leaves a write
the vendor has done and the worker does not know about, as with the real services.

    with FakeVendors(latency=0.1) as vendors:
        integration.config = {"base_url": vendors.url}   # Kommo and Telegram alike
        ...
        vendors.writes                                   # every task, note and message

Kommo: ``POST /api/v4/tasks``, ``POST /api/v4/leads/<id>/notes``, and the look-ups a
recovered step makes: ``GET /api/v4/tasks?filter[entity_id][]=<lead>&filter[updated_at][from]=<ts>``,
``GET /api/v4/leads/<id>/notes?filter[updated_at][from]=<ts>`` (204 when there is none),
``GET /api/v4/leads/<id>``. Telegram: ``POST /bot<token>/sendMessage``.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NOTES_PATH = re.compile(r"/api/v4/leads/(?P<lead>\d+)/notes")
LEAD_PATH = re.compile(r"/api/v4/leads/(?P<lead>\d+)")
SEND_MESSAGE_PATH = re.compile(r"/bot[^/]+/sendMessage")


@dataclass(frozen=True)
class Write:
    kind: str  # task, note, message
    target: int  # the lead (task, note) or the chat (message)
    text: str
    id: int  # the id the vendor gave it
    at: float  # Unix time: Kommo's updated_at


class FakeVendors(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency = latency  # between recording a write and answering it
        self.writes: list[Write] = []
        self.lookups = 0
        self._lock = threading.Lock()
        self._ids = iter(range(5_000_001, 10**9))
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeVendors:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        pass  # a killed worker leaves its connections half-way: not the server's error

    def record(self, kind: str, target: int, text: str) -> Write:
        with self._lock:
            write = Write(kind, target, text, next(self._ids), time.time())
            self.writes.append(write)
        return write

    def recorded(self, kind: str, target: int, since: float) -> list[Write]:
        with self._lock:
            self.lookups += 1
            return [w for w in self.writes if w.kind == kind and w.target == target and w.at >= since]

    def count(self) -> int:
        with self._lock:
            return len(self.writes)


class _Handler(BaseHTTPRequestHandler):
    server: FakeVendors
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, data: Any = None, *, wait: bool = False) -> None:
        if wait and self.server.latency:
            time.sleep(self.server.latency)
        body = b"" if data is None else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if len(raw) < length:  # the sender died half-way: nothing arrived
            raise ConnectionAbortedError
        return json.loads(raw)

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        since = float((query.get("filter[updated_at][from]") or ["0"])[0])
        if url.path == "/api/v4/tasks":
            lead = int(query["filter[entity_id][]"][0])
            found = [{"id": w.id, "text": w.text} for w in self.server.recorded("task", lead, since)]
            return self._answer(200, {"_embedded": {"tasks": found}}) if found else self._answer(204)
        if match := NOTES_PATH.fullmatch(url.path):
            found = [
                {"id": w.id, "note_type": "common", "params": {"text": w.text}}
                for w in self.server.recorded("note", int(match["lead"]), since)
            ]
            return self._answer(200, {"_embedded": {"notes": found}}) if found else self._answer(204)
        if match := LEAD_PATH.fullmatch(url.path):
            lead = int(match["lead"])
            return self._answer(200, {"id": lead, "name": f"Lead {lead}", "status_id": 1, "pipeline_id": 2})
        self._answer(404, {"title": "Not found"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        try:
            body = self._body()
        except ConnectionAbortedError:
            return
        if path == "/api/v4/tasks":
            created = [self.server.record("task", int(t["entity_id"]), t["text"]) for t in body]
            return self._answer(200, {"_embedded": {"tasks": [{"id": w.id} for w in created]}}, wait=True)
        if match := NOTES_PATH.fullmatch(path):
            lead = int(match["lead"])
            created = [self.server.record("note", lead, n["params"]["text"]) for n in body]
            notes = [{"id": w.id, "entity_id": lead} for w in created]
            return self._answer(200, {"_embedded": {"notes": notes}}, wait=True)
        if SEND_MESSAGE_PATH.fullmatch(path):
            sent = self.server.record("message", int(body["chat_id"]), body["text"])
            result = {
                "message_id": sent.id,
                "chat": {"id": sent.target, "type": "private"},
                "date": int(sent.at),
                "text": sent.text,
            }
            return self._answer(200, {"ok": True, "result": result}, wait=True)
        self._answer(404, {"title": "Not found"})
