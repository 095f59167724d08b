"""A Google Calendar integration's connection: google-auth's authorized session, with
tokens read from and written back to the integration's encrypted credentials.

Credentials of a ``google_calendar`` integration: ``access_token``, ``refresh_token`` and
``expiry`` (ISO 8601, UTC). The OAuth client is the deployment's (GOOGLE_CLIENT_ID,
GOOGLE_CLIENT_SECRET), so that one consent screen serves every agent.

``AuthorizedSession`` refreshes the access token shortly before it expires (google-auth's
threshold, under 4 minutes) and once after a 401. The refresh (``StoredCredentials.refresh``)
happens under a lock on the integration's row: a process that finds a newer token than
the one it holds uses it; otherwise it refreshes and stores the new token in the same
transaction. A refresh that Google refuses (``invalid_grant``: access revoked, or the grant
expired) marks the integration "needs re-connection" (admin, live event) and raises
AuthError; nothing retries it until someone connects again. A refresh that failed for a
passing reason marks it "failing" and raises TransientError.

Every refresh and every connection records when the refresh token last worked in
``Integration.refresh_token_renewed_at``; ``rotate`` refreshes on demand for the scheduled
OAuth rotation of idle integrations (integrations/rotation.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import requests
from django.db import transaction
from django.utils import timezone

from integrations import http
from integrations.errors import AuthError, IntegrationError, PermanentError, TransientError
from integrations.models import Integration
from integrations.services import integration_set_status

from . import conf

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A token another process stored is used only with more than this left (google-auth
# itself refreshes under 3 min 45 s).
ADOPT_MARGIN = timedelta(minutes=5)


class NotConnected(AuthError):
    """The integration holds no Google tokens: connect it first."""


# --- Stored tokens -------------------------------------------------------------------------


def expiry_text(expiry: datetime | None) -> str | None:
    """``2025-03-01T12:00:00Z`` from an aware datetime, or google-auth's naive UTC one."""
    if expiry is None:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return expiry.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry(text: str | None) -> datetime | None:
    """google-auth's form: naive UTC. An unreadable value counts as expired."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return datetime(1970, 1, 1)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def store_tokens(integration: Integration, *, access_token: str, refresh_token: str, expiry: datetime | None) -> None:
    """Replace the integration's tokens (the other credential keys stay) with those a
    consent just gave: the refresh token counts as renewed now."""
    renewed_at = timezone.now()
    with transaction.atomic():
        locked = Integration.objects.select_for_update().get(pk=integration.pk)
        credentials = dict(locked.credentials or {})
        credentials.update(access_token=access_token, refresh_token=refresh_token)
        credentials.pop("expiry", None)
        if expiry is not None:
            credentials["expiry"] = expiry_text(expiry)
        Integration.objects.filter(pk=locked.pk).update(credentials=credentials, refresh_token_renewed_at=renewed_at)
        integration.credentials = credentials
        integration.refresh_token_renewed_at = renewed_at


class StoredCredentials(google.oauth2.credentials.Credentials):
    """A Google user's credentials held by an integration; every refresh is stored back."""

    def __init__(self, integration: Integration) -> None:
        stored = integration.credentials or {}
        super().__init__(
            token=stored.get("access_token") or None,
            refresh_token=stored.get("refresh_token") or None,
            token_uri=conf.token_url(),
            client_id=conf.client_id() or None,
            client_secret=conf.client_secret() or None,
            expiry=parse_expiry(stored.get("expiry")),
        )
        self.integration = integration

    def __repr__(self) -> str:
        return f"StoredCredentials(integration {self.integration.id})"

    def refresh(self, request: Any) -> None:
        self.refresh_once(request)

    def refresh_once(self, request: Any) -> bool:
        """Refresh under the integration's lock: True when this call refreshed, False when
        another process had meanwhile (its token is adopted)."""
        try:
            return self._refresh_locked(request)
        except AuthError as exc:
            # after the transaction: a status written inside it would roll back with the error
            integration_set_status(
                integration=self.integration, status=Integration.Status.NEEDS_RECONNECT, detail=str(exc)
            )
            logger.warning("google.token.refresh_refused", extra={"integration_id": self.integration.id})
            raise
        except IntegrationError as exc:
            integration_set_status(integration=self.integration, status=Integration.Status.FAILING, detail=str(exc))
            logger.warning("google.token.refresh_failed", extra={"integration_id": self.integration.id})
            raise

    def _refresh_locked(self, request: Any) -> bool:
        integration = self.integration
        held = self.token
        with transaction.atomic():
            locked = Integration.objects.select_for_update().get(pk=integration.pk)
            credentials = dict(locked.credentials or {})
            current = credentials.get("access_token")
            expiry = parse_expiry(credentials.get("expiry"))
            if current and current != held and (expiry is None or expiry > _soon()):
                # another process refreshed while we waited for the lock (or before we read)
                self.token, self.expiry = current, expiry
                integration.credentials = credentials
                integration.refresh_token_renewed_at = locked.refresh_token_renewed_at
                return False
            if not credentials.get("refresh_token"):
                raise NotConnected(
                    f"Google Calendar integration {integration.id} has no refresh token: connect it to Google again"
                )
            if not self.client_id or not self.client_secret:
                raise AuthError("Google sign-in is not set up on this server (GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET)")
            self._refresh_token = credentials["refresh_token"]  # a reconnection may have replaced it
            try:
                super().refresh(request)
            except google.auth.exceptions.RefreshError as exc:
                raise _refresh_error(exc, integration.id) from None
            except google.auth.exceptions.TransportError as exc:
                raise TransientError(
                    f"Google token refresh for integration {integration.id}: connection failed ({_cause_name(exc)})"
                ) from None
            credentials["access_token"] = self.token
            credentials["refresh_token"] = self.refresh_token or credentials["refresh_token"]
            credentials.pop("expiry", None)
            if self.expiry is not None:
                credentials["expiry"] = expiry_text(self.expiry)
            # the refresh token has just proved to work (Google rarely sends a new one)
            renewed_at = timezone.now()
            Integration.objects.filter(pk=locked.pk).update(
                credentials=credentials, refresh_token_renewed_at=renewed_at
            )
            integration.credentials = credentials
            integration.refresh_token_renewed_at = renewed_at
        logger.info("google.token.refreshed", extra={"integration_id": integration.id})
        return True


def _soon() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None) + ADOPT_MARGIN


def _cause_name(exc: BaseException) -> str:
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    return type(cause).__name__


def _refresh_error(exc: google.auth.exceptions.RefreshError, integration_id: int) -> IntegrationError:
    """Google's answer as a typed error: its error code and description, never the request."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = str(data.get("error") or "refused")
    description = str(data.get("error_description") or "")[:200]
    message = f"Google refused to refresh the token of integration {integration_id} ({code}"
    message += f": {description})" if description else ")"
    if getattr(exc, "retryable", False):
        return TransientError(message)
    if code in ("invalid_grant", "unauthorized_client", "invalid_scope"):
        return AuthError(f"{message}: connect it to Google again")
    # invalid_client and the like: the server's OAuth client is wrong, reconnecting will not help
    return AuthError(f"{message}: check GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET")


# --- Calls ---------------------------------------------------------------------------------


def authorized_session(integration: Integration) -> google.auth.transport.requests.AuthorizedSession:
    """A session that adds the integration's token to every request and refreshes it:
    before it expires, and once after a 401. Requests and refreshes go through the
    calling thread's shared connections (integrations/http.py)."""
    shared = http.session()
    session = google.auth.transport.requests.AuthorizedSession(
        StoredCredentials(integration),
        max_refresh_attempts=1,
        auth_request=google.auth.transport.requests.Request(shared),
    )
    for prefix in ("https://", "http://"):
        session.mount(prefix, shared.get_adapter(prefix))
    return session


def rotate(integration: Integration) -> bool:
    """The scheduled OAuth rotation (integrations/rotation.py, OAUTH_ROTATORS) for Google.

    Google keeps one refresh token for the life of a consent: a refresh answers with a new
    access token only, and a new refresh token needs the user to consent again. So this
    cannot replace the refresh token; it refreshes the access token now, through the same
    lock as every refresh, which proves the grant still works, records when, and keeps
    Google's six-month idle expiry away. A refresh token Google does send is stored.
    True when this call refreshed, False when another process did meanwhile; a refusal
    marks the integration "needs re-connection" and raises AuthError."""
    check_connected(integration)
    if not (integration.credentials or {}).get("refresh_token"):
        raise NotConnected(f"Google Calendar integration {integration.id} has no refresh token: connect it to Google")
    credentials = StoredCredentials(integration)
    return credentials.refresh_once(google.auth.transport.requests.Request(http.session()))


def check_connected(integration: Integration) -> None:
    if integration.integration_type != Integration.Type.GOOGLE_CALENDAR:
        raise PermanentError(f"Integration {integration.id} is not a Google Calendar integration")
    credentials = integration.credentials or {}
    if not credentials.get("refresh_token") and not credentials.get("access_token"):
        raise NotConnected(f"Google Calendar integration {integration.id} is not connected: connect it to Google")


def call(integration: Integration, operation: Callable[[requests.Session], T]) -> T:
    """Run ``operation`` with the integration's authorized session, and record the
    integration's health: connected after a success, "needs re-connection" when Google
    refuses its token for good, "failing" while Google cannot be reached."""
    check_connected(integration)
    session = authorized_session(integration)
    try:
        result = operation(session)
    except NotConnected:
        raise
    except AuthError as exc:
        integration_set_status(integration=integration, status=Integration.Status.NEEDS_RECONNECT, detail=str(exc))
        raise
    except TransientError as exc:
        integration_set_status(integration=integration, status=Integration.Status.FAILING, detail=str(exc))
        raise
    if integration.status != Integration.Status.CONNECTED:
        integration_set_status(integration=integration, status=Integration.Status.CONNECTED)
    return result
