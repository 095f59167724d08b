from __future__ import annotations

from rest_framework import serializers

from config.api import StrictSerializer, inline_refs, model_json_field

from ..models import HANDOFF_MINUTES_MAX, Agent, AgentCrmAccess, Conversation, ConversationMessage, ExecutionLog
from ..schemas import Schedule

FIELD_IDS = {"type": "array", "items": {"type": "integer", "minimum": 1}, "uniqueItems": True}


class CrmAccessSerializer(StrictSerializer):
    lead_fields = model_json_field(AgentCrmAccess, "lead_fields", FIELD_IDS)
    contact_fields = model_json_field(AgentCrmAccess, "contact_fields", FIELD_IDS)

    class Meta:
        model = AgentCrmAccess
        fields = ["lead_fields", "contact_fields"]


class AgentSerializer(StrictSerializer):
    schedule = model_json_field(
        Agent,
        "schedule",
        {"oneOf": [inline_refs(Schedule.model_json_schema()), {"type": "object", "maxProperties": 0}]},
    )
    crm_access = CrmAccessSerializer(required=False)
    # a handoff ends at now + handoff_minutes, which must stay a date (SQLite would store
    # up to 2**63 minutes); a year is longer than any handoff needs
    handoff_minutes = serializers.IntegerField(
        min_value=0,
        max_value=HANDOFF_MINUTES_MAX,
        required=False,
        help_text=Agent._meta.get_field("handoff_minutes").help_text,
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "active",
            "instructions",
            "ai_model",
            "language_detection",
            "default_language",
            "schedule",
            "outside_hours",
            "away_message",
            "handoff_minutes",
            "crm_access",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def to_representation(self, instance: Agent) -> dict:
        data = super().to_representation(instance)
        if data.get("crm_access") is None:
            data["crm_access"] = {"lead_fields": [], "contact_fields": []}
        return data


class ExecutionLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = ExecutionLog
        fields = [
            "id",
            "agent",
            "kind",
            "status",
            "ref_type",
            "ref_id",
            "crm_lead_id",
            "detail",
            "error",
            "duration_ms",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class OwnAgentField(serializers.PrimaryKeyRelatedField):
    """An agent id the requesting user owns; any other id reads as "does not exist"."""

    def get_queryset(self):
        from ..selectors import agent_list

        return agent_list(user=self.context["request"].user)


class ConversationMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConversationMessage
        fields = [
            "id",
            "direction",
            "author",
            "text",
            "status",
            "error",
            "attempts",
            "ai_provider",
            "ai_model",
            "input_tokens",
            "output_tokens",
            "latency_ms",
            "sent_at",
            "created_at",
            "processed_at",
        ]
        read_only_fields = fields


class ConversationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Conversation
        fields = [
            "id",
            "agent",
            "integration",
            "chat_id",
            "sender_name",
            "phone",
            "language",
            "crm_contact_id",
            "crm_lead_id",
            "handoff_until",
            "handoff_reason",
            "last_inbound_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TeamMessageSerializer(StrictSerializer):
    text = serializers.CharField(max_length=4096, allow_blank=False, trim_whitespace=True)

    class Meta:
        model = ConversationMessage
        fields = ["text"]
