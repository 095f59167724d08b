from __future__ import annotations

from rest_framework import viewsets

from agents.api.filters import agent_filterset
from agents.selectors import owned

from ..models import Integration
from ..services import integration_create, integration_update
from .serializers import IntegrationSerializer


class IntegrationViewSet(viewsets.ModelViewSet):
    """Connections of the user's agents to the CRM, calendars and messengers."""

    serializer_class = IntegrationSerializer
    filterset_class = agent_filterset(Integration, ["integration_type", "active"])

    def get_queryset(self):
        return owned(Integration.objects.select_related("agent"), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = integration_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = integration_update(integration=serializer.instance, data=serializer.validated_data)
