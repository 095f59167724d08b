"""AI providers: one interface (agents.ai.base.AIProvider) over OpenAI, Anthropic and Gemini.

    from agents.ai import ChatMessage, complete
    completion = complete(model_spec=agent.ai_model, system=agent.instructions,
                          messages=[ChatMessage("user", "Hello")])

Keys and base URLs come from settings (environment variables only); see the README.
"""

from .base import ChatMessage, Completion
from .errors import AIConfigError, AIError, AIPermanentError, AIRateLimited, AITransientError
from .providers import PROVIDERS, complete, configured_providers, provider_for

__all__ = [
    "PROVIDERS",
    "AIConfigError",
    "AIError",
    "AIPermanentError",
    "AIRateLimited",
    "AITransientError",
    "ChatMessage",
    "Completion",
    "complete",
    "configured_providers",
    "provider_for",
]
