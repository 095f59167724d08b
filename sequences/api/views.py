from __future__ import annotations

from rest_framework import viewsets

from agents.api.filters import agent_filterset
from agents.selectors import owned

from ..models import Sequence
from ..services import sequence_create, sequence_update
from .serializers import SequenceSerializer


class SequenceViewSet(viewsets.ModelViewSet):
    """Follow-up sequences of the user's agents."""

    serializer_class = SequenceSerializer
    filterset_class = agent_filterset(Sequence, ["active"])

    def get_queryset(self):
        return owned(Sequence.objects.all(), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = sequence_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = sequence_update(sequence=serializer.instance, data=serializer.validated_data)
