"""Google Calendar API v3: the calendar list, free/busy and event creation, called
through the integration's authorized session (connection.py: tokens, refresh, health).

Reference: https://developers.google.com/calendar/api/v3/reference
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

from integrations import http
from integrations.channels.base import Transport, json_body
from integrations.errors import (
    AuthError,
    IntegrationError,
    NotFound,
    PermanentError,
    RateLimited,
    TransientError,
)
from integrations.http import RetryPolicy
from integrations.models import Integration

from . import conf, connection

# what each call is named in messages and logs (never a calendar id: it is an e-mail address)
CALENDAR_LIST = "calendarList.list"
FREEBUSY = "freebusy.query"
EVENTS_INSERT = "events.insert"
EVENTS_GET = "events.get"

DEFAULT_CALENDAR_ID = "primary"
SEND_UPDATES = ("all", "externalOnly", "none")
MAX_CALENDAR_PAGES = 20
# Google's event ids: 5-1024 characters of base32hex (a-v, 0-9)
EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
# 403s that mean "slow down" rather than "not allowed"
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"})
# 403s that a new consent fixes (a scope was not granted)
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
FREEBUSY_TRANSIENT = frozenset({"backendError", "internalError"})

# Module-level so that tests (and a worker that prefers to wait in its own queue) can change it.
RETRY = RetryPolicy(attempts=3, max_delay=10.0)


@dataclass(frozen=True)
class Calendar:
    id: str
    summary: str  # the account's own name for it when it gave one (summaryOverride)
    primary: bool
    time_zone: str  # IANA name ("Europe/Berlin"); "" when Google does not say


@dataclass(frozen=True)
class Busy:
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC


@dataclass(frozen=True)
class CreatedEvent:
    id: str
    html_link: str
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC
    status: str = "confirmed"  # Google's: confirmed, tentative, cancelled


class AlreadyExists(PermanentError):
    """An event with the requested id exists (Google's 409 "duplicate")."""


# --- The client ----------------------------------------------------------------------------


class GoogleCalendarClient:
    """Calls Calendar API v3 with an authorized session (it adds and refreshes the token);
    never touches the database."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str = conf.CALENDAR_BASE_URL,
        *,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._transport = Transport(
            vendor="Google Calendar",
            log_name="google.calendar.request",
            secrets=(),
            acquire=None,
            retry=retry,
            session=session,
        )

    def __repr__(self) -> str:
        return f"GoogleCalendarClient({self.base_url!r})"

    # transport

    def _call(self, method: str, path: str, *, what: str, idempotent: bool, **kwargs: Any) -> Any:
        if self._timeout is not None:
            kwargs.setdefault("timeout", self._timeout)
        response = self._transport.call(
            method,
            f"{self.base_url}{path}",
            what=what,
            error_for=self._error_for,
            idempotent=idempotent,
            **kwargs,
        )
        data = json_body(response)
        if not isinstance(data, Mapping):
            message = f"Google Calendar {what}: the answer is not a JSON object"
            raise PermanentError(message, status=response.status_code)
        return data

    def _secrets(self) -> tuple[str, ...]:
        credentials = getattr(self._session, "credentials", None)
        return tuple(s for s in (getattr(credentials, "token", None), getattr(credentials, "refresh_token", None)) if s)

    def _error_for(self, response: requests.Response, what: str) -> IntegrationError | None:
        status = response.status_code
        if status < 400:
            return None
        reasons, detail = _google_error(response)
        detail = self._transport.scrub(detail, self._secrets())[:300]
        message = f"Google Calendar {what}: {status} {detail}".rstrip()
        if status == 401:
            return AuthError(f"{message} (the token was refused: connect the integration to Google again)", status=401)
        if status == 429 or (status == 403 and reasons & RATE_REASONS):
            return RateLimited(message, retry_after=http.retry_after(response), status=status)
        if status >= 500:
            return TransientError(message, status=status, retry_after=http.retry_after(response))
        if status == 403 and reasons & SCOPE_REASONS:
            return AuthError(f"{message} (connect the integration to Google again and allow every access)", status=403)
        if status == 404:
            return NotFound(message, status=status)
        if status == 409:
            return AlreadyExists(message, status=status)
        return PermanentError(message, status=status)

    # remote operations

    def calendar_list(self) -> list[Calendar]:
        """The calendars the account may add events to (writer or owner), primary first."""
        calendars: list[Calendar] = []
        params: dict[str, Any] = {"minAccessRole": "writer", "maxResults": 250}
        for _ in range(MAX_CALENDAR_PAGES):
            data = self._call("GET", "/users/me/calendarList", what=CALENDAR_LIST, idempotent=True, params=params)
            items = data.get("items") or []
            if not isinstance(items, list):
                raise PermanentError(f"Google Calendar {CALENDAR_LIST}: the answer has no item list")
            calendars.extend(_calendar(item) for item in items if isinstance(item, Mapping) and item.get("id"))
            token = data.get("nextPageToken")
            if not token:
                break
            params = {**params, "pageToken": token}
        return sorted(calendars, key=lambda calendar: not calendar.primary)

    def free_busy(self, calendar_id: str, start: datetime, end: datetime) -> list[Busy]:
        """The calendar's busy periods overlapping [start, end), in UTC, sorted, overlaps merged."""
        body = {"timeMin": _rfc3339(start), "timeMax": _rfc3339(end), "timeZone": "UTC", "items": [{"id": calendar_id}]}
        data = self._call("POST", "/freeBusy", what=FREEBUSY, idempotent=True, json=body)
        calendars = data.get("calendars")
        if not isinstance(calendars, Mapping):
            raise PermanentError(f"Google Calendar {FREEBUSY}: the answer has no calendars")
        entry = calendars.get(calendar_id)
        if entry is None and len(calendars) == 1:  # answered under the calendar's real id ("primary" asked)
            entry = next(iter(calendars.values()))
        if not isinstance(entry, Mapping):
            raise PermanentError(f"Google Calendar {FREEBUSY}: the answer does not cover the calendar asked for")
        errors = [e for e in entry.get("errors") or [] if isinstance(e, Mapping)]
        if errors:
            reason = str(errors[0].get("reason") or "unknown")
            message = f"Google Calendar {FREEBUSY}: the calendar cannot be read ({reason})"
            if reason == "notFound":
                raise NotFound(f"{message}: it does not exist or is not shared with the connected account")
            if reason in FREEBUSY_TRANSIENT:
                raise TransientError(message)
            raise PermanentError(message)
        periods = []
        for item in entry.get("busy") or []:
            if not isinstance(item, Mapping):
                continue
            busy = Busy(start=_instant(item.get("start"), FREEBUSY), end=_instant(item.get("end"), FREEBUSY))
            if busy.end > busy.start:
                periods.append(busy)
        return _merged(periods)

    def insert_event(
        self,
        calendar_id: str,
        *,
        summary: str,
        description: str,
        start: datetime,
        end: datetime,
        time_zone: str,
        attendees: Iterable[str],
        send_updates: str,
        event_id: str | None,
    ) -> CreatedEvent:
        """Create the event; with ``event_id``, a repeat raises AlreadyExists (Google's 409)
        instead of creating a second one, so only then is a failed attempt retried."""
        zone = _zone(time_zone)
        if send_updates not in SEND_UPDATES:
            raise ValueError(f"send_updates must be one of {', '.join(SEND_UPDATES)}, not {send_updates!r}")
        if event_id is not None and not EVENT_ID.fullmatch(event_id):
            raise ValueError("event_id must be 5-1024 characters of a-v and 0-9 (see event_id_for)")
        _aware(start, "start")
        _aware(end, "end")
        if end <= start:
            raise ValueError("the event must end after it starts")
        body: dict[str, Any] = {
            "summary": summary,
            "start": {"dateTime": start.astimezone(zone).isoformat(timespec="seconds"), "timeZone": time_zone},
            "end": {"dateTime": end.astimezone(zone).isoformat(timespec="seconds"), "timeZone": time_zone},
            "attendees": [{"email": email} for email in _unique(attendees)],
        }
        if description:
            body["description"] = description
        if event_id is not None:
            body["id"] = event_id
        data = self._call(
            "POST",
            f"/calendars/{_segment(calendar_id)}/events",
            what=EVENTS_INSERT,
            idempotent=event_id is not None,
            params={"sendUpdates": send_updates},
            json=body,
        )
        return _event(data, EVENTS_INSERT)

    def get_event(self, calendar_id: str, event_id: str) -> CreatedEvent:
        data = self._call(
            "GET", f"/calendars/{_segment(calendar_id)}/events/{_segment(event_id)}", what=EVENTS_GET, idempotent=True
        )
        return _event(data, EVENTS_GET)


# --- What the rest of the project calls ----------------------------------------------------


def calendar_id_of(integration: Integration) -> str:
    """The calendar picked for the integration (config ``calendar_id``), else the account's primary."""
    return str((integration.config or {}).get("calendar_id") or DEFAULT_CALENDAR_ID)


def list_calendars(integration: Integration) -> list[Calendar]:
    """The connected account's calendars that events can be added to, primary first."""
    return connection.call(integration, lambda session: _client(session).calendar_list())


def busy_times(
    integration: Integration, *, calendar_id: str | None = None, start: datetime, end: datetime
) -> list[Busy]:
    """Busy periods of the calendar (default: the integration's) overlapping [start, end):
    aware UTC datetimes, sorted, overlapping ones merged. ``start`` and ``end`` are aware,
    in any time zone."""
    _aware(start, "start")
    _aware(end, "end")
    if end <= start:
        raise ValueError("end must be after start")
    calendar = calendar_id or calendar_id_of(integration)
    return connection.call(integration, lambda session: _client(session).free_busy(calendar, start, end))


def create_event(
    integration: Integration,
    *,
    calendar_id: str | None = None,
    summary: str,
    description: str,
    start: datetime,
    end: datetime,
    time_zone: str,
    attendees: list[str],
    send_updates: str = "all",
    event_id: str | None = None,
) -> CreatedEvent:
    """Create an event on the calendar (default: the integration's), shown in ``time_zone``
    (the agent's), with the attendees invited; ``send_updates`` (all, externalOnly, none)
    says who Google e-mails. With ``event_id`` (see event_id_for) the call is idempotent:
    when the event exists already, it is returned as it is."""
    calendar = calendar_id or calendar_id_of(integration)

    def operation(session: requests.Session) -> CreatedEvent:
        client = _client(session)
        try:
            return client.insert_event(
                calendar,
                summary=summary,
                description=description,
                start=start,
                end=end,
                time_zone=time_zone,
                attendees=attendees,
                send_updates=send_updates,
                event_id=event_id,
            )
        except AlreadyExists:
            if event_id is None:
                raise
        existing = client.get_event(calendar, event_id)
        if existing.status == "cancelled":
            raise PermanentError(
                f"Google Calendar {EVENTS_INSERT}: the event with this id was created before and has since been "
                "deleted; a new booking needs a new idempotency key"
            )
        return existing

    return connection.call(integration, operation)


def find_event(integration: Integration, event_id: str, *, calendar_id: str | None = None) -> CreatedEvent | None:
    """The event with this id, or None when there is none (or it was deleted)."""
    calendar = calendar_id or calendar_id_of(integration)

    def operation(session: requests.Session) -> CreatedEvent | None:
        try:
            event = _client(session).get_event(calendar, event_id)
        except NotFound:
            return None
        return None if event.status == "cancelled" else event

    return connection.call(integration, operation)


def event_id_for(key: str) -> str:
    """A valid Google event id for our idempotency key: the same key, the same id
    (base32hex of its SHA-256, 52 characters of a-v and 0-9)."""
    digest = hashlib.sha256(key.encode()).digest()
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


# --- Parsing -------------------------------------------------------------------------------


def _client(session: requests.Session) -> GoogleCalendarClient:
    return GoogleCalendarClient(session, conf.calendar_base_url(), retry=RETRY, timeout=conf.timeout())


def _google_error(response: requests.Response) -> tuple[set[str], str]:
    """The reasons (``errors[].reason``, ``details[].reason``) and message of Google's error body."""
    data = json_body(response)
    error = data.get("error") if isinstance(data, Mapping) else None
    if not isinstance(error, Mapping):
        return set(), ""
    reasons = {
        str(item.get("reason"))
        for key in ("errors", "details")
        for item in (error.get(key) or [])
        if isinstance(item, Mapping) and item.get("reason")
    }
    return reasons, str(error.get("message") or "")


def _calendar(item: Mapping[str, Any]) -> Calendar:
    return Calendar(
        id=str(item["id"]),
        summary=str(item.get("summaryOverride") or item.get("summary") or item["id"]),
        primary=bool(item.get("primary")),
        time_zone=str(item.get("timeZone") or ""),
    )


def _event(data: Mapping[str, Any], what: str) -> CreatedEvent:
    try:
        return CreatedEvent(
            id=str(data["id"]),
            html_link=str(data.get("htmlLink") or ""),
            start=_event_time(data["start"], what),
            end=_event_time(data["end"], what),
            status=str(data.get("status") or "confirmed"),
        )
    except (KeyError, TypeError):
        raise PermanentError(f"Google Calendar {what}: the answer is not an event") from None


def _event_time(value: Mapping[str, Any], what: str) -> datetime:
    if value.get("dateTime"):
        return _instant(value["dateTime"], what)
    # an all-day event: the date, at midnight UTC
    try:
        day = datetime.fromisoformat(str(value["date"]))
    except ValueError:
        raise PermanentError(f"Google Calendar {what}: unreadable date in the answer") from None
    return day.replace(tzinfo=UTC)


def _instant(value: Any, what: str) -> datetime:
    """An RFC 3339 time from Google (any offset; none means UTC, which we ask for) in UTC."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise PermanentError(f"Google Calendar {what}: unreadable time in the answer") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _merged(periods: list[Busy]) -> list[Busy]:
    merged: list[Busy] = []
    for period in sorted(periods, key=lambda busy: (busy.start, busy.end)):
        if merged and period.start <= merged[-1].end:
            if period.end > merged[-1].end:
                merged[-1] = Busy(start=merged[-1].start, end=period.end)
        else:
            merged.append(period)
    return merged


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with its time zone)")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)") from None


def _unique(emails: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for email in emails:
        email = (email or "").strip()
        if email and email.lower() not in seen:
            seen[email.lower()] = email
    return list(seen.values())


def _segment(value: str) -> str:
    """A path segment: calendar ids hold @ and #, which must not end the path."""
    return quote(value, safe="")
