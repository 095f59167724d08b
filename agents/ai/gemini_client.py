"""Google Gemini API (generateContent) through the official google-genai SDK.
Reference: https://ai.google.dev/api/generate-content
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import AIProvider, ChatMessage, ProviderConfig, Reply, redact
from .errors import AIConfigError, AIError, AIPermanentError, AITransientError
from .sdk_errors import error_detail, status_error

if TYPE_CHECKING:
    from google import genai

BASE_URL = "https://generativelanguage.googleapis.com/"  # the SDK appends the API version

# Backoff between retries, as the openai and anthropic SDKs do it (google-genai's own
# default starts at 1 s and goes up to 60 s). Unlike them, google-genai ignores Retry-After.
RETRY_INITIAL_DELAY_SECONDS = 0.5
RETRY_MAX_DELAY_SECONDS = 8.0
RETRY_JITTER_SECONDS = 0.25
RETRY_STATUSES = [408, 429, 500, 502, 503, 504]


class GeminiClient(AIProvider):
    """``POST {base_url}/{version}/models/{model}:generateContent``: the system prompt is
    ``systemInstruction``; the agent's turns have the role "model"."""

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
    ) -> Reply:
        from google.genai import types

        response = client.models.generate_content(
            model=model,
            contents=[
                types.Content(role="user" if m.role == "user" else "model", parts=[types.Part(text=m.text)])
                for m in messages
            ],
            config=types.GenerateContentConfig(
                system_instruction=system or None,
                max_output_tokens=max_tokens,
                temperature=temperature,
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


def _enum_value(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))
