"""AI providers: one interface (agents.ai.base.AIProvider) over OpenAI, Anthropic and Gemini.

    from agents.ai import ChatMessage, complete
    completion = complete(model_spec=agent.ai_model, system=agent.instructions,
                          messages=[ChatMessage("user", "Hello")])

With tools (agents.ai.tools): ``run_tools(model_spec, system, messages, tools, call_tool)``.

Keys and base URLs come from settings (environment variables only); see the README.
"""

from .base import ChatMessage, Completion, Tool, ToolCall
from .errors import AIConfigError, AIError, AIPermanentError, AIRateLimited, AITransientError
from .providers import PROVIDERS, complete, configured_providers, provider_for
from .tools import run_tools

__all__ = [
    "PROVIDERS",
    "AIConfigError",
    "AIError",
    "AIPermanentError",
    "AIRateLimited",
    "AITransientError",
    "ChatMessage",
    "Completion",
    "Tool",
    "ToolCall",
    "complete",
    "configured_providers",
    "provider_for",
    "run_tools",
]
