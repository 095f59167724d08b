"""OpenAI Chat Completions (and OpenAI-compatible servers) through the official SDK.
Reference: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import AIProvider, ChatMessage, ProviderConfig, Reply
from .errors import AIError
from .sdk_errors import translate_stainless

if TYPE_CHECKING:
    import openai

BASE_URL = "https://api.openai.com/v1"


class OpenAIClient(AIProvider):
    """``POST {base_url}/chat/completions``: the system prompt is the first message."""

    name = "openai"
    key_setting = "OPENAI_API_KEY"
    base_url_setting = "OPENAI_BASE_URL"
    default_base_url = BASE_URL

    def build_client(self, config: ProviderConfig) -> openai.OpenAI:
        import openai  # the SDKs take seconds to import: only processes that call a model pay

        return openai.OpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=openai.Timeout(config.timeout),
            max_retries=config.max_retries,
        )

    def call(
        self,
        client: openai.OpenAI,
        *,
        model: str,
        system: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
    ) -> Reply:
        chat = [{"role": "system", "content": system}] if system else []
        chat += [{"role": m.role, "content": m.text} for m in messages]
        # max_tokens rather than max_completion_tokens: OpenAI-compatible servers know it.
        response = client.chat.completions.create(
            model=model, messages=chat, max_tokens=max_tokens, temperature=temperature
        )
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Reply(
            text=(choice.message.content or "") if choice else "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason if choice else None,
        )

    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        import openai

        return translate_stainless(exc, openai, provider=self.name, model=model, api_key=api_key)
