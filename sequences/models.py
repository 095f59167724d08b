from __future__ import annotations

from django.db import models

from config.validation import JSONValidator


class Sequence(models.Model):
    """A follow-up for one lead that runs for days: wait, write, send, create a task."""

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="sequences")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    trigger_config = models.JSONField(
        default=dict,
        blank=True,
        validators=[JSONValidator("sequences.schemas.check_trigger_config", field="trigger_config")],
        help_text='Start on a CRM event, e.g. {"event": "lead_added", "conditions": []}. Empty: started by hand.',
    )
    steps = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("sequences.schemas.check_steps", field="steps")],
        help_text='e.g. [{"type": "delay", "days": 1}, {"type": "create_task", "text": "Call back"}]',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "name", "id"]
        indexes = [models.Index(fields=["agent", "active"], name="sequence_agent_active")]

    def __str__(self) -> str:
        return self.name
