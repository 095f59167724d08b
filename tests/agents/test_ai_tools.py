"""Tool calling on every provider: the real SDKs against a local server speaking each wire format.

The round trip: the model is offered the calendar tools, asks for one, gets its result
in the next request, and answers the lead in text.
"""
from __future__ import annotations

import base64
import json
import logging

import pytest

from agents import ai
from agents.ai import base
from agents.ai.errors import AIPermanentError, AITransientError
from tests.agents.test_ai_providers import KEY_SETTINGS, KEYS, MODELS, PROVIDERS, base_url
from tests.fake_ai_server import FakeAIServer, FakeToolCall, signature_bytes

SYSTEM = "You book demo calls for a furniture shop. Working hours: 9:00-18:00."
HISTORY = [
    ai.ChatMessage("user", "Can we talk on Monday?"),
]
SLOTS_SCHEMA = {
    "type": "object",
    "properties": {"date": {"type": "string", "description": "YYYY-MM-DD"}},
    "required": ["date"],
}
BOOK_SCHEMA = {
    "type": "object",
    "properties": {"start": {"type": "string", "description": "ISO 8601"}},
    "required": ["start"],
}
CHECK_FREE_SLOTS = ai.Tool("check_free_slots", "Free slots of a day within working hours.", SLOTS_SCHEMA)
BOOK_SLOT = ai.Tool("book_slot", "Book a slot the lead accepted.", BOOK_SCHEMA)
TOOLS = [CHECK_FREE_SLOTS, BOOK_SLOT]
FREE = {"slots": ["2026-05-04T10:00", "2026-05-04T14:00"]}


@pytest.fixture(autouse=True)
def fresh_clients():
    base.clear_client_cache()
    yield
    base.clear_client_cache()


@pytest.fixture
def server():
    with FakeAIServer() as fake:
        yield fake


@pytest.fixture
def ai_settings(settings, server):
    for provider in PROVIDERS:
        setattr(settings, KEY_SETTINGS[provider], KEYS[provider])
        setattr(settings, f"{provider.upper()}_BASE_URL", base_url(provider, server.url))
    settings.AI_TIMEOUT_SECONDS = 5
    settings.AI_MAX_RETRIES = 0
    return settings


class Calendar:
    """call_tool for the tests: records the calls, answers from ``results`` (an exception is raised)."""

    def __init__(self, **results):
        self.results = {"check_free_slots": FREE, "book_slot": {"booked": True}, **results}
        self.calls: list[ai.ToolCall] = []

    def __call__(self, call: ai.ToolCall) -> dict:
        self.calls.append(call)
        result = self.results[call.name]
        if isinstance(result, Exception):
            raise result
        return result


def run(provider: str, calendar: Calendar, **kwargs) -> ai.Completion:
    return ai.run_tools(MODELS[provider], SYSTEM, HISTORY, TOOLS, calendar, **kwargs)


# --- what each provider gets: tools, tool calls and tool results in its own format ---------


def sent_tools(provider: str, body: dict) -> list[dict]:
    """The tools of a request as (name, description, schema), whatever the provider's format."""
    if provider == "openai":
        assert all(t["type"] == "function" for t in body["tools"])
        return [t["function"] for t in body["tools"]]
    if provider == "anthropic":
        return [{"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}
                for t in body["tools"]]
    (tool,) = body["tools"]
    # google-genai writes the field under its Python name; Gemini accepts both spellings
    return [
        {"name": d["name"], "description": d["description"],
         "parameters": d.get("parametersJsonSchema", d.get("parameters_json_schema"))}
        for d in tool["functionDeclarations"]
    ]


def sent_results(provider: str, body: dict) -> list[dict]:
    """The tool results of a request, decoded, in order."""
    if provider == "openai":
        return [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]
    if provider == "anthropic":
        return [
            json.loads(block["content"])
            for m in body["messages"] if isinstance(m["content"], list)
            for block in m["content"] if block["type"] == "tool_result"
        ]
    return [p["functionResponse"]["response"] for c in body["contents"] for p in c["parts"] if "functionResponse" in p]


def asked_for_text_only(provider: str, body: dict) -> bool:
    if provider == "openai":
        return body.get("tool_choice") == "none"
    if provider == "anthropic":
        return body.get("tool_choice") == {"type": "none"}
    return body.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode") == "NONE"


# --- the round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_model_checks_the_calendar_and_answers_with_the_free_slots(provider, ai_settings, server, caplog):
    caplog.set_level(logging.INFO, logger="agents.ai")
    server.answer(
        tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"})], input_tokens=50, output_tokens=8
    )
    server.answer("Monday is free at 10:00 or 14:00.", input_tokens=70, output_tokens=11)
    calendar = Calendar()

    completion = run(provider, calendar)

    assert completion.text == "Monday is free at 10:00 or 14:00."
    assert completion.provider == provider
    assert (completion.input_tokens, completion.output_tokens) == (120, 19)
    assert completion.latency_ms >= 0
    assert completion.tool_calls == ()
    ((call, result),) = completion.tool_log
    assert (call.name, call.arguments, result) == ("check_free_slots", {"date": "2026-05-04"}, FREE)
    assert calendar.calls == [call]
    first, second = server.requests
    expected_tools = [
        {"name": "check_free_slots", "description": "Free slots of a day within working hours.",
         "parameters": SLOTS_SCHEMA},
        {"name": "book_slot", "description": "Book a slot the lead accepted.", "parameters": BOOK_SCHEMA},
    ]
    assert sent_tools(provider, first.json) == expected_tools
    assert sent_tools(provider, second.json) == expected_tools
    assert sent_results(provider, first.json) == []
    assert sent_results(provider, second.json) == [FREE]
    assert not asked_for_text_only(provider, first.json)
    # the log says which tools were called, never with what
    tool_lines = [r for r in caplog.records if r.getMessage() == "ai.tool.call"]
    assert [(r.tool, r.outcome) for r in tool_lines] == [("check_free_slots", "success")]
    request_lines = [r for r in caplog.records if r.getMessage() == "ai.request"]
    assert request_lines[0].tool_calls == ["check_free_slots"]
    assert all("2026-05-04" not in str(vars(r)) for r in tool_lines + request_lines)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_complete_returns_the_tool_calls_the_model_asked_for(provider, ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("book_slot", {"start": "2026-05-04T10:00"})])

    completion = ai.complete(MODELS[provider], SYSTEM, HISTORY, tools=TOOLS)

    (call,) = completion.tool_calls
    assert (call.name, call.arguments, call.error) == ("book_slot", {"start": "2026-05-04T10:00"}, "")
    assert call.id
    assert completion.text == ""
    assert completion.finish_reason == {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}[provider]


def test_openai_gets_an_assistant_message_with_tool_calls_then_a_tool_message(ai_settings, server):
    server.answer("Let me look.", tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}, id="call_a1")])
    server.answer("Monday at 10:00?")

    run("openai", Calendar())

    assert server.requests[1].json["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Can we talk on Monday?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_a1",
                    "type": "function",
                    "function": {"name": "check_free_slots", "arguments": '{"date":"2026-05-04"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a1", "content": json.dumps(FREE)},
    ]
    assert server.requests[0].json["tools"][0] == {
        "type": "function",
        "function": {
            "name": "check_free_slots",
            "description": "Free slots of a day within working hours.",
            "parameters": SLOTS_SCHEMA,
        },
    }


def test_openai_gets_null_content_when_the_model_only_called_tools(ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}, id="call_a1")])
    server.answer("Monday at 10:00?")

    run("openai", Calendar())

    assistant = server.requests[1].json["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["content"] is None


def test_anthropic_gets_tool_use_blocks_then_a_user_message_of_tool_results(ai_settings, server):
    server.answer("Let me look.", tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}, id="toolu_a1")])
    server.answer("Monday at 10:00?")

    run("anthropic", Calendar())

    first, second = server.requests
    assert first.json["tools"][0] == {
        "name": "check_free_slots",
        "description": "Free slots of a day within working hours.",
        "input_schema": SLOTS_SCHEMA,
    }
    assert second.json["system"] == SYSTEM
    assert second.json["messages"] == [
        {"role": "user", "content": "Can we talk on Monday?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_a1", "name": "check_free_slots", "input": {"date": "2026-05-04"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a1", "content": json.dumps(FREE)}]},
    ]
    assert "tool_choice" not in first.json and "temperature" not in first.json


def test_gemini_gets_function_call_parts_with_their_signature_then_function_responses(ai_settings, server):
    opaque = b"\xfb\xff\xbe opaque thought state"
    signature = base64.b64encode(opaque).decode()  # has "+" and "/"
    server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}, signature=signature)])
    server.answer("Monday at 10:00?")

    completion = run("gemini", Calendar())

    ((call, _),) = completion.tool_log
    assert call.id.startswith("gemini-fc-")  # Gemini gave none
    first, second = server.requests
    (declaration,) = [d for d in first.json["tools"][0]["functionDeclarations"] if d["name"] == "check_free_slots"]
    assert declaration.get("parametersJsonSchema", declaration.get("parameters_json_schema")) == SLOTS_SCHEMA
    assert "automaticFunctionCalling" not in json.dumps(first.json)
    model_parts = second.json["contents"][1]["parts"]
    # google-genai writes bytes in URL-safe base64, which Gemini reads as well as the standard
    assert signature_bytes(model_parts[0].pop("thoughtSignature")) == opaque
    assert second.json["contents"] == [
        {"role": "user", "parts": [{"text": "Can we talk on Monday?"}]},
        {
            "role": "model",
            "parts": [
                # no id: Gemini gets its turn back as it wrote it
                {"functionCall": {"name": "check_free_slots", "args": {"date": "2026-05-04"}}},
            ],
        },
        {"role": "user", "parts": [{"functionResponse": {"name": "check_free_slots", "response": FREE}}]},
    ]


def test_gemini_gets_back_the_ids_it_gave(ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}, id="fc-7")])
    server.answer("Monday at 10:00?")

    run("gemini", Calendar())

    model_turn, results_turn = server.requests[1].json["contents"][1:]
    assert model_turn["parts"][0]["functionCall"]["id"] == "fc-7"
    assert results_turn["parts"][0]["functionResponse"]["id"] == "fc-7"


def test_gemini_ids_it_did_not_give_are_the_same_for_the_same_answer(ai_settings, server):
    for _ in range(2):
        server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"}),
                                  FakeToolCall("check_free_slots", {"date": "2026-05-05"})])

    first = ai.complete(MODELS["gemini"], SYSTEM, HISTORY, tools=TOOLS).tool_calls
    again = ai.complete(MODELS["gemini"], SYSTEM, HISTORY, tools=TOOLS).tool_calls

    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == 2


def test_gemini_gets_a_result_that_is_not_an_object_as_its_output(ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"})])
    server.answer("Monday at 10:00?")

    run("gemini", Calendar(check_free_slots=["10:00", "14:00"]))  # type: ignore[arg-type]

    assert sent_results("gemini", server.requests[1].json) == [{"result": ["10:00", "14:00"]}]


# --- several calls, failures, limits -------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_calls_in_one_answer_are_both_run_and_answered_in_order(provider, ai_settings, server):
    server.answer(tool_calls=[
        FakeToolCall("check_free_slots", {"date": "2026-05-04"}),
        FakeToolCall("check_free_slots", {"date": "2026-05-05"}),
    ])
    server.answer("Monday or Tuesday, both at 10:00.")
    calendar = Calendar()

    completion = run(provider, calendar)

    assert completion.text == "Monday or Tuesday, both at 10:00."
    assert [c.arguments["date"] for c in calendar.calls] == ["2026-05-04", "2026-05-05"]
    assert [c for c, _ in completion.tool_log] == calendar.calls
    assert sent_results(provider, server.requests[1].json) == [FREE, FREE]
    body = server.requests[1].json
    if provider == "openai":
        tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tool_messages] == [c.id for c in calendar.calls]
        assert len(body["messages"][-3]["tool_calls"]) == 2
    elif provider == "anthropic":  # both results in the one user message after the tool_use blocks
        assert [b["tool_use_id"] for b in body["messages"][-1]["content"]] == [c.id for c in calendar.calls]
        assert [b["type"] for b in body["messages"][-2]["content"]] == ["tool_use", "tool_use"]
    else:  # one content of two function calls, then one of two function responses
        calls_turn, results_turn = body["contents"][-2:]
        assert [p["functionCall"]["args"]["date"] for p in calls_turn["parts"]] == ["2026-05-04", "2026-05-05"]
        assert len(results_turn["parts"]) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_tool_that_raises_gives_the_model_the_error_to_explain(provider, ai_settings, server, caplog):
    caplog.set_level(logging.INFO, logger="agents.ai")
    server.answer(tool_calls=[FakeToolCall("book_slot", {"start": "2026-05-04T10:00"})])
    server.answer("Sorry, I could not book it; a colleague will call you.")
    calendar = Calendar(book_slot=RuntimeError("the slot was taken a moment ago"))

    completion = run(provider, calendar)

    assert completion.text == "Sorry, I could not book it; a colleague will call you."
    assert completion.tool_log[0][1] == {"error": "the slot was taken a moment ago"}
    assert sent_results(provider, server.requests[1].json) == [{"error": "the slot was taken a moment ago"}]
    (line,) = [r for r in caplog.records if r.getMessage() == "ai.tool.call"]
    assert (line.levelno, line.tool, line.outcome) == (logging.WARNING, "book_slot", "error")
    assert line.error == "RuntimeError"
    assert line.exc_info is not None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_call_of_a_tool_that_was_not_offered_is_answered_with_an_error(provider, ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("cancel_all_meetings", {})])
    server.answer("I can only check and book slots.")
    calendar = Calendar()

    completion = run(provider, calendar)

    assert calendar.calls == []
    (result,) = sent_results(provider, server.requests[1].json)
    assert result == {"error": "there is no tool named 'cancel_all_meetings'"}
    assert completion.text == "I can only check and book slots."


def test_openai_arguments_that_are_not_json_are_answered_with_an_error_the_model_can_fix(ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("book_slot", '{"start": "2026-05-04T10:00"', id="call_bad")])
    server.answer(tool_calls=[FakeToolCall("book_slot", '{"start": "2026-05-04T10:00"}', id="call_good")])
    server.answer("Booked: Monday 10:00.")
    calendar = Calendar()

    completion = run("openai", calendar)

    assert completion.text == "Booked: Monday 10:00."
    assert [c.id for c in calendar.calls] == ["call_good"]  # the broken call never reached the calendar
    (bad, bad_result), (good, _) = completion.tool_log
    assert bad.arguments == {} and "not valid JSON" in bad.error
    assert bad_result == {"error": bad.error}
    assert sent_results("openai", server.requests[1].json) == [{"error": bad.error}]


def test_openai_empty_arguments_mean_no_arguments(ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("book_slot", "")])

    (call,) = ai.complete(MODELS["openai"], SYSTEM, HISTORY, tools=TOOLS).tool_calls

    assert (call.arguments, call.error) == ({}, "")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_after_max_rounds_the_model_is_asked_to_answer_without_tools(provider, ai_settings, server):
    for day in ("04", "05"):
        server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": f"2026-05-{day}"})], input_tokens=10)
    server.answer("I found nothing this week; shall I look at next week?", input_tokens=10)

    completion = run(provider, Calendar(), max_rounds=2)

    assert completion.text == "I found nothing this week; shall I look at next week?"
    assert len(server.requests) == 3
    assert len(completion.tool_log) == 2
    assert completion.input_tokens == 30
    assert [asked_for_text_only(provider, r.json) for r in server.requests] == [False, False, True]
    # the tools stay in the last request: Anthropic refuses tool turns without them
    assert sent_tools(provider, server.requests[2].json)
    assert sent_results(provider, server.requests[2].json) == [FREE, FREE]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_that_still_calls_tools_when_told_not_to_is_a_permanent_error(provider, ai_settings, server):
    for _ in range(2):
        server.answer(tool_calls=[FakeToolCall("check_free_slots", {"date": "2026-05-04"})])
    calendar = Calendar()

    with pytest.raises(AIPermanentError, match="still called tools after 1 rounds") as raised:
        run(provider, calendar, max_rounds=1)

    assert len(server.requests) == 2
    assert len(calendar.calls) == 1
    assert [call for call, _ in raised.value.tool_log] == calendar.calls


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_failure_after_a_booking_says_what_was_booked(provider, ai_settings, server):
    server.answer(tool_calls=[FakeToolCall("book_slot", {"start": "2026-05-04T10:00"})])
    calendar = Calendar()

    def book_then_the_model_fails(call):
        server.fail(500)  # the request after the booking; AI_MAX_RETRIES is 0 here
        return calendar(call)

    with pytest.raises(AITransientError) as raised:
        ai.run_tools(MODELS[provider], SYSTEM, HISTORY, TOOLS, book_then_the_model_fails)

    ((call, result),) = raised.value.tool_log
    assert (call.name, result) == ("book_slot", {"booked": True})


def test_max_rounds_zero_asks_once_for_text(ai_settings, server):
    server.answer("Which day suits you?")
    calendar = Calendar()

    completion = run("anthropic", calendar, max_rounds=0)

    assert completion.text == "Which day suits you?"
    assert calendar.calls == []
    (request,) = server.requests
    assert request.json["tool_choice"] == {"type": "none"}


# --- a conversation that carries tool turns -------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_tool_call_without_its_result_is_refused_as_the_real_api_would(provider, ai_settings, server):
    call = ai.ToolCall(id="call_x1", name="check_free_slots", arguments={"date": "2026-05-04"})
    history = [*HISTORY, ai.ChatMessage("assistant", "", tool_calls=(call,)), ai.ChatMessage("user", "Hello?")]

    with pytest.raises(AIPermanentError) as raised:
        ai.complete(MODELS[provider], SYSTEM, history, tools=TOOLS)

    assert raised.value.status == 400


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_conversation_with_earlier_tool_turns_can_continue(provider, ai_settings, server):
    call = ai.ToolCall(id="call_x1", name="book_slot", arguments={"start": "2026-05-04T10:00"})
    history = [
        *HISTORY,
        ai.ChatMessage("assistant", "", tool_calls=[call]),
        ai.ChatMessage.tool_result(call, {"booked": True, "event_id": "ev1"}),
        ai.ChatMessage("assistant", "Booked for Monday 10:00."),
        ai.ChatMessage("user", "Thanks!"),
    ]

    completion = ai.complete(MODELS[provider], SYSTEM, history, tools=TOOLS)

    assert completion.text == "Hello from the model"
    assert sent_results(provider, server.requests[0].json) == [{"booked": True, "event_id": "ev1"}]


def test_a_tool_turn_must_name_the_call_it_answers():
    with pytest.raises(ValueError, match="tool_call_id"):
        ai.ChatMessage("tool", "{}")
    with pytest.raises(ValueError, match="assistant"):
        ai.ChatMessage("user", "hi", tool_calls=(ai.ToolCall("c1", "book_slot", {}),))


def test_a_tool_name_every_provider_accepts_is_required():
    with pytest.raises(ValueError, match="tool name"):
        ai.Tool("book slot", "spaces are refused by OpenAI and Gemini", {})
    assert ai.Tool("list_slots", "no arguments", {}).parameters == {"type": "object", "properties": {}}


def test_tool_names_must_be_unique(ai_settings):
    with pytest.raises(ValueError, match="unique"):
        ai.run_tools(MODELS["openai"], SYSTEM, HISTORY, [BOOK_SLOT, BOOK_SLOT], Calendar())
