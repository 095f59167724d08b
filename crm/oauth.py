"""Connecting a Kommo account with OAuth 2.0 (authorization code).

1. ``authorize_url`` — the user is sent to the CRM's consent page with a signed ``state``
   that names the integration and the user, and a nonce kept in their session.
2. The CRM sends the browser back to ``/crm/oauth/callback?code=…&state=…&referer=…``;
   ``complete`` checks the state against the signed-in user and their session, exchanges
   the code at ``{base_url}/oauth2/access_token`` and stores the pair, encrypted.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from integrations.errors import IntegrationError
from integrations.models import Integration
from integrations.services import integration_set_status

from . import connection
from .client import exchange_code

STATE_SALT = "crm.oauth.state"
STATE_MAX_AGE = 15 * 60
SESSION_KEY = "crm_oauth_nonces"
# The consent page sends the account's host back as ?referer=; only CRM hosts are trusted.
CRM_HOST = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.(kommo\.com|amocrm\.ru|amocrm\.com)$")


class OAuthError(Exception):
    """The connection cannot be completed; the message is for the user."""


def callback_url() -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}{reverse('crm-oauth-callback')}"


def authorize_url(*, integration: Integration, user, session) -> str:
    credentials = integration.credentials or {}
    missing = [key for key in ("client_id", "client_secret") if not credentials.get(key)]
    if missing:
        raise OAuthError(
            f"Set credentials.{' and credentials.'.join(missing)} of the Kommo integration first "
            "(from the integration you created in Kommo's settings)"
        )
    nonce = secrets.token_urlsafe(16)
    session[SESSION_KEY] = (session.get(SESSION_KEY) or [])[-4:] + [nonce]
    state = signing.dumps({"i": integration.id, "u": user.id, "n": nonce}, salt=STATE_SALT)
    query = {"client_id": credentials["client_id"], "state": state}
    return f"{settings.KOMMO_AUTHORIZE_URL}?{urlencode(query)}"


def integration_from_state(*, state: str, user, session) -> Integration:
    try:
        data = signing.loads(state, salt=STATE_SALT, max_age=STATE_MAX_AGE)
    except signing.SignatureExpired:
        raise OAuthError("This connection link has expired: start connecting again.") from None
    except signing.BadSignature:
        raise OAuthError("This connection was not started here: start connecting again.") from None
    nonces = session.get(SESSION_KEY) or []
    if data.get("u") != user.id or data.get("n") not in nonces:
        raise OAuthError("This connection was started by another user or browser: start connecting again.")
    session[SESSION_KEY] = [n for n in nonces if n != data["n"]]  # one use
    integration = Integration.objects.filter(
        pk=data.get("i"), agent__owner=user, integration_type=Integration.Type.KOMMO
    ).first()
    if integration is None:
        raise OAuthError("The integration of this connection no longer exists.")
    return integration


def complete(*, integration: Integration, code: str, referer: str = "") -> Integration:
    config = dict(integration.config or {})
    if not config.get("base_url"):
        if not CRM_HOST.match(referer or ""):
            raise OAuthError("Set config.base_url of the integration (e.g. https://yoursubdomain.kommo.com).")
        config["base_url"] = f"https://{referer}"
    credentials = dict(integration.credentials or {})
    redirect_uri = credentials.get("redirect_uri") or callback_url()
    try:
        pair = exchange_code(
            base_url=config["base_url"],
            client_id=credentials.get("client_id", ""),
            client_secret=credentials.get("client_secret", ""),
            redirect_uri=redirect_uri,
            code=code,
        )
    except IntegrationError as exc:
        raise OAuthError(f"Kommo did not accept the connection: {exc}") from None
    credentials.update(connection.token_credentials(pair), redirect_uri=redirect_uri)
    renewed_at = timezone.now()  # a new refresh token: the OAuth rotation counts from here
    with transaction.atomic():
        Integration.objects.filter(pk=integration.pk).update(
            config=config, credentials=credentials, refresh_token_renewed_at=renewed_at
        )
        integration.config, integration.credentials = config, credentials
        integration.refresh_token_renewed_at = renewed_at
    try:
        account = connection.call(integration, lambda client: client.account())
    except IntegrationError:
        account = None  # connected all the same; the account id is learnt on the next sync
    if account is not None:
        config["account_id"] = account.id
        Integration.objects.filter(pk=integration.pk).update(config=config)
        integration.config = config
    integration_set_status(integration=integration, status=Integration.Status.CONNECTED)
    return integration
