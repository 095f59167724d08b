"""A local HTTP server that answers like OpenAI, Anthropic and Gemini, for the SDKs to talk to.

The SDKs are built on httpx, which `responses` does not intercept; pointing their base URL
here tests the real SDK code: paths, headers, retries, timeouts.

    with FakeAIServer() as server:
        server.fail(500)                     # the next request gets a 500, then success
        ...                                  # base URL: server.url (+ "/v1" for OpenAI)
        server.requests[0].json["messages"]  # what the SDK sent

Routing is by the end of the path, so a base URL with any prefix reaches it:
``…/chat/completions`` (OpenAI), ``…/v1/messages`` (Anthropic),
``…/models/{model}:generateContent`` (Gemini).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GEMINI_PATH = re.compile(r"/models/(?P<model>[^/:]+):generateContent$")

ERROR_TYPES = {  # status → (OpenAI/Anthropic error type, Gemini status)
    400: ("invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "UNAUTHENTICATED"),
    403: ("permission_error", "PERMISSION_DENIED"),
    404: ("not_found_error", "NOT_FOUND"),
    429: ("rate_limit_error", "RESOURCE_EXHAUSTED"),
    500: ("api_error", "INTERNAL"),
    503: ("overloaded_error", "UNAVAILABLE"),
}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    at: float  # time.monotonic() when it arrived


@dataclass
class Failure:
    status: int
    message: str = "something went wrong"
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


class FakeAIServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.reply_text = "Hello from the model"
        self.input_tokens = 12
        self.output_tokens = 5
        self.delay_seconds = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- control ---

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, status: int, *, times: int = 1, message: str = "something went wrong", headers=None) -> None:
        """The next ``times`` requests are answered with ``status`` (in the provider's error format)."""
        self.failures.append(Failure(status, message, dict(headers or {}), times))

    def start(self) -> FakeAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever(), which never ran otherwise
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering ---

    def _next_failure(self) -> Failure | None:
        with self._lock:
            if not self.failures:
                return None
            failure = self.failures[0]
            failure.times -= 1
            if failure.times <= 0:
                self.failures.pop(0)
            return failure

    def _answer(self, recorded: Recorded) -> tuple[int, dict[str, str], dict[str, Any]]:
        path = recorded.path.split("?", 1)[0]
        if path.endswith("/chat/completions"):
            kind = "openai"
        elif path.endswith("/v1/messages"):
            kind = "anthropic"
        elif GEMINI_PATH.search(path):
            kind = "gemini"
        else:
            return 404, {}, {"error": {"message": f"no route for {path}"}}
        failure = self._next_failure()
        if failure is not None:
            return failure.status, failure.headers, error_body(kind, failure.status, failure.message)
        body = recorded.json or {}
        if kind == "openai":
            return 200, {}, self._openai(body)
        if kind == "anthropic":
            return 200, {}, self._anthropic(body)
        return 200, {}, self._gemini(GEMINI_PATH.search(path)["model"])

    def _openai(self, body: dict) -> dict:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply_text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }

    def _anthropic(self, body: dict) -> dict:
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": self.reply_text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        }

    def _gemini(self, model: str) -> dict:
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": self.reply_text}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": self.input_tokens,
                "candidatesTokenCount": self.output_tokens,
                "totalTokenCount": self.input_tokens + self.output_tokens,
            },
            "modelVersion": model,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw) if raw else None
                except ValueError:
                    payload = raw.decode(errors="replace")
                recorded = Recorded(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    json=payload,
                    at=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(recorded)
                if server.delay_seconds:
                    time.sleep(server.delay_seconds)
                status, headers, body = server._answer(recorded)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


def error_body(kind: str, status: int, message: str) -> dict[str, Any]:
    error_type, google_status = ERROR_TYPES.get(status, ("api_error", "UNKNOWN"))
    if kind == "openai":
        return {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    if kind == "anthropic":
        return {"type": "error", "error": {"type": error_type, "message": message}}
    return {"error": {"code": status, "message": message, "status": google_status}}
