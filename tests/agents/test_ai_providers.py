"""The AI provider layer against a local server speaking each vendor's wire format.

The real SDKs (openai, anthropic, google-genai) make the requests: these tests see what
they send, how they retry, and what the rest of the product gets back.
"""
from __future__ import annotations

import logging
import time

import pytest

from agents import ai
from agents.ai import base, gemini_client
from agents.ai.errors import AIConfigError, AIPermanentError, AIRateLimited, AITransientError
from agents.schemas import AI_PROVIDERS
from tests.fake_ai_server import FakeAIServer

KEYS = {
    "openai": "sk-test-openai-4f9c2d7e1a",
    "anthropic": "sk-ant-test-8b3e6f0c2d",
    "gemini": "AIza-test-gemini-5d1a9c7e3f",
}
KEY_SETTINGS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}
MODELS = {
    "openai": "openai:gpt-4o-mini",
    "anthropic": "anthropic:claude-haiku-4-5",
    "gemini": "gemini:gemini-2.5-flash",
}
PROVIDERS = list(MODELS)
SYSTEM = "You sell furniture. Be brief."
HISTORY = [
    ai.ChatMessage("user", "Hi, do you have oak tables?"),
    ai.ChatMessage("assistant", "Yes, three models. What size?"),
    ai.ChatMessage("user", "Two metres long."),
]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Retries wait milliseconds, not the SDKs' half a second and up."""
    import anthropic._base_client
    import openai._base_client

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(anthropic._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(gemini_client, "RETRY_INITIAL_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(gemini_client, "RETRY_JITTER_SECONDS", 0.0)
    base.clear_client_cache()
    yield
    base.clear_client_cache()


@pytest.fixture
def server():
    with FakeAIServer() as fake:
        yield fake


def base_url(provider: str, root: str) -> str:
    return root + "/v1" if provider == "openai" else root  # OpenAI's base URL carries the version


@pytest.fixture
def ai_settings(settings, server):
    for provider in PROVIDERS:
        setattr(settings, KEY_SETTINGS[provider], KEYS[provider])
        setattr(settings, f"{provider.upper()}_BASE_URL", base_url(provider, server.url))
    settings.AI_TIMEOUT_SECONDS = 5
    settings.AI_MAX_RETRIES = 2
    return settings


def ask(provider: str, **kwargs) -> ai.Completion:
    return ai.complete(model_spec=MODELS[provider], system=SYSTEM, messages=HISTORY, **kwargs)


def ai_log_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "ai.request"]


# --- replies ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_reply_comes_back_with_its_tokens_and_latency(provider, ai_settings, server, caplog):
    caplog.set_level(logging.INFO, logger="agents.ai")
    server.reply_text = "We have a 2 m oak table at 900 EUR."
    server.input_tokens, server.output_tokens = 31, 14

    completion = ask(provider)

    assert completion.text == "We have a 2 m oak table at 900 EUR."
    assert completion.provider == provider
    assert completion.model == MODELS[provider].split(":", 1)[1]
    assert (completion.input_tokens, completion.output_tokens) == (31, 14)
    assert completion.latency_ms >= 0
    assert completion.finish_reason in ("stop", "end_turn", "STOP")
    (line,) = ai_log_lines(caplog)
    assert line.provider == provider
    assert line.model == completion.model
    assert line.outcome == "success"
    assert (line.input_tokens, line.output_tokens) == (31, 14)
    assert line.latency_ms == completion.latency_ms
    assert line.reply_chars == len(completion.text)
    assert line.messages == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_log_line_has_sizes_but_not_the_conversation(provider, ai_settings, server, caplog):
    caplog.set_level(logging.DEBUG)
    server.reply_text = "A secret discount just for you"

    ask(provider)

    (line,) = ai_log_lines(caplog)
    logged = str(vars(line))
    assert "oak tables" not in logged and "furniture" not in logged
    assert "secret discount" not in logged
    assert line.prompt_chars == len(SYSTEM) + sum(len(m.text) for m in HISTORY)


def test_openai_gets_the_system_prompt_as_the_first_message_and_a_bearer_key(ai_settings, server):
    ask("openai", max_tokens=300, temperature=0.2)

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi, do you have oak tables?"},
        {"role": "assistant", "content": "Yes, three models. What size?"},
        {"role": "user", "content": "Two metres long."},
    ]
    assert request.json["max_tokens"] == 300
    assert request.json["temperature"] == 0.2


def test_anthropic_gets_the_system_prompt_as_its_own_field_and_no_temperature(ai_settings, server):
    ask("anthropic", max_tokens=300, temperature=0.2)

    (request,) = server.requests
    assert request.path == "/v1/messages"
    # anthropic SDK 2.x sends the key as a bearer token (not x-api-key)
    assert request.headers["authorization"] == f"Bearer {KEYS['anthropic']}"
    assert request.json["model"] == "claude-haiku-4-5"
    assert request.json["system"] == SYSTEM
    assert request.json["messages"] == [
        {"role": "user", "content": "Hi, do you have oak tables?"},
        {"role": "assistant", "content": "Yes, three models. What size?"},
        {"role": "user", "content": "Two metres long."},
    ]
    assert request.json["max_tokens"] == 300
    assert "temperature" not in request.json  # API version 2026-10-21 refuses it


def test_gemini_gets_the_system_prompt_as_system_instruction_and_the_key_in_a_header(ai_settings, server):
    ask("gemini", max_tokens=300, temperature=0.2)

    (request,) = server.requests
    assert request.path == "/v1/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == KEYS["gemini"]
    assert KEYS["gemini"] not in request.path
    assert request.json["systemInstruction"]["parts"] == [{"text": SYSTEM}]
    assert [(c["role"], c["parts"]) for c in request.json["contents"]] == [
        ("user", [{"text": "Hi, do you have oak tables?"}]),
        ("model", [{"text": "Yes, three models. What size?"}]),
        ("user", [{"text": "Two metres long."}]),
    ]
    assert request.json["generationConfig"]["maxOutputTokens"] == 300
    assert request.json["generationConfig"]["temperature"] == 0.2


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        ("openai", "/proxy/v1/chat/completions"),
        ("anthropic", "/proxy/v1/messages"),
        ("gemini", "/proxy/v1/models/gemini-2.5-flash:generateContent"),
    ],
)
def test_the_base_url_setting_is_honoured(provider, path, ai_settings, server):
    setattr(ai_settings, f"{provider.upper()}_BASE_URL", base_url(provider, server.url + "/proxy"))

    ask(provider)

    assert [r.path for r in server.requests] == [path]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_empty_reply_is_a_permanent_error(provider, ai_settings, server):
    server.reply_text = ""

    with pytest.raises(AIPermanentError, match="returned no text"):
        ask(provider)


# --- retries and failures -------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_500_then_success_is_retried(provider, ai_settings, server):
    server.fail(500)

    completion = ask(provider)

    assert completion.text == "Hello from the model"
    assert len(server.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_429_with_retry_after_is_retried(provider, ai_settings, server):
    server.fail(429, headers={"retry-after": "0.3"}, message="slow down")

    completion = ask(provider)

    assert completion.text == "Hello from the model"
    first, second = server.requests
    if provider != "gemini":  # google-genai backs off on its own schedule, ignoring Retry-After
        assert second.at - first.at >= 0.25


@pytest.mark.parametrize("provider", PROVIDERS)
def test_persistent_500s_are_a_transient_error_after_the_configured_retries(provider, ai_settings, server, caplog):
    caplog.set_level(logging.INFO, logger="agents.ai")
    ai_settings.AI_MAX_RETRIES = 3
    server.fail(500, times=10, message="the backend is down")

    with pytest.raises(AITransientError) as raised:
        ask(provider)

    assert len(server.requests) == 4  # the first try and three retries
    assert raised.value.status == 500
    assert "HTTP 500" in str(raised.value) and "the backend is down" in str(raised.value)
    (line,) = ai_log_lines(caplog)
    assert line.outcome == "transient_error"
    assert line.status == 500


@pytest.mark.parametrize("provider", PROVIDERS)
def test_persistent_429s_are_rate_limited_with_the_retry_after_the_provider_gave(provider, ai_settings, server):
    ai_settings.AI_MAX_RETRIES = 1
    server.fail(429, times=10, headers={"retry-after": "0.05"})

    with pytest.raises(AIRateLimited) as raised:
        ask(provider)

    assert len(server.requests) == 2
    assert raised.value.retry_after == 0.05


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bad_request_is_a_permanent_error_without_retries(provider, ai_settings, server):
    server.fail(400, message="max_tokens is too large")

    with pytest.raises(AIPermanentError) as raised:
        ask(provider)

    assert not isinstance(raised.value, AIConfigError)
    assert len(server.requests) == 1
    assert raised.value.status == 400
    assert "max_tokens is too large" in str(raised.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_key_is_a_config_error_without_retries(provider, ai_settings, server):
    server.fail(401, message="Invalid API key")

    with pytest.raises(AIConfigError, match="API key was refused") as raised:
        ask(provider)

    assert len(server.requests) == 1
    assert raised.value.status == 401


def test_gemini_answering_an_unknown_key_with_400_is_a_config_error(ai_settings, server):
    server.fail(400, message="API key not valid. Please pass a valid API key. [reason: API_KEY_INVALID]")

    with pytest.raises(AIConfigError, match="API key was refused"):
        ask("gemini")

    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_missing_key_fails_clearly_before_any_request(provider, ai_settings, server, caplog):
    caplog.set_level(logging.INFO, logger="agents.ai")
    setattr(ai_settings, KEY_SETTINGS[provider], "")

    with pytest.raises(AIConfigError) as raised:
        ask(provider)

    assert str(raised.value) == f"{KEY_SETTINGS[provider]} is not set"
    assert server.requests == []
    (line,) = ai_log_lines(caplog)
    assert line.outcome == "config_error"


def test_an_unknown_provider_is_a_config_error():
    with pytest.raises(AIConfigError, match="unknown AI model 'mistral:large'"):
        ai.complete(model_spec="mistral:large", system="", messages=HISTORY)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_key_never_appears_in_the_error_or_the_logs(provider, ai_settings, server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' and httpx's included
    key = KEYS[provider]
    # OpenAI quotes the refused key back in its error message
    server.fail(401, message=f"Incorrect API key provided: {key}.")
    server.fail(500, times=5, message=f"upstream said {key}")

    with pytest.raises(AIConfigError) as refused:
        ask(provider)
    with pytest.raises(AITransientError) as failed:
        ask(provider)
    ask(provider)

    assert key not in str(refused.value) and key not in repr(refused.value)
    assert key not in str(failed.value)
    assert "[redacted]" in str(failed.value)
    assert caplog.records
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in str(vars(record))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_answer_times_out_as_a_transient_error(provider, ai_settings, server):
    ai_settings.AI_TIMEOUT_SECONDS = 0.3
    ai_settings.AI_MAX_RETRIES = 0
    server.delay_seconds = 1.5

    started = time.monotonic()
    with pytest.raises(AITransientError, match="timed out"):
        ask(provider)

    assert time.monotonic() - started < 1.4


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_server_that_cannot_be_reached_is_a_transient_error(provider, ai_settings):
    closed = FakeAIServer()
    url = closed.url
    closed.stop()  # the port is now closed
    setattr(ai_settings, f"{provider.upper()}_BASE_URL", base_url(provider, url))
    ai_settings.AI_MAX_RETRIES = 0

    with pytest.raises(AITransientError, match="cannot connect|timed out"):
        ask(provider)


# --- clients --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_sdk_client_is_built_once_and_reused(provider, ai_settings, server, monkeypatch):
    implementation = ai.PROVIDERS[provider]
    built = []
    original = type(implementation).build_client

    def counting(self, config):
        built.append(config.base_url)
        return original(self, config)

    monkeypatch.setattr(type(implementation), "build_client", counting)

    ask(provider)
    ask(provider)
    assert len(built) == 1

    setattr(ai_settings, KEY_SETTINGS[provider], KEYS[provider] + "-rotated")
    ask(provider)
    assert len(built) == 2
    assert server.requests[-1].headers.get("x-goog-api-key", server.requests[-1].headers.get("authorization", "")) \
        .endswith("-rotated")


def test_the_registry_knows_exactly_the_providers_an_agent_may_name():
    assert set(ai.PROVIDERS) == set(AI_PROVIDERS) == {"openai", "anthropic", "gemini"}


def test_a_message_role_must_be_user_or_assistant():
    with pytest.raises(ValueError, match="role"):
        ai.ChatMessage("system", "Be nice")


def test_complete_takes_the_model_the_system_prompt_and_the_messages_positionally(ai_settings, server):
    # triggers.actions calls it so
    completion = ai.complete(MODELS["openai"], SYSTEM, HISTORY)

    assert completion.text == "Hello from the model"
    assert "tools" not in server.requests[0].json  # no tools offered, none sent


@pytest.mark.parametrize("provider", PROVIDERS)
def test_without_tools_no_tool_fields_are_sent(provider, ai_settings, server):
    ask(provider)

    (request,) = server.requests
    assert not {"tools", "tool_choice", "toolConfig"} & set(request.json)
