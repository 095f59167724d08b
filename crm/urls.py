from django.urls import path

from . import views

urlpatterns = [
    path("api/webhooks/crm/<str:key>", views.webhook, name="crm-webhook"),
]
