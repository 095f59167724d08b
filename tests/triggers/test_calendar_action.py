"""The "create_calendar_event" trigger action and sequence step: a meeting booked in the
agent's Google Calendar from a CRM event or a run, in working hours, never on a busy time
(the next free one, or a failure that lists the free ones), once per action; refused at
save time for an agent without a calendar; planned, not booked, in the dry run."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import responses
from django.utils import timezone

from agents.models import Meeting
from crm.tasks import process_events
from integrations.google import calendar as google
from integrations.google.calendar import event_id_for
from sequences.models import SequenceStep
from sequences.runner import run_start, step_run
from tests.agents.test_booking import (
    NOW,
    WEEKDAYS_9_TO_12,
    FakeGoogleCalendar,
    WorkerKilled,
    connect_google_calendar,
    utc,
)
from tests.factories import make_integration, make_sequence, make_trigger
from tests.triggers.test_execution import CRM, LEAD, NEW, WON, calls, deliver, lead_form, run
from triggers.models import ActionRun, TriggerFiring

FIXTURES = Path(__file__).resolve().parents[1] / "crm" / "fixtures"
CONTACT = 21542119  # the main contact in client_lead.json; client_contact.json is its card
CONTACT_EMAIL = "maria.lopez@example.com"
WEBHOOK_MANAGER = 8374811  # the lead's responsible user in lead_form()
DEMO = {
    "type": "create_calendar_event",
    "summary": "Demo for {{lead.name}}",
    "description": "Lead {{lead.id}}, {{contact.name}}",
    "duration_minutes": 45,
}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock(NOW)  # Thursday 14:00 in Berlin, after the agent's hours (09–12)
    monkeypatch.setattr(timezone, "now", clock)
    return clock


@pytest.fixture
def berlin_agent(agent):
    agent.schedule = WEEKDAYS_9_TO_12
    agent.save()
    return agent


@pytest.fixture
def kommo(agent, settings):
    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers"]
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": 31416592},
        credentials={"access_token": "crm-token"},
    )


@pytest.fixture
def calendar(agent, settings, monkeypatch):
    return connect_google_calendar(agent, settings, monkeypatch)


@pytest.fixture
def vendors():
    """Kommo (the lead and its contact, notes, tasks) and the Google calendar."""
    lead = json.loads((FIXTURES / "client_lead.json").read_text()) | {"id": LEAD}
    contact = json.loads((FIXTURES / "client_contact.json").read_text())
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{CRM}/api/v4/leads/{LEAD}", json=lead)
        mock.get(f"{CRM}/api/v4/contacts/{CONTACT}", json=contact)
        mock.post(f"{CRM}/api/v4/leads/{LEAD}/notes", json={"_embedded": {"notes": [{"id": 7001}]}})
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.google = FakeGoogleCalendar(mock)
        yield mock


def won():
    return lead_form("status", status_id=WON, old_status_id=NEW)


def action_key() -> str:
    return f"trigger-firing-{TriggerFiring.objects.get().pk}-action-0"


# --- the trigger action --------------------------------------------------------------------


def test_a_trigger_books_the_meeting_in_the_next_working_hours_with_the_contact_invited(
    berlin_agent, kommo, calendar, vendors, clock
):
    make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[DEMO])

    (event_id,) = run(kommo, won())

    (insert,) = vendors.google.inserts
    assert insert["query"] == {"sendUpdates": "all"}
    # an hour after Thursday 14:00 is after hours: Friday 09:00, still summer time
    assert insert["body"] == {
        "id": event_id_for(action_key()),
        "summary": "Demo for Заявка с сайта",
        "description": f"Lead {LEAD}, Maria Lopez",
        "start": {"dateTime": "2026-10-23T09:00:00+02:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-10-23T09:45:00+02:00", "timeZone": "Europe/Berlin"},
        "attendees": [{"email": CONTACT_EMAIL}],
    }
    meeting = Meeting.objects.get()
    assert (meeting.key, meeting.booked_by, meeting.crm_lead_id) == (action_key(), "trigger", LEAD)
    action = ActionRun.objects.get()
    assert action.status == "done"
    assert action.result == {
        "meeting_id": meeting.pk,
        "event_id": event_id_for(action_key()),
        "start": "2026-10-23T09:00:00+02:00",
        "end": "2026-10-23T09:45:00+02:00",
        "link": meeting.html_link,
        "already_booked": False,
    }
    (task,) = calls(vendors, "/api/v4/tasks")
    assert json.loads(task.request.body)[0]["responsible_user_id"] == WEBHOOK_MANAGER
    assert len(calls(vendors, "/notes")) == 1

    process_events([event_id])  # the event again: a redelivered task, the sweeper

    assert len(vendors.google.inserts) == 1 and Meeting.objects.count() == 1


def test_an_action_interrupted_after_google_booked_it_is_done_again_and_finds_its_event(
    berlin_agent, kommo, calendar, vendors, clock, monkeypatch
):
    make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[DEMO])
    event_ids = deliver(kommo, won())
    real_create = google.create_event

    def insert_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        raise WorkerKilled

    monkeypatch.setattr(google, "create_event", insert_then_die)
    with pytest.raises(WorkerKilled):
        process_events(event_ids)
    monkeypatch.setattr(google, "create_event", real_create)
    assert ActionRun.objects.get().status == "running" and not Meeting.objects.exists()
    clock.now += timedelta(minutes=6)  # the claim has lapsed: the worker is gone

    process_events(event_ids)

    assert ActionRun.objects.get().status == "done"
    assert len(vendors.google.inserts) == 1  # not booked a second time
    assert Meeting.objects.get().event_id == event_id_for(action_key())


def test_a_busy_start_books_the_next_free_time(berlin_agent, kommo, calendar, vendors, clock):
    vendors.google.busy_from(utc(2026, 10, 23, 7, 0), utc(2026, 10, 23, 8, 0))  # Fri 09:00–10:00 CEST
    make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[DEMO])

    run(kommo, won())

    (insert,) = vendors.google.inserts
    assert insert["body"]["start"]["dateTime"] == "2026-10-23T10:00:00+02:00"
    result = ActionRun.objects.get().result
    assert (result["start"], result["end"]) == ("2026-10-23T10:00:00+02:00", "2026-10-23T10:45:00+02:00")
    assert result["moved"] == (
        "that time is already taken (2026-10-23T09:00:00+02:00): the next free time was booked"
    )


def test_with_if_busy_fail_a_busy_start_fails_the_action_with_the_free_times(
    berlin_agent, kommo, calendar, vendors, clock
):
    vendors.google.busy_from(utc(2026, 10, 23, 7, 0), utc(2026, 10, 23, 8, 0))
    make_trigger(
        berlin_agent,
        event="lead_status_changed",
        conditions=[],
        actions=[DEMO | {"if_busy": "fail"}, {"type": "add_note", "text": "Meeting booked"}],
    )

    run(kommo, won())

    failed, not_run = ActionRun.objects.order_by("index")
    assert failed.status == "failed" and not_run.status == "not_run"
    assert failed.error == (
        "ActionFailed: that time is already taken (2026-10-23 09:00 CEST); "
        "free: 2026-10-23 10:00, 2026-10-23 10:30, 2026-10-23 11:00"
    )
    assert vendors.google.inserts == [] and not Meeting.objects.exists()
    assert TriggerFiring.objects.get().status == "failed"


def test_outside_working_hours_on_request_and_without_inviting_the_contact(
    berlin_agent, kommo, calendar, vendors, clock
):
    action = DEMO | {"start_in_minutes": 90, "within_working_hours": False, "invite_contact": False}
    make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[action])

    run(kommo, won())

    (insert,) = vendors.google.inserts
    assert insert["body"]["start"]["dateTime"] == "2026-10-22T15:30:00+02:00"  # Thursday, after hours
    assert insert["body"]["attendees"] == []


def test_an_agent_whose_calendar_was_switched_off_fails_the_action_with_the_reason(
    berlin_agent, kommo, calendar, vendors, clock
):
    make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[DEMO])
    calendar.active = False
    calendar.save()

    run(kommo, won())

    action = ActionRun.objects.get()
    assert (action.status, action.error) == (
        "failed",
        "ActionFailed: the agent has no active Google Calendar integration",
    )
    assert vendors.google.inserts == []


# --- validation ----------------------------------------------------------------------------


def test_a_trigger_or_sequence_that_books_meetings_needs_the_agents_google_calendar(
    api, agent, settings, monkeypatch
):
    trigger = {"agent": agent.id, "name": "Won → demo", "event": "lead_status_changed", "conditions": []}
    trigger["actions"] = [DEMO]
    sequence = {"agent": agent.id, "name": "Demo", "steps": [{"type": "delay", "hours": 1}, DEMO]}

    without = api.post("/api/triggers/", trigger, format="json")
    steps_without = api.post("/api/sequences/", sequence, format="json")
    calendar = connect_google_calendar(agent, settings, monkeypatch)
    calendar.active = False
    calendar.save()
    switched_off = api.post("/api/triggers/", trigger, format="json")
    calendar.active = True
    calendar.save()
    connected = api.post("/api/triggers/", trigger, format="json")
    steps_connected = api.post("/api/sequences/", sequence, format="json")

    needs = "create_calendar_event needs the agent's Google Calendar integration (connect one to the agent, or "
    assert without.status_code == switched_off.status_code == steps_without.status_code == 400
    assert without.json() == switched_off.json() == {"actions": [f"actions[0].type: {needs}switch it back on)"]}
    assert steps_without.json() == {"steps": [f"steps[1].type: {needs}switch it back on)"]}
    assert connected.status_code == steps_connected.status_code == 201, connected.json()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"summary": ""}, 'summary: string should have at least 1 character, got ""'),
        ({"summary": "Demo {{lead.nam}}"}, "summary: unknown variable {{lead.nam}} (known: lead.id, "),
        ({"description": "{{deal}}"}, "description: unknown variable {{deal}} (known: lead.id, "),
        ({"duration_minutes": 4}, "duration_minutes: input should be greater than or equal to 5, got 4"),
        ({"duration_minutes": 481}, "duration_minutes: input should be less than or equal to 480, got 481"),
        ({"start_in_minutes": -1}, "start_in_minutes: input should be greater than or equal to 0, got -1"),
        ({"if_busy": "skip"}, "if_busy: must be one of 'next_free' or 'fail', got \"skip\""),
        ({"send_updates": "none!"}, "send_updates: must be one of 'all', 'externalOnly' or 'none', got \"none!\""),
        ({"invite_contact": "yes"}, 'invite_contact: input should be a valid boolean, got "yes"'),
        ({"attendees": ["a@b.c"]}, "attendees: unknown key"),
    ],
)
def test_the_actions_settings_are_checked(api, agent, settings, monkeypatch, change, message):
    connect_google_calendar(agent, settings, monkeypatch)
    trigger = {"agent": agent.id, "name": "t", "event": "lead_status_changed", "conditions": []}

    response = api.post("/api/triggers/", trigger | {"actions": [DEMO | change]}, format="json")

    assert response.status_code == 400
    (error,) = response.json()["actions"]
    assert error.startswith(f"actions[0].{message}"), error


# --- the sequence step ---------------------------------------------------------------------


def test_a_sequence_step_books_the_meeting_and_the_run_goes_on(agent, kommo, calendar, vendors, clock):
    # no working hours: around the clock, in the server's zone (UTC)
    step = {"type": "create_calendar_event", "summary": "Call about {{lead.name}}", "start_in_minutes": 0}
    keeps_going = make_sequence(
        agent,
        trigger_config={},
        steps=[step, {"type": "create_task", "text": "Prepare the call"}],
        exit_rules={"on_reply": True, "on_meeting_booked": False},
    )
    other = make_sequence(agent, trigger_config={}, steps=[{"type": "delay", "days": 2}])  # exits on a meeting
    other_run = run_start(sequence=other, lead_id=LEAD, started_by="api")
    booking_run = run_start(sequence=keeps_going, lead_id=LEAD, started_by="api")

    step_run(SequenceStep.objects.get(run=booking_run, index=0).pk)

    booking_run.refresh_from_db()
    other_run.refresh_from_db()
    assert booking_run.status == "done"
    assert (other_run.status, other_run.exit_reason) == ("exited", "a meeting was booked")
    meeting = Meeting.objects.get()
    assert (meeting.key, meeting.booked_by) == (f"seq-run-{booking_run.pk}-step-0", "sequence")
    assert (meeting.start, meeting.end) == (NOW, NOW + timedelta(minutes=30))
    (insert,) = vendors.google.inserts
    assert insert["body"]["summary"] == "Call about Solar panels for a house"
    assert insert["body"]["attendees"] == [{"email": CONTACT_EMAIL}]
    output = SequenceStep.objects.get(run=booking_run, index=0).output
    assert output["meeting_id"] == meeting.pk and output["start"] == "2026-10-22T12:00:00+00:00"
    meeting_task, prepare = calls(vendors, "/api/v4/tasks")
    assert json.loads(meeting_task.request.body)[0]["responsible_user_id"] == 9587231  # the lead's, from the CRM
    assert json.loads(prepare.request.body)[0]["text"] == "Prepare the call"


def test_a_sequence_step_that_books_a_meeting_does_not_end_its_own_run(agent, kommo, calendar, vendors, clock):
    step = {"type": "create_calendar_event", "summary": "Call", "start_in_minutes": 0}
    sequence = make_sequence(agent, trigger_config={}, steps=[step, {"type": "create_task", "text": "Prepare"}])
    booking_run = run_start(sequence=sequence, lead_id=LEAD, started_by="api")

    step_run(SequenceStep.objects.get(run=booking_run, index=0).pk)

    booking_run.refresh_from_db()
    assert booking_run.status == "done"  # its exit rule is for meetings booked elsewhere
    steps = SequenceStep.objects.filter(run=booking_run).order_by("index").values_list("status", flat=True)
    assert list(steps) == ["done", "done"]
    assert Meeting.objects.count() == 1 and len(calls(vendors, "/api/v4/tasks")) == 2  # the meeting's, then "Prepare"


# --- the dry run ---------------------------------------------------------------------------


def test_the_dry_run_plans_the_meeting_without_booking_it(api, berlin_agent, kommo, calendar, clock):
    trigger = make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[DEMO])
    sample = {"lead": {"id": 5, "name": "Anna's shop"}, "contact": {"name": "Anna", "email": "anna@example.com"}}

    with responses.RequestsMock() as nothing_called:
        planned = api.post(
            f"/api/triggers/{trigger.id}/test/", {"event": sample, "at": "2026-10-23T15:30:00Z"}, format="json"
        )
        calendar.active = False
        calendar.save()
        no_calendar = api.post(
            f"/api/triggers/{trigger.id}/test/", {"event": sample, "at": "2026-10-23T15:30:00Z"}, format="json"
        )

    assert planned.status_code == 200, planned.json()
    # Friday 17:30 in Berlin is after hours; the next opening is Monday 09:00, in winter time
    assert planned.json()["actions"] == [
        {
            "index": 0,
            "type": "create_calendar_event",
            "summary": "Demo for Anna's shop",
            "description": "Lead 5, Anna",
            "start": "2026-10-26T09:00:00+01:00",
            "end": "2026-10-26T09:45:00+01:00",
            "attendees": ["anna@example.com"],
            "if_busy": "next_free",
        }
    ]
    assert no_calendar.json()["actions"][0]["would_fail"] == "the agent has no active Google Calendar integration"
    assert len(nothing_called.calls) == 0 and not Meeting.objects.exists()


def test_the_planned_start_moves_to_where_the_whole_meeting_fits(api, berlin_agent, kommo, calendar, clock):
    # 11:30 + 45 minutes would end after 12:00: the meeting starts at the next opening
    late_morning = DEMO | {"start_in_minutes": 0}
    trigger = make_trigger(berlin_agent, event="lead_status_changed", conditions=[], actions=[late_morning])

    response = api.post(
        f"/api/triggers/{trigger.id}/test/",
        {"event": {"lead": {"id": 5, "name": "x"}}, "at": "2026-10-23T09:30:00Z"},
        format="json",
    )

    (action,) = response.json()["actions"]
    assert (action["start"], action["attendees"]) == ("2026-10-26T09:00:00+01:00", [])
    assert datetime.fromisoformat(action["start"]).astimezone(UTC) == utc(2026, 10, 26, 8, 0)
