from __future__ import annotations

from agents.api.serializers import OwnAgentField
from config.api import StrictSerializer, inline_refs, model_json_field
from config.validation import registry_json_schema

from ..models import Trigger
from ..schemas import ACTIONS, Condition


class TriggerSerializer(StrictSerializer):
    agent = OwnAgentField()
    conditions = model_json_field(
        Trigger, "conditions", {"type": "array", "items": inline_refs(Condition.model_json_schema())}
    )
    actions = model_json_field(Trigger, "actions", inline_refs(registry_json_schema(ACTIONS)))

    class Meta:
        model = Trigger
        fields = ["id", "agent", "name", "active", "conditions", "actions", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]
