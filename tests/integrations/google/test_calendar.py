"""Calendar API calls: the calendar list, free/busy across time zones and DST changes,
event creation (idempotent with our id) and Google's errors as typed errors."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import responses

from integrations.errors import NotFound, PermanentError, RateLimited, TransientError, Unconfirmed
from integrations.google import calendar
from integrations.google.calendar import Busy, Calendar, busy_times, create_event, event_id_for, list_calendars

from .conftest import ACCESS, API, fixture

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
FREEBUSY = f"{API}/freeBusy"
CALENDAR_LIST = f"{API}/users/me/calendarList"


def sent_json(call) -> dict:
    return json.loads(call.request.body)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- Calendar list --------------------------------------------------------------------------


@responses.activate
def test_the_calendar_list_offers_writable_calendars_primary_first_across_pages(connected):
    first_page = fixture("calendar_list.json") | {"nextPageToken": "PAGE-2"}
    extra = first_page["items"][0] | {"id": "x@group.calendar.google.com", "summary": "Extra"}
    asked = {"minAccessRole": "writer", "maxResults": "250"}
    responses.get(CALENDAR_LIST, json=first_page, match=[responses.matchers.query_param_matcher(asked)])
    page_two = responses.get(
        CALENDAR_LIST,
        json={"kind": "calendar#calendarList", "items": [extra]},
        match=[responses.matchers.query_param_matcher(asked | {"pageToken": "PAGE-2"})],
    )

    calendars = list_calendars(connected)

    assert calendars == [
        Calendar(id="sales@acme.example.com", summary="Sales (Anna)", primary=True, time_zone="Europe/Berlin"),
        Calendar(id="team-bookings@group.calendar.google.com", summary="Team bookings", primary=False,
                 time_zone="Europe/Berlin"),
        Calendar(id="x@group.calendar.google.com", summary="Extra", primary=False, time_zone="Europe/Berlin"),
    ]  # fmt: skip
    assert page_two.call_count == 1


# --- Free/busy ------------------------------------------------------------------------------


@responses.activate
def test_busy_times_across_berlins_autumn_change_are_returned_in_utc(connected):
    connected.config = {"calendar_id": "sales@acme.example.com"}
    query = responses.post(FREEBUSY, json=fixture("freebusy_berlin_fall_back.json"))
    # the agent asks for the whole local day of 27 October 2024, which has 25 hours
    day = datetime(2024, 10, 27, tzinfo=BERLIN)

    busy = busy_times(connected, start=day, end=datetime(2024, 10, 28, tzinfo=BERLIN))

    assert sent_json(query.calls[0]) == {
        "timeMin": "2024-10-26T22:00:00Z",
        "timeMax": "2024-10-27T23:00:00Z",
        "timeZone": "UTC",
        "items": [{"id": "sales@acme.example.com"}],
    }
    assert busy == [
        Busy(start=utc(2024, 10, 27, 0, 30), end=utc(2024, 10, 27, 1, 30)),
        Busy(start=utc(2024, 10, 27, 9, 0), end=utc(2024, 10, 27, 11, 0)),  # two overlapping, merged
    ]
    # 02:30 summer time to 02:30 winter time: the same wall clock, one hour apart
    night = busy[0]
    assert night.start.astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    assert night.end.astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CET"
    assert night.end - night.start == timedelta(hours=1)
    assert all(b.start.tzinfo is UTC and b.end.tzinfo is UTC for b in busy)


@responses.activate
def test_busy_times_given_with_local_offsets_across_new_yorks_spring_change_are_converted_to_utc(connected):
    # Google keys the answer by the calendar's real id when "primary" was asked for
    answer = {
        "kind": "calendar#freeBusy",
        "timeMin": "2024-03-10T05:00:00.000Z",
        "timeMax": "2024-03-11T04:00:00.000Z",
        "calendars": {
            "sales@acme.example.com": {
                "busy": [
                    {"start": "2024-03-10T01:30:00-05:00", "end": "2024-03-10T03:30:00-04:00"},
                    {"start": "2024-03-10T09:00:00.000-04:00", "end": "2024-03-10T09:45:00.000-04:00"},
                ]
            }
        },
    }
    query = responses.post(FREEBUSY, json=answer)

    busy = busy_times(
        connected, start=datetime(2024, 3, 10, tzinfo=NEW_YORK), end=datetime(2024, 3, 11, tzinfo=NEW_YORK)
    )

    sent = sent_json(query.calls[0])
    assert (sent["timeMin"], sent["timeMax"]) == ("2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z")  # a 23-hour day
    assert sent["items"] == [{"id": "primary"}]  # no calendar picked: the account's primary
    assert busy == [
        Busy(start=utc(2024, 3, 10, 6, 30), end=utc(2024, 3, 10, 7, 30)),  # 01:30 EST to 03:30 EDT is one hour
        Busy(start=utc(2024, 3, 10, 13, 0), end=utc(2024, 3, 10, 13, 45)),
    ]


@responses.activate
def test_an_explicit_calendar_id_wins_over_the_configured_one(connected):
    connected.config = {"calendar_id": "sales@acme.example.com"}
    query = responses.post(FREEBUSY, json={"calendars": {"other@example.com": {"busy": []}}})

    assert busy_times(connected, calendar_id="other@example.com", start=utc(2024, 1, 1), end=utc(2024, 1, 2)) == []
    assert sent_json(query.calls[0])["items"] == [{"id": "other@example.com"}]


@responses.activate
def test_a_calendar_google_cannot_find_is_not_found(connected):
    connected.config = {"calendar_id": "gone@group.calendar.google.com"}
    responses.post(FREEBUSY, json=fixture("freebusy_not_found.json"))

    with pytest.raises(NotFound, match="not shared with the connected account"):
        busy_times(connected, start=utc(2024, 10, 26, 22), end=utc(2024, 10, 27, 23))


def test_busy_times_need_aware_datetimes(connected):
    with pytest.raises(ValueError, match="aware"):
        busy_times(connected, start=datetime(2024, 1, 1), end=datetime(2024, 1, 2))


# --- Events ---------------------------------------------------------------------------------


def inserted(event_id: str, **changes) -> dict:
    return fixture("event_inserted.json") | {"id": event_id} | changes


@responses.activate
def test_an_event_is_created_in_the_agents_time_zone_with_the_lead_invited(connected):
    connected.config = {"calendar_id": "team-bookings@group.calendar.google.com"}
    event_id = event_id_for("booking:lead-4242:1")
    insert = responses.post(
        f"{API}/calendars/team-bookings%40group.calendar.google.com/events", json=inserted(event_id)
    )

    created = create_event(
        connected,
        summary="Demo call with Anna Schmidt",
        description="Lead #4242: wants a demo of the Pro plan.",
        start=utc(2024, 10, 28, 9, 0),
        end=utc(2024, 10, 28, 9, 30),
        time_zone="Europe/Berlin",
        attendees=["anna.schmidt@example.com", " Anna.Schmidt@example.com ", ""],
        send_updates="externalOnly",
        event_id=event_id,
    )

    request = insert.calls[0].request
    assert request.params == {"sendUpdates": "externalOnly"}
    assert request.headers["Authorization"] == f"Bearer {ACCESS}"
    assert sent_json(insert.calls[0]) == {
        "id": event_id,
        "summary": "Demo call with Anna Schmidt",
        "description": "Lead #4242: wants a demo of the Pro plan.",
        # the day after Berlin's change: +01:00
        "start": {"dateTime": "2024-10-28T10:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2024-10-28T10:30:00+01:00", "timeZone": "Europe/Berlin"},
        "attendees": [{"email": "anna.schmidt@example.com"}],
    }
    assert created.id == event_id
    assert created.html_link == "https://www.google.com/calendar/event?eid=ZXhhbXBsZQ"
    assert (created.start, created.end) == (utc(2024, 10, 28, 9, 0), utc(2024, 10, 28, 9, 30))


@responses.activate
def test_the_local_time_sent_follows_the_summer_offset_before_the_change(connected):
    insert = responses.post(f"{API}/calendars/primary/events", json=inserted("abcde12345"))

    create_event(
        connected,
        summary="Call",
        description="",
        start=datetime(2024, 10, 26, 10, 0, tzinfo=BERLIN),
        end=datetime(2024, 10, 26, 10, 30, tzinfo=BERLIN),
        time_zone="America/New_York",
        attendees=["lead@example.com"],
    )

    body = sent_json(insert.calls[0])
    assert insert.calls[0].request.params == {"sendUpdates": "all"}
    assert body["start"] == {"dateTime": "2024-10-26T04:00:00-04:00", "timeZone": "America/New_York"}
    assert "description" not in body and "id" not in body


@responses.activate
def test_creating_the_same_event_again_returns_the_existing_one(connected):
    event_id = event_id_for("booking:lead-4242:1")
    insert = responses.post(f"{API}/calendars/primary/events", status=409, json=fixture("error_duplicate.json"))
    fetch = responses.get(f"{API}/calendars/primary/events/{event_id}", json=inserted(event_id))

    created = create_event(
        connected,
        summary="Demo call",
        description="",
        start=utc(2024, 10, 28, 9),
        end=utc(2024, 10, 28, 9, 30),
        time_zone="Europe/Berlin",
        attendees=["anna.schmidt@example.com"],
        event_id=event_id,
    )

    assert insert.call_count == 1 and fetch.call_count == 1
    assert created.id == event_id and created.start == utc(2024, 10, 28, 9)


@responses.activate
def test_a_failed_insert_with_our_id_is_retried_and_a_duplicate_means_it_was_done(connected, no_waiting):
    event_id = event_id_for("booking:lead-7:1")
    url = f"{API}/calendars/primary/events"
    responses.post(url, status=503, json={"error": {"code": 503, "message": "Backend Error"}})
    responses.post(url, status=409, json=fixture("error_duplicate.json"))
    responses.get(f"{url}/{event_id}", json=inserted(event_id))

    created = create_event(
        connected, summary="Call", description="", start=utc(2024, 10, 28, 9), end=utc(2024, 10, 28, 10),
        time_zone="UTC", attendees=[], event_id=event_id,
    )  # fmt: skip

    assert created.id == event_id
    assert len(no_waiting) == 1  # waited once before the second try


@responses.activate
def test_a_failed_insert_without_our_id_is_not_repeated(connected):
    insert = responses.post(f"{API}/calendars/primary/events", status=503, json={"error": {"message": "Backend Error"}})

    with pytest.raises(Unconfirmed):  # it may have been made: the caller decides, never a blind repeat
        create_event(
            connected, summary="Call", description="", start=utc(2024, 10, 28, 9), end=utc(2024, 10, 28, 10),
            time_zone="UTC", attendees=[],
        )  # fmt: skip

    assert insert.call_count == 1


@responses.activate
def test_a_duplicate_whose_event_was_deleted_is_not_passed_off_as_booked(connected):
    event_id = event_id_for("booking:lead-4242:1")
    responses.post(f"{API}/calendars/primary/events", status=409, json=fixture("error_duplicate.json"))
    responses.get(f"{API}/calendars/primary/events/{event_id}", json=inserted(event_id, status="cancelled"))

    with pytest.raises(PermanentError, match="deleted"):
        create_event(
            connected, summary="Call", description="", start=utc(2024, 10, 28, 9), end=utc(2024, 10, 28, 10),
            time_zone="UTC", attendees=[], event_id=event_id,
        )  # fmt: skip


def test_event_ids_are_valid_for_google_and_stable_per_key():
    first, again, other = event_id_for("lead:1:slot"), event_id_for("lead:1:slot"), event_id_for("lead:2:slot")

    assert first == again != other
    assert re.fullmatch(r"[a-v0-9]{5,1024}", first)


def test_invalid_event_arguments_are_refused_before_any_call(connected):
    common = {"summary": "Call", "description": "", "attendees": [], "time_zone": "Europe/Berlin"}
    start, end = utc(2024, 10, 28, 9), utc(2024, 10, 28, 10)
    with pytest.raises(ValueError, match="time zone"):
        create_event(connected, start=start, end=end, **(common | {"time_zone": "Mars/Olympus"}))
    with pytest.raises(ValueError, match="send_updates"):
        create_event(connected, start=start, end=end, send_updates="everyone", **common)
    with pytest.raises(ValueError, match="event_id"):
        create_event(connected, start=start, end=end, event_id="Not_Valid!", **common)
    with pytest.raises(ValueError, match="end after"):
        create_event(connected, start=end, end=start, **common)


# --- Errors ---------------------------------------------------------------------------------


@responses.activate
def test_too_many_requests_is_rate_limited_with_googles_wait(connected):
    responses.post(FREEBUSY, status=429, headers={"Retry-After": "120"}, json={"error": {"code": 429}})

    with pytest.raises(RateLimited) as error:
        busy_times(connected, start=utc(2024, 1, 1), end=utc(2024, 1, 2))

    assert error.value.retry_after == 120
    assert len(responses.calls) == 1  # longer than a client waits: the caller decides


@responses.activate
def test_a_rate_limit_403_is_retried_then_reported_as_rate_limited(connected, no_waiting):
    responses.get(CALENDAR_LIST, status=403, json=fixture("error_rate_limit.json"))

    with pytest.raises(RateLimited, match="Rate Limit Exceeded"):
        list_calendars(connected)

    assert len(responses.calls) == calendar.RETRY.attempts
    connected.refresh_from_db()
    assert connected.status == "new"  # slowing down is not a broken connection


@responses.activate
def test_a_server_error_is_transient_and_marks_the_integration_failing(connected):
    responses.post(FREEBUSY, status=500, headers={"Retry-After": "3"}, json={"error": {"message": "Backend Error"}})

    with pytest.raises(TransientError) as error:
        busy_times(connected, start=utc(2024, 1, 1), end=utc(2024, 1, 2))

    assert error.value.retry_after == 3 and error.value.status == 500
    connected.refresh_from_db()
    assert connected.status == "failing"


@responses.activate
def test_a_refused_request_is_permanent_and_says_why(connected):
    responses.post(f"{API}/calendars/primary/events", status=400, json=fixture("error_bad_attendee.json"))

    with pytest.raises(PermanentError, match="400 Invalid attendee email."):
        create_event(
            connected, summary="Call", description="", start=utc(2024, 10, 28, 9), end=utc(2024, 10, 28, 10),
            time_zone="UTC", attendees=["not-an-email"],
        )  # fmt: skip
