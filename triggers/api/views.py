from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.api.filters import agent_filterset
from agents.selectors import owned
from config.api import JSON_ONLY

from ..dryrun import CrmUnavailable, trigger_dry_run
from ..models import Trigger
from ..services import trigger_create, trigger_update
from .serializers import DryRunReportSerializer, DryRunSerializer, TriggerSerializer


class TriggerViewSet(viewsets.ModelViewSet):
    """Trigger rules of the user's agents. Why a trigger did or did not fire for a lead:
    ``GET /api/execution-logs/?ref_type=trigger&ref_id=<id>&crm_lead_id=<lead>``."""

    parser_classes = JSON_ONLY
    serializer_class = TriggerSerializer
    filterset_class = agent_filterset(Trigger, ["active", "event"])

    def get_queryset(self):
        return owned(Trigger.objects.all(), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = trigger_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = trigger_update(trigger=serializer.instance, data=serializer.validated_data)

    @extend_schema(
        request=DryRunSerializer,
        responses={
            200: OpenApiResponse(
                DryRunReportSerializer, description="Conditions passed and failed, actions with rendered texts."
            ),
            503: OpenApiResponse(description="The CRM could not be read just now."),
        },
        description="Dry run: evaluate the trigger for a lead read from the CRM (lead_id) or a sample event, "
        "and show what its actions would do. Nothing is done, sent or logged.",
    )
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        trigger = self.get_object()
        serializer = DryRunSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            report = trigger_dry_run(
                trigger=trigger, lead_id=data.get("lead_id"), sample=data.get("event"), at=data.get("at")
            )
        except CrmUnavailable as exc:
            return Response({"detail": str(exc)}, status=503)
        return Response(report)
