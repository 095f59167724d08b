"""The one interface every AI provider implements, and what goes in and comes out of it.

A provider reads its key and base URL from settings (environment variables only), builds
its SDK client once per process and reuses it, and turns the SDK's exceptions into
agents.ai.errors. Timing, the log line, the usage metrics and the "key missing" check happen here, the
same for every provider.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from django.conf import settings

from observability import metrics

from .errors import AIConfigError, AIError, AIPermanentError, AIRateLimited, AITransientError

logger = logging.getLogger("agents.ai")

Role = Literal["user", "assistant", "tool"]
ROLES = ("user", "assistant", "tool")

# "auto": the model decides whether to call a tool; "none": it must answer in text, though
# the tools (and earlier tool turns) stay in the request.
ToolChoice = Literal["auto", "none"]
TOOL_CHOICES = ("auto", "none")

# What OpenAI, Anthropic and Gemini all accept as a function name.
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Tool:
    """A function the model may ask us to call: its name, what it is for, and its arguments
    as a JSON Schema object (``{"type": "object", "properties": {…}, "required": […]}``)."""

    name: str
    description: str
    parameters: dict

    def __post_init__(self) -> None:
        if not TOOL_NAME.fullmatch(self.name or ""):
            raise ValueError(f"tool name must match {TOOL_NAME.pattern}, got {self.name!r}")
        if not isinstance(self.parameters, dict):
            raise ValueError(f"tool {self.name}: parameters must be a JSON Schema object (a dict)")
        if not self.parameters:  # no arguments; Anthropic requires a schema all the same
            object.__setattr__(self, "parameters", {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """The model asking for one tool call.

    ``error`` is set, and ``arguments`` empty, when the model's arguments were not a JSON
    object: run_tools answers such a call with ``{"error": error}`` so the model can try
    again. ``signature`` is Gemini's thought signature of the call, which must go back with
    it in the conversation (opaque, base64).
    """

    id: str
    name: str
    arguments: dict
    error: str = ""
    signature: str = field(default="", repr=False)


@dataclass(frozen=True)
class ChatMessage:
    """One turn of the conversation.

    "user": the lead. "assistant": the agent; an assistant turn that called tools carries
    them in ``tool_calls`` (its ``text`` may be empty). "tool": the result of one tool call,
    ``text`` being its JSON, ``tool_call_id`` and ``name`` those of the call (see
    ``ChatMessage.tool_result``).
    """

    role: Role
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant turn may carry tool_calls")
        if self.role == "tool" and not (self.tool_call_id and self.name):
            raise ValueError("a tool turn needs the tool_call_id and name of the call it answers")

    @classmethod
    def tool_result(cls, call: ToolCall, result: Any) -> ChatMessage:
        """The turn answering ``call`` with ``result`` (JSON-encoded; dates and the like as strings)."""
        return cls(
            "tool",
            json.dumps(result, ensure_ascii=False, default=str),
            tool_call_id=call.id,
            name=call.name,
        )


@dataclass(frozen=True)
class Completion:
    """The model's reply and what it cost.

    ``tool_calls``: the tools the model asks to call (then ``text`` may be empty).
    ``tool_log``: after run_tools, every call it ran with the result the model was given.
    """

    text: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_log: tuple[tuple[ToolCall, dict], ...] = ()


@dataclass(frozen=True)
class Reply:
    """What a provider's SDK call returns, before timing is added."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


def parse_arguments(raw: str | None) -> tuple[dict, str]:
    """Arguments the model wrote as JSON text (OpenAI) → (arguments, error)."""
    if raw is None or not raw.strip():  # some OpenAI-compatible servers send "" for no arguments
        return {}, ""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return {}, f"the arguments were not valid JSON ({exc}); call the tool again with a JSON object"
    if not isinstance(value, dict):
        return {}, "the arguments were not a JSON object; call the tool again with a JSON object"
    return value, ""


@dataclass(frozen=True)
class ProviderConfig:
    api_key: str
    base_url: str
    timeout: float
    max_retries: int

    def __repr__(self) -> str:  # the key must not reach a log line or a traceback's locals
        return f"ProviderConfig(base_url={self.base_url!r}, timeout={self.timeout}, max_retries={self.max_retries})"


# --- SDK clients: one per process and configuration -----------------------------------

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def cached_client(provider: str, config: ProviderConfig, build: Callable[[ProviderConfig], Any]) -> Any:
    """The SDK client for this configuration, built on first use in this process.

    Keyed by the process id too: a client (its connection pool) must not be shared with a
    forked worker process.
    """
    key_digest = hashlib.sha256(config.api_key.encode()).hexdigest()
    cache_key = (os.getpid(), provider, config.base_url, key_digest, config.timeout, config.max_retries)
    client = _clients.get(cache_key)
    if client is None:
        with _clients_lock:
            client = _clients.get(cache_key)
            if client is None:
                client = _clients[cache_key] = build(config)
    return client


def clear_client_cache() -> None:
    with _clients_lock:
        _clients.clear()


def redact(text: str, secret: str, limit: int = 300) -> str:
    """``text`` without ``secret`` in it, shortened to ``limit`` characters."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RedactKeys(logging.Filter):
    """Takes the configured API keys out of log records.

    Attached to the SDKs' loggers: google-genai logs the provider's error body when it
    retries, and a server may quote the key it was sent.
    """

    def __init__(self, key_settings: Sequence[str]) -> None:
        super().__init__()
        self.key_settings = tuple(key_settings)

    def filter(self, record: logging.LogRecord) -> bool:
        keys = [key for key in (getattr(settings, name, "") for name in self.key_settings) if key]
        if keys:
            message = record.getMessage()
            if any(key in message for key in keys):
                for key in keys:
                    message = message.replace(key, "[redacted]")
                record.msg, record.args = message, None
        return True


def redact_keys_in_logs(logger_names: Sequence[str], key_settings: Sequence[str]) -> None:
    redactor = RedactKeys(key_settings)
    for name in logger_names:
        sdk_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in sdk_logger.filters):
            sdk_logger.addFilter(redactor)


# --- Whose usage: the agent a request is made for -------------------------------------

# complete() does not know the agent it answers for; the caller that does says so around
# its calls, and the tokens count towards that agent (metrics, the ai.request line).
_usage_agent: ContextVar[int | None] = ContextVar("ai_usage_agent", default=None)


@contextmanager
def usage_for_agent(agent_id: int | None) -> Iterator[None]:
    """AI requests made inside count towards ``agent_id`` in the usage metrics (and the
    ai.request line names it): ``with usage_for_agent(agent.pk): ai.complete(…)``."""
    token = _usage_agent.set(agent_id)
    try:
        yield
    finally:
        _usage_agent.reset(token)


def _count_usage(record: dict[str, Any]) -> None:
    """The ai.request line's facts as metrics: one request, and its tokens when known."""
    agent = _usage_agent.get()
    labels = {"provider": record["provider"], "model": record["model"], "agent": "" if agent is None else str(agent)}
    metrics.count(metrics.AI_REQUESTS, outcome=record["outcome"], **labels)
    for direction in ("input", "output"):
        tokens = record.get(f"{direction}_tokens")
        if tokens:
            metrics.count(metrics.AI_TOKENS, tokens, direction=direction, **labels)


# --- The interface ----------------------------------------------------------------------


class AIProvider(ABC):
    """One vendor's chat model API. Subclasses implement ``build_client``, ``call`` and ``translate``."""

    name: ClassVar[str]  # the prefix of ai_model: "openai" in "openai:gpt-4o-mini"
    key_setting: ClassVar[str]  # e.g. "OPENAI_API_KEY"
    base_url_setting: ClassVar[str]  # e.g. "OPENAI_BASE_URL"
    default_base_url: ClassVar[str]

    def is_configured(self) -> bool:
        return bool((getattr(settings, self.key_setting, "") or "").strip())

    def config(self) -> ProviderConfig:
        """The settings of this provider; AIConfigError when its key is not set."""
        api_key = (getattr(settings, self.key_setting, "") or "").strip()
        if not api_key:
            raise AIConfigError(f"{self.key_setting} is not set", provider=self.name)
        return ProviderConfig(
            api_key=api_key,
            base_url=(getattr(settings, self.base_url_setting, "") or "").strip() or self.default_base_url,
            timeout=float(settings.AI_TIMEOUT_SECONDS),
            max_retries=int(settings.AI_MAX_RETRIES),
        )

    def client(self, config: ProviderConfig) -> Any:
        return cached_client(self.name, config, self.build_client)

    def complete(
        self,
        *,
        model: str,
        system: str,
        messages: Sequence[ChatMessage],
        max_tokens: int = 1000,
        temperature: float = 0.7,
        tools: Sequence[Tool] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Completion:
        """Ask ``model`` for the next assistant turn; one ``ai.request`` log line whatever happens.

        With ``tools`` the turn may be tool calls (``Completion.tool_calls``) instead of text.
        """
        if not messages:
            raise ValueError("messages must not be empty")
        if tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)}, got {tool_choice!r}")
        tools = tuple(tools or ())
        started = time.monotonic()
        record: dict[str, Any] = {
            "provider": self.name,
            "model": model,
            "messages": len(messages),
            "prompt_chars": len(system) + sum(_chars(m) for m in messages),
            "max_tokens": max_tokens,
        }
        if tools:
            record.update(tools=len(tools), tool_choice=tool_choice)
        if _usage_agent.get() is not None:
            record["agent_id"] = _usage_agent.get()
        api_key = ""
        try:
            config = self.config()
            api_key = config.api_key
            try:
                reply = self.call(
                    self.client(config),
                    model=model,
                    system=system,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    tools=tools,
                    tool_choice=tool_choice,
                )
            except AIError:
                raise
            except Exception as exc:
                raise self.translate(exc, model=model, api_key=api_key) from exc
            if not reply.text.strip() and not reply.tool_calls:
                record.update(input_tokens=reply.input_tokens, output_tokens=reply.output_tokens)
                raise AIPermanentError(
                    f"{self.name} {model} returned no text (finish reason: {reply.finish_reason or 'unknown'})",
                    provider=self.name,
                    model=model,
                )
        except AIError as exc:
            exc.provider, exc.model = exc.provider or self.name, exc.model or model
            record.update(
                outcome=_outcome(exc),
                error=type(exc).__name__,
                status=exc.status,
                latency_ms=_ms_since(started),
            )
            logger.info("ai.request", extra=record)
            _count_usage(record)
            raise
        completion = Completion(
            text=reply.text,
            provider=self.name,
            model=model,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            latency_ms=_ms_since(started),
            finish_reason=reply.finish_reason,
            tool_calls=reply.tool_calls,
        )
        record.update(
            outcome="success",
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            latency_ms=completion.latency_ms,
            finish_reason=completion.finish_reason,
            reply_chars=len(completion.text),
        )
        if completion.tool_calls:  # names only: the arguments are the lead's data
            record["tool_calls"] = [call.name for call in completion.tool_calls]
        logger.info("ai.request", extra=record)
        _count_usage(record)
        return completion

    # --- what each vendor implements ---

    @abstractmethod
    def build_client(self, config: ProviderConfig) -> Any:
        """The vendor SDK's client with this key, base URL, timeout and retry budget."""

    @abstractmethod
    def call(
        self,
        client: Any,
        *,
        model: str,
        system: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[Tool],
        tool_choice: ToolChoice,
    ) -> Reply:
        """One request through the SDK (whose own retries apply); ``tools`` may be empty."""

    @abstractmethod
    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        """The typed error for an SDK exception; its message must not contain ``api_key``."""


def _chars(message: ChatMessage) -> int:
    return len(message.text) + sum(len(json.dumps(c.arguments, default=str)) for c in message.tool_calls)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _outcome(exc: AIError) -> str:
    if isinstance(exc, AIConfigError):
        return "config_error"
    if isinstance(exc, AIRateLimited):
        return "rate_limited"
    if isinstance(exc, AITransientError):
        return "transient_error"
    return "permanent_error"
