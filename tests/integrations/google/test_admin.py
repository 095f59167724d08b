"""Staff connect Google from the integration's admin page and pick the calendar there;
the API lists the calendars for a frontend's picker."""
from __future__ import annotations

import pytest
import responses
from django.test import Client
from django.urls import reverse

from integrations.models import Integration
from tests.admin_forms import post_data
from tests.factories import make_agent, make_integration, make_user

from .conftest import API, TOKEN_URL, fixture

pytestmark = pytest.mark.django_db

CALENDAR_LIST = f"{API}/users/me/calendarList"


@pytest.fixture
def staff():
    user = make_user(is_staff=True)
    client = Client()
    client.force_login(user)
    return user, client


def page_of(integration: Integration) -> str:
    return reverse("admin:integrations_integration_change", args=[integration.pk])


def google_integration(owner, **credentials) -> Integration:
    return make_integration(
        agent=make_agent(owner=owner), integration_type="google_calendar", config={}, credentials=credentials
    )


def test_a_new_google_integration_offers_connect_google(staff):
    user, client = staff
    integration = google_integration(user)

    html = client.get(page_of(integration)).content.decode()

    assert f'href="/google/oauth/start/{integration.pk}">Connect Google</a>' in html
    assert 'name="calendar"' not in html
    start = client.get(f"/google/oauth/start/{integration.pk}")
    assert start.status_code == 302 and start["Location"].startswith("https://accounts.google.com/o/oauth2/v2/auth?")


@responses.activate
def test_a_connected_integration_offers_its_calendars_and_saves_the_pick(staff):
    user, client = staff
    integration = google_integration(user, access_token="ya29.A", refresh_token="1//R")
    responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))
    page = client.get(page_of(integration))
    html = page.content.decode()
    assert ">Reconnect Google</a>" in html
    assert '<option value="sales@acme.example.com">Sales (Anna) (primary)</option>' in html
    assert '<option value="team-bookings@group.calendar.google.com">Team bookings</option>' in html

    response = client.post(
        page_of(integration), post_data(page, calendar="team-bookings@group.calendar.google.com")
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    integration.refresh_from_db()
    assert integration.config == {"calendar_id": "team-bookings@group.calendar.google.com"}
    assert integration.credentials["refresh_token"] == "1//R"  # kept: no new credentials were typed
    assert len(responses.calls) == 1  # the list is fetched once for the page and its submission


@responses.activate
def test_going_back_to_the_primary_calendar_removes_the_pick(staff):
    user, client = staff
    integration = google_integration(user, access_token="ya29.A", refresh_token="1//R")
    Integration.objects.filter(pk=integration.pk).update(config={"calendar_id": "sales@acme.example.com"})
    responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))
    page = client.get(page_of(integration))

    response = client.post(page_of(integration), post_data(page, calendar=""))

    assert response.status_code == 302
    integration.refresh_from_db()
    assert integration.config == {}


@responses.activate
def test_a_revoked_connection_is_shown_and_the_page_still_works(staff):
    user, client = staff
    integration = google_integration(user, access_token="ya29.A", refresh_token="1//R", expiry="2020-01-01T00:00:00Z")
    responses.post(TOKEN_URL, status=400, json=fixture("token_invalid_grant.json"))

    html = client.get(page_of(integration)).content.decode()

    assert "Needs re-connection" in html
    assert "Google no longer accepts this connection: connect again." in html
    assert "The calendars could not be loaded" in html and "Token has been expired or revoked." in html
    assert "1//R" not in html and "ya29.A" not in html


@responses.activate
def test_the_api_lists_the_calendars_for_a_frontend(api, agent):
    integration = make_integration(
        agent=agent, integration_type="google_calendar", credentials={"access_token": "ya29.A", "refresh_token": "1//R"}
    )
    responses.get(CALENDAR_LIST, json=fixture("calendar_list.json"))

    response = api.get(f"/api/integrations/{integration.id}/google/calendars")

    assert response.status_code == 200
    assert response.json()[0] == {
        "id": "sales@acme.example.com",
        "summary": "Sales (Anna)",
        "primary": True,
        "time_zone": "Europe/Berlin",
    }


def test_the_api_says_when_google_is_not_connected(api, agent, other_api):
    integration = make_integration(agent=agent, integration_type="google_calendar", credentials={})

    assert api.get(f"/api/integrations/{integration.id}/google/calendars").status_code == 409
    assert other_api.get(f"/api/integrations/{integration.id}/google/calendars").status_code == 404


def test_the_config_refuses_an_empty_calendar_id(api, agent):
    response = api.post(
        "/api/integrations/",
        {"agent": agent.id, "integration_type": "google_calendar", "config": {"calendar_id": " "}},
        format="json",
    )

    assert response.status_code == 400
    assert "calendar_id" in str(response.json())
