"""Anthropic Messages API through the official SDK.
Reference: https://docs.anthropic.com/en/api/messages
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import AIProvider, ChatMessage, ProviderConfig, Reply
from .errors import AIError
from .sdk_errors import translate_stainless

if TYPE_CHECKING:
    import anthropic

BASE_URL = "https://api.anthropic.com"


class AnthropicClient(AIProvider):
    """``POST {base_url}/v1/messages``: the system prompt is the top-level ``system`` field.

    ``temperature`` is not sent: the API version this SDK speaks (2026-10-21) refuses every
    sampling parameter with a 400, and the SDK no longer offers them.
    """

    name = "anthropic"
    key_setting = "ANTHROPIC_API_KEY"
    base_url_setting = "ANTHROPIC_BASE_URL"
    default_base_url = BASE_URL

    def build_client(self, config: ProviderConfig) -> anthropic.Anthropic:
        import anthropic  # the SDKs take seconds to import: only processes that call a model pay

        return anthropic.Anthropic(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=anthropic.Timeout(config.timeout),
            max_retries=config.max_retries,
            open_telemetry=False,  # no spans carrying prompts to whatever collector is around
        )

    def call(
        self,
        client: anthropic.Anthropic,
        *,
        model: str,
        system: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
    ) -> Reply:
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": m.role, "content": m.text} for m in messages],
        }
        if system:
            params["system"] = system
        response = client.messages.create(**params)
        return Reply(
            text="".join(block.text for block in response.content if block.type == "text"),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            finish_reason=response.stop_reason,
        )

    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        import anthropic

        return translate_stainless(exc, anthropic, provider=self.name, model=model, api_key=api_key)
