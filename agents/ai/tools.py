"""Tool calling: let the model call our functions (free calendar slots, booking…) before it answers.

    def call_tool(call: ToolCall) -> dict:
        return TOOLS[call.name](**call.arguments)

    completion = run_tools(agent.ai_model, agent.instructions, history, tools, call_tool)
    completion.text       # the answer for the lead
    completion.tool_log   # ((ToolCall, result), …): what was called and what the model was told

Each round asks the model (with the tools) and, if it answers with tool calls, runs them
and gives it the results. After ``max_rounds`` rounds of tool calls it is asked once more
with the tools still in the request (Anthropic refuses tool turns without them) but
``tool_choice="none"``, so that the lead gets an answer rather than an error; only if it
still answers with no text does run_tools raise AIPermanentError.

A tool that fails never ends the run: its exception's message goes back to the model as
``{"error": "…"}``, and so do calls of a tool that was not offered and calls whose arguments
were not a JSON object, so the model can explain or try again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .base import ChatMessage, Completion, Tool, ToolCall
from .errors import AIError, AIPermanentError
from .providers import complete

logger = logging.getLogger(__name__)


def run_tools(
    model_spec: str,
    system: str,
    messages: Sequence[ChatMessage],
    tools: Sequence[Tool],
    call_tool: Callable[[ToolCall], dict],
    *,
    max_rounds: int = 4,
    max_tokens: int = 1000,
    temperature: float = 0.7,
) -> Completion:
    """The model's answer after ``messages``, having called ``tools`` through ``call_tool`` as it wished.

    Returns the last Completion with the tokens of every request summed, ``latency_ms`` the
    whole run (tool calls included) and ``tool_log`` every call with its result. Raises what
    ``complete`` raises: an AIError in any round ends the run, the calls already made (they
    stay made: a retry of the whole reply runs them again, so booking must be idempotent)
    in its ``tool_log``.
    """
    if max_rounds < 0:
        raise ValueError("max_rounds must not be negative")
    offered = {tool.name for tool in tools}
    if len(offered) != len(tools):
        raise ValueError("tool names must be unique")
    started = time.monotonic()
    history = list(messages)
    log: list[tuple[ToolCall, dict]] = []
    input_tokens = output_tokens = 0
    for round_number in range(max_rounds + 1):
        last = round_number == max_rounds
        try:
            completion = complete(
                model_spec,
                system,
                history,
                max_tokens=max_tokens,
                temperature=temperature,
                tools=tools,
                tool_choice="none" if last else "auto",
            )
        except AIError as exc:
            exc.tool_log = tuple(log)
            raise
        input_tokens += completion.input_tokens
        output_tokens += completion.output_tokens
        if not completion.tool_calls or (last and completion.text.strip()):
            return replace(
                completion,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_ms=round((time.monotonic() - started) * 1000),
                tool_calls=(),
                tool_log=tuple(log),
            )
        if last:
            break
        history.append(ChatMessage("assistant", completion.text, tool_calls=completion.tool_calls))
        for call in completion.tool_calls:
            result = _run(call, offered, call_tool, provider=completion.provider)
            log.append((call, result))
            history.append(ChatMessage.tool_result(call, result))
    error = AIPermanentError(
        f"{completion.provider} {completion.model} still called tools after {max_rounds} rounds "
        "and being asked to answer without them",
        provider=completion.provider,
        model=completion.model,
    )
    error.tool_log = tuple(log)
    raise error


def _run(call: ToolCall, offered: set[str], call_tool: Callable[[ToolCall], dict], *, provider: str) -> dict:
    """The result of one call, or ``{"error": …}`` for the model to read; one ``ai.tool.call`` log
    line (the tool's name, not its arguments: they are the lead's data). Never raises."""
    record: dict[str, Any] = {"provider": provider, "tool": call.name, "call_id": call.id}
    started = time.monotonic()
    failure: Exception | None = None
    if call.error:
        result, record["outcome"] = {"error": call.error}, "bad_arguments"
    elif call.name not in offered:
        result, record["outcome"] = {"error": f"there is no tool named {call.name!r}"}, "unknown_tool"
    else:
        try:
            result = call_tool(call)
        except Exception as exc:  # the model is told, and may apologise or try otherwise
            failure = exc
            result = {"error": str(exc) or type(exc).__name__}
            record.update(outcome="error", error=type(exc).__name__)
        else:
            if not isinstance(result, dict):
                result = {"result": result}
            record["outcome"] = "success"
    record["latency_ms"] = round((time.monotonic() - started) * 1000)
    if failure is not None:
        logger.warning("ai.tool.call", exc_info=failure, extra=record)
    else:
        logger.info("ai.tool.call", extra=record)
    return result
