from __future__ import annotations

from rest_framework import serializers

from agents.api.serializers import OwnAgentField
from config.api import BIGINT_MAX, StrictPlainSerializer, StrictSerializer, inline_refs, model_json_field
from config.validation import registry_json_schema

from ..models import Sequence, SequenceRun, SequenceStep
from ..schemas import STEPS, ExitRules, TriggerConfig


class SequenceSerializer(StrictSerializer):
    agent = OwnAgentField()
    trigger_config = model_json_field(
        Sequence,
        "trigger_config",
        {"oneOf": [inline_refs(TriggerConfig.model_json_schema()), {"type": "object", "maxProperties": 0}]},
    )
    steps = model_json_field(Sequence, "steps", inline_refs(registry_json_schema(STEPS)))
    exit_rules = model_json_field(Sequence, "exit_rules", inline_refs(ExitRules.model_json_schema()))

    class Meta:
        model = Sequence
        fields = [
            "id",
            "agent",
            "name",
            "description",
            "active",
            "trigger_config",
            "steps",
            "exit_rules",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]


class SequenceStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = SequenceStep
        fields = ["index", "type", "status", "attempts", "due_at", "claimed_at", "finished_at", "output", "error"]
        read_only_fields = fields


class SequenceRunSerializer(serializers.ModelSerializer):
    sequence_name = serializers.CharField(source="sequence.name", read_only=True)

    class Meta:
        model = SequenceRun
        fields = [
            "id",
            "sequence",
            "sequence_name",
            "agent",
            "crm_lead_id",
            "status",
            "current_step",
            "next_due_at",
            "started_by",
            "started_ref",
            "exit_reason",
            "error",
            "created_at",
            "updated_at",
            "finished_at",
        ]
        read_only_fields = fields


class SequenceRunDetailSerializer(SequenceRunSerializer):
    steps = SequenceStepSerializer(source="step_rows", many=True, read_only=True)

    class Meta(SequenceRunSerializer.Meta):
        fields = [*SequenceRunSerializer.Meta.fields, "steps"]
        read_only_fields = fields


class StartSerializer(StrictPlainSerializer):
    lead_id = serializers.IntegerField(
        min_value=1, max_value=BIGINT_MAX, help_text="The CRM lead to start the sequence for."
    )
