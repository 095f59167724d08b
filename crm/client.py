"""Kommo / amoCRM REST API v4 client. Reference: https://www.kommo.com/developers/content/crm_platform/
(amoCRM: https://www.amocrm.ru/developers/content/crm_platform/).

One method per remote operation, frozen dataclasses out, typed errors
(integrations/errors.py). The client knows nothing of the database: the access token and
the rate limiter are given to it (crm/connection.py builds clients for integrations).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests

from integrations import http
from integrations.errors import AuthError, IntegrationError, NotFound, PermanentError, RateLimited, TransientError
from observability.metrics import integration_call_failed

logger = logging.getLogger(__name__)

API = "/api/v4"
PAGE_LIMIT = 250  # the largest page Kommo serves (custom fields come 50 a page whatever is asked)
MAX_PAGES = 1000  # a runaway pagination ends here
IDEMPOTENT = frozenset({"GET", "PATCH", "PUT", "DELETE"})

T = TypeVar("T")


# --- Results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    subdomain: str


@dataclass(frozen=True)
class FieldEnum:
    id: int
    value: str


@dataclass(frozen=True)
class CustomField:
    id: int
    name: str
    type: str
    code: str | None = None
    is_predefined: bool = False
    enums: tuple[FieldEnum, ...] = ()


@dataclass(frozen=True)
class Status:
    id: int
    name: str
    sort: int = 0
    type: int = 0  # 1: "incoming leads"; 142 won and 143 lost have their own ids


@dataclass(frozen=True)
class Pipeline:
    id: int
    name: str
    is_main: bool = False
    statuses: tuple[Status, ...] = ()


@dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str = ""


@dataclass(frozen=True)
class Tag:
    id: int
    name: str
    color: str | None = None


@dataclass(frozen=True)
class FieldValue:
    field_id: int
    values: tuple[Any, ...]
    field_name: str = ""
    field_code: str | None = None


@dataclass(frozen=True)
class Lead:
    id: int
    name: str
    price: int | None
    status_id: int
    pipeline_id: int
    responsible_user_id: int | None
    custom_fields: tuple[FieldValue, ...] = ()
    tags: tuple[Tag, ...] = ()
    contact_ids: tuple[int, ...] = ()
    main_contact_id: int | None = None
    created_at: int | None = None
    updated_at: int | None = None


@dataclass(frozen=True)
class Contact:
    id: int
    name: str
    first_name: str = ""
    last_name: str = ""
    responsible_user_id: int | None = None
    custom_fields: tuple[FieldValue, ...] = ()
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    lead_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class CreatedLead:
    lead_id: int
    contact_id: int | None
    merged: bool = False  # Kommo's duplicate control joined the contact to an existing one


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"

    def __repr__(self) -> str:  # never print the tokens
        return f"TokenPair(expires_in={self.expires_in})"


@dataclass(frozen=True)
class LeadUpdate:
    """What update_lead changes; fields left None are not sent.

    ``custom_fields`` maps a field id to a value, a list of values, a dict sent as it is
    (``{"enum_id": 5}`` for a list field) or None, which clears the field. Tags are added
    and removed one by one (``tags_to_add`` / ``tags_to_delete``, by name or by id): the
    lead keeps the tags it has, unlike ``_embedded.tags``, which replaces them all.
    """

    status_id: int | None = None
    pipeline_id: int | None = None
    price: int | None = None
    name: str | None = None
    responsible_user_id: int | None = None
    custom_fields: Mapping[int, Any] | None = None
    tags_to_add: Sequence[str | int] = ()
    tags_to_delete: Sequence[str | int] = ()

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            key: value
            for key, value in {
                "status_id": self.status_id,
                "pipeline_id": self.pipeline_id,
                "price": self.price,
                "name": self.name,
                "responsible_user_id": self.responsible_user_id,
            }.items()
            if value is not None
        }
        if self.custom_fields:
            body["custom_fields_values"] = [
                {"field_id": int(field_id), "values": _field_values(value)}
                for field_id, value in self.custom_fields.items()
            ]
        if self.tags_to_add:
            body["tags_to_add"] = [_tag_ref(tag) for tag in self.tags_to_add]
        if self.tags_to_delete:
            body["tags_to_delete"] = [_tag_ref(tag) for tag in self.tags_to_delete]
        return body


def _field_values(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    return [item if isinstance(item, Mapping) else {"value": item} for item in items]


def _tag_ref(tag: str | int) -> dict[str, Any]:
    return {"id": tag} if isinstance(tag, int) else {"name": str(tag)}


# --- Parsing ---------------------------------------------------------------------------


def _values(raw: Sequence[Mapping[str, Any]] | None) -> tuple[FieldValue, ...]:
    return tuple(
        FieldValue(
            field_id=int(item["field_id"]),
            field_name=item.get("field_name") or "",
            field_code=item.get("field_code"),
            values=tuple(v.get("value") for v in item.get("values") or []),
        )
        for item in (raw or [])
    )


def _by_code(values: tuple[FieldValue, ...], code: str) -> tuple[str, ...]:
    return tuple(str(v) for fv in values if fv.field_code == code for v in fv.values if v not in (None, ""))


def parse_account(raw: Mapping[str, Any]) -> Account:
    return Account(id=int(raw["id"]), name=raw.get("name") or "", subdomain=raw.get("subdomain") or "")


def parse_custom_field(raw: Mapping[str, Any]) -> CustomField:
    return CustomField(
        id=int(raw["id"]),
        name=raw.get("name") or "",
        type=str(raw.get("type") or ""),
        code=raw.get("code"),
        is_predefined=bool(raw.get("is_predefined")),
        enums=tuple(FieldEnum(id=int(e["id"]), value=str(e.get("value", ""))) for e in raw.get("enums") or []),
    )


def parse_pipeline(raw: Mapping[str, Any]) -> Pipeline:
    statuses = (raw.get("_embedded") or {}).get("statuses") or []
    return Pipeline(
        id=int(raw["id"]),
        name=raw.get("name") or "",
        is_main=bool(raw.get("is_main")),
        statuses=tuple(
            Status(
                id=int(s["id"]), name=s.get("name") or "", sort=int(s.get("sort") or 0), type=int(s.get("type") or 0)
            )
            for s in statuses
        ),
    )


def parse_user(raw: Mapping[str, Any]) -> User:
    return User(id=int(raw["id"]), name=raw.get("name") or "", email=raw.get("email") or "")


def parse_tag(raw: Mapping[str, Any]) -> Tag:
    return Tag(id=int(raw["id"]), name=raw.get("name") or "", color=raw.get("color"))


def parse_lead(raw: Mapping[str, Any]) -> Lead:
    embedded = raw.get("_embedded") or {}
    contacts = embedded.get("contacts") or []
    main = next((c for c in contacts if c.get("is_main")), None)
    return Lead(
        id=int(raw["id"]),
        name=raw.get("name") or "",
        price=raw.get("price"),
        status_id=int(raw.get("status_id") or 0),
        pipeline_id=int(raw.get("pipeline_id") or 0),
        responsible_user_id=raw.get("responsible_user_id"),
        custom_fields=_values(raw.get("custom_fields_values")),
        tags=tuple(parse_tag(t) for t in embedded.get("tags") or []),
        contact_ids=tuple(int(c["id"]) for c in contacts),
        main_contact_id=int(main["id"]) if main else (int(contacts[0]["id"]) if contacts else None),
        created_at=raw.get("created_at"),
        updated_at=raw.get("updated_at"),
    )


def parse_contact(raw: Mapping[str, Any]) -> Contact:
    values = _values(raw.get("custom_fields_values"))
    leads = (raw.get("_embedded") or {}).get("leads") or []
    return Contact(
        id=int(raw["id"]),
        name=raw.get("name") or "",
        first_name=raw.get("first_name") or "",
        last_name=raw.get("last_name") or "",
        responsible_user_id=raw.get("responsible_user_id"),
        custom_fields=values,
        phones=_by_code(values, "PHONE"),
        emails=_by_code(values, "EMAIL"),
        lead_ids=tuple(int(lead["id"]) for lead in leads),
    )


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


# --- The client ----------------------------------------------------------------------


@dataclass
class RetryPolicy(http.RetryPolicy):
    attempts: int = 4  # tries of one call when the answer is 429 or 5xx or a timeout
    max_delay: float = 20.0


class KommoClient:
    """Calls one Kommo account. ``acquire`` is called before every request (rate limit)."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        acquire: Callable[[], object] = lambda: None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._acquire = acquire
        self._retry = retry or RetryPolicy()
        self._session = session  # None: the calling thread's shared session, looked up per call

    def __repr__(self) -> str:
        return f"KommoClient({self.base_url!r})"

    # transport

    def _url(self, path_or_url: str) -> str:
        """A path, or a link from an answer re-rooted at base_url: the token goes nowhere else."""
        if path_or_url.startswith("/"):
            return f"{self.base_url}{path_or_url}"
        link = urlsplit(path_or_url)
        query = link.query
        if "page=" in link.fragment and "page=" not in query:  # old amoCRM links: "…?filter…#&page=2"
            query = "&".join(part for part in (query, link.fragment.strip("&")) if part)
        return urlunsplit(urlsplit(self.base_url)._replace(path=link.path, query=query, fragment=""))

    def _request(
        self, method: str, path_or_url: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        url = self._url(path_or_url)
        path = urlsplit(url).path  # never the query: it can carry a phone number
        what = f"{method} {path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        session = self._session or http.session()
        last = self._retry.attempts - 1
        for attempt in range(self._retry.attempts):
            self._acquire()
            started = time.monotonic()
            sent = True  # whether the server may have got the request
            # requests' own exceptions are not chained: some quote the request's headers
            try:
                response = session.request(method, url, headers=headers, params=params, json=json)
            except requests.ConnectTimeout:
                error: IntegrationError = TransientError(f"Kommo {what}: timed out connecting")
                sent = False
            except requests.Timeout:
                error = TransientError(f"Kommo {what}: timed out")
            except requests.ConnectionError as exc:
                error = TransientError(f"Kommo {what}: connection failed ({type(exc).__name__})")
                sent = not http.never_connected(exc)
            except requests.RequestException as exc:
                raise PermanentError(f"Kommo {what}: the request could not be sent ({type(exc).__name__})") from None
            else:
                logger.info(
                    "crm.request",
                    extra={
                        "method": method,
                        "path": path,
                        "status": response.status_code,
                        "attempt": attempt + 1,
                        "ms": round((time.monotonic() - started) * 1000),
                    },
                )
                failure = self._error_for(response, what)
                if failure is None:
                    return self._body(response, what)
                error = failure
            # A POST that timed out or got a 5xx may have been done (a task created):
            # repeating it could do it twice, so only a 429 (refused, not done) or a
            # connection never made is retried; the caller's idempotency handles the rest.
            retryable = isinstance(error, RateLimited) or (
                isinstance(error, TransientError) and (method in IDEMPOTENT or not sent)
            )
            retry_after = getattr(error, "retry_after", None)
            if not retryable or attempt == last or (retry_after or 0) > self._retry.max_delay:
                error = http.unconfirmed_if_sent(error, method not in IDEMPOTENT and sent)
                integration_call_failed(vendor="Kommo", call=what, error=error, attempts=attempt + 1)
                raise error
            delay = self._retry.delay(attempt, retry_after)
            logger.warning(
                "crm.retry",
                extra={"method": method, "path": path, "error": type(error).__name__, "status": error.status,
                       "attempt": attempt + 1, "delay": round(delay, 2)},
            )  # fmt: skip
            self._retry.sleep(delay)
        raise AssertionError("unreachable")

    def _body(self, response: requests.Response, what: str) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise PermanentError(f"Kommo {what}: the answer is not JSON", status=response.status_code) from None

    def _error_for(self, response: requests.Response, what: str) -> IntegrationError | None:
        status = response.status_code
        if status < 400:
            return None
        detail = _problem_detail(response, secrets=(self._token,))
        message = f"Kommo {what}: {status} {detail}".rstrip()
        if status in (401, 403):
            return AuthError(message, status=status)
        if status == 429:
            return RateLimited(f"Kommo {what}: 429 too many requests", retry_after=http.retry_after(response))
        if status >= 500:
            return TransientError(message, status=status, retry_after=http.retry_after(response))
        if status == 404:
            return NotFound(message, status=status)
        return PermanentError(message, status=status)

    def _pages(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> Iterator[Mapping[str, Any]]:
        """Every item of a listing: ``_links.next`` is followed to the end (or, when an
        answer counts pages without linking the next one, ``page`` + 1). 204: no items."""
        base_params = {"limit": PAGE_LIMIT, **(params or {})}
        url, query = path, dict(base_params)
        followed: set[str] = set()
        for _ in range(MAX_PAGES):
            data = self._request("GET", url, params=query)
            if data is None:
                return
            if not isinstance(data, Mapping):
                raise PermanentError(f"Kommo GET {path}: the answer is not a listing")
            items = (data.get("_embedded") or {}).get(key) or []
            if not items:
                return
            yield from items
            next_href = ((data.get("_links") or {}).get("next") or {}).get("href")
            if next_href:
                url, query = self._url(next_href), None
                if url in followed:  # a link back to a page already read
                    logger.warning("crm.pagination.loop", extra={"path": path})
                    return
                followed.add(url)
            elif int(data.get("_page") or 0) < int(data.get("_page_count") or 0):
                url, query = path, {**base_params, "page": int(data["_page"]) + 1}
            else:
                return
        logger.warning("crm.pagination.too_long", extra={"path": path, "pages": MAX_PAGES})

    def _list(self, path: str, key: str, parse: Callable[[Mapping[str, Any]], T], **params: Any) -> list[T]:
        return _parsed(parse, self._pages(path, key, params), f"GET {path}")

    # account and metadata

    def account(self) -> Account:
        data = self._request("GET", f"{API}/account")
        return _parsed_one(parse_account, data, f"GET {API}/account")

    def lead_custom_fields(self) -> list[CustomField]:
        return self._list(f"{API}/leads/custom_fields", "custom_fields", parse_custom_field)

    def contact_custom_fields(self) -> list[CustomField]:
        return self._list(f"{API}/contacts/custom_fields", "custom_fields", parse_custom_field)

    def pipelines(self) -> list[Pipeline]:
        return self._list(f"{API}/leads/pipelines", "pipelines", parse_pipeline)

    def users(self) -> list[User]:
        return self._list(f"{API}/users", "users", parse_user)

    def lead_tags(self) -> list[Tag]:
        return self._list(f"{API}/leads/tags", "tags", parse_tag)

    def contact_tags(self) -> list[Tag]:
        return self._list(f"{API}/contacts/tags", "tags", parse_tag)

    # entities

    def get_lead(self, lead_id: int) -> Lead:
        """The lead with its contacts' ids. NotFound (a PermanentError) when there is none."""
        path = f"{API}/leads/{int(lead_id)}"
        data = self._request("GET", path, params={"with": "contacts"})
        if not data:
            raise NotFound(f"Kommo lead {int(lead_id)} was not found", status=204)
        return _parsed_one(parse_lead, data, f"GET {path}")

    def get_contact(self, contact_id: int) -> Contact:
        """The contact with its leads' ids. NotFound (a PermanentError) when there is none."""
        path = f"{API}/contacts/{int(contact_id)}"
        data = self._request("GET", path, params={"with": "leads"})
        if not data:
            raise NotFound(f"Kommo contact {int(contact_id)} was not found", status=204)
        return _parsed_one(parse_contact, data, f"GET {path}")

    def find_leads(self, query: str, *, created_since: int) -> list[Lead]:
        """Leads matching ``query`` (Kommo's full-text search: the name among others) created
        since ``created_since`` (Unix time), with their contacts' ids: how a lead creation
        that was not confirmed is found done."""
        params = {"query": query, "filter[created_at][from]": int(created_since), "with": "contacts"}
        return self._list(f"{API}/leads", "leads", parse_lead, **params)

    def find_contacts(self, query: str) -> list[Contact]:
        """Contacts matching a phone number, e-mail or name (Kommo's full-text ``query``)."""
        return self._list(f"{API}/contacts", "contacts", parse_contact, query=query)

    def find_contacts_by_phone(self, phone: str) -> list[Contact]:
        """Contacts with this phone number, whatever its format (+7 999…, 8 (999)…).

        Kommo's search gets the number's last ten digits (the national number, without a
        country or trunk prefix); of what it finds, only contacts with a phone ending in
        those digits are kept, since a full-text search also matches other fields."""
        tail = _digits(phone)[-10:]
        if len(tail) < 5:
            return []
        return [c for c in self.find_contacts(tail) if any(_digits(p).endswith(tail) for p in c.phones)]

    def update_lead(self, lead_id: int, change: LeadUpdate) -> None:
        body = change.as_json()
        if body:
            self._request("PATCH", f"{API}/leads/{int(lead_id)}", json=body)

    def create_task(
        self,
        *,
        lead_id: int,
        text: str,
        complete_till: int,
        responsible_user_id: int | None = None,
        task_type_id: int | None = None,
    ) -> int:
        """A task on the lead, due at ``complete_till`` (Unix time); returns its id."""
        task: dict[str, Any] = {
            "entity_id": int(lead_id),
            "entity_type": "leads",
            "text": text,
            "complete_till": int(complete_till),
        }
        if responsible_user_id:
            task["responsible_user_id"] = int(responsible_user_id)
        if task_type_id:
            task["task_type_id"] = int(task_type_id)
        data = self._request("POST", f"{API}/tasks", json=[task])
        return _first_id(data, "tasks", "create_task")

    def recent_tasks(self, lead_id: int, *, since: int) -> list[tuple[int, str]]:
        """(id, text) of the lead's tasks changed since ``since`` (Unix time): how a step
        interrupted after creating a task finds out that it did."""
        params = {
            "filter[entity_type]": "leads",
            "filter[entity_id][]": int(lead_id),
            "filter[updated_at][from]": int(since),
        }
        return [(int(t["id"]), str(t.get("text") or "")) for t in self._pages(f"{API}/tasks", "tasks", params)]

    def recent_notes(self, lead_id: int, *, since: int) -> list[tuple[int, str]]:
        """(id, text) of the lead's notes changed since ``since`` (Unix time)."""
        params = {"filter[updated_at][from]": int(since)}
        return [
            (int(n["id"]), str((n.get("params") or {}).get("text") or ""))
            for n in self._pages(f"{API}/leads/{int(lead_id)}/notes", "notes", params)
        ]

    def add_note(self, *, lead_id: int, text: str) -> int:
        """A common (text) note on the lead; returns its id."""
        data = self._request(
            "POST", f"{API}/leads/{int(lead_id)}/notes", json=[{"note_type": "common", "params": {"text": text}}]
        )
        return _first_id(data, "notes", "add_note")

    def create_lead_with_contact(
        self,
        *,
        lead_name: str,
        contact_name: str,
        phone: str | None = None,
        email: str | None = None,
        pipeline_id: int | None = None,
        status_id: int | None = None,
        tags: Sequence[str] = (),
        price: int | None = None,
        responsible_user_id: int | None = None,
    ) -> CreatedLead:
        """A lead and its new contact in one call (``POST /api/v4/leads/complex``)."""
        values = []
        if phone:
            values.append({"field_code": "PHONE", "values": [{"value": phone, "enum_code": "WORK"}]})
        if email:
            values.append({"field_code": "EMAIL", "values": [{"value": email, "enum_code": "WORK"}]})
        contact: dict[str, Any] = {"name": contact_name}
        if values:
            contact["custom_fields_values"] = values
        lead: dict[str, Any] = {"name": lead_name, "_embedded": {"contacts": [contact]}}
        if pipeline_id:
            lead["pipeline_id"] = int(pipeline_id)
        if status_id:
            lead["status_id"] = int(status_id)
        if price is not None:
            lead["price"] = int(price)
        if responsible_user_id:
            lead["responsible_user_id"] = int(responsible_user_id)
            contact["responsible_user_id"] = int(responsible_user_id)
        if tags:
            lead["_embedded"]["tags"] = [{"name": name} for name in tags]
        data = self._request("POST", f"{API}/leads/complex", json=[lead])
        try:
            created = data[0]
            contact_id = created.get("contact_id")
            return CreatedLead(
                lead_id=int(created["id"]),
                contact_id=int(contact_id) if contact_id else None,
                merged=bool(created.get("merged")),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise PermanentError("Kommo create lead: the answer has no lead id") from None


def _parsed(parse: Callable[[Mapping[str, Any]], T], items: Iterable[Mapping[str, Any]], what: str) -> list[T]:
    try:
        return [parse(raw) for raw in items]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise PermanentError(f"Kommo {what}: an item of the answer is malformed") from None


def _parsed_one(parse: Callable[[Mapping[str, Any]], T], raw: Any, what: str) -> T:
    try:
        return parse(raw)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise PermanentError(f"Kommo {what}: the answer is malformed") from None


def _first_id(data: Any, key: str, what: str) -> int:
    try:
        return int(data["_embedded"][key][0]["id"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PermanentError(f"Kommo {what}: the answer has no {key[:-1]} id") from None


# Kommo's access tokens are JWTs; refresh tokens and codes are long opaque strings ("def50200…").
_SECRET_LOOKING = re.compile(r"eyJ[\w-]{8,}\.[\w-]+\.[\w-]*|\bdef50200[0-9a-f]{16,}|(?i:bearer)\s+[\w.~+/=-]+")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _SECRET_LOOKING.sub("[redacted]", text)


def _problem_detail(response: requests.Response, *, secrets: Iterable[str] = ()) -> str:
    """Kommo's problem+json title/detail and validation errors, short and scrubbed: an
    answer can echo what it was sent, and the message ends up in logs and the admin."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    text = str(data.get("detail") or data.get("title") or data.get("hint") or "")
    problems = []
    for entry in data.get("validation-errors") or []:
        for error in (entry.get("errors") if isinstance(entry, dict) else None) or []:
            if isinstance(error, dict):
                problems.append(f"{error.get('path', '?')}: {error.get('code') or error.get('detail') or '?'}")
    if problems:
        text = f"{text} ({'; '.join(problems)})" if text else "; ".join(problems)
    return _scrub(text, secrets)[:300]


# --- OAuth -----------------------------------------------------------------------------


def exchange_code(
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    session: requests.Session | None = None,
) -> TokenPair:
    return _token_request(
        base_url,
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        },
        session,
    )


def refresh_tokens(
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    refresh_token: str,
    session: requests.Session | None = None,
) -> TokenPair:
    return _token_request(
        base_url,
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "redirect_uri": redirect_uri,
        },
        session,
    )


def _token_request(base_url: str, body: dict[str, str], session: requests.Session | None) -> TokenPair:
    grant = body["grant_type"]
    secrets = [body.get("client_secret", ""), body.get("code", ""), body.get("refresh_token", "")]
    try:
        response = (session or http.session()).post(f"{base_url.rstrip('/')}/oauth2/access_token", json=body)
    except requests.Timeout:
        raise TransientError(f"Kommo token request ({grant}): timed out") from None
    except requests.ConnectionError as exc:
        raise TransientError(f"Kommo token request ({grant}): connection failed ({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise PermanentError(f"Kommo token request ({grant}): {type(exc).__name__}") from None
    logger.info("crm.token_request", extra={"grant": grant, "status": response.status_code})
    if response.status_code >= 500:
        raise TransientError(
            f"Kommo token request ({grant}): {response.status_code}",
            status=response.status_code,
            retry_after=http.retry_after(response),
        )
    if response.status_code == 429:
        raise RateLimited(f"Kommo token request ({grant}): 429", retry_after=http.retry_after(response))
    if response.status_code >= 400:
        detail = _problem_detail(response, secrets=secrets)
        raise AuthError(
            f"Kommo token request ({grant}) refused: {response.status_code} {detail}".rstrip(),
            status=response.status_code,
        )
    try:
        data = response.json()
        return TokenPair(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            expires_in=int(data.get("expires_in") or 86400),
            token_type=data.get("token_type") or "Bearer",
        )
    except (ValueError, KeyError, TypeError):
        raise PermanentError(f"Kommo token request ({grant}): the answer has no token pair") from None
