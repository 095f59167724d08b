"""Booking meetings in the agent's Google Calendar (agents/booking.py): free slots are the
working hours minus the busy times, in the agent's zone across clock changes; a booking
never lands on a busy, past or closed time, is made once per key (also after a crash
between Google and our database), and tells the CRM and the lead's sequences."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import responses
from django.utils import timezone

from agents import booking
from agents.booking import SlotUnavailable, book, free_slots
from agents.models import ExecutionLog, Meeting
from integrations.google import calendar as google
from integrations.google.calendar import event_id_for
from integrations.http import RetryPolicy
from sequences.runner import run_start
from tests.factories import make_integration, make_sequence
from tests.integrations.google.conftest import ACCESS, API, CLIENT_ID, CLIENT_SECRET, REFRESH, fixture, iso

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
CRM = "https://acme.kommo.com"
LEAD = 23416597
MANAGER = 8374811
# Thursday before the last weekend of October 2026: Berlin leaves summer time on Sunday
# the 25th at 03:00 (CEST, UTC+2 → CET, UTC+1)
NOW = datetime(2026, 10, 22, 12, 0, tzinfo=UTC)
WEEKDAYS_9_TO_12 = {
    "timezone": "Europe/Berlin",
    "days": {day: [{"start": "09:00", "end": "12:00"}] for day in ("mon", "tue", "wed", "thu", "fri")},
}
CALENDAR_OWNER = "sales@acme.example.com"  # Google answers "primary" under the real id


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class WorkerKilled(BaseException):
    """Stands in for kill -9: nothing after it runs, no handler catches it."""


class FakeGoogleCalendar:
    """Calendar API v3 for the account's primary calendar, as Google answers: freeBusy
    (the busy times given plus the events booked, overlapping the window asked for),
    events.insert (409 "duplicate" for an id taken) and events.get (404 when absent)."""

    EVENTS = f"{API}/calendars/primary/events"

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.busy: list[tuple[datetime, datetime]] = []
        self.events: dict[str, dict] = {}
        self.inserts: list[dict] = []  # {"body": ..., "query": ...} of every insert tried
        self.queries: list[dict] = []  # freeBusy bodies
        one_event = re.compile(rf"{re.escape(self.EVENTS)}/[a-v0-9]+$")
        for method, url, answer in (
            ("POST", f"{API}/freeBusy", self._free_busy),
            ("POST", self.EVENTS, self._insert),
            ("GET", one_event, self._get),
        ):
            mock.add_callback(method, url, callback=answer, content_type="application/json")

    def busy_from(self, start: datetime, end: datetime) -> None:
        self.busy.append((start.astimezone(UTC), end.astimezone(UTC)))

    def _free_busy(self, request):
        body = json.loads(request.body)
        self.queries.append(body)
        low, high = (datetime.fromisoformat(body[key]) for key in ("timeMin", "timeMax"))
        periods = list(self.busy) + [
            (datetime.fromisoformat(e["start"]["dateTime"]), datetime.fromisoformat(e["end"]["dateTime"]))
            for e in self.events.values()
        ]
        busy = [{"start": iso(s), "end": iso(e)} for s, e in sorted(periods) if s < high and low < e]
        answer = {
            "kind": "calendar#freeBusy",
            "timeMin": body["timeMin"],
            "timeMax": body["timeMax"],
            "calendars": {CALENDAR_OWNER: {"busy": busy}},
        }
        return 200, {}, json.dumps(answer)

    def _insert(self, request):
        body = json.loads(request.body)
        self.inserts.append({"body": body, "query": dict(request.params)})
        if body["id"] in self.events:
            return 409, {}, json.dumps(fixture("error_duplicate.json"))
        event = fixture("event_inserted.json") | {
            "id": body["id"],
            "iCalUID": f"{body['id']}@google.com",
            "htmlLink": f"https://www.google.com/calendar/event?eid={body['id'][:12]}",
            "summary": body["summary"],
            "start": body["start"],
            "end": body["end"],
            "attendees": [{"email": a["email"], "responseStatus": "needsAction"} for a in body["attendees"]],
        }
        self.events[body["id"]] = event
        return 200, {}, json.dumps(event)

    def _get(self, request):
        event = self.events.get(request.url.rsplit("/", 1)[1])
        if event is None:
            missing = {"error": {"errors": [{"domain": "global", "reason": "notFound", "message": "Not Found"}],
                                 "code": 404, "message": "Not Found"}}  # fmt: skip
            return 404, {}, json.dumps(missing)
        return 200, {}, json.dumps(event)


@pytest.fixture
def clock(monkeypatch):
    """Django's clock stands at NOW (google-auth keeps the real one, for the token's expiry)."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return NOW


def connect_google_calendar(agent, settings, monkeypatch):
    """The agent's connected Google Calendar integration (a token valid for another hour),
    the deployment's OAuth client, and Google's retries without waiting."""
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    monkeypatch.setattr(google, "RETRY", RetryPolicy(attempts=3, max_delay=10.0, sleep=lambda seconds: None))
    return make_integration(
        agent,
        integration_type="google_calendar",
        config={},
        credentials={
            "access_token": ACCESS,
            "refresh_token": REFRESH,
            "expiry": iso(datetime.now(UTC) + timedelta(hours=1)),
        },
    )


@pytest.fixture
def calendar(agent, settings, monkeypatch):
    return connect_google_calendar(agent, settings, monkeypatch)


@pytest.fixture
def kommo(agent):
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": 31416592},
        credentials={"access_token": "crm-token"},
    )


@pytest.fixture
def vendors():
    """Kommo's note and task endpoints and the Google calendar, on one mock."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(f"{CRM}/api/v4/leads/{LEAD}/notes", json={"_embedded": {"notes": [{"id": 7001}]}})
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.google = FakeGoogleCalendar(mock)
        yield mock


@pytest.fixture
def berlin_agent(agent):
    agent.schedule = WEEKDAYS_9_TO_12
    agent.save()
    return agent


def calls(mock, suffix: str, method: str = "POST"):
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


def local(moment: datetime) -> str:
    return moment.astimezone(BERLIN).strftime("%a %d %H:%M %Z")


def booking_of(agent, calendar, kommo, *, key: str = "trigger-firing-1-action-0", **overrides):
    arguments = {
        "key": key,
        "start": datetime(2026, 10, 26, 10, 0, tzinfo=BERLIN),
        "duration": timedelta(minutes=45),
        "summary": "Demo for Anna",
        "description": "Wants the Pro plan",
        "attendees": ["anna.schmidt@example.com"],
        "lead_id": LEAD,
        "kommo": kommo,
        "responsible_user_id": MANAGER,
        "booked_by": "trigger",
    } | overrides
    return book(agent, calendar, **arguments)


# --- free slots ----------------------------------------------------------------------------


def test_free_slots_are_the_working_hours_minus_busy_times_across_the_autumn_clock_change(
    berlin_agent, calendar, vendors, clock
):
    vendors.google.busy_from(utc(2026, 10, 23, 9, 0), utc(2026, 10, 23, 10, 0))  # Fri 11:00–12:00 CEST
    vendors.google.busy_from(utc(2026, 10, 24, 9, 0), utc(2026, 10, 24, 15, 0))  # Saturday: a day off anyway
    vendors.google.busy_from(utc(2026, 10, 26, 8, 0), utc(2026, 10, 26, 8, 45))  # Mon 09:00–09:45 CET
    # asked in New York time: Friday 04:00 EDT is 10:00 in Berlin
    start, end = datetime(2026, 10, 23, 4, 0, tzinfo=NEW_YORK), datetime(2026, 10, 26, 12, 0, tzinfo=BERLIN)

    slots = free_slots(berlin_agent, calendar, start=start, end=end)

    assert vendors.google.queries == [
        {"timeMin": "2026-10-23T08:00:00Z", "timeMax": "2026-10-26T11:00:00Z", "timeZone": "UTC",
         "items": [{"id": "primary"}]}
    ]  # fmt: skip
    assert [local(slot.start) for slot in slots] == [
        "Fri 23 10:00 CEST",
        "Fri 23 10:30 CEST",
        "Mon 26 10:00 CET",
        "Mon 26 10:30 CET",
        "Mon 26 11:00 CET",
        "Mon 26 11:30 CET",
    ]
    # the same wall clock is an hour later in UTC once summer time has ended
    assert [slot.start.astimezone(UTC) for slot in slots] == [
        utc(2026, 10, 23, 8, 0), utc(2026, 10, 23, 8, 30),
        utc(2026, 10, 26, 9, 0), utc(2026, 10, 26, 9, 30), utc(2026, 10, 26, 10, 0), utc(2026, 10, 26, 10, 30),
    ]  # fmt: skip
    assert all(slot.end.astimezone(UTC) - slot.start.astimezone(UTC) == timedelta(minutes=30) for slot in slots)


def test_free_slots_in_the_night_of_the_clock_change_are_each_thirty_minutes(agent, calendar, vendors, clock):
    agent.schedule = {"timezone": "Europe/Berlin", "days": {"sun": [{"start": "00:00", "end": "24:00"}]}}
    agent.save()

    slots = free_slots(agent, calendar, start=utc(2026, 10, 25, 0, 0), end=utc(2026, 10, 25, 3, 0))

    assert [slot.start.astimezone(UTC) for slot in slots] == [
        utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0),  # 02:00, 02:30 CEST, 02:00 CET
        utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 0), utc(2026, 10, 25, 2, 30),
    ]  # fmt: skip
    assert all(slot.end.astimezone(UTC) - slot.start.astimezone(UTC) == timedelta(minutes=30) for slot in slots)


# --- refusals ------------------------------------------------------------------------------


def test_a_taken_time_is_refused_with_free_slots_to_offer_and_nothing_is_booked(
    berlin_agent, calendar, kommo, vendors, clock
):
    vendors.google.busy_from(utc(2026, 10, 26, 8, 0), utc(2026, 10, 26, 8, 45))  # Mon 09:00–09:45 CET

    with pytest.raises(SlotUnavailable) as refused:
        booking_of(berlin_agent, calendar, kommo, start=datetime(2026, 10, 26, 9, 30, tzinfo=BERLIN))

    assert str(refused.value) == "that time is already taken"
    assert [local(slot.start) for slot in refused.value.alternatives] == [
        "Mon 26 10:00 CET",
        "Mon 26 10:30 CET",
        "Mon 26 11:00 CET",
    ]
    assert vendors.google.inserts == []
    assert not Meeting.objects.exists()
    assert calls(vendors, "/notes") == calls(vendors, "/api/v4/tasks") == []
    assert not ExecutionLog.objects.filter(ref_type="meeting").exists()


def test_a_past_time_and_a_time_outside_working_hours_are_refused(berlin_agent, calendar, kommo, vendors, clock):
    vendors.google.busy_from(utc(2026, 10, 23, 9, 0), utc(2026, 10, 23, 10, 0))  # Fri 11:00–12:00 CEST

    with pytest.raises(SlotUnavailable) as past:
        booking_of(berlin_agent, calendar, kommo, start=NOW - timedelta(hours=1))
    with pytest.raises(SlotUnavailable) as saturday:
        booking_of(berlin_agent, calendar, kommo, start=datetime(2026, 10, 24, 10, 0, tzinfo=BERLIN))
    with pytest.raises(SlotUnavailable) as past_closing:  # starts at 11:45, would end at 12:30
        booking_of(berlin_agent, calendar, kommo, start=datetime(2026, 10, 26, 11, 45, tzinfo=BERLIN))

    assert str(past.value) == "that time has passed"
    assert [local(slot.start) for slot in past.value.alternatives] == [
        "Fri 23 09:00 CEST",
        "Fri 23 09:30 CEST",
        "Fri 23 10:00 CEST",
    ]
    assert str(saturday.value) == str(past_closing.value) == "that time is outside working hours"
    assert [local(slot.start) for slot in saturday.value.alternatives] == [
        "Mon 26 09:00 CET",
        "Mon 26 09:30 CET",
        "Mon 26 10:00 CET",
    ]
    assert vendors.google.inserts == [] and not Meeting.objects.exists()


# --- booking -------------------------------------------------------------------------------


def test_a_booking_creates_the_event_the_meeting_the_crm_note_and_task_and_a_log(
    berlin_agent, calendar, kommo, vendors, clock
):
    key = "trigger-firing-7-action-0"

    booked = booking_of(berlin_agent, calendar, kommo, key=key, send_updates="externalOnly")

    (insert,) = vendors.google.inserts
    assert insert["query"] == {"sendUpdates": "externalOnly"}
    assert insert["body"] == {
        "id": event_id_for(key),
        "summary": "Demo for Anna",
        "description": "Wants the Pro plan",
        "start": {"dateTime": "2026-10-26T10:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-10-26T10:45:00+01:00", "timeZone": "Europe/Berlin"},
        "attendees": [{"email": "anna.schmidt@example.com"}],
    }
    meeting = Meeting.objects.get()
    assert booked.created is True and booked.meeting == meeting
    assert (meeting.agent, meeting.calendar, meeting.crm_lead_id) == (berlin_agent, calendar, LEAD)
    assert (meeting.start, meeting.end) == (utc(2026, 10, 26, 9, 0), utc(2026, 10, 26, 9, 45))
    assert (meeting.event_id, meeting.key, meeting.booked_by) == (event_id_for(key), key, "trigger")
    assert meeting.html_link.startswith("https://www.google.com/calendar/event?eid=")
    assert meeting.crm_error == ""
    (note,) = calls(vendors, f"/leads/{LEAD}/notes")
    assert json.loads(note.request.body) == [
        {"note_type": "common", "params": {"text": "Meeting booked: Demo for Anna, 2026-10-26 10:00 CET"}}
    ]
    (task,) = calls(vendors, "/api/v4/tasks")
    assert json.loads(task.request.body) == [
        {
            "entity_id": LEAD,
            "entity_type": "leads",
            "text": "Meeting with the lead: Demo for Anna, 2026-10-26 10:00 CET",
            "complete_till": int(utc(2026, 10, 26, 9, 0).timestamp()),
            "responsible_user_id": MANAGER,
        }
    ]
    log = ExecutionLog.objects.get(ref_type="meeting")
    assert (log.kind, log.status, log.ref_id, log.crm_lead_id) == ("integration", "success", meeting.pk, LEAD)
    assert log.detail["booked_by"] == "trigger" and log.detail["event_id"] == event_id_for(key)


def test_a_booked_meeting_ends_the_leads_sequences_that_exit_on_a_meeting(
    berlin_agent, calendar, kommo, vendors, clock
):
    steps = [{"type": "delay", "days": 1}, {"type": "create_task", "text": "Follow up"}]
    ends = make_sequence(berlin_agent, trigger_config={}, steps=steps)  # the default rules include it
    goes_on = make_sequence(
        berlin_agent, trigger_config={}, steps=steps, exit_rules={"on_reply": True, "on_meeting_booked": False}
    )
    ending = run_start(sequence=ends, lead_id=LEAD, started_by="api", integration=kommo)
    going_on = run_start(sequence=goes_on, lead_id=LEAD, started_by="api", integration=kommo)
    other_lead = run_start(sequence=ends, lead_id=LEAD + 1, started_by="api", integration=kommo)

    booking_of(berlin_agent, calendar, kommo)

    for run in (ending, going_on, other_lead):
        run.refresh_from_db()
    assert (ending.status, ending.exit_reason) == ("exited", "a meeting was booked")
    assert going_on.status == "scheduled" and other_lead.status == "scheduled"


def test_the_same_key_books_once(berlin_agent, calendar, kommo, vendors, clock):
    first = booking_of(berlin_agent, calendar, kommo)
    google_calls = len(vendors.calls)

    again = booking_of(berlin_agent, calendar, kommo)  # a retried task, a redelivered event
    moved = booking_of(berlin_agent, calendar, kommo, start=datetime(2026, 10, 27, 11, 0, tzinfo=BERLIN))

    assert first.created is True and again.created is False and moved.created is False
    assert again.meeting == first.meeting == moved.meeting
    assert len(vendors.calls) == google_calls  # found by its key: neither Google nor the CRM is asked
    assert len(vendors.google.inserts) == 1 and Meeting.objects.count() == 1
    assert len(calls(vendors, "/notes")) == len(calls(vendors, "/api/v4/tasks")) == 1
    assert ExecutionLog.objects.filter(ref_type="meeting").count() == 1


def test_a_crash_between_the_google_insert_and_the_meeting_row_is_recorded_on_the_retry(
    berlin_agent, calendar, kommo, vendors, clock, monkeypatch
):
    real_create = google.create_event

    def insert_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        raise WorkerKilled

    monkeypatch.setattr(google, "create_event", insert_then_die)
    with pytest.raises(WorkerKilled):
        booking_of(berlin_agent, calendar, kommo)
    assert len(vendors.google.events) == 1 and not Meeting.objects.exists()
    monkeypatch.setattr(google, "create_event", real_create)

    retried = booking_of(berlin_agent, calendar, kommo)  # the time is busy now: with our own event

    assert retried.created is True
    assert len(vendors.google.inserts) == 1  # found with events.get, not inserted again
    meeting = Meeting.objects.get()
    assert meeting.event_id == event_id_for("trigger-firing-1-action-0")
    assert (meeting.start, meeting.end) == (utc(2026, 10, 26, 9, 0), utc(2026, 10, 26, 9, 45))
    assert len(calls(vendors, "/notes")) == len(calls(vendors, "/api/v4/tasks")) == 1
    assert ExecutionLog.objects.filter(ref_type="meeting").count() == 1


def test_a_meeting_the_same_key_recorded_a_moment_ago_is_returned(berlin_agent, calendar, kommo, vendors, clock,
                                                                  monkeypatch):  # fmt: skip
    real_create = google.create_event
    other = {}

    def another_worker_records_it_meanwhile(integration, **kwargs):
        event = real_create(integration, **kwargs)
        other["meeting"] = Meeting.objects.create(
            agent=berlin_agent, calendar=calendar, crm_lead_id=LEAD, start=event.start, end=event.end,
            summary="Demo for Anna", event_id=event.id, booked_by="trigger", key="trigger-firing-1-action-0",
        )  # fmt: skip
        return event

    monkeypatch.setattr(booking.google, "create_event", another_worker_records_it_meanwhile)

    booked = booking_of(berlin_agent, calendar, kommo)

    assert booked.created is False and booked.meeting == other["meeting"]
