from __future__ import annotations

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse

from config.validation import JSONValidator, raise_problems

from .fields import EncryptedJSONField
from .schemas import IntegrationType, check_config

# the URL name (config/urls.py) of each type's webhook, taking the integration's key
WEBHOOK_URL_NAMES = {
    IntegrationType.KOMMO: "crm-webhook",
    IntegrationType.TELEGRAM: "telegram-webhook",
    IntegrationType.WHATSAPP_CLOUD: "whatsapp-webhook",
    IntegrationType.TWILIO_WHATSAPP: "twilio-webhook",
}


def new_webhook_key() -> str:
    return secrets.token_urlsafe(32)


class Integration(models.Model):
    """A connection of an agent to an outside service: the CRM, a calendar, a messenger.

    ``credentials`` is encrypted at rest and write-only: it never leaves the server in an
    API response, an admin page or a log line.
    """

    Type = IntegrationType

    class Status(models.TextChoices):
        NEW = "new", "Not used yet"
        CONNECTED = "connected", "Connected"
        NEEDS_RECONNECT = "needs_reconnect", "Needs re-connection"
        FAILING = "failing", "Failing"

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="integrations")
    integration_type = models.CharField(max_length=30, choices=IntegrationType.CHOICES)
    config = models.JSONField(
        default=dict,
        blank=True,
        validators=[JSONValidator("integrations.schemas.check_config", field="config")],
        help_text="Non-secret settings of this connection (base URL, calendar id, phone number id…).",
    )
    credentials = EncryptedJSONField(
        default=dict,
        blank=True,
        validators=[JSONValidator("integrations.schemas.check_credentials", field="credentials")],
    )
    active = models.BooleanField(default=True)
    webhook_key = models.CharField(
        max_length=64,
        unique=True,
        default=new_webhook_key,
        editable=False,
        help_text="The secret part of this integration's webhook URL.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW, editable=False)
    status_detail = models.TextField(blank=True, editable=False, help_text="The last error, when there is one.")
    status_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    refresh_token_renewed_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text=(
            "OAuth: when the refresh token was last renewed (Kommo issues a new one with every refresh) "
            "or, for Google, which keeps one refresh token per consent, last proved to work. "
            "Empty: not known yet."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "integration_type", "id"]
        indexes = [models.Index(fields=["agent", "integration_type"], name="integration_agent_type")]

    def __str__(self) -> str:
        return f"{self.get_integration_type_display()} of {self.agent}"

    @property
    def webhook_url(self) -> str | None:
        """The full URL the outside service (the CRM, a messenger) posts its events to;
        None for a type that has no webhook (Google Calendar)."""
        name = WEBHOOK_URL_NAMES.get(self.integration_type)
        if name is None:
            return None
        path = reverse(name, kwargs={"key": self.webhook_key})
        return f"{settings.PUBLIC_BASE_URL.rstrip('/')}{path}"

    @property
    def credential_keys(self) -> list[str]:
        return sorted(self.credentials or {})

    def clean(self) -> None:
        # the config's shape depends on the type, which a field validator cannot see
        try:
            raise_problems("config", check_config(self.config, self.integration_type))
        except ValidationError as exc:
            raise ValidationError({"config": exc.messages}) from None


class RateSlot(models.Model):
    """The latest request slots of a rate-limited key, for processes without Redis
    (integrations/ratelimit.py)."""

    key = models.CharField(max_length=200, unique=True)
    slots = models.TextField(blank=True, help_text="Unix times of the key's latest slots, oldest first.")

    def __str__(self) -> str:
        return self.key
