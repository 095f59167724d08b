"""HTTP entry points of the CRM adapter."""
from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import intake
from .webhooks import WebhookParseError, parse_delivery

logger = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"


def _reject(status: int, reason: str, integration_id: int | None = None, message: str = "") -> HttpResponse:
    logger.warning(
        "crm.webhook.rejected", extra={"reason": reason, "integration_id": integration_id, "detail": message}
    )
    return HttpResponse(message or reason, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, key: str) -> HttpResponse:
    """A Kommo webhook delivery: stored as CRM events and acknowledged; processed later
    by the worker (crm/dispatch.py). The body is never logged: it holds personal data.

    Synchronous on purpose. Under ASGI, Django runs a sync view in a thread of the
    request's own (asgiref's ThreadSensitiveContext), so deliveries already run in
    parallel. An ``async def`` version with the database work in ``sync_to_async``
    measured no faster under uvicorn (329 vs 323 deliveries/s; 264/s with
    ``thread_sensitive=False``) and 26% slower under gunicorn, which runs it through
    ``async_to_sync`` (580 vs 786/s; tests/benchmarks/bench_webhook_intake.py, 2 cores)."""
    limit = settings.CRM_WEBHOOK_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _reject(413, "too_large", message="the body is too large")
    if request.content_type != FORM:
        return _reject(415, "content_type", message=f"expected {FORM}")
    target = intake.webhook_target_get(key=key)
    if target is None:
        # nothing that tells a scanner whether the key, the type or the state was wrong
        logger.warning("crm.webhook.rejected", extra={"reason": "unknown_key"})
        return HttpResponse(status=404)
    body = request.read(limit + 1)  # never more, whatever the headers said
    if len(body) > limit:
        return _reject(413, "too_large", target.integration_id, "the body is too large")
    try:
        delivery = parse_delivery(body)
    except WebhookParseError as exc:
        return _reject(400, "bad_body", target.integration_id, str(exc))
    if not target.accepts_account(delivery.account_id):
        return _reject(403, "wrong_account", target.integration_id, "the account does not match this integration")
    stored = intake.delivery_store(integration_id=target.integration_id, changes=delivery.changes)
    logger.info(
        "crm.webhook.accepted",
        extra={
            "integration_id": target.integration_id,
            "changes": len(delivery.changes),
            "stored": len(stored.event_ids),
            "duplicates": stored.duplicates,
            "skipped": delivery.skipped,
        },
    )
    return HttpResponse(status=200)
