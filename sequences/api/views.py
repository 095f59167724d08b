from __future__ import annotations

import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from agents.api.filters import AgentFilter, IntegerFilter, StrictFilterSet, agent_filterset
from agents.selectors import owned
from config.api import JSON_ONLY

from ..models import Sequence, SequenceRun
from ..runner import AlreadyRunning, CannotStart, run_cancel, run_pause, run_resume, run_retry, run_start
from ..services import sequence_create, sequence_update
from .serializers import (
    SequenceRunDetailSerializer,
    SequenceRunSerializer,
    SequenceSerializer,
    StartSerializer,
)


class SequenceRunsFilter(StrictFilterSet):
    """The runs of one sequence: by status and CRM lead."""

    status = django_filters.ChoiceFilter(choices=SequenceRun.Status.choices)
    crm_lead_id = IntegerFilter()

    class Meta:
        model = SequenceRun
        fields = ["status", "crm_lead_id"]


class RunFilter(SequenceRunsFilter, AgentFilter):
    sequence = IntegerFilter(field_name="sequence_id")

    class Meta:
        model = SequenceRun
        fields = ["agent", "sequence", "status", "crm_lead_id"]


class SequenceViewSet(viewsets.ModelViewSet):
    """Follow-up sequences of the user's agents."""

    parser_classes = JSON_ONLY
    serializer_class = SequenceSerializer
    filterset_class = agent_filterset(Sequence, ["active"])

    def get_queryset(self):
        return owned(Sequence.objects.all(), self.request.user)

    def perform_create(self, serializer):
        serializer.instance = sequence_create(data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = sequence_update(sequence=serializer.instance, data=serializer.validated_data)

    @extend_schema(
        request=StartSerializer,
        responses={
            201: SequenceRunSerializer,
            409: OpenApiResponse(
                inline_serializer(
                    "SequenceAlreadyRunning",
                    {"detail": serializers.CharField(), "run": serializers.IntegerField(help_text="The active run.")},
                ),
                description="The lead is in this sequence already; `run` is that run's id.",
            ),
        },
        description="Start the sequence for a lead. A lead has at most one active run of a sequence.",
    )
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        sequence = self.get_object()
        serializer = StartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            run = run_start(
                sequence=sequence,
                lead_id=serializer.validated_data["lead_id"],
                started_by="api",
                started_ref=f"user:{request.user.pk}",
            )
        except AlreadyRunning as exc:
            return Response({"detail": str(exc), "run": exc.run.pk}, status=status.HTTP_409_CONFLICT)
        except CannotStart as exc:
            raise ValidationError({"detail": [str(exc)]}) from None
        return Response(SequenceRunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        filters=False,  # the runs' filters below, not the sequences'
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=SequenceRun.Status.values),
            OpenApiParameter("crm_lead_id", OpenApiTypes.INT),
        ],
        responses={200: SequenceRunSerializer(many=True)},
        description="The sequence's runs, newest first.",
    )
    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        sequence = get_object_or_404(self.get_queryset(), pk=pk)
        runs = SequenceRun.objects.filter(sequence=sequence).select_related("sequence").order_by("-id")
        runs = SequenceRunsFilter(request.query_params, queryset=runs)
        if not runs.is_valid():
            raise ValidationError(runs.errors)
        page = self.paginate_queryset(runs.qs)
        return self.get_paginated_response(SequenceRunSerializer(page, many=True).data)


RUN_CHANGE_RESPONSES = {
    200: SequenceRunDetailSerializer,
    409: OpenApiResponse(description="The run's status does not allow this change (the message says why)."),
}


class SequenceRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Runs of the user's sequences; each with its steps' outcomes."""

    filterset_class = RunFilter

    def get_queryset(self):
        runs = SequenceRun.objects.select_related("sequence").order_by("-id")
        if self.action == "retrieve":
            runs = runs.prefetch_related("step_rows")
        return owned(runs, self.request.user)

    def get_serializer_class(self):
        return SequenceRunDetailSerializer if self.action != "list" else SequenceRunSerializer

    def _change(self, change, refused: str):
        run = self.get_object()
        if not change(run):
            return Response({"detail": refused.format(status=run.status)}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(SequenceRunDetailSerializer(run).data)

    @extend_schema(request=None, responses=RUN_CHANGE_RESPONSES, description="Stop the run.")
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._change(lambda run: run_cancel(run, by=f"user {request.user.pk}"), "the run is {status} already")

    @extend_schema(request=None, responses=RUN_CHANGE_RESPONSES, description="Hold the run.")
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._change(run_pause, "only a scheduled, running or waiting run can be paused (it is {status})")

    @extend_schema(request=None, responses=RUN_CHANGE_RESPONSES, description="Go on with a held run.")
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._change(run_resume, "only a paused run can be resumed (it is {status})")

    @extend_schema(
        request=None, responses=RUN_CHANGE_RESPONSES, description="Retry a failed run from its failed step."
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._change(
            run_retry, "only a failed run whose lead is in no newer run of the sequence can be retried (it is {status})"
        )
