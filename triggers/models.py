from __future__ import annotations

from django.db import models

from config.validation import JSONValidator


class Trigger(models.Model):
    """A rule: when a CRM event matches the conditions, do the actions."""

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="triggers")
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True)
    conditions = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("triggers.schemas.check_conditions", field="conditions")],
        help_text='e.g. [{"field": "status_id", "operator": "equals", "value": 142}]',
    )
    actions = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("triggers.schemas.check_actions", field="actions")],
        help_text='e.g. [{"type": "create_task", "text": "Call the lead", "due_in_minutes": 30}]',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "name", "id"]
        indexes = [models.Index(fields=["agent", "active"], name="trigger_agent_active")]

    def __str__(self) -> str:
        return self.name
