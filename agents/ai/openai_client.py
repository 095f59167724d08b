"""OpenAI Chat Completions (and OpenAI-compatible servers) through the official SDK.
Reference: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import AIProvider, ChatMessage, ProviderConfig, Reply, Tool, ToolCall, ToolChoice, parse_arguments
from .errors import AIError
from .sdk_errors import translate_stainless

if TYPE_CHECKING:
    import openai

BASE_URL = "https://api.openai.com/v1"


class OpenAIClient(AIProvider):
    """``POST {base_url}/chat/completions``: the system prompt is the first message.

    Tools go as ``tools=[{"type": "function", "function": {name, description, parameters}}]``;
    the model's calls come back in ``message.tool_calls`` with their arguments as JSON text.
    In the conversation, an assistant turn that called tools is an assistant message with
    ``tool_calls`` (content null when it said nothing), each result a ``{"role": "tool",
    "tool_call_id": …, "content": …}`` message.
    """

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
        tools: Sequence[Tool],
        tool_choice: ToolChoice,
    ) -> Reply:
        chat = [{"role": "system", "content": system}] if system else []
        chat += [_message(m) for m in messages]
        params: dict[str, Any] = {}
        if tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
            if tool_choice != "auto":  # auto is the default; not sending it suits every compatible server
                params["tool_choice"] = tool_choice
        # max_tokens rather than max_completion_tokens: OpenAI-compatible servers know it.
        response = client.chat.completions.create(
            model=model, messages=chat, max_tokens=max_tokens, temperature=temperature, **params
        )
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Reply(
            text=(choice.message.content or "") if choice else "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason if choice else None,
            tool_calls=_tool_calls(choice.message.tool_calls if choice else None),
        )

    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        import openai

        return translate_stainless(exc, openai, provider=self.name, model=model, api_key=api_key)


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    if m.tool_calls:
        return {
            "role": "assistant",
            "content": m.text or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    # compact, as the models write it
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments, separators=(",", ":"))},
                }
                for call in m.tool_calls
            ],
        }
    return {"role": m.role, "content": m.text}


def _tool_calls(calls: Any) -> tuple[ToolCall, ...]:
    result = []
    for call in calls or ():
        if call.type != "function":  # custom tools: never offered
            continue
        arguments, error = parse_arguments(call.function.arguments)
        result.append(ToolCall(id=call.id, name=call.function.name, arguments=arguments, error=error))
    return tuple(result)
