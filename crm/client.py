"""Kommo / amoCRM REST API v4 client. Reference: https://www.kommo.com/developers/content/crm_platform/

One method per remote operation, frozen dataclasses out, typed errors
(integrations/errors.py). The client knows nothing of the database: the access token and
the rate limiter are given to it (crm/connection.py builds clients for integrations).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests

from integrations import http
from integrations.errors import AuthError, PermanentError, RateLimited, TransientError

logger = logging.getLogger(__name__)

API = "/api/v4"
PAGE_LIMIT = 250
MAX_PAGES = 1000  # a runaway _links.next loop ends here
IDEMPOTENT = frozenset({"GET", "PATCH", "PUT", "DELETE"})


# --- Results -------------------------------------------------------------------------


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
    """What update_lead changes; fields left None are not sent."""

    status_id: int | None = None
    pipeline_id: int | None = None
    price: int | None = None
    name: str | None = None
    responsible_user_id: int | None = None
    custom_fields: Mapping[int, Any] | None = None  # field id → value or list of values
    tags_to_add: Sequence[str] = ()
    tags_to_delete: Sequence[str] = ()

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
                {
                    "field_id": field_id,
                    "values": [{"value": v} for v in (value if isinstance(value, list) else [value])],
                }
                for field_id, value in self.custom_fields.items()
            ]
        if self.tags_to_add:
            body["tags_to_add"] = [{"name": name} for name in self.tags_to_add]
        if self.tags_to_delete:
            body["tags_to_delete"] = [{"name": name} for name in self.tags_to_delete]
        return body


# --- Parsing ---------------------------------------------------------------------------


def _values(raw: Mapping[str, Any] | None) -> tuple[FieldValue, ...]:
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


def parse_custom_field(raw: Mapping[str, Any]) -> CustomField:
    return CustomField(
        id=int(raw["id"]),
        name=raw.get("name") or "",
        type=raw.get("type") or "",
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
        tags=tuple(Tag(id=int(t["id"]), name=t.get("name") or "") for t in embedded.get("tags") or []),
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


# --- The client ----------------------------------------------------------------------


@dataclass
class RetryPolicy:
    attempts: int = 4  # tries of one call when the answer is 429 or 5xx or a timeout
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.base_delay * (2**attempt) * (0.5 + random.random() / 2), self.max_delay)


class KommoClient:
    """Calls one Kommo account. ``acquire`` is called before every request (rate limit)."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        acquire: Callable[[], None] = lambda: None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._acquire = acquire
        self._retry = retry or RetryPolicy()
        self._session = session or http.session()

    def __repr__(self) -> str:
        return f"KommoClient({self.base_url!r})"

    # transport

    def _request(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        url = path_or_url if path_or_url.startswith("http") else f"{self.base_url}{path_or_url}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        what = f"{method} {path_or_url.split('?')[0]}"
        for attempt in range(self._retry.attempts):
            self._acquire()
            started = time.monotonic()
            try:
                response = self._session.request(method, url, headers=headers, **kwargs)
            except requests.Timeout:
                error: Exception = TransientError(f"Kommo {what}: timed out")
            except requests.RequestException as exc:
                error = TransientError(f"Kommo {what}: {type(exc).__name__}")
            else:
                logger.info(
                    "crm.request",
                    extra={
                        "method": method,
                        "path": path_or_url.split("?")[0],
                        "status": response.status_code,
                        "ms": round((time.monotonic() - started) * 1000),
                    },
                )
                error = self._error_for(response, what)
                if error is None:
                    if response.status_code == 204 or not response.content:
                        return None
                    try:
                        return response.json()
                    except ValueError:
                        raise PermanentError(
                            f"Kommo {what}: the answer is not JSON", status=response.status_code
                        ) from None
            # A POST that timed out or got a 5xx may have been done (a task created):
            # repeating it could do it twice, so only a 429 (refused, not done) is retried.
            retryable = isinstance(error, RateLimited) or (method in IDEMPOTENT and isinstance(error, TransientError))
            if not retryable or attempt == self._retry.attempts - 1:
                raise error
            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            self._retry.sleep(self._retry.delay(attempt, retry_after))
        raise AssertionError("unreachable")

    @staticmethod
    def _error_for(response: requests.Response, what: str) -> Exception | None:
        status = response.status_code
        if status < 400:
            return None
        detail = _problem_detail(response)
        if status in (401, 403):
            return AuthError(f"Kommo {what}: {status} {detail}".rstrip(), status=status)
        if status == 429:
            return RateLimited(f"Kommo {what}: 429 too many requests", retry_after=_retry_after(response))
        if status >= 500:
            return TransientError(f"Kommo {what}: {status} {detail}".rstrip(), status=status)
        return PermanentError(f"Kommo {what}: {status} {detail}".rstrip(), status=status)

    def _pages(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> Iterator[Mapping[str, Any]]:
        """Every item of a listing, following ``_links.next`` to the end."""
        url: str | None = path
        query: Mapping[str, Any] | None = {"limit": PAGE_LIMIT, **(params or {})}
        for _ in range(MAX_PAGES):
            if url is None:
                return
            data = self._request("GET", url, params=query)
            if not data:
                return
            yield from (data.get("_embedded") or {}).get(key) or []
            next_href = ((data.get("_links") or {}).get("next") or {}).get("href")
            url, query = (urljoin(self.base_url + "/", next_href), None) if next_href else (None, None)

    # metadata

    def lead_custom_fields(self) -> list[CustomField]:
        return [parse_custom_field(raw) for raw in self._pages(f"{API}/leads/custom_fields", "custom_fields")]

    def contact_custom_fields(self) -> list[CustomField]:
        return [parse_custom_field(raw) for raw in self._pages(f"{API}/contacts/custom_fields", "custom_fields")]

    def pipelines(self) -> list[Pipeline]:
        return [parse_pipeline(raw) for raw in self._pages(f"{API}/leads/pipelines", "pipelines")]

    def users(self) -> list[User]:
        return [
            User(id=int(raw["id"]), name=raw.get("name") or "", email=raw.get("email") or "")
            for raw in self._pages(f"{API}/users", "users")
        ]

    def lead_tags(self) -> list[Tag]:
        return [_tag(raw) for raw in self._pages(f"{API}/leads/tags", "tags")]

    def contact_tags(self) -> list[Tag]:
        return [_tag(raw) for raw in self._pages(f"{API}/contacts/tags", "tags")]

    # entities

    def get_lead(self, lead_id: int) -> Lead:
        data = self._request("GET", f"{API}/leads/{int(lead_id)}", params={"with": "contacts"})
        if not data:
            raise PermanentError(f"Kommo lead {lead_id} was not found", status=204)
        return parse_lead(data)

    def get_contact(self, contact_id: int) -> Contact:
        data = self._request("GET", f"{API}/contacts/{int(contact_id)}", params={"with": "leads"})
        if not data:
            raise PermanentError(f"Kommo contact {contact_id} was not found", status=204)
        return parse_contact(data)

    def find_contacts(self, query: str) -> list[Contact]:
        """Contacts matching a phone number, e-mail or name (Kommo's full-text ``query``)."""
        return [parse_contact(raw) for raw in self._pages(f"{API}/contacts", "contacts", {"query": query})]

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

    def add_note(self, *, lead_id: int, text: str) -> int:
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
    ) -> CreatedLead:
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
        if tags:
            lead["_embedded"]["tags"] = [{"name": name} for name in tags]
        data = self._request("POST", f"{API}/leads/complex", json=[lead])
        if not isinstance(data, list) or not data or "id" not in data[0]:
            raise PermanentError("Kommo create lead: the answer has no lead id")
        return CreatedLead(lead_id=int(data[0]["id"]), contact_id=data[0].get("contact_id"))


def _tag(raw: Mapping[str, Any]) -> Tag:
    return Tag(id=int(raw["id"]), name=raw.get("name") or "", color=raw.get("color"))


def _first_id(data: Any, key: str, what: str) -> int:
    try:
        return int(data["_embedded"][key][0]["id"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PermanentError(f"Kommo {what}: the answer has no {key[:-1]} id") from None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def _problem_detail(response: requests.Response) -> str:
    """Kommo's problem+json title/detail, short; never the request (it carries the token)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    text = str(data.get("detail") or data.get("title") or data.get("hint") or "")
    return text[:200]


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
    try:
        response = (session or http.session()).post(f"{base_url.rstrip('/')}/oauth2/access_token", json=body)
    except requests.RequestException as exc:
        raise TransientError(f"Kommo token request ({grant}): {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise TransientError(f"Kommo token request ({grant}): {response.status_code}", status=response.status_code)
    if response.status_code == 429:
        raise RateLimited(f"Kommo token request ({grant}): 429", retry_after=_retry_after(response))
    if response.status_code >= 400:
        raise AuthError(
            f"Kommo token request ({grant}) refused: {response.status_code} {_problem_detail(response)}".rstrip(),
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
