"""Google Gemini API (generateContent) through the official google-genai SDK.
Reference: https://ai.google.dev/api/generate-content
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import AIProvider, ChatMessage, ProviderConfig, Reply, Tool, ToolCall, ToolChoice, redact
from .errors import AIConfigError, AIError, AIPermanentError, AITransientError
from .sdk_errors import error_detail, status_error

if TYPE_CHECKING:
    from google import genai
    from google.genai import types

BASE_URL = "https://generativelanguage.googleapis.com/"  # the SDK appends the API version

# Backoff between retries, as the openai and anthropic SDKs do it (google-genai's own
# default starts at 1 s and goes up to 60 s). Unlike them, google-genai ignores Retry-After.
RETRY_INITIAL_DELAY_SECONDS = 0.5
RETRY_MAX_DELAY_SECONDS = 8.0
RETRY_JITTER_SECONDS = 0.25
RETRY_STATUSES = [408, 429, 500, 502, 503, 504]

# Gemini may leave a function call without an id; we name it, and leave the name out of
# what goes back to Gemini so that it gets its conversation back as it wrote it.
SYNTHETIC_ID_PREFIX = "gemini-fc-"


class GeminiClient(AIProvider):
    """``POST {base_url}/{version}/models/{model}:generateContent``: the system prompt is
    ``systemInstruction``; the agent's turns have the role "model".

    Tools go as one ``types.Tool(function_declarations=[…])`` whose parameters are the JSON
    Schema as given (``parametersJsonSchema``); the SDK's automatic function calling is off.
    The model's calls come back as ``functionCall`` parts. In the conversation, an assistant
    turn that called tools is a "model" content with a text part (if any) and one
    ``functionCall`` part per call, carrying its thought signature back; the results of
    consecutive tool turns go together in one "user" content of ``functionResponse`` parts.
    """

    name = "gemini"
    key_setting = "GEMINI_API_KEY"
    base_url_setting = "GEMINI_BASE_URL"
    default_base_url = BASE_URL

    def build_client(self, config: ProviderConfig) -> genai.Client:
        from google import genai  # the SDKs take seconds to import: only processes that call a model pay
        from google.genai import types

        return genai.Client(
            api_key=config.api_key,
            vertexai=False,  # whatever GOOGLE_GENAI_USE_VERTEXAI says
            http_options=types.HttpOptions(
                base_url=config.base_url,
                timeout=round(config.timeout * 1000),  # milliseconds
                retry_options=types.HttpRetryOptions(
                    attempts=config.max_retries + 1,
                    initial_delay=RETRY_INITIAL_DELAY_SECONDS,
                    max_delay=RETRY_MAX_DELAY_SECONDS,
                    jitter=RETRY_JITTER_SECONDS,
                    http_status_codes=RETRY_STATUSES,
                ),
            ),
        )

    def call(
        self,
        client: genai.Client,
        *,
        model: str,
        system: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        tools: Sequence[Tool],
        tool_choice: ToolChoice,
    ) -> Reply:
        from google.genai import types

        tool_params: dict[str, Any] = {}
        if tools:
            tool_params["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=t.name, description=t.description, parameters_json_schema=t.parameters
                        )
                        for t in tools
                    ]
                )
            ]
            tool_params["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(disable=True)
            if tool_choice != "auto":
                tool_params["tool_config"] = types.ToolConfig(
                    function_calling_config=types.FunctionCallingConfig(mode=tool_choice.upper())
                )
        response = client.models.generate_content(
            model=model,
            contents=_contents(messages),
            config=types.GenerateContentConfig(
                system_instruction=system or None,
                max_output_tokens=max_tokens,
                temperature=temperature,
                **tool_params,
            ),
        )
        candidate = response.candidates[0] if response.candidates else None
        parts = (candidate.content.parts or []) if candidate and candidate.content else []
        usage = response.usage_metadata
        finish_reason = candidate.finish_reason if candidate else None
        if finish_reason is None and response.prompt_feedback and response.prompt_feedback.block_reason:
            finish_reason = f"blocked: {_enum_value(response.prompt_feedback.block_reason)}"
        return Reply(
            text="".join(part.text for part in parts if part.text and not part.thought),
            input_tokens=(usage.prompt_token_count or 0) if usage else 0,
            # thinking is billed as output
            output_tokens=((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0,
            finish_reason=_enum_value(finish_reason),
            tool_calls=_tool_calls(parts),
        )

    def translate(self, exc: Exception, *, model: str, api_key: str) -> AIError:
        import httpx2
        from google.genai import errors as genai_errors

        where = f"{self.name} {model}"
        if isinstance(exc, genai_errors.APIError):
            detail = error_detail(exc.details) or (exc.message or "")
            if exc.code == 400 and "API_KEY_INVALID" in str(exc.details):
                # Gemini answers an unknown key with 400, not 401
                return AIConfigError(
                    f"{where}: the API key was refused (HTTP 400)", provider=self.name, model=model, status=400
                )
            response = getattr(exc, "response", None)
            return status_error(
                provider=self.name,
                model=model,
                status=exc.code,
                detail=detail,
                api_key=api_key,
                headers=getattr(response, "headers", None),
            )
        if isinstance(exc, httpx2.TimeoutException):
            return AITransientError(f"{where}: timed out", provider=self.name, model=model)
        if isinstance(exc, httpx2.TransportError):
            return AITransientError(f"{where}: cannot connect", provider=self.name, model=model)
        return AIPermanentError(
            f"{where}: {type(exc).__name__}: {redact(str(exc), api_key)}", provider=self.name, model=model
        )


def _contents(messages: Sequence[ChatMessage]) -> list[types.Content]:
    from google.genai import types

    contents: list[types.Content] = []
    results: types.Content | None = None  # the content collecting tool results
    for m in messages:
        if m.role == "tool":
            part = types.Part(
                function_response=types.FunctionResponse(
                    id=_gemini_id(m.tool_call_id), name=m.name, response=_response(m.text)
                )
            )
            if results is None:
                results = types.Content(role="user", parts=[])
                contents.append(results)
            results.parts.append(part)
            continue
        results = None
        if m.role == "user":
            contents.append(types.Content(role="user", parts=[types.Part(text=m.text)]))
            continue
        parts = [types.Part(text=m.text)] if m.text or not m.tool_calls else []
        parts += [
            types.Part(
                function_call=types.FunctionCall(id=_gemini_id(call.id), name=call.name, args=call.arguments),
                thought_signature=base64.b64decode(call.signature) if call.signature else None,
            )
            for call in m.tool_calls
        ]
        contents.append(types.Content(role="model", parts=parts))
    return contents


def _response(text: str) -> dict[str, Any]:
    """A tool result as Gemini's ``response`` object: a JSON object as is, anything else as its "output"."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}


def _gemini_id(call_id: str) -> str | None:
    return None if not call_id or call_id.startswith(SYNTHETIC_ID_PREFIX) else call_id


def _tool_calls(parts: Sequence[types.Part]) -> tuple[ToolCall, ...]:
    calls = []
    for index, part in enumerate(p for p in parts if p.function_call):
        call = part.function_call
        name, arguments = call.name or "", dict(call.args or {})
        call_id = call.id
        if not call_id:  # the same answer gives the same id: position, name and arguments
            digest = hashlib.sha256(json.dumps([name, arguments], sort_keys=True, default=str).encode()).hexdigest()
            call_id = f"{SYNTHETIC_ID_PREFIX}{index}-{digest[:12]}"
        signature = base64.b64encode(part.thought_signature).decode() if part.thought_signature else ""
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments, signature=signature))
    return tuple(calls)


def _enum_value(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))
