"""HTTP entry points of the Google Calendar integration: connecting (admin button, API,
Google's callback) and the calendar list for pickers."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import owned
from integrations.errors import AuthError, IntegrationError, RateLimited, TransientError
from integrations.models import Integration

from . import calendar, oauth

logger = logging.getLogger(__name__)


class GoogleUnavailable(APIException):
    status_code = 503
    default_detail = "Google Calendar cannot be reached right now; try again shortly."
    default_code = "google_unavailable"


class GoogleNotConnected(APIException):
    status_code = 409
    default_detail = "The Google Calendar integration needs to be connected again."
    default_code = "google_not_connected"


def google_integrations(user):
    integrations = Integration.objects.filter(integration_type=Integration.Type.GOOGLE_CALENDAR)
    return owned(integrations, user).select_related("agent")


def admin_page(integration: Integration) -> str:
    return reverse("admin:integrations_integration_change", args=[integration.pk])


def _text(message: str, status: int = 200) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


@login_required
@require_GET
def oauth_start(request, integration_id: int):
    """The admin's "Connect Google" button: straight to Google's consent page."""
    integration = get_object_or_404(google_integrations(request.user), pk=integration_id)
    try:
        return HttpResponseRedirect(
            oauth.authorize_url(integration=integration, user=request.user, session=request.session)
        )
    except oauth.OAuthError as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(admin_page(integration))


@login_required
@require_GET
def oauth_callback(request):
    """Where Google sends the browser back: nothing is stored unless the state is this
    user's, from this browser, unexpired and unused."""
    if request.GET.get("error"):
        return _text("Google did not grant access; nothing was changed.", status=400)
    code, state = request.GET.get("code"), request.GET.get("state")
    if not code or not state:
        return _text("Google's answer has no code or state.", status=400)
    try:
        pending = oauth.pending_from_state(state=state, user=request.user, session=request.session)
        integration = oauth.complete(pending=pending, code=code)
    except oauth.OAuthError as exc:
        logger.warning("google.oauth.failed", extra={"reason": str(exc)})
        return _text(str(exc), status=400)
    if request.user.is_staff:
        messages.success(request, "Google Calendar is connected. Choose the calendar below.")
        return HttpResponseRedirect(admin_page(integration))
    return _text("Google Calendar is connected. You can close this page.")


class OAuthStartView(APIView):
    """Google's consent page to send the user to, for connecting a Google Calendar
    integration. The callback needs the same browser session that asked for it."""

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer("GoogleOAuthStartResponse", {"authorize_url": serializers.URLField()}),
            400: OpenApiResponse(description="Google sign-in is not set up on this server."),
        },
    )
    def post(self, request, integration_id: int):
        integration = google_integrations(request.user).filter(pk=integration_id).first()
        if integration is None:
            raise NotFound("No such Google Calendar integration.")
        try:
            url = oauth.authorize_url(integration=integration, user=request.user, session=request.session)
        except oauth.OAuthError as exc:
            raise ValidationError({"integration": [str(exc)]}) from None
        return Response({"authorize_url": url})


class CalendarListView(APIView):
    """The connected account's calendars that events can be added to (for choosing
    ``config.calendar_id``)."""

    @extend_schema(
        responses={
            200: inline_serializer(
                "GoogleCalendar",
                {
                    "id": serializers.CharField(),
                    "summary": serializers.CharField(),
                    "primary": serializers.BooleanField(),
                    "time_zone": serializers.CharField(),
                },
                many=True,
            ),
            400: OpenApiResponse(description="Google refused the request (the message says why)."),
            409: OpenApiResponse(description="The integration needs to be connected to Google again."),
            503: OpenApiResponse(description="Google Calendar cannot be reached right now."),
        }
    )
    def get(self, request, integration_id: int):
        integration = google_integrations(request.user).filter(pk=integration_id).first()
        if integration is None:
            raise NotFound("No such Google Calendar integration.")
        try:
            calendars = calendar.list_calendars(integration)
        except (TransientError, RateLimited) as exc:
            raise GoogleUnavailable(str(exc)) from None
        except AuthError as exc:
            raise GoogleNotConnected(str(exc)) from None
        except IntegrationError as exc:
            raise ValidationError({"integration": [str(exc)]}) from None
        return Response(
            [{"id": c.id, "summary": c.summary, "primary": c.primary, "time_zone": c.time_zone} for c in calendars]
        )
