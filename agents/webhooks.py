"""Messenger webhooks: Telegram, WhatsApp Cloud (Meta) and Twilio WhatsApp post here, at
the channel integration's ``webhook_url``. Each request is authenticated the channel's way
before its body is parsed, its text message stored once (agents/conversations.py) and
acknowledged; the reply is written by the worker. The body is never logged."""
from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from integrations.channels import telegram, twilio, whatsapp_cloud
from integrations.channels.base import InboundMessage, MalformedPayload, StatusUpdate
from integrations.models import Integration

from .conversations import inbound_store, outbound_status_apply

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a WhatsApp batch is a few kB; nothing legitimate comes near
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _integration(key: str, kind: str) -> Integration | None:
    if not key or len(key) > 64:
        return None
    return Integration.objects.filter(webhook_key=key, integration_type=kind, active=True).first()


def _refused(status: int, reason: str, integration: Integration | None = None) -> HttpResponse:
    logger.warning(
        "agents.channel_webhook.rejected",
        extra={"reason": reason, "integration_id": integration.pk if integration else None},
    )
    return HttpResponse(status=status)


def _body(request: HttpRequest) -> bytes | None:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        return None
    body = request.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


def _store(integration: Integration, items: list[InboundMessage | StatusUpdate]) -> None:
    for item in items:
        if isinstance(item, InboundMessage):
            inbound_store(integration=integration, message=item)
        else:
            outbound_status_apply(integration=integration, update=item)


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest, key: str) -> HttpResponse:
    integration = _integration(key, Integration.Type.TELEGRAM)
    if integration is None:
        return _refused(404, "unknown_key")
    header = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
    if not telegram.check_secret(header, (integration.credentials or {}).get("secret_token")):
        return _refused(403, "bad_secret" if header else "no_secret", integration)
    body = _body(request)
    if body is None:
        return _refused(413, "too_large", integration)
    try:
        message = telegram.parse_update(body)
    except MalformedPayload as exc:
        logger.warning("agents.channel_webhook.rejected", extra={"reason": "bad_body", "detail": str(exc)})
        return HttpResponse(status=400)
    if message is not None:
        _store(integration, [message])
    return HttpResponse(status=200)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def whatsapp_webhook(request: HttpRequest, key: str) -> HttpResponse:
    integration = _integration(key, Integration.Type.WHATSAPP_CLOUD)
    if integration is None:
        return _refused(404, "unknown_key")
    credentials = integration.credentials or {}
    if request.method == "GET":  # Meta's subscription handshake
        challenge = whatsapp_cloud.verify_subscription(request.GET, credentials.get("verify_token"))
        if challenge is None:
            return _refused(403, "bad_verify_token", integration)
        return HttpResponse(challenge, content_type="text/plain; charset=utf-8")
    body = _body(request)
    if body is None:
        return _refused(413, "too_large", integration)
    header = request.headers.get("X-Hub-Signature-256")
    if not whatsapp_cloud.check_signature(body, header, credentials.get("app_secret")):
        return _refused(403, "bad_signature" if header else "no_signature", integration)
    try:
        items = whatsapp_cloud.parse_webhook(body)
    except MalformedPayload as exc:
        logger.warning("agents.channel_webhook.rejected", extra={"reason": "bad_body", "detail": str(exc)})
        return HttpResponse(status=400)
    _store(integration, items)
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
def twilio_webhook(request: HttpRequest, key: str) -> HttpResponse:
    integration = _integration(key, Integration.Type.TWILIO_WHATSAPP)
    if integration is None:
        return _refused(404, "unknown_key")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:  # beyond that, DATA_UPLOAD_MAX_MEMORY_SIZE bounds the form
        return _refused(413, "too_large", integration)
    params = {name: request.POST.getlist(name) for name in request.POST}
    # Twilio signs the URL it was given: the integration's public webhook URL
    header = request.headers.get("X-Twilio-Signature")
    if not twilio.check_signature(
        integration.webhook_url, params, header, (integration.credentials or {}).get("auth_token")
    ):
        return _refused(403, "bad_signature" if header else "no_signature", integration)
    flat = {name: values[-1] for name, values in params.items()}
    try:
        item = twilio.parse_inbound(flat) or twilio.parse_status(flat)
    except MalformedPayload as exc:
        logger.warning("agents.channel_webhook.rejected", extra={"reason": "bad_body", "detail": str(exc)})
        return HttpResponse(status=400)
    if item is not None:
        _store(integration, [item])
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")
