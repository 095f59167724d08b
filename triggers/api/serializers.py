from __future__ import annotations

from datetime import UTC, datetime

from rest_framework import serializers

from agents.api.serializers import OwnAgentField
from config.api import BIGINT_MAX, StrictPlainSerializer, StrictSerializer, inline_refs, model_json_field
from config.validation import registry_json_schema

from ..models import Trigger
from ..schemas import ACTIONS, Condition, Group

CONDITIONS_SCHEMA = {
    "type": "array",
    "description": 'All must hold; an item is a test or a group {"any": [...]} / {"all": [...]}.',
    "items": {"oneOf": [inline_refs(Condition.model_json_schema()), inline_refs(Group.model_json_schema())]},
}


class TriggerSerializer(StrictSerializer):
    agent = OwnAgentField()
    conditions = model_json_field(Trigger, "conditions", CONDITIONS_SCHEMA)
    actions = model_json_field(Trigger, "actions", inline_refs(registry_json_schema(ACTIONS)))

    class Meta:
        model = Trigger
        fields = ["id", "agent", "name", "active", "event", "conditions", "actions", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class SampleLeadSerializer(StrictPlainSerializer):
    id = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    name = serializers.CharField(required=False, allow_blank=True)
    price = serializers.FloatField(required=False, allow_null=True)
    pipeline_id = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    status_id = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    responsible_user_id = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    custom_fields = serializers.DictField(
        required=False, help_text='Field id → value or list of values, e.g. {"1033471": "10k-20k"}.'
    )


class SampleContactSerializer(StrictPlainSerializer):
    id = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX, required=False)
    name = serializers.CharField(required=False, allow_blank=True)
    first_name = serializers.CharField(required=False, allow_blank=True)
    phone = serializers.CharField(required=False, allow_blank=True)
    email = serializers.CharField(required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    custom_fields = serializers.DictField(required=False)


class SampleEventSerializer(StrictPlainSerializer):
    lead = SampleLeadSerializer(required=False)
    previous = SampleLeadSerializer(required=False, help_text="The lead's values before the event (for 'changed').")
    contact = SampleContactSerializer(required=False)
    text = serializers.CharField(required=False, allow_blank=True, help_text="The message's or note's text.")


AT_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
AT_LATEST = datetime(2999, 12, 31, tzinfo=UTC)


class DryRunSerializer(StrictPlainSerializer):
    lead_id = serializers.IntegerField(
        min_value=1, max_value=BIGINT_MAX, required=False, help_text="A lead of the CRM, read now."
    )
    event = SampleEventSerializer(required=False, help_text="A sample event instead of a real lead.")
    at = serializers.DateTimeField(required=False, help_text="When the event happens (time-of-day tests); now.")

    def validate_at(self, value: datetime) -> datetime:
        # the actions' due times are computed from it, so it stays well inside datetime's range
        if not AT_EARLIEST <= value <= AT_LATEST:
            raise serializers.ValidationError(
                f"expected a moment from {AT_EARLIEST:%Y-%m-%d} to {AT_LATEST:%Y-%m-%d}"
            )
        return value

    def validate(self, attrs):
        event = attrs.get("event")
        if "lead_id" not in attrs and event is None:
            raise serializers.ValidationError({"lead_id": ["give either lead_id or event"]})
        if "lead_id" in attrs and event is not None and set(event) - {"text"}:
            raise serializers.ValidationError(
                {"event": ["with lead_id, only event.text (a message's or note's text) may be given"]}
            )
        return attrs


class ConditionOutcomeSerializer(serializers.Serializer):
    path = serializers.CharField(help_text='Where the condition is in the trigger, e.g. "conditions[0]".')
    passed = serializers.BooleanField()
    reason = serializers.CharField(help_text="Why it passed or failed, in one sentence.")
    field = serializers.CharField(required=False, help_text="A test's field (groups have children instead).")
    operator = serializers.CharField(required=False)
    value = serializers.JSONField(required=False, help_text="The value the test compares with.")
    seen = serializers.CharField(required=False, help_text="The lead's value, as shown.")
    children = serializers.ListField(
        child=serializers.DictField(), required=False, help_text="A group's conditions, each like this one."
    )


class PlannedActionSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    type = serializers.CharField()


class DryRunReportSerializer(serializers.Serializer):
    trigger_id = serializers.IntegerField()
    event = serializers.CharField()
    lead_id = serializers.IntegerField(allow_null=True)
    matched = serializers.BooleanField()
    reason = serializers.CharField()
    conditions = ConditionOutcomeSerializer(many=True)
    actions = PlannedActionSerializer(
        many=True, help_text="Each action with what it would do: rendered texts, due times, targets."
    )
    would_run = serializers.BooleanField()
