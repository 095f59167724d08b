"""A local HTTP server that answers like OpenAI, Anthropic and Gemini, for the SDKs to talk to.

The SDKs are built on httpx, which `responses` does not intercept; pointing their base URL
here tests the real SDK code: paths, headers, retries, timeouts.

    with FakeAIServer() as server:
        server.fail(500)                     # the next request gets a 500, then success
        ...                                  # base URL: server.url (+ "/v1" for OpenAI)
        server.requests[0].json["messages"]  # what the SDK sent

Tool calling is scripted: each ``answer(...)`` is used by one successful request, in order;
once they are spent the server answers ``reply_text``.

        server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"})])
        server.answer(text="Monday at 10:00 is free.")

Like the real APIs, it refuses (400, in the provider's format) a conversation in which a
tool call has no result, a result answers no call, or — Gemini — a function call it signed
comes back without its thought signature.

Routing is by the end of the path, so a base URL with any prefix reaches it:
``…/chat/completions`` (OpenAI), ``…/v1/messages`` (Anthropic),
``…/models/{model}:generateContent`` (Gemini).
"""

from __future__ import annotations

import base64
import binascii
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


@dataclass(frozen=True)
class FakeToolCall:
    name: str
    arguments: dict[str, Any] | str  # a str is sent as it is (OpenAI's arguments are JSON text)
    id: str = ""  # OpenAI / Anthropic: "call_<n>" / "toolu_<n>" when empty; Gemini: none when empty
    signature: str = ""  # Gemini's thoughtSignature (base64; compared as bytes, as Gemini does)


@dataclass
class Answer:
    text: str = ""
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    input_tokens: int | None = None  # the server's defaults when None
    output_tokens: int | None = None


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
        self.answers: list[Answer] = []
        self.signatures: set[bytes] = set()  # Gemini thought signatures handed out
        self._call_count = 0
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

    def answer(
        self,
        text: str = "",
        *,
        tool_calls: list[FakeToolCall] | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """The next successful request not yet scripted gets this answer."""
        self.answers.append(Answer(text, list(tool_calls or []), input_tokens, output_tokens))

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
        invalid = {"openai": openai_invalid, "anthropic": anthropic_invalid, "gemini": self._gemini_invalid}[kind](body)
        if invalid:
            return 400, {}, error_body(kind, 400, invalid)
        answer = self._next_answer()
        if kind == "openai":
            return 200, {}, self._openai(body, answer)
        if kind == "anthropic":
            return 200, {}, self._anthropic(body, answer)
        return 200, {}, self._gemini(GEMINI_PATH.search(path)["model"], answer)

    def _next_answer(self) -> Answer:
        with self._lock:
            if self.answers:
                answer = self.answers.pop(0)
            else:
                answer = Answer(self.reply_text)
            return Answer(
                answer.text,
                answer.tool_calls,
                self.input_tokens if answer.input_tokens is None else answer.input_tokens,
                self.output_tokens if answer.output_tokens is None else answer.output_tokens,
            )

    def _call_id(self, call: FakeToolCall, prefix: str) -> str:
        if call.id:
            return call.id
        with self._lock:
            self._call_count += 1
            return f"{prefix}{self._call_count}"

    def _openai(self, body: dict, answer: Answer) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
        if answer.tool_calls:
            message["tool_calls"] = [
                {
                    "id": self._call_id(call, "call_"),
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments),
                    },
                }
                for call in answer.tool_calls
            ]
        elif not answer.text:
            message["content"] = ""
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if answer.tool_calls else "stop"}
            ],
            "usage": {
                "prompt_tokens": answer.input_tokens,
                "completion_tokens": answer.output_tokens,
                "total_tokens": answer.input_tokens + answer.output_tokens,
            },
        }

    def _anthropic(self, body: dict, answer: Answer) -> dict:
        content: list[dict[str, Any]] = [{"type": "text", "text": answer.text}] if answer.text else []
        content += [
            {"type": "tool_use", "id": self._call_id(call, "toolu_"), "name": call.name, "input": call.arguments}
            for call in answer.tool_calls
        ]
        if not content:
            content = [{"type": "text", "text": ""}]
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": "tool_use" if answer.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
        }

    def _gemini(self, model: str, answer: Answer) -> dict:
        parts: list[dict[str, Any]] = [{"text": answer.text}] if answer.text or not answer.tool_calls else []
        for call in answer.tool_calls:
            function_call: dict[str, Any] = {"name": call.name, "args": call.arguments}
            if call.id:
                function_call["id"] = call.id
            part: dict[str, Any] = {"functionCall": function_call}
            if call.signature:
                part["thoughtSignature"] = call.signature
                with self._lock:
                    self.signatures.add(signature_bytes(call.signature))
            parts.append(part)
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": answer.input_tokens,
                "candidatesTokenCount": answer.output_tokens,
                "totalTokenCount": answer.input_tokens + answer.output_tokens,
            },
            "modelVersion": model,
        }

    def _gemini_invalid(self, body: dict) -> str:
        with self._lock:
            signatures = set(self.signatures)
        return gemini_invalid(body, signatures)

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


# --- what the real APIs refuse ----------------------------------------------------------


def openai_invalid(body: dict) -> str:
    """Every tool call answered by a tool message right after it, and no other tool messages."""
    pending: list[str] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'."
                )
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}"
            )
        if role == "assistant":
            pending = [call.get("id") for call in message.get("tool_calls") or []]
    return ""


def anthropic_invalid(body: dict) -> str:
    """Every tool_use answered in the very next (user) message, which opens with the tool_result blocks."""
    messages = body.get("messages") or []
    uses_tools = False
    for index, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        used = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        uses_tools = uses_tools or bool(used or results)
        if used:
            following = messages[index + 1]["content"] if index + 1 < len(messages) else []
            following = following if isinstance(following, list) else []
            answered = [b.get("tool_use_id") for b in following if b.get("type") == "tool_result"]
            missing = [i for i in used if i not in answered]
            if missing:
                return (
                    f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` "
                    "block in the next message."
                )
        if results:
            previous = messages[index - 1]["content"] if index else []
            previous = previous if isinstance(previous, list) else []
            asked = [b.get("id") for b in previous if b.get("type") == "tool_use"]
            unknown = [i for i in results if i not in asked]
            if unknown or message.get("role") != "user":
                return (
                    f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{', '.join(unknown) or results[0]}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            if any(b.get("type") != "tool_result" for b in blocks[: len(results)]):
                return f"messages.{index}: `tool_result` blocks must come first in the message content."
    if uses_tools and not body.get("tools"):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    return ""


def signature_bytes(value: str | None) -> bytes | None:
    """A bytes field of Google's JSON: standard or URL-safe base64, padded or not."""
    if not value:
        return None
    value = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def gemini_invalid(body: dict, signatures: set[bytes]) -> str:
    """As many function responses as the function calls of the turn before, and signatures back."""
    contents = body.get("contents") or []
    for index, content in enumerate(contents):
        parts = content.get("parts") or []
        calls = [p for p in parts if "functionCall" in p]
        responses = [p for p in parts if "functionResponse" in p]
        for part in calls:
            if signatures and signature_bytes(part.get("thoughtSignature")) not in signatures:
                name = part["functionCall"].get("name")
                return f"Function call is missing a thought_signature in functionCall parts. ({name}, index {index})"
        if calls:
            following = (contents[index + 1].get("parts") or []) if index + 1 < len(contents) else []
            answered = [p for p in following if "functionResponse" in p]
            if len(answered) != len(calls):
                return (
                    "Please ensure that the number of function response parts is equal to the number of "
                    "function call parts of the function call turn."
                )
        if responses and not (index and any("functionCall" in p for p in contents[index - 1].get("parts") or [])):
            return "Please ensure that function response turn comes immediately after a function call turn."
    return ""
