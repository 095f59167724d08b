from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, RegexValidator
from django.db import models

from config.validation import JSONValidator

from .schemas import DEFAULT_AI_MODEL, LANGUAGE_CODE, parse_schedule

# a handoff ends at now + handoff_minutes, which must stay a date: at most a year
HANDOFF_MINUTES_MAX = 365 * 24 * 60

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
        help_text="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, gemini:gemini-2.5-flash.",
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
    outside_hours = models.CharField(
        max_length=10,
        choices=[
            ("answer", "answer anyway"),
            ("away_once", "send the away message once, then leave it to the team"),
            ("silent", "stay silent and leave it to the team"),
        ],
        default="answer",
        help_text="What the agent does with a message outside its working hours.",
    )
    away_message = models.TextField(
        blank=True, help_text="Sent once per conversation outside working hours (with 'away_once')."
    )
    handoff_minutes = models.PositiveIntegerField(
        default=24 * 60,
        validators=[MaxValueValidator(HANDOFF_MINUTES_MAX)],
        help_text="After a person from the team writes to a lead, or the lead asks for one, the agent stays "
        "quiet in that conversation for this long (or until handed back).",
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
        RETRYING = "retrying", "Failed, will retry"
        FAILED = "failed", "Failed"

    # no index of its own: log_agent_recent starts with it (the trigger engine appends
    # ~100 entries an event for a busy agent, and every index is written for each)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="execution_logs", db_index=False)
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


class Conversation(models.Model):
    """A person's chat with an agent on one messenger integration (a Telegram chat, a
    WhatsApp number), linked to the CRM lead it belongs to once it is known. Without an
    integration it is a staff member's test chat (``chat_id`` "test:<user id>")."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="conversations")
    integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.CASCADE,
        related_name="conversations",
        null=True,
        blank=True,
        help_text="The messenger channel; empty for a staff test chat in the admin.",
    )
    chat_id = models.CharField(max_length=100, help_text="The chat on the channel: Telegram chat id, WhatsApp number.")
    sender_name = models.CharField(max_length=200, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    language = models.CharField(max_length=10, blank=True, help_text="The language the person writes in, last seen.")
    crm_contact_id = models.BigIntegerField(null=True, blank=True)
    crm_lead_id = models.BigIntegerField(null=True, blank=True)
    handoff_until = models.DateTimeField(
        null=True, blank=True, help_text="Until then a person from the team answers, not the agent."
    )
    handoff_reason = models.CharField(max_length=40, blank=True)
    away_sent_at = models.DateTimeField(null=True, blank=True)
    last_inbound_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["integration", "chat_id"], name="conversation_once_per_chat")]
        indexes = [
            models.Index(fields=["agent", "-updated_at"], name="conversation_agent_recent"),
            models.Index(fields=["crm_lead_id"], name="conversation_lead"),
        ]

    def __str__(self) -> str:
        return f"{self.sender_name or self.chat_id} with {self.agent_id}"

    @property
    def is_test(self) -> bool:
        return self.integration_id is None


class ConversationMessage(models.Model):
    """One message of a conversation, either way. Inbound ones are stored before they
    are acknowledged to the channel, once (the channel's message id), and are the unit
    the reply pipeline works on; outbound ones record how the reply was made."""

    class Direction(models.TextChoices):
        INBOUND = "in", "from the person"
        OUTBOUND = "out", "to the person"

    class Author(models.TextChoices):
        LEAD = "lead"
        AGENT = "agent"
        TEAM = "team", "a person from the team"

    class Status(models.TextChoices):
        RECEIVED = "received"  # inbound, waiting for the pipeline
        PROCESSING = "processing"
        ANSWERED = "answered"  # inbound, a reply was sent
        SKIPPED = "skipped"  # inbound, deliberately not answered (handoff, outside hours…): see error
        FAILED = "failed"  # after the last attempt: see error; can be retried from the admin
        SENDING = "sending"  # outbound, handed to the channel, its answer not recorded yet
        SENT = "sent"  # outbound
        NOT_SENT = "not_sent"  # outbound that the channel refused: see error

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    direction = models.CharField(max_length=3, choices=Direction.choices)
    author = models.CharField(max_length=10, choices=Author.choices)
    external_id = models.CharField(max_length=120, blank=True, help_text="The channel's id of the message.")
    key = models.CharField(
        max_length=80,
        blank=True,
        help_text="Outbound messages of triggers and sequences: the action or step that sent it (one message each).",
    )
    text = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies")
    ai_provider = models.CharField(max_length=20, blank=True)
    ai_model = models.CharField(max_length=120, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When the channel says it was written.")
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the last attempt started.")
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # a redelivered inbound message is recognised by its channel id
            models.UniqueConstraint(
                fields=["conversation", "external_id"],
                condition=models.Q(direction="in") & ~models.Q(external_id=""),
                name="inbound_message_once",
            ),
            # a trigger action or sequence step writes at most one message
            models.UniqueConstraint(fields=["key"], condition=~models.Q(key=""), name="outbound_message_once_per_key"),
        ]
        indexes = [
            models.Index(fields=["conversation", "-id"], name="message_conversation_recent"),
            models.Index(fields=["status", "id"], name="message_waiting", condition=models.Q(status="received")),
        ]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} #{self.pk}"


class Meeting(models.Model):
    """A meeting booked with a lead in the agent's Google Calendar (by the agent in a
    conversation, a trigger action or a sequence step). ``key`` names what booked it,
    so that a retry finds the meeting instead of booking a second one."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="meetings")
    calendar = models.ForeignKey(
        "integrations.Integration", null=True, on_delete=models.SET_NULL, related_name="meetings"
    )
    crm_lead_id = models.BigIntegerField(null=True, blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField()
    summary = models.CharField(max_length=300)
    event_id = models.CharField(max_length=1024)
    html_link = models.URLField(max_length=2000, blank=True)
    booked_by = models.CharField(max_length=40, help_text="conversation, trigger or sequence")
    key = models.CharField(max_length=120, unique=True)
    crm_error = models.TextField(blank=True, help_text="Why the note or task could not be written to the CRM.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-start"]
        indexes = [models.Index(fields=["agent", "-start"], name="meeting_agent_recent")]

    def __str__(self) -> str:
        return f"{self.summary} at {self.start:%Y-%m-%d %H:%M}"
