"""Meetings in the agent's Google Calendar: free slots within the agent's working hours,
and booking one — used by the agent in a conversation (tools), by the trigger action and
the sequence step "create_calendar_event".

A booking never lands on a busy slot: the calendar is asked again at the moment of
booking, and a conflict is refused (SlotUnavailable, with the next free slots to offer). It is
idempotent by ``key`` (what booked it): the Google event id is derived from the key and a
``Meeting`` row is kept, so a retried task finds its meeting instead of booking another.
A booked meeting is written to the CRM (a note, and a task for the responsible user) and
ends the lead's sequences whose exit rules include "meeting booked".
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.errors import IntegrationError
from integrations.google import calendar as google
from integrations.models import Integration

from .models import Agent, ExecutionLog, Meeting
from .schemas import parse_schedule

logger = logging.getLogger(__name__)

SLOT_STEP = timedelta(minutes=30)
DEFAULT_DURATION = timedelta(minutes=30)
DEFAULT_HORIZON = timedelta(days=7)
MIN_NOTICE = timedelta(minutes=30)
MAX_SLOTS = 12


class SlotUnavailable(Exception):
    """The slot cannot be booked; the message says why, ``alternatives`` what can."""

    def __init__(self, reason: str, alternatives: list[Slot] | None = None):
        super().__init__(reason)
        self.alternatives = alternatives or []


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime

    def local(self, zone: ZoneInfo) -> dict[str, str]:
        return {"start": self.start.astimezone(zone).isoformat(), "end": self.end.astimezone(zone).isoformat()}


def agent_calendar(agent: Agent | int) -> Integration | None:
    """The agent's Google Calendar integration (its first active one)."""
    agent_id = agent if isinstance(agent, int) else agent.pk
    return (
        Integration.objects.filter(
            agent_id=agent_id, integration_type=Integration.Type.GOOGLE_CALENDAR, active=True
        )
        .order_by("id")
        .first()
    )


def agent_zone(agent: Agent) -> ZoneInfo:
    schedule = parse_schedule(agent.schedule)
    return schedule.zone if schedule else ZoneInfo(settings.TIME_ZONE)


def _within_hours(agent: Agent, start: datetime, end: datetime) -> bool:
    schedule = parse_schedule(agent.schedule)
    if schedule is None:
        return True  # no working hours: around the clock
    moment = start.astimezone(UTC)
    while moment < end:  # open at every quarter of the meeting
        if not schedule.is_open(moment):
            return False
        moment += timedelta(minutes=15)
    return schedule.is_open(end - timedelta(minutes=1))


def _overlaps(busy: list[google.Busy], start: datetime, end: datetime) -> bool:
    return any(period.start < end and start < period.end for period in busy)


def _round_up(moment: datetime, zone: ZoneInfo) -> datetime:
    local = moment.astimezone(zone)
    minutes = local.hour * 60 + local.minute
    step = int(SLOT_STEP.total_seconds() // 60)
    extra = (-minutes) % step
    rounded = local.replace(second=0, microsecond=0) + timedelta(minutes=extra)
    if rounded < local:
        rounded += SLOT_STEP
    return rounded


def free_slots(
    agent: Agent,
    calendar: Integration,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    duration: timedelta = DEFAULT_DURATION,
    limit: int = MAX_SLOTS,
) -> list[Slot]:
    """Free slots of ``duration`` on the agent's calendar within its working hours,
    from ``start`` (default: now plus a short notice) until ``end`` (default: a week)."""
    now = timezone.now()
    start = max(start or now, now + MIN_NOTICE)
    end = end or start + DEFAULT_HORIZON
    if end <= start:
        return []
    busy = google.busy_times(calendar, start=start, end=end)
    zone = agent_zone(agent)
    slots: list[Slot] = []
    # stepped in UTC: on a night the clocks go back a local step would last 90 minutes
    moment = _round_up(start, zone).astimezone(UTC)
    while moment + duration <= end and len(slots) < limit:
        slot_end = moment + duration
        if _within_hours(agent, moment, slot_end) and not _overlaps(busy, moment, slot_end):
            slots.append(Slot(moment, slot_end))
        moment += SLOT_STEP
    return slots


@dataclass(frozen=True)
class Booked:
    meeting: Meeting
    created: bool  # False: the key had booked it before


def book(
    agent: Agent,
    calendar: Integration,
    *,
    key: str,
    start: datetime,
    duration: timedelta = DEFAULT_DURATION,
    summary: str,
    description: str = "",
    attendees: list[str] | None = None,
    lead_id: int | None = None,
    kommo: Integration | None = None,
    responsible_user_id: int | None = None,
    booked_by: str = "conversation",
    send_updates: str = "all",
    check_hours: bool = True,
) -> Booked:
    """Book ``start`` … ``start + duration`` unless it is taken, past or (with
    ``check_hours``) outside working hours: SlotUnavailable then, with free slots."""
    earlier = Meeting.objects.filter(key=key).first()
    if earlier is not None:
        return Booked(earlier, created=False)
    start = start.astimezone(UTC)  # durations in real time, also across a clock change
    end = start + duration
    event_id = google.event_id_for(key)
    event = google.find_event(calendar, event_id)  # booked just before a crash?
    if event is None:
        if start < timezone.now():
            raise SlotUnavailable("that time has passed", _suggest(agent, calendar, duration))
        if check_hours and not _within_hours(agent, start, end):
            raise SlotUnavailable("that time is outside working hours", _suggest(agent, calendar, duration, start))
        if _overlaps(google.busy_times(calendar, start=start, end=end), start, end):
            raise SlotUnavailable("that time is already taken", _suggest(agent, calendar, duration, start))
        event = google.create_event(
            calendar,
            summary=summary,
            description=description,
            start=start,
            end=end,
            time_zone=str(agent_zone(agent)),
            attendees=list(attendees or []),
            send_updates=send_updates,
            event_id=event_id,
        )
    try:
        with transaction.atomic():
            meeting = Meeting.objects.create(
                agent=agent,
                calendar=calendar,
                crm_lead_id=lead_id,
                start=event.start,
                end=event.end,
                summary=summary[:300],
                event_id=event.id,
                html_link=event.html_link or "",
                booked_by=booked_by,
                key=key,
            )
    except IntegrityError:  # booked by the same key a moment ago
        return Booked(Meeting.objects.get(key=key), created=False)
    _after_booking(agent, meeting, kommo=kommo, responsible_user_id=responsible_user_id)
    return Booked(meeting, created=True)


def _suggest(agent: Agent, calendar: Integration, duration: timedelta, near: datetime | None = None) -> list[Slot]:
    try:
        return free_slots(agent, calendar, start=near, duration=duration, limit=3)
    except IntegrationError:
        return []


def _after_booking(agent: Agent, meeting: Meeting, *, kommo: Integration | None, responsible_user_id) -> None:
    """The CRM hears of it (note + task) and the lead's sequences that end on a booked
    meeting end. A CRM failure is kept on the meeting, not raised: the meeting stands."""
    from crm import connection as crm

    zone = agent_zone(agent)
    when = meeting.start.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    if kommo is not None and meeting.crm_lead_id:
        lead_id = meeting.crm_lead_id
        try:
            crm.call(
                kommo,
                lambda c: c.add_note(lead_id=lead_id, text=f"Meeting booked: {meeting.summary}, {when}"),
                max_wait=10,
            )
            crm.call(
                kommo,
                lambda c: c.create_task(
                    lead_id=lead_id,
                    text=f"Meeting with the lead: {meeting.summary}, {when}",
                    complete_till=int(meeting.start.timestamp()),
                    responsible_user_id=responsible_user_id,
                ),
                max_wait=10,
            )
        except IntegrationError as exc:
            Meeting.objects.filter(pk=meeting.pk).update(crm_error=str(exc)[:1000])
            logger.warning("agents.meeting.crm_failed", extra={"meeting_id": meeting.pk, "error": str(exc)})
    if meeting.crm_lead_id:
        from sequences.handlers import exit_on_meeting

        # a sequence step that booked it does not end its own run (a confirmation may follow)
        own = re.match(r"seq-run-(\d+)-step-", meeting.key)
        exit_on_meeting(
            agent_id=agent.pk, lead_id=meeting.crm_lead_id, except_run_id=int(own.group(1)) if own else None
        )
    ExecutionLog.objects.create(
        agent=agent,
        kind=ExecutionLog.Kind.INTEGRATION,
        status=ExecutionLog.Status.SUCCESS,
        ref_type="meeting",
        ref_id=meeting.pk,
        crm_lead_id=meeting.crm_lead_id,
        detail={
            "booked_by": meeting.booked_by,
            "start": meeting.start.isoformat(),
            "end": meeting.end.isoformat(),
            "event_id": meeting.event_id,
        },
        finished_at=timezone.now(),
    )
