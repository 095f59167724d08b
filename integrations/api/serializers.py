from __future__ import annotations

from rest_framework import serializers

from agents.api.serializers import OwnAgentField
from config.api import StrictSerializer, model_json_field

from ..models import Integration


class IntegrationSerializer(StrictSerializer):
    """``credentials`` is write-only: send it to set or replace the secrets; responses
    only say which keys are stored (``credentials_set``). The config's shape per type is
    checked by the model (Integration.clean), through the service."""

    agent = OwnAgentField()
    config = model_json_field(Integration, "config", {"type": "object"})
    credentials = model_json_field(
        Integration,
        "credentials",
        {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}, "writeOnly": True},
        write_only=True,
        help_text="Secrets (tokens, keys). Write-only; omit to keep the stored ones.",
    )
    credentials_set = serializers.SerializerMethodField(help_text="Names of the stored secrets (values never shown).")
    webhook_url = serializers.CharField(
        read_only=True, allow_null=True, help_text="Where the CRM posts its events (Kommo integrations)."
    )

    class Meta:
        model = Integration
        fields = [
            "id",
            "agent",
            "integration_type",
            "config",
            "credentials",
            "credentials_set",
            "active",
            "webhook_url",
            "status",
            "status_detail",
            "status_changed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "status", "status_detail", "status_changed_at", "created_at", "updated_at"]

    def get_credentials_set(self, obj: Integration) -> list[str]:
        return obj.credential_keys
