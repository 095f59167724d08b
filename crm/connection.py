"""A Kommo integration's connection: its client, its tokens, and their refresh.

Credentials of a ``kommo`` integration (encrypted, see integrations/fields.py):
``access_token`` — always; a pasted long-lived token has nothing else. An OAuth
connection adds ``refresh_token``, ``client_id``, ``client_secret``, ``redirect_uri`` and
``expires_at`` (Unix time, as a string).

Access tokens live 24 h and are refreshed shortly before they expire, and once when the
CRM answers 401. A refresh token works once, so a refresh happens under a lock on the
integration's row: the first process refreshes and stores the new pair in the same
transaction; the others wait for the lock, see that the token changed, and use the new
one. A refresh that the CRM refuses marks the integration "needs re-connection" (in the
admin and live) and raises AuthError; nothing retries it until someone reconnects.

Each refresh also replaces the refresh token (it lasts three months unused), and records
when in ``Integration.refresh_token_renewed_at``; ``rotate`` refreshes on demand, for the
scheduled rotation of idle integrations (integrations/rotation.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations import ratelimit
from integrations.errors import AuthError, IntegrationError, PermanentError, TransientError, Unconfirmed
from integrations.models import Integration
from integrations.services import integration_set_status

from .client import KommoClient, TokenPair, refresh_tokens

logger = logging.getLogger(__name__)

T = TypeVar("T")
REFRESH_MARGIN_SECONDS = 10 * 60  # refresh when less than this is left


class NotConnected(AuthError):
    """The integration has no usable token: connect it (OAuth) or paste a token."""


def base_url_of(integration: Integration) -> str:
    base_url = (integration.config or {}).get("base_url")
    if not base_url:
        raise PermanentError(
            f"Kommo integration {integration.id} has no config.base_url (e.g. https://yoursubdomain.kommo.com)"
        )
    return str(base_url).rstrip("/")


def rate_key(integration: Integration) -> str:
    """One allowance per CRM account, whichever integrations point at it."""
    return f"kommo:{base_url_of(integration)}"


def make_client(integration: Integration, access_token: str, *, max_wait: float = 120) -> KommoClient:
    """A client that waits for its turn in the account's allowance, at most ``max_wait``
    seconds (then RateLimited): long in the worker, short inside a web request."""
    key = rate_key(integration)
    per_second = settings.KOMMO_RATE_LIMIT_PER_SECOND
    return KommoClient(
        base_url_of(integration), access_token, acquire=lambda: ratelimit.acquire(key, per_second, max_wait=max_wait)
    )


def _expires_soon(credentials: dict) -> bool:
    expires_at = credentials.get("expires_at")
    if not expires_at or not credentials.get("refresh_token"):
        return False
    try:
        return float(expires_at) - time.time() < REFRESH_MARGIN_SECONDS
    except ValueError:
        return True


def access_token(integration: Integration) -> str:
    """A token that is valid for a while yet (refreshing first when it is about to expire)."""
    credentials = integration.credentials or {}
    token = credentials.get("access_token")
    if not token:
        raise NotConnected(f"Kommo integration {integration.id} is not connected: connect it or paste a token")
    if _expires_soon(credentials):
        return refresh(integration, stale_token=token)
    return token


def refresh(integration: Integration, *, stale_token: str) -> str:
    """Refresh the token pair once, whoever asks: return the token to use now."""
    token, _ = _refresh(integration, stale_token)
    return token


def rotate(integration: Integration) -> bool:
    """Renew the refresh token now, however long the access token has left: the scheduled
    OAuth rotation (integrations/rotation.py, OAUTH_ROTATORS). It goes through the same
    lock as every refresh, so it never spends a refresh token another process is using:
    True when this call renewed the pair, False when another process refreshed while we
    waited (its pair is kept). Raises like ``refresh``: AuthError when refused (the
    integration then needs re-connection), another IntegrationError when it failed."""
    credentials = integration.credentials or {}
    if not credentials.get("refresh_token"):
        raise NotConnected(
            f"Kommo integration {integration.id} has no refresh token (a long-lived token is not renewed)"
        )
    _, renewed = _refresh(integration, credentials.get("access_token") or "")
    return renewed


def _refresh(integration: Integration, stale_token: str) -> tuple[str, bool]:
    """The token to use now, and whether this call refreshed it (False: another process had)."""
    outcome: tuple[str, bool] | Exception
    try:
        outcome = _refresh_locked(integration, stale_token)
    except IntegrationError as exc:
        outcome = exc
    if not isinstance(outcome, Exception):
        return outcome
    # after the transaction: a status written inside it would roll back with the error
    if isinstance(outcome, AuthError):
        integration_set_status(integration=integration, status=Integration.Status.NEEDS_RECONNECT, detail=str(outcome))
        logger.warning("crm.token.refresh_refused", extra={"integration_id": integration.id})
    else:
        integration_set_status(integration=integration, status=Integration.Status.FAILING, detail=str(outcome))
        logger.warning("crm.token.refresh_failed", extra={"integration_id": integration.id})
    raise outcome


def _refresh_locked(integration: Integration, stale_token: str) -> tuple[str, bool]:
    with transaction.atomic():
        locked = Integration.objects.select_for_update().get(pk=integration.pk)
        credentials = dict(locked.credentials or {})
        current = credentials.get("access_token")
        if current and current != stale_token and not _expires_soon(credentials):
            integration.credentials = credentials  # another process refreshed while we waited
            integration.refresh_token_renewed_at = locked.refresh_token_renewed_at
            return current, False
        missing = [k for k in ("refresh_token", "client_id", "client_secret", "redirect_uri") if not credentials.get(k)]
        if missing:
            raise AuthError(
                f"Kommo refused the token of integration {integration.id} and it cannot be refreshed "
                f"(no {', '.join(missing)}): reconnect it or paste a new token"
            )
        pair: TokenPair = refresh_tokens(
            base_url=base_url_of(locked),
            client_id=credentials["client_id"],
            client_secret=credentials["client_secret"],
            redirect_uri=credentials["redirect_uri"],
            refresh_token=credentials["refresh_token"],
        )
        if pair.refresh_token != credentials["refresh_token"]:  # Kommo sends a new one every time
            locked.refresh_token_renewed_at = timezone.now()
        credentials.update(token_credentials(pair))
        Integration.objects.filter(pk=locked.pk).update(
            credentials=credentials, refresh_token_renewed_at=locked.refresh_token_renewed_at
        )
        integration.credentials = credentials
        integration.refresh_token_renewed_at = locked.refresh_token_renewed_at
    logger.info("crm.token.refreshed", extra={"integration_id": integration.id})
    return pair.access_token, True


def token_credentials(pair: TokenPair) -> dict[str, str]:
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "expires_at": str(int(time.time()) + pair.expires_in),
    }


def call(integration: Integration, operation: Callable[[KommoClient], T], *, max_wait: float = 120) -> T:
    """Run ``operation`` with a client of the integration; on 401 refresh once and retry.

    Records the integration's health: connected after a success, "needs re-connection"
    when the token is refused for good.
    """
    token = access_token(integration)
    try:
        result = operation(make_client(integration, token, max_wait=max_wait))
    except AuthError as first:
        if first.status not in (401, None) or isinstance(first, NotConnected):
            raise
        token = refresh(integration, stale_token=token)
        try:
            result = operation(make_client(integration, token, max_wait=max_wait))
        except AuthError as second:
            integration_set_status(
                integration=integration, status=Integration.Status.NEEDS_RECONNECT, detail=str(second)
            )
            raise
    except (TransientError, Unconfirmed) as exc:
        integration_set_status(integration=integration, status=Integration.Status.FAILING, detail=str(exc))
        raise
    if integration.status != Integration.Status.CONNECTED:
        integration_set_status(integration=integration, status=Integration.Status.CONNECTED)
    return result
