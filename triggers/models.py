from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from config.validation import JSONValidator, format_loc

from .schemas import EVENTS, check_conditions, event_problems, subject_of, walk_conditions


class Trigger(models.Model):
    """A rule: when a CRM event of its kind matches the conditions, do the actions."""

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="triggers")
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True)
    event = models.CharField(
        max_length=40,
        choices=list(EVENTS.items()),
        help_text="The CRM event the trigger listens to.",
    )
    conditions = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("triggers.schemas.check_conditions", field="conditions")],
        help_text='All must hold, e.g. [{"field": "status", "operator": "changed_to", '
        '"value": {"pipeline_id": 6213074, "status_id": 142}}, {"any": [...]}]',
    )
    actions = models.JSONField(
        default=list,
        blank=True,
        validators=[JSONValidator("triggers.schemas.check_actions", field="actions")],
        help_text='Done in order, e.g. [{"type": "create_task", "text": "Call {{contact.name}}", '
        '"due_in_minutes": 30}]',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent_id", "name", "id"]
        indexes = [
            # the engine reads only the active triggers of one agent for one event kind
            models.Index(fields=["agent", "event"], name="trigger_agent_event", condition=models.Q(active=True)),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Checks that need more than one column: subjects and change operators the
        chosen event cannot give, and ids the agent's CRM or integrations do not have
        (triggers/validation.py). A column whose own shape is wrong is left to its
        field validator."""
        from .schemas import check_actions
        from .validation import trigger_problems

        errors: dict[str, list[str]] = {}
        conditions_ok = not check_conditions(self.conditions)
        actions_ok = not check_actions(self.actions)
        if self.event in EVENTS and conditions_ok:
            for loc, item in walk_conditions(self.conditions):
                condition = _as_condition(item)
                if condition is None:
                    continue
                for sub, msg in event_problems(condition, self.event):
                    errors.setdefault("conditions", []).append(f"{format_loc('conditions', loc + sub)}: {msg}")
        if self.agent_id and (conditions_ok or actions_ok):
            for column, messages in trigger_problems(
                agent_id=self.agent_id,
                conditions=self.conditions if conditions_ok else None,
                actions=self.actions if actions_ok else None,
            ).items():
                errors.setdefault(column, []).extend(messages)
        if errors:
            raise ValidationError(errors)


def _as_condition(item):
    from .schemas import Condition

    if subject_of(str(item.get("field"))) is None:
        return None
    return Condition.model_validate(item)


class TriggerFiring(models.Model):
    """A trigger that matched one CRM event, and how far its actions got. There is at most
    one per (event, trigger): a repeated or retried event resumes it, never starts a
    second one."""

    class Status(models.TextChoices):
        RUNNING = "running"
        RETRYING = "retrying", "Failed, will retry"
        DONE = "done"
        FAILED = "failed"

    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="firings")
    event = models.ForeignKey("crm.CrmEvent", on_delete=models.CASCADE, related_name="trigger_firings")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="trigger_firings")
    crm_lead_id = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    actions = models.JSONField(
        default=list, help_text="The trigger's actions when it matched: an edit later does not change this firing."
    )
    explanation = models.JSONField(default=dict, blank=True, help_text="Why it matched, test by test.")
    depth = models.PositiveSmallIntegerField(
        default=0, help_text="0 for a change made by people; n for one made by a chain of n trigger firings."
    )
    log = models.ForeignKey(
        "agents.ExecutionLog", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["event", "trigger"], name="trigger_fires_once_per_event")]
        indexes = [models.Index(fields=["trigger", "-id"], name="firing_trigger_recent")]

    def __str__(self) -> str:
        return f"{self.trigger_id} on event {self.event_id}: {self.status}"


class ActionRun(models.Model):
    """One action of a firing. The row is claimed (pending → running) before the action
    is done and marked done after, so each action is done at most once per (event,
    trigger, action): see triggers/execution.py."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        NOT_RUN = "not_run", "Not run (an earlier action failed)"

    firing = models.ForeignKey(TriggerFiring, on_delete=models.CASCADE, related_name="action_runs")
    index = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=40)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["firing_id", "index"]
        constraints = [models.UniqueConstraint(fields=["firing", "index"], name="action_once_per_firing")]

    def __str__(self) -> str:
        return f"{self.type} #{self.index}: {self.status}"


class EntityState(models.Model):
    """A lead's or contact's values as the last event about it showed them, so that
    "changed", "changed to" and "changed from" can be told for fields Kommo sends
    without their old value. ``previous`` is what ``values`` replaced, and ``event_id``
    the event that replaced it: evaluating that event again (a retry) sees the same
    change, and an older event arriving late does not overwrite a newer state."""

    integration = models.ForeignKey("integrations.Integration", on_delete=models.CASCADE, related_name="+")
    entity_type = models.CharField(max_length=10)  # lead, contact
    entity_id = models.BigIntegerField()
    values = models.JSONField(default=dict)
    previous = models.JSONField(null=True, blank=True)
    event_id = models.BigIntegerField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["integration", "entity_type", "entity_id"], name="entity_state_once")
        ]

    def __str__(self) -> str:
        return f"{self.entity_type} {self.entity_id}"


class OwnChange(models.Model):
    """A change a trigger made in the CRM, kept for OWN_CHANGE_WINDOW: the webhook event
    that reports it is recognised by what it shows (the stage set, the field value, the
    tag, the note text) and carries the firing as its cause, which stops loops
    (triggers/loops.py)."""

    integration = models.ForeignKey("integrations.Integration", on_delete=models.CASCADE, related_name="+")
    crm_lead_id = models.BigIntegerField()
    trigger = models.ForeignKey(Trigger, null=True, on_delete=models.SET_NULL, related_name="+")
    depth = models.PositiveSmallIntegerField(help_text="The chain depth of the event this change will cause.")
    kinds = models.JSONField(help_text="CRM event kinds that report this change.")
    expect = models.JSONField(help_text="What such an event shows when it reports this change.")
    matched = models.JSONField(
        default=dict, blank=True, help_text="Event kind → the event that reported the change (one per kind)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["integration", "crm_lead_id", "-created_at"], name="own_change_lead")]

    def __str__(self) -> str:
        return f"lead {self.crm_lead_id} by trigger {self.trigger_id}"
