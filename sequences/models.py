from __future__ import annotations

from django.db import models

from config.validation import JSONValidator


def default_exit_rules() -> dict:
    from .schemas import DEFAULT_EXIT_RULES

    return dict(DEFAULT_EXIT_RULES)


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
    exit_rules = models.JSONField(
        default=default_exit_rules,
        blank=True,
        validators=[JSONValidator("sequences.schemas.check_exit_rules", field="exit_rules")],
        help_text='When a run stops early: {"on_reply": true, "on_stages": [{"status_id": 142}, '
        '{"status_id": 143}], "on_meeting_booked": true}.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "name", "id"]
        indexes = [models.Index(fields=["agent", "active"], name="sequence_agent_active")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Ids the agent's CRM or integrations do not have (triggers/validation.py); a
        column whose own shape is wrong is left to its field validator."""
        from django.core.exceptions import ValidationError

        from triggers.validation import sequence_problems

        from .schemas import check_steps, check_trigger_config

        if not self.agent_id or check_steps(self.steps) or check_trigger_config(self.trigger_config):
            return
        errors = sequence_problems(agent_id=self.agent_id, trigger_config=self.trigger_config, steps=self.steps)
        if errors:
            raise ValidationError(errors)


ACTIVE_RUN_STATUSES = ("scheduled", "running", "waiting", "paused")


class SequenceRun(models.Model):
    """One lead going through a sequence. Its steps are rows (``SequenceStep``) with a
    status and a due time: waits live in the database, not in a sleeping process."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"  # the current step is due at next_due_at
        RUNNING = "running"
        WAITING = "waiting"  # in a delay until next_due_at
        PAUSED = "paused"
        DONE = "done"
        FAILED = "failed"
        EXITED = "exited"  # an exit rule ended it
        CANCELLED = "cancelled"

    sequence = models.ForeignKey(Sequence, on_delete=models.CASCADE, related_name="runs")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="sequence_runs")
    integration = models.ForeignKey(
        "integrations.Integration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The Kommo account of the lead.",
    )
    crm_lead_id = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SCHEDULED)
    current_step = models.PositiveSmallIntegerField(default=0)
    next_due_at = models.DateTimeField(null=True, blank=True)
    steps = models.JSONField(default=list, help_text="The sequence's steps when the run started.")
    context = models.JSONField(default=dict, blank=True, help_text="What steps hand on: the generated text.")
    started_by = models.CharField(max_length=20, help_text="trigger, event, api, admin")
    started_ref = models.CharField(max_length=60, blank=True, help_text="Which trigger, event or user.")
    exit_reason = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["sequence", "crm_lead_id"],
                condition=models.Q(status__in=ACTIVE_RUN_STATUSES),
                name="one_active_run_per_lead",
            )
        ]
        indexes = [
            models.Index(fields=["sequence", "-id"], name="run_sequence_recent"),
            models.Index(fields=["agent", "crm_lead_id"], name="run_agent_lead"),
        ]

    def __str__(self) -> str:
        return f"{self.sequence_id} for lead {self.crm_lead_id}: {self.status}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES


class SequenceStep(models.Model):
    """One step of a run. ``idempotency_key`` names it to the outside world; ``attempts``
    counts claims; a step "running" past its timeout is noticed by the dispatcher."""

    class Status(models.TextChoices):
        PENDING = "pending"  # not reached yet
        SCHEDULED = "scheduled"
        RUNNING = "running"
        WAITING = "waiting"
        DONE = "done"
        FAILED = "failed"
        EXITED = "exited"
        CANCELLED = "cancelled"

    run = models.ForeignKey(SequenceRun, on_delete=models.CASCADE, related_name="step_rows")
    index = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=40)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="Handed to the task queue.")
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the last attempt started.")
    finished_at = models.DateTimeField(null=True, blank=True)
    output = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run_id", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="sequence_step_once")]
        indexes = [
            # the dispatcher: steps due now
            models.Index(
                fields=["due_at"],
                name="step_due",
                condition=models.Q(status__in=("scheduled", "waiting")),
            ),
            models.Index(fields=["claimed_at"], name="step_running", condition=models.Q(status="running")),
            # the dispatcher: steps in the queue, not started yet
            models.Index(
                fields=["queued_at"],
                name="step_queued",
                condition=models.Q(status__in=("scheduled", "waiting"), queued_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.index}: {self.status}"

    @property
    def idempotency_key(self) -> str:
        return f"seq-run-{self.run_id}-step-{self.index}"
