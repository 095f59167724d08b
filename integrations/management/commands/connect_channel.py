"""Point a messenger at its integration's webhook URL: registers it with Telegram, or
prints what to paste into Meta's or Twilio's console."""
from __future__ import annotations

import secrets

from django.core.management.base import BaseCommand, CommandError

from integrations.channels.telegram import TelegramClient
from integrations.errors import IntegrationError
from integrations.models import Integration
from integrations.services import integration_set_status, integration_update

CHANNELS = (Integration.Type.TELEGRAM, Integration.Type.WHATSAPP_CLOUD, Integration.Type.TWILIO_WHATSAPP)


class Command(BaseCommand):
    help = (
        "Connect a messenger integration to its webhook: Telegram is told the URL and a secret "
        "token (created if missing); for WhatsApp Cloud and Twilio the URL (and Meta's verify "
        "token) to paste into their console are printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--integration", type=int, required=True, metavar="ID")

    def handle(self, *args, integration: int, **options):
        found = Integration.objects.filter(pk=integration).first()
        if found is None:
            raise CommandError(f"no integration with id {integration}")
        if found.integration_type not in CHANNELS:
            raise CommandError(
                f"integration {integration} is {found.get_integration_type_display()}, not a messenger "
                f"({', '.join(CHANNELS)})"
            )
        url = found.webhook_url
        if not url.startswith("https://"):
            self.stderr.write(f"Warning: {url.split('/api/')[0]} is not https; messengers only call https URLs.")
        kind = found.integration_type
        if kind == Integration.Type.TELEGRAM:
            secret = self._ensure_secret(found, "secret_token")
            token = (found.credentials or {}).get("bot_token")
            if not token:
                raise CommandError(f"integration {integration} has no credentials.bot_token")
            try:
                TelegramClient(token, (found.config or {}).get("base_url")).set_webhook(url, secret)
            except IntegrationError as exc:
                integration_set_status(integration=found, status=Integration.Status.FAILING, detail=str(exc))
                raise CommandError(f"Telegram refused the webhook: {exc}") from None
            integration_set_status(integration=found, status=Integration.Status.CONNECTED)
            self.stdout.write(f"Telegram delivers this bot's messages to the integration {integration} now.")
        elif kind == Integration.Type.WHATSAPP_CLOUD:
            verify = self._ensure_secret(found, "verify_token")
            self.stdout.write(
                "In Meta's app dashboard → WhatsApp → Configuration, set\n"
                f"  Callback URL:  {url}\n  Verify token:  {verify}\n"
                "and subscribe to the 'messages' field. Requests are checked with credentials.app_secret."
            )
        else:
            self.stdout.write(
                "In Twilio's console, for the WhatsApp sender, set 'A message comes in' (HTTP POST) to\n"
                f"  {url}\nRequests are checked with credentials.auth_token."
            )

    def _ensure_secret(self, integration: Integration, key: str) -> str:
        credentials = dict(integration.credentials or {})
        if not credentials.get(key):
            credentials[key] = secrets.token_urlsafe(32)
            integration_update(integration=integration, data={"credentials": credentials})
        return credentials[key]
