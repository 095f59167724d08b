"""Anthropic Messages API through the official SDK.
Reference: https://docs.anthropic.com/en/api/messages
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import AIProvider, ChatMessage, ProviderConfig, Reply, Tool, ToolCall, ToolChoice
from .errors import AIError
from .sdk_errors import translate_stainless

if TYPE_CHECKING:
    import anthropic

BASE_URL = "https://api.anthropic.com"


class AnthropicClient(AIProvider):
    """``POST {base_url}/v1/messages``: the system prompt is the top-level ``system`` field.

    ``temperature`` is not sent: the API version this SDK speaks (2026-10-21) refuses every
    sampling parameter with a 400, and the SDK no longer offers them.

    Tools go as ``tools=[{name, description, input_schema}]``; the model's calls come back
    as ``tool_use`` content blocks. In the conversation, an assistant turn that called tools
    has the content ``[text?, tool_use{id, name, input}…]``, and the results of consecutive
    tool turns go together in the next user message as ``tool_result`` blocks.
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
        tools: Sequence[Tool],
        tool_choice: ToolChoice,
    ) -> Reply:
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": _messages(messages),
        }
        if system:
            params["system"] = system
        if tools:
            # The API refuses tool_use / tool_result blocks in a request without tools, so
            # "answer in text now" keeps them and says tool_choice none.
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
            ]
            if tool_choice != "auto":
                params["tool_choice"] = {"type": tool_choice}
        response = client.messages.create(**params)
        return Reply(
            text="".join(block.text for block in response.content if block.type == "text"),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            finish_reason=response.stop_reason,
            tool_calls=tuple(
                ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {}))
                for block in response.content
                if block.type == "tool_use"
            ),
        )

    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        import anthropic

        return translate_stainless(exc, anthropic, provider=self.name, model=model, api_key=api_key)


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    results_turn: dict[str, Any] | None = None  # the user message collecting tool results
    for m in messages:
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text}
            if results_turn is None:
                results_turn = {"role": "user", "content": []}
                result.append(results_turn)
            results_turn["content"].append(block)
            continue
        results_turn = None
        if m.tool_calls:
            content: list[dict[str, Any]] = [{"type": "text", "text": m.text}] if m.text else []  # no empty blocks
            content += [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in m.tool_calls
            ]
            result.append({"role": "assistant", "content": content})
        else:
            result.append({"role": m.role, "content": m.text})
    return result
