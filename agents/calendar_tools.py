"""The agent's calendar tools in a conversation: the model may look for free slots and
book one the lead accepted (agents/booking.py does the work and refuses a busy slot).

Offered when the agent has an active Google Calendar integration that is not waiting
for re-connection. In a staff test chat the model can look, but nothing is booked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from integrations.errors import IntegrationError
from integrations.models import Integration

from . import ai
from .booking import DEFAULT_DURATION, SlotUnavailable, agent_calendar, agent_zone, book, free_slots
from .models import Agent, Conversation, ConversationMessage

logger = logging.getLogger(__name__)

CHECK = ai.Tool(
    name="check_free_slots",
    description=(
        "Free meeting slots in the sales team's calendar, within working hours. Call it before proposing "
        "times to the lead. Dates are in the team's time zone."
    ),
    parameters={
        "type": "object",
        "properties": {
            "from_date": {"type": "string", "description": "First day to look at, YYYY-MM-DD (default: today)."},
            "to_date": {"type": "string", "description": "Last day to look at, YYYY-MM-DD (default: a week on)."},
            "duration_minutes": {"type": "integer", "description": "Length of the meeting (default 30)."},
        },
    },
)
BOOK = ai.Tool(
    name="book_meeting",
    description=(
        "Book a meeting at a time the lead has accepted. The time must be one of the free slots; a taken "
        "time is refused with other free slots to offer."
    ),
    parameters={
        "type": "object",
        "properties": {
            "start": {
                "type": "string",
                "description": "Start, ISO 8601 in the team's time zone, e.g. 2026-11-26T15:00.",
            },
            "duration_minutes": {"type": "integer", "description": "Length of the meeting (default 30)."},
            "email": {"type": "string", "description": "The lead's e-mail for the invitation, if they gave one."},
        },
        "required": ["start"],
    },
)
MAX_DURATION = 480


def calendar_for(agent: Agent) -> Integration | None:
    calendar = agent_calendar(agent)
    if calendar is None or calendar.status == Integration.Status.NEEDS_RECONNECT:
        return None
    return calendar


def prompt_note(agent: Agent) -> str:
    zone = agent_zone(agent)
    now = timezone.now().astimezone(zone)
    return (
        "You can check the team's calendar and book meetings: call check_free_slots before proposing "
        "times, and book_meeting only for a time the lead accepted. Never say a meeting is booked unless "
        f"book_meeting said so. Times are in {zone.key}; now it is {now:%A %Y-%m-%d %H:%M}."
    )


@dataclass
class CalendarTools:
    """The tools of one reply: the message being answered, its lead, who books."""

    agent: Agent
    calendar: Integration
    conversation: Conversation
    message: ConversationMessage
    lead: Any = None  # crm.client.Lead
    contact: Any = None  # crm.client.Contact
    kommo: Integration | None = None

    @property
    def tools(self) -> list[ai.Tool]:
        return [CHECK, BOOK]

    def __call__(self, call: ai.ToolCall) -> dict[str, Any]:
        try:
            if call.name == CHECK.name:
                return self.check(call.arguments)
            if call.name == BOOK.name:
                return self.book(call.arguments)
        except IntegrationError as exc:
            logger.warning("agents.calendar_tool.failed", extra={"tool": call.name, "error": str(exc)})
            return {"error": f"the calendar could not be reached: {exc}"}
        return {"error": f"unknown tool {call.name}"}

    def _duration(self, arguments: dict[str, Any]) -> timedelta:
        minutes = arguments.get("duration_minutes") or DEFAULT_DURATION.total_seconds() // 60
        try:
            minutes = int(minutes)
        except (TypeError, ValueError):
            raise ValueError("duration_minutes must be a whole number") from None
        if not 5 <= minutes <= MAX_DURATION:
            raise ValueError(f"duration_minutes must be between 5 and {MAX_DURATION}")
        return timedelta(minutes=minutes)

    def check(self, arguments: dict[str, Any]) -> dict[str, Any]:
        zone = agent_zone(self.agent)
        try:
            duration = self._duration(arguments)
            first = _day(arguments.get("from_date"))
            last = _day(arguments.get("to_date"))
        except ValueError as exc:
            return {"error": str(exc)}
        start = datetime.combine(first, time(0), tzinfo=zone) if first else None
        end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone) if last else None
        slots = free_slots(self.agent, self.calendar, start=start, end=end, duration=duration)
        return {"time_zone": zone.key, "free_slots": [slot.local(zone) for slot in slots]}

    def book(self, arguments: dict[str, Any]) -> dict[str, Any]:
        zone = agent_zone(self.agent)
        try:
            duration = self._duration(arguments)
            start = _moment(arguments.get("start"), zone)
        except ValueError as exc:
            return {"booked": False, "reason": str(exc)}
        if self.conversation.is_test:
            return {"booked": False, "reason": "this is a staff test chat: nothing is booked"}
        email = str(arguments.get("email") or "").strip()
        attendees = [email] if "@" in email else list(getattr(self.contact, "emails", ()) or ())[:1]
        name = self.conversation.sender_name or getattr(self.lead, "name", "") or "the lead"
        try:
            booked = book(
                self.agent,
                self.calendar,
                key=f"message-{self.message.pk}-{start.isoformat()}",
                start=start,
                duration=duration,
                summary=f"Meeting with {name}",
                description=f"Booked by {self.agent.name} in a chat with the lead.",
                attendees=attendees,
                lead_id=getattr(self.lead, "id", None),
                kommo=self.kommo,
                responsible_user_id=getattr(self.lead, "responsible_user_id", None),
                booked_by="conversation",
            )
        except SlotUnavailable as exc:
            return {
                "booked": False,
                "reason": str(exc),
                "free_slots": [slot.local(zone) for slot in exc.alternatives],
            }
        meeting = booked.meeting
        return {
            "booked": True,
            "start": meeting.start.astimezone(zone).isoformat(),
            "end": meeting.end.astimezone(zone).isoformat(),
            "invited": attendees,
        }


def _day(value: Any) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date like 2026-11-26") from None


def _moment(value: Any, zone) -> datetime:
    if not value:
        raise ValueError("start is required")
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time like 2026-11-26T15:00") from None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment
