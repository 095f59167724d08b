from __future__ import annotations

from rest_framework import viewsets

from agents.api.filters import agent_filterset
from agents.selectors import owned

from ..models import Trigger
from ..services import trigger_create, trigger_update
from .serializers import TriggerSerializer


class TriggerViewSet(viewsets.ModelViewSet):
    """Trigger rules of the user's agents."""

    serializer_class = TriggerSerializer
    filterset_class = agent_filterset(Trigger, ["active"])

    def get_queryset(self):
        return owned(Trigger.objects.all(), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = trigger_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = trigger_update(trigger=serializer.instance, data=serializer.validated_data)
