"""CRM metadata for editors, and the OAuth connection flow."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import owned
from config.api import JSON_ONLY, StrictPlainSerializer
from integrations.errors import AuthError, IntegrationError, RateLimited, TransientError
from integrations.models import Integration

from .. import oauth
from ..services import metadata, snapshot_metadata

logger = logging.getLogger(__name__)


class CrmUnavailable(APIException):
    status_code = 503
    default_detail = "The CRM cannot be reached right now; try again shortly."
    default_code = "crm_unavailable"


class CrmNotConnected(APIException):
    status_code = 409
    default_detail = "The Kommo integration needs to be connected again."
    default_code = "crm_not_connected"


def kommo_integrations(user):
    return owned(Integration.objects.filter(integration_type=Integration.Type.KOMMO), user).select_related("agent")


def choose_integration(request, raw: str | int | None) -> Integration:
    """``?integration=<id>`` or, without it, the user's only active Kommo integration."""
    integrations = kommo_integrations(request.user)
    if raw not in (None, ""):
        try:
            integration_id = int(raw)
        except (TypeError, ValueError):
            raise ValidationError({"integration": ["expected an integration id (a whole number)"]}) from None
        integration = integrations.filter(pk=integration_id).first()
        if integration is None:
            raise NotFound("No such Kommo integration.")
        return integration
    active = list(integrations.filter(active=True)[:2])
    if not active:
        raise NotFound("You have no active Kommo integration.")
    if len(active) > 1:
        raise ValidationError(
            {"integration": ["You have several Kommo integrations: choose one with ?integration=<id>."]}
        )
    return active[0]


INTEGRATION_PARAM = OpenApiParameter(
    "integration",
    OpenApiTypes.INT,
    description="A Kommo integration id; without it, the user's only active Kommo integration.",
)


class FieldEnumSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    value = serializers.CharField()


class CustomFieldSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    type = serializers.CharField(help_text='The CRM\'s field type: "text", "numeric", "select"…')
    code = serializers.CharField(allow_null=True, required=False)
    is_predefined = serializers.BooleanField(required=False)
    enums = FieldEnumSerializer(many=True, required=False)


class StatusSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    sort = serializers.IntegerField(required=False)
    type = serializers.IntegerField(required=False)


class PipelineSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    is_main = serializers.BooleanField(required=False)
    statuses = StatusSerializer(many=True, required=False)


class CrmUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    email = serializers.CharField(required=False, allow_blank=True)


class TagSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    color = serializers.CharField(allow_null=True, required=False)


STALE_HEADER = OpenApiParameter(
    "X-CRM-Stale",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    enum=["1"],
    response=[200],
    description="1 when the CRM could not be reached and this is the last snapshot.",
)


def metadata_schema(item: serializers.Serializer, *parameters: OpenApiParameter):
    """What a metadata view answers; the CRM's own errors become 409 and 503."""
    return extend_schema(
        parameters=[INTEGRATION_PARAM, *parameters, STALE_HEADER],
        responses={
            200: item,
            404: OpenApiResponse(description="No such Kommo integration of the user, or none active."),
            409: OpenApiResponse(description="The Kommo integration needs to be connected again."),
            503: OpenApiResponse(description="The CRM cannot be reached and there is no snapshot yet."),
        },
    )


class MetadataView(APIView):
    """CRM metadata of one of the user's Kommo integrations, cached for an hour; when the
    CRM cannot be reached, the last snapshot with the header ``X-CRM-Stale: 1``."""

    kind = ""

    def get(self, request):
        integration = choose_integration(request, request.query_params.get("integration"))
        kind = self.kind_for(request)
        try:
            return Response(metadata(integration, kind))
        except (TransientError, RateLimited) as exc:
            stale = snapshot_metadata(integration, kind)
            if stale is not None:
                return Response(stale, headers={"X-CRM-Stale": "1"})
            raise CrmUnavailable(str(exc)) from None
        except AuthError as exc:
            raise CrmNotConnected(str(exc)) from None
        except IntegrationError as exc:
            raise ValidationError({"integration": [str(exc)]}) from None

    def kind_for(self, request) -> str:
        return self.kind


class LeadFieldsView(MetadataView):
    kind = "lead_fields"

    @metadata_schema(CustomFieldSerializer(many=True))
    def get(self, request):
        return super().get(request)


class ContactFieldsView(MetadataView):
    kind = "contact_fields"

    @metadata_schema(CustomFieldSerializer(many=True))
    def get(self, request):
        return super().get(request)


class PipelinesView(MetadataView):
    kind = "pipelines"

    @metadata_schema(PipelineSerializer(many=True))
    def get(self, request):
        return super().get(request)


class UsersView(MetadataView):
    kind = "users"

    @metadata_schema(CrmUserSerializer(many=True))
    def get(self, request):
        return super().get(request)


class TagsView(MetadataView):
    """Lead tags, or contact tags with ``?entity=contacts``."""

    @metadata_schema(
        TagSerializer(many=True),
        OpenApiParameter("entity", OpenApiTypes.STR, enum=["leads", "contacts"], description="Default: leads."),
    )
    def get(self, request):
        return super().get(request)

    def kind_for(self, request) -> str:
        entity = request.query_params.get("entity") or "leads"
        if entity not in ("leads", "contacts"):
            raise ValidationError({"entity": ['expected "leads" or "contacts"']})
        return "lead_tags" if entity == "leads" else "contact_tags"


class OAuthStartSerializer(StrictPlainSerializer):
    integration = serializers.IntegerField(
        required=False, help_text="A Kommo integration id; without it, the user's only active Kommo integration."
    )


class OAuthStartView(APIView):
    """The CRM consent page to send the user to, for connecting an integration with OAuth."""

    parser_classes = JSON_ONLY

    @extend_schema(
        request=OAuthStartSerializer,
        responses={
            200: inline_serializer("OAuthStartResponse", {"authorize_url": serializers.URLField()}),
            404: OpenApiResponse(description="No such Kommo integration of the user, or none active."),
        },
    )
    def post(self, request):
        serializer = OAuthStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        integration = choose_integration(request, serializer.validated_data.get("integration"))
        try:
            url = oauth.authorize_url(integration=integration, user=request.user, session=request.session)
        except oauth.OAuthError as exc:
            raise ValidationError({"integration": [str(exc)]}) from None
        return Response({"authorize_url": url})


@login_required
@require_GET
def oauth_start(request, integration_id: int):
    """The admin's "Connect Kommo" button: straight to the consent page."""
    integration = get_object_or_404(kommo_integrations(request.user), pk=integration_id)
    try:
        return HttpResponseRedirect(
            oauth.authorize_url(integration=integration, user=request.user, session=request.session)
        )
    except oauth.OAuthError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(reverse("admin:integrations_integration_change", args=[integration.pk]))


@login_required
@require_GET
def oauth_callback(request):
    if request.GET.get("error"):
        return HttpResponse("Kommo did not grant access; nothing was changed.", status=400, content_type="text/plain")
    code, state = request.GET.get("code"), request.GET.get("state")
    if not code or not state:
        return HttpResponse("The CRM's answer has no code or state.", status=400, content_type="text/plain")
    try:
        integration = oauth.integration_from_state(state=state, user=request.user, session=request.session)
        oauth.complete(integration=integration, code=code, referer=request.GET.get("referer", ""))
    except oauth.OAuthError as exc:
        logger.warning("crm.oauth.failed", extra={"reason": str(exc)})
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    if request.user.is_staff:
        messages.success(request, "Kommo is connected.")
        return HttpResponseRedirect(reverse("admin:integrations_integration_change", args=[integration.pk]))
    return HttpResponse("Kommo is connected. You can close this page.", content_type="text/plain")
