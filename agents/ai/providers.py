"""The registry of AI providers by ai_model prefix, and the one call the rest of the code makes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .anthropic_client import AnthropicClient
from .base import AIProvider, ChatMessage, Completion, Tool, ToolChoice, redact_keys_in_logs
from .errors import AIConfigError
from .gemini_client import GeminiClient
from .openai_client import OpenAIClient

logger = logging.getLogger("agents.ai")

# "openai:gpt-4o-mini" → PROVIDERS["openai"]. agents.schemas.AI_PROVIDERS names the same keys.
PROVIDERS: dict[str, AIProvider] = {p.name: p for p in (OpenAIClient(), AnthropicClient(), GeminiClient())}

# The loggers through which the SDKs (and their HTTP stack) log requests, responses and
# retries. A filter on a logger applies to its own records only, hence the full names.
SDK_LOGGERS = (
    "openai",
    "openai._base_client",
    "anthropic",
    "anthropic._base_client",
    "google_genai",
    "google_genai._api_client",
    "google_genai.models",
    "google_genai._common",
    "google_genai.types",
    "httpx2",
)
redact_keys_in_logs(SDK_LOGGERS, [p.key_setting for p in PROVIDERS.values()])


def provider_for(model_spec: str) -> tuple[AIProvider, str]:
    """The provider and model name of an agent's ``ai_model``; AIConfigError for an unknown provider."""
    prefix, sep, model = (model_spec or "").partition(":")
    provider = PROVIDERS.get(prefix)
    if not sep or not model or provider is None:
        raise AIConfigError(
            f"unknown AI model {model_spec!r} (expected provider:model, provider one of {', '.join(PROVIDERS)})",
            provider=prefix,
            model=model,
        )
    return provider, model


def complete(
    model_spec: str,
    system: str,
    messages: Sequence[ChatMessage],
    *,
    max_tokens: int = 1000,
    temperature: float = 0.7,
    tools: Sequence[Tool] | None = None,
    tool_choice: ToolChoice = "auto",
) -> Completion:
    """The model's next assistant turn after ``messages``, ``system`` being the agent's instructions.

    With ``tools``, the turn may be a request to call some of them (``Completion.tool_calls``,
    the text then possibly empty); ``tool_choice="none"`` keeps them in the request but asks
    for text. agents.ai.tools.run_tools runs the calls and asks again.

    Raises agents.ai.errors: AIConfigError (no key, refused key, unknown provider),
    AIRateLimited / AITransientError (worth retrying later), AIPermanentError.
    """
    try:
        provider, model = provider_for(model_spec)
    except AIConfigError as exc:
        logger.info(
            "ai.request",
            extra={"provider": exc.provider, "model": exc.model, "outcome": "config_error", "error": "AIConfigError"},
        )
        raise
    return provider.complete(
        model=model,
        system=system,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        tools=tools,
        tool_choice=tool_choice,
    )


def configured_providers() -> dict[str, bool]:
    """Which providers have an API key set."""
    return {name: provider.is_configured() for name, provider in PROVIDERS.items()}
