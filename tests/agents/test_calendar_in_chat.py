"""The agent books a meeting in a conversation: each provider's model (the real SDKs
against the local fake server) looks for free slots, books the time the lead accepted,
and answers; a taken time is refused with other slots, and nothing is booked."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import responses
from django.utils import timezone

from agents import pipeline
from agents.models import Meeting
from integrations.google import calendar as google
from integrations.http import RetryPolicy
from sequences.models import SequenceRun
from sequences.runner import run_start
from tests.agents.test_reply_pipeline import (  # noqa: F401 - fixtures used by name
    LEAD_ID,
    PROVIDER_MODELS,
    ai_server,
    calls_to,
    channel,
    crm_api,
    kommo,
    link_to_lead,
    receive,
)
from tests.factories import make_integration, make_sequence
from tests.fake_ai_server import FakeToolCall

API = "https://www.googleapis.com/calendar/v3"
ZONE = ZoneInfo("Europe/Moscow")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
HOURS = {"timezone": "Europe/Moscow", "days": {day: [{"start": "09:00", "end": "18:00"}] for day in WEEKDAYS}}
EVENTS = re.compile(re.escape(API) + r"/calendars/primary/events(\?.*)?$")
ONE_EVENT = re.compile(re.escape(API) + r"/calendars/primary/events/[a-v0-9]+$")


def next_weekday_at(hour: int) -> datetime:
    day = timezone.now().astimezone(ZONE).date() + timedelta(days=2)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return datetime.combine(day, time(hour), tzinfo=ZONE)


@pytest.fixture
def calendar(agent, settings, monkeypatch):
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = "client", "secret"
    monkeypatch.setattr(google, "RETRY", RetryPolicy(attempts=1, max_delay=0))
    agent.schedule = HOURS
    agent.save()
    expiry = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return make_integration(
        agent,
        integration_type="google_calendar",
        config={},
        credentials={"access_token": "ya29.token", "refresh_token": "1//refresh", "expiry": expiry},
    )


def google_answers(mock, *, busy: list[tuple[datetime, datetime]] = ()):
    periods = [{"start": a.astimezone(UTC).isoformat(), "end": b.astimezone(UTC).isoformat()} for a, b in busy]
    mock.post(f"{API}/freeBusy", json={"kind": "calendar#freeBusy", "calendars": {"primary": {"busy": periods}}})
    mock.add(responses.GET, ONE_EVENT, status=404, json={"error": {"code": 404, "message": "Not Found"}})

    def inserted(request):
        body = json.loads(request.body)
        event = {**body, "status": "confirmed", "htmlLink": "https://calendar.google.com/event?eid=x"}
        return 200, {}, json.dumps(event)

    mock.add_callback(responses.POST, EVENTS, callback=inserted, content_type="application/json")


def script_booking(server, start: datetime):
    server.answer(tool_calls=[FakeToolCall("check_free_slots", {"from_date": start.date().isoformat()})])
    server.answer(tool_calls=[FakeToolCall("book_meeting", {"start": start.strftime("%Y-%m-%dT%H:%M")})])
    server.answer(f"Done: see you on {start:%d.%m} at {start:%H:%M}.")


@pytest.mark.parametrize("provider", sorted(PROVIDER_MODELS))
def test_the_agent_books_the_time_the_lead_accepted(provider, agent, channel, kommo, crm_api, ai_server, calendar):  # noqa: F811 - fixtures
    agent.ai_model = f"{provider}:{PROVIDER_MODELS[provider]}"
    agent.save()
    start = next_weekday_at(11)
    google_answers(crm_api)
    script_booking(ai_server, start)
    message = receive(channel, "Thursday at 11 works for me")
    link_to_lead(message)
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "delay", "days": 1}])
    run = run_start(sequence=sequence, lead_id=LEAD_ID, started_by="api")

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (sent,) = calls_to(crm_api, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == f"Done: see you on {start:%d.%m} at {start:%H:%M}."
    (insert,) = [c for c in crm_api.calls if c.request.method == "POST" and EVENTS.match(c.request.url)]
    body = json.loads(insert.request.body)
    assert body["start"] == {"dateTime": start.isoformat(), "timeZone": "Europe/Moscow"}
    assert body["attendees"] == [{"email": "maria.lopez@example.com"}]
    meeting = Meeting.objects.get()
    assert (meeting.start, meeting.crm_lead_id, meeting.booked_by) == (start, LEAD_ID, "conversation")
    notes = [json.loads(c.request.body)[0]["params"]["text"] for c in calls_to(crm_api, f"/leads/{LEAD_ID}/notes")]
    assert any(note.startswith("Meeting booked") for note in notes)
    assert any("Meeting with the lead" in json.loads(c.request.body)[0]["text"] for c in calls_to(crm_api, "/tasks"))
    run.refresh_from_db()
    assert run.status == "exited" and run.exit_reason == "a meeting was booked"
    # the model saw the tool results: free slots, then the booking
    last_request = json.dumps(ai_server.requests[-1].json, ensure_ascii=False)
    assert "booked" in last_request and "free_slots" in json.dumps(ai_server.requests[1].json)


def test_a_taken_time_is_refused_with_other_slots(agent, channel, kommo, crm_api, ai_server, calendar):  # noqa: F811 - fixtures
    agent.ai_model = "openai:gpt-4o-mini"
    agent.save()
    start = next_weekday_at(11)
    google_answers(crm_api, busy=[(start - timedelta(minutes=30), start + timedelta(minutes=30))])
    ai_server.answer(tool_calls=[FakeToolCall("book_meeting", {"start": start.strftime("%Y-%m-%dT%H:%M")})])
    ai_server.answer("That time is taken; how about 12:00?")
    message = receive(channel, "Book me at 11")
    link_to_lead(message)

    assert pipeline.message_reply(message_id=message.id) == "answered"

    assert not Meeting.objects.exists()
    assert not [c for c in crm_api.calls if c.request.method == "POST" and EVENTS.match(c.request.url)]
    tool_result = json.dumps(ai_server.requests[-1].json, ensure_ascii=False)
    assert "already taken" in tool_result and "free_slots" in tool_result
    assert SequenceRun.objects.count() == 0


def test_without_a_calendar_no_tools_are_offered(agent, channel, kommo, crm_api, ai_server):  # noqa: F811 - fixtures
    agent.ai_model = "openai:gpt-4o-mini"
    agent.save()
    message = receive(channel, "Hello")
    link_to_lead(message)

    assert pipeline.message_reply(message_id=message.id) == "answered"

    (request,) = ai_server.requests
    assert "tools" not in request.json
