from __future__ import annotations

from django.db import models


class CrmEvent(models.Model):
    """One change in the CRM (a lead moved, a note was added, a message came in),
    normalized from a webhook delivery and stored before it is acknowledged.

    ``dedupe_key`` is a hash of the integration, the kind and the entity's data as the
    CRM sent it, so a repeated delivery of the same change is stored once.
    """

    class Kind(models.TextChoices):
        LEAD_ADDED = "lead_added"
        LEAD_UPDATED = "lead_updated"
        LEAD_STATUS_CHANGED = "lead_status_changed"
        LEAD_RESPONSIBLE_CHANGED = "lead_responsible_changed"
        LEAD_DELETED = "lead_deleted"
        LEAD_RESTORED = "lead_restored"
        NOTE_ADDED = "note_added"
        CONTACT_ADDED = "contact_added"
        CONTACT_UPDATED = "contact_updated"
        CONTACT_DELETED = "contact_deleted"
        INCOMING_MESSAGE = "incoming_message"
        OUTGOING_MESSAGE = "outgoing_message"  # someone on the account's side wrote in a Kommo chat

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    # no index of its own: the unique constraint and crm_event_lead both start with it,
    # and every index is one more write on the webhook's hot path
    integration = models.ForeignKey(
        "integrations.Integration", on_delete=models.CASCADE, related_name="crm_events", db_index=False
    )
    kind = models.CharField(max_length=40, choices=Kind.choices)
    entity_type = models.CharField(max_length=20)  # lead, contact, note, message
    entity_id = models.BigIntegerField(null=True, blank=True)
    lead_id = models.BigIntegerField(null=True, blank=True)
    data = models.JSONField(default=dict, help_text="The entity as the CRM sent it, nested.")
    dedupe_key = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # when the next try of a retrying event is due: written with its attempt count, so the
    # sweeper finds a retry whose schedule was lost (a worker or the database went down)
    retry_at = models.DateTimeField(null=True, blank=True)
    # when a drain (crm/drain.py) took the event to process it; a claim older than
    # DRAIN_CLAIM_TIMEOUT is another drain's to take (the one that took it died)
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["integration", "dedupe_key"], name="crm_event_once_per_change")]
        indexes = [
            models.Index(fields=["integration", "lead_id", "-id"], name="crm_event_lead"),
            models.Index(fields=["status", "id"], name="crm_event_pending", condition=models.Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.entity_type} {self.entity_id}"


class EventDrain(models.Model):
    """One row (id 1): whether a drain of the pending CRM events is queued and has not
    started yet (crm/drain.py). Webhook intake queues a drain only when none is waiting,
    so a burst of deliveries costs one task, not one each."""

    queued_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"drain queued at {self.queued_at}" if self.queued_at else "no drain waiting"


class CrmSnapshot(models.Model):
    """The CRM account's fields, pipelines, users and tags as last synced, kept in the
    database so that editors can show names even when the CRM is unreachable."""

    integration = models.OneToOneField(
        "integrations.Integration", on_delete=models.CASCADE, related_name="crm_snapshot"
    )
    lead_fields = models.JSONField(default=list)
    contact_fields = models.JSONField(default=list)
    pipelines = models.JSONField(default=list)
    users = models.JSONField(default=list)
    lead_tags = models.JSONField(default=list)
    contact_tags = models.JSONField(default=list)
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "CRM snapshot"

    def __str__(self) -> str:
        return f"CRM snapshot of integration {self.integration_id}"
