from django.urls import path

from . import views

urlpatterns = [
    path("google/oauth/start/<int:integration_id>", views.oauth_start, name="google-oauth-start"),
    path("google/oauth/callback", views.oauth_callback, name="google-oauth-callback"),
    path(
        "api/integrations/<int:integration_id>/google/oauth/start",
        views.OAuthStartView.as_view(),
        name="google-oauth-start-api",
    ),
    path(
        "api/integrations/<int:integration_id>/google/calendars",
        views.CalendarListView.as_view(),
        name="google-calendars",
    ),
]
