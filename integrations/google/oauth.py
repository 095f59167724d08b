"""Connecting a Google account to a ``google_calendar`` integration: the OAuth 2.0
web-server flow with PKCE, through google-auth-oauthlib's ``Flow``.

1. ``authorize_url`` — the user is sent to Google's consent page (offline access, consent
   asked every time so that a refresh token comes) with a signed ``state`` naming the
   integration, the user and a nonce. The nonce and the PKCE code verifier stay in the
   user's session, on the server, until the callback.
2. Google sends the browser back to ``/google/oauth/callback?code=…&state=…``;
   ``pending_from_state`` checks the state against the signed-in user and their session
   and takes the verifier out (a state works once); ``complete`` exchanges the code with
   the verifier and stores the tokens, encrypted, in the integration's credentials.

The state is checked the way crm/oauth.py checks Kommo's (integrations cannot import crm).
Reference: https://developers.google.com/identity/protocols/oauth2/web-server
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import requests
from django.conf import settings
from django.core import signing
from django.urls import reverse
from google_auth_oauthlib.flow import Flow
from oauthlib.oauth2 import OAuth2Error

from integrations.models import Integration
from integrations.services import integration_set_status

from . import conf, connection

logger = logging.getLogger(__name__)

STATE_SALT = "integrations.google.oauth.state"
STATE_MAX_AGE = 15 * 60
SESSION_KEY = "google_oauth_pending"  # {nonce: PKCE code verifier}, the last few connections started
KEPT_PENDING = 5
SCOPE_NAMES = {
    "https://www.googleapis.com/auth/calendar.readonly": "see your calendars",
    "https://www.googleapis.com/auth/calendar.events": "create events",
}


class OAuthError(Exception):
    """The connection cannot be completed; the message is for the user and holds no secret."""


@dataclass(frozen=True)
class Pending:
    """A connection started by this user in this browser, waiting for Google's answer."""

    integration: Integration
    code_verifier: str


def callback_url() -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}{reverse('google-oauth-callback')}"


def _flow(**kwargs) -> Flow:
    client = {
        "client_id": conf.client_id(),
        "client_secret": conf.client_secret(),
        "auth_uri": conf.authorize_url(),
        "token_uri": conf.token_url(),
    }
    return Flow.from_client_config({"web": client}, redirect_uri=callback_url(), **kwargs)


def authorize_url(*, integration: Integration, user, session) -> str:
    """Google's consent page for connecting ``integration``; remembers the verifier in ``session``."""
    if integration.integration_type != Integration.Type.GOOGLE_CALENDAR:
        raise OAuthError("Only a Google Calendar integration can be connected to Google.")
    if not conf.client_id() or not conf.client_secret():
        raise OAuthError(
            "Google sign-in is not set up on this server: set GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET "
            "(an OAuth client of type “Web application” in Google Cloud's console)."
        )
    nonce = secrets.token_urlsafe(16)
    state = signing.dumps({"i": integration.id, "u": user.id, "n": nonce}, salt=STATE_SALT)
    flow = _flow(scopes=list(conf.SCOPES))  # a fresh code verifier (PKCE, S256)
    try:
        url, _ = flow.authorization_url(state=state, access_type="offline", prompt="consent")
    except OAuth2Error as exc:  # e.g. an http:// consent page (oauthlib insists on https)
        raise OAuthError(f"Google's consent page cannot be used: {exc.description or exc.error}") from None
    pending = dict(session.get(SESSION_KEY) or {})
    pending[nonce] = flow.code_verifier
    session[SESSION_KEY] = dict(list(pending.items())[-KEPT_PENDING:])
    return url


def pending_from_state(*, state: str, user, session) -> Pending:
    """The connection ``state`` names, if this user started it in this browser; works once."""
    try:
        data = signing.loads(state, salt=STATE_SALT, max_age=STATE_MAX_AGE)
    except signing.SignatureExpired:
        raise OAuthError("This connection link has expired: start connecting again.") from None
    except signing.BadSignature:
        raise OAuthError("This connection was not started here: start connecting again.") from None
    pending = dict(session.get(SESSION_KEY) or {})
    verifier = pending.pop(str(data.get("n")), None)
    if data.get("u") != user.id or not verifier:
        raise OAuthError("This connection was started by another user or browser: start connecting again.")
    session[SESSION_KEY] = pending  # one use
    integration = Integration.objects.filter(
        pk=data.get("i"), agent__owner=user, integration_type=Integration.Type.GOOGLE_CALENDAR
    ).first()
    if integration is None:
        raise OAuthError("The integration of this connection no longer exists.")
    return Pending(integration=integration, code_verifier=verifier)


def complete(*, pending: Pending, code: str) -> Integration:
    """Exchange the code for tokens and store them; the integration is then connected."""
    integration = pending.integration
    # no scopes here: oauthlib would refuse an answer whose scopes differ; they are checked below
    flow = _flow(scopes=None, code_verifier=pending.code_verifier, autogenerate_code_verifier=False)
    try:
        token = flow.fetch_token(code=code, include_client_id=True, timeout=conf.timeout())
    except OAuth2Error as exc:
        detail = ": ".join(part for part in (exc.error, exc.description) if part)
        raise OAuthError(f"Google did not accept the connection ({detail}): start connecting again.") from None
    except requests.RequestException as exc:
        raise OAuthError(f"Google could not be reached ({type(exc).__name__}): try again.") from None
    except ValueError:  # an answer that is neither JSON nor a form (an error page)
        raise OAuthError("Google's answer could not be read: try again.") from None
    granted = token.get("scope") or list(conf.SCOPES)  # oauthlib gives a list; a string is split
    granted = set(granted.split() if isinstance(granted, str) else granted)
    missing = [SCOPE_NAMES.get(scope, scope) for scope in conf.SCOPES if scope not in granted]
    if missing:
        raise OAuthError(
            f"Google did not grant access to {' and '.join(missing)}: connect again and tick every box "
            "on Google's consent page."
        )
    stored = integration.credentials or {}
    refresh_token = token.get("refresh_token") or stored.get("refresh_token")
    if not refresh_token:
        raise OAuthError(
            "Google gave no refresh token: remove this app's access in your Google account "
            "(myaccount.google.com/permissions) and connect again."
        )
    expires_at = token.get("expires_at")
    expiry = datetime.fromtimestamp(float(expires_at), UTC) if expires_at else None
    connection.store_tokens(
        integration, access_token=str(token["access_token"]), refresh_token=str(refresh_token), expiry=expiry
    )
    integration_set_status(integration=integration, status=Integration.Status.CONNECTED)
    logger.info("google.oauth.connected", extra={"integration_id": integration.id})
    return integration
