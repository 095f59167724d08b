"""URLs of the live activity page (issue 8)."""

from django.urls import path

from . import activity

urlpatterns = [
    path("activity/", activity.activity_page, name="activity"),
    path("activity/events", activity.activity_events, name="activity-events"),
]
