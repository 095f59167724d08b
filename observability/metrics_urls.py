"""URLs of the metrics endpoint (issue 8); the monitoring page is the admin's (observability/admin.py)."""

from django.urls import path

from . import views

urlpatterns = [path("metrics", views.metrics, name="metrics")]
