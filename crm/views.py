"""HTTP entry points of the CRM adapter."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import intake


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, key: str) -> HttpResponse:
    """A Kommo webhook delivery: stored as CRM events and acknowledged; processed later
    by the worker (crm/dispatch.py).

    Under an ASGI server, POSTs to this URL are answered by crm/asgi.py in front of
    Django's handler, with the same checks (crm/intake.py); this view serves WSGI
    servers, the test client, and whatever that front passes on."""
    answer = intake.delivery_precheck(
        content_type=request.META.get("CONTENT_TYPE", ""), content_length=request.META.get("CONTENT_LENGTH")
    )
    if answer is None:
        # never more than the limit plus one byte, whatever the headers said
        answer = intake.delivery_receive(key=key, body=request.read(settings.CRM_WEBHOOK_MAX_BYTES + 1))
    return http_response(answer)


def http_response(answer: intake.Answer) -> HttpResponse:
    if not answer.text:
        return HttpResponse(status=answer.status)
    return HttpResponse(answer.text, status=answer.status, content_type="text/plain; charset=utf-8")
