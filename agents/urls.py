from django.http import JsonResponse
from django.urls import path
from django.views.generic import RedirectView

from . import webhooks


def health(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", health, name="health"),
    path("api/webhooks/telegram/<str:key>", webhooks.telegram_webhook, name="telegram-webhook"),
    path("api/webhooks/whatsapp/<str:key>", webhooks.whatsapp_webhook, name="whatsapp-webhook"),
    path("api/webhooks/twilio/<str:key>", webhooks.twilio_webhook, name="twilio-webhook"),
]
