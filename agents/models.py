from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from config.validation import JSONValidator

from .schemas import DEFAULT_AI_MODEL, LANGUAGE_CODE, parse_schedule


class Agent(models.Model):
    """An AI sales agent: answers leads, owns triggers, sequences and integrations.

    The owner is the tenant: everything hanging off an agent belongs to its owner.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True)
    instructions = models.TextField(blank=True, help_text="The system prompt: who the agent is and how it sells.")
    ai_model = models.CharField(
        max_length=120,
        default=DEFAULT_AI_MODEL,
        validators=[JSONValidator("agents.schemas.check_ai_model", field="ai_model")],
        help_text="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, google:gemini-2.5-flash.",
    )
    language_detection = models.BooleanField(default=False, help_text="Answer in the language the lead writes in.")
    default_language = models.CharField(
        max_length=10,
        default="en",
        validators=[RegexValidator(LANGUAGE_CODE, "expected a language code such as en, ru or pt-BR")],
    )
    schedule = models.JSONField(
        default=dict,
        blank=True,
        validators=[JSONValidator("agents.schemas.check_schedule", field="schedule")],
        help_text='Working hours, e.g. {"timezone": "Europe/Moscow", "days": {"mon": [{"start": "09:00", '
        '"end": "18:00"}]}}. Empty: around the clock.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["owner", "active"], name="agent_owner_active")]

    def __str__(self) -> str:
        return self.name

    @property
    def working_hours(self):
        return parse_schedule(self.schedule)


class AgentCrmAccess(models.Model):
    """Which CRM fields the agent may read: nothing outside these lists reaches the AI model."""

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, related_name="crm_access")
    lead_fields = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("agents.schemas.check_field_ids", field="lead_fields")],
        help_text="Lead custom field ids, e.g. [123456, 123457].",
    )
    contact_fields = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("agents.schemas.check_field_ids", field="contact_fields")],
        help_text="Contact custom field ids.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "CRM access"
        verbose_name_plural = "CRM access"

    def __str__(self) -> str:
        return f"CRM access of {self.agent}"


class ExecutionLog(models.Model):
    """What the system did for an agent: one row per trigger evaluation, sequence step,
    reply, integration call, with outcome, timing and the CRM lead it concerned."""

    class Kind(models.TextChoices):
        TRIGGER = "trigger", "Trigger"
        SEQUENCE = "sequence", "Sequence"
        REPLY = "reply", "Reply"
        AI = "ai", "AI request"
        INTEGRATION = "integration", "Integration"
        WEBHOOK = "webhook", "Webhook"

    class Status(models.TextChoices):
        STARTED = "started", "Started"
        SUCCESS = "success", "Success"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="execution_logs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices)
    ref_type = models.CharField(
        max_length=40, blank=True, help_text="What the entry is about: trigger, sequence, sequence_run, integration…"
    )
    ref_id = models.BigIntegerField(null=True, blank=True)
    crm_lead_id = models.BigIntegerField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["agent", "-created_at"], name="log_agent_recent"),
            # "everything that happened to lead 123"
            models.Index(fields=["crm_lead_id", "-created_at"], name="log_lead_recent"),
            # "latest failures", overall and per agent
            models.Index(
                fields=["agent", "-created_at"],
                name="log_agent_failures",
                condition=models.Q(status="failed"),
            ),
            models.Index(fields=["-created_at"], name="log_failures", condition=models.Q(status="failed")),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.status} #{self.pk}"


class LiveEvent(models.Model):
    """An event pushed to a user's browsers (see agents/realtime.py).

    Every event is stored: the row is how processes without a shared channel layer
    (the embedded default) hand events to the ASGI server, and the recent history a
    page shows when it opens.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="live_events")
    type = models.CharField(max_length=60)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["owner", "-id"], name="live_event_owner_recent")]

    def __str__(self) -> str:
        return f"{self.type} for {self.owner_id}"
