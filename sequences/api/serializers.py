from __future__ import annotations

from agents.api.serializers import OwnAgentField
from config.api import StrictSerializer, inline_refs, model_json_field
from config.validation import registry_json_schema

from ..models import Sequence
from ..schemas import STEPS, TriggerConfig


class SequenceSerializer(StrictSerializer):
    agent = OwnAgentField()
    trigger_config = model_json_field(
        Sequence,
        "trigger_config",
        {"oneOf": [inline_refs(TriggerConfig.model_json_schema()), {"type": "object", "maxProperties": 0}]},
    )
    steps = model_json_field(Sequence, "steps", inline_refs(registry_json_schema(STEPS)))

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
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
