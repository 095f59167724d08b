"""The AI models offered to agents: a curated list per provider, cached for a day.

The list is advice for editors, not a limit: ai_model accepts any model name of a known
provider (an OpenAI-compatible server has its own names). It lists models that accept what
the providers send (a system prompt, max_tokens and, except Anthropic, a temperature).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.core.cache import cache

from ..schemas import AI_PROVIDERS, DEFAULT_AI_MODEL
from .providers import PROVIDERS, configured_providers

CACHE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ModelInfo:
    provider: str
    model: str
    name: str
    description: str

    @property
    def id(self) -> str:
        """The agent's ai_model value for this model."""
        return f"{self.provider}:{self.model}"


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("openai", "gpt-4o-mini", "GPT-4o mini", "Fast and inexpensive; a good default for sales chats."),
    ModelInfo("openai", "gpt-4o", "GPT-4o", "More capable than mini for nuanced conversations; slower and dearer."),
    ModelInfo("openai", "gpt-4.1-mini", "GPT-4.1 mini", "Follows long instructions well at a low price."),
    ModelInfo("openai", "gpt-4.1", "GPT-4.1", "OpenAI's strongest non-reasoning chat model for detailed instructions."),
    ModelInfo(
        "anthropic",
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "Balanced quality and speed; Anthropic retires it on 30 November 2026 (use Sonnet 4.6).",
    ),
    ModelInfo("anthropic", "claude-sonnet-4-6", "Claude Sonnet 4.6", "Balanced quality and speed; natural writing."),
    ModelInfo("anthropic", "claude-haiku-4-5", "Claude Haiku 4.5", "Anthropic's fastest and least expensive model."),
    ModelInfo("gemini", "gemini-2.5-flash", "Gemini 2.5 Flash", "Fast and inexpensive, with a large context window."),
    ModelInfo("gemini", "gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "The cheapest Gemini, for simple replies."),
    ModelInfo("gemini", "gemini-2.5-pro", "Gemini 2.5 Pro", "Google's most capable model; thinks before answering."),
)


def build_catalogue(configured: dict[str, bool]) -> dict[str, Any]:
    return {
        "default": DEFAULT_AI_MODEL,
        "providers": [
            {
                "provider": name,
                "name": AI_PROVIDERS[name],
                "configured": configured[name],
                "key_variable": provider.key_setting,
            }
            for name, provider in PROVIDERS.items()
        ],
        "models": [
            {"id": info.id, **asdict(info), "available": configured[info.provider]} for info in MODELS
        ],
    }


def ai_model_catalogue() -> dict[str, Any]:
    """The catalogue with which providers have a key, cached for a day.

    The cache key names the configured providers, so a restart with another set of keys
    does not serve a day-old answer.
    """
    configured = configured_providers()
    flags = ",".join(f"{name}={int(on)}" for name, on in configured.items())
    key = f"ai:models:v1:{flags}"
    catalogue = cache.get(key)
    if catalogue is None:
        catalogue = build_catalogue(configured)
        cache.set(key, catalogue, CACHE_SECONDS)
    return catalogue
