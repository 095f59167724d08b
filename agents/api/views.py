from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api import JSON_ONLY
from integrations.errors import IntegrationError, PermanentError, Unconfirmed

from ..conversations import team_message_send
from ..models import Agent, Conversation, ExecutionLog
from ..selectors import agent_list, conversation_list, execution_log_list
from ..services import agent_create, agent_delete, agent_duplicate, agent_update
from .filters import agent_filterset, strict_filterset
from .serializers import (
    AgentSerializer,
    ConversationMessageSerializer,
    ConversationSerializer,
    ExecutionLogSerializer,
    TeamMessageSerializer,
)


class AgentViewSet(viewsets.ModelViewSet):
    """The user's agents, each with its CRM access embedded as ``crm_access``."""

    parser_classes = JSON_ONLY
    serializer_class = AgentSerializer
    filterset_class = strict_filterset(Agent, ["active"])

    def get_queryset(self):
        return agent_list(user=self.request.user)

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        crm_access = data.pop("crm_access", None)
        serializer.instance = agent_create(owner=self.request.user, data=data, crm_access=crm_access)

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        crm_access = data.pop("crm_access", None)
        if crm_access is not None and serializer.partial and serializer.instance:
            # PATCH {"crm_access": {"lead_fields": [...]}} keeps the other list
            crm_access = {
                "lead_fields": crm_access.get("lead_fields", _access(serializer.instance, "lead_fields")),
                "contact_fields": crm_access.get("contact_fields", _access(serializer.instance, "contact_fields")),
            }
        serializer.instance = agent_update(agent=serializer.instance, data=data, crm_access=crm_access)

    def perform_destroy(self, instance):
        agent_delete(agent=instance)

    @extend_schema(request=None, responses={201: AgentSerializer})
    @action(detail=True, methods=["post"])
    def duplicate(self, request, pk=None):
        """Copy the agent with its CRM access, triggers and sequences (inactive, no integrations)."""
        copy = agent_duplicate(agent=self.get_object())
        return Response(self.get_serializer(copy).data, status=status.HTTP_201_CREATED)


def _access(agent, field: str) -> list[int]:
    access = getattr(agent, "crm_access", None)
    return list(getattr(access, field, []) or [])


ExecutionLogFilter = agent_filterset(ExecutionLog, ["kind", "status", "crm_lead_id", "ref_type", "ref_id"])


class ExecutionLogViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """What the system did: newest first; filter by agent, kind, status, CRM lead id."""

    serializer_class = ExecutionLogSerializer
    filterset_class = ExecutionLogFilter

    def get_queryset(self):
        return execution_log_list(user=self.request.user)


ConversationFilter = agent_filterset(Conversation, ["crm_lead_id", "integration"])


class ConversationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The agents' chats with leads, newest first; filter by agent, CRM lead, integration."""

    parser_classes = JSON_ONLY
    serializer_class = ConversationSerializer
    filterset_class = ConversationFilter

    def get_queryset(self):
        return conversation_list(user=self.request.user)

    @extend_schema(
        methods=["get"], responses={200: ConversationMessageSerializer(many=True)}, description="The exchange."
    )
    @extend_schema(
        methods=["post"],
        request=TeamMessageSerializer,
        responses={
            201: ConversationMessageSerializer,
            502: OpenApiResponse(description="The channel did not confirm the message: it may have reached the lead."),
            503: OpenApiResponse(description="The channel did not take the message; try again."),
        },
        description="A person from the team writes to the lead on the conversation's channel; the agent then "
        "stays quiet in this conversation for its handoff time.",
    )
    # all of the conversation's messages: neither paginated nor filtered
    @action(detail=True, methods=["get", "post"], pagination_class=None, filter_backends=[])
    def messages(self, request, pk=None):
        conversation = self.get_object()
        if request.method == "GET":
            messages = conversation.messages.order_by("id")
            return Response(ConversationMessageSerializer(messages, many=True).data)
        serializer = TeamMessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            message = team_message_send(conversation=conversation, text=serializer.validated_data["text"])
        except PermanentError as exc:
            raise ValidationError({"text": [str(exc)]}) from None
        except Unconfirmed as exc:  # it may be out: say so, so that nobody sends it twice unawares
            detail = (
                "the channel did not confirm the message; it may have reached the lead — "
                f"check before sending it again ({exc})"
            )
            return Response({"detail": detail}, status=502)
        except IntegrationError as exc:
            return Response({"detail": f"the channel did not take the message: {exc}"}, status=503)
        return Response(ConversationMessageSerializer(message).data, status=status.HTTP_201_CREATED)
