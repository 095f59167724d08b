from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.api.filters import agent_filterset
from agents.selectors import owned
from config.api import JSON_ONLY

from ..models import Integration
from ..services import integration_create, integration_regenerate_webhook_key, integration_update
from .serializers import IntegrationSerializer


class IntegrationViewSet(viewsets.ModelViewSet):
    """Connections of the user's agents to the CRM, calendars and messengers."""

    parser_classes = JSON_ONLY
    serializer_class = IntegrationSerializer
    filterset_class = agent_filterset(Integration, ["integration_type", "active"])

    def get_queryset(self):
        return owned(Integration.objects.select_related("agent"), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = integration_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = integration_update(integration=serializer.instance, data=serializer.validated_data)

    @extend_schema(request=None, responses={200: IntegrationSerializer})
    @action(detail=True, methods=["post"], url_path="regenerate-webhook-key")
    def regenerate_webhook_key(self, request, pk=None):
        """Give the integration a new secret webhook URL (the old one stops working)."""
        integration = integration_regenerate_webhook_key(integration=self.get_object())
        return Response(self.get_serializer(integration).data)
