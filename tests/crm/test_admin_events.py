"""Staff see the CRM events of their own integrations and can re-run failed ones."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from crm.models import CrmEvent, CrmSnapshot
from tests.factories import make_agent, make_integration, make_user

pytestmark = pytest.mark.django_db


def staff_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def failed_event(owner, key="k") -> CrmEvent:
    integration = make_integration(
        agent=make_agent(owner=owner), integration_type="kommo", config={"base_url": "https://a.kommo.com"}
    )
    return CrmEvent.objects.create(
        integration=integration,
        kind="lead_status_changed",
        entity_type="lead",
        entity_id=5,
        lead_id=5,
        data={"id": "5", "status_id": "142"},
        dedupe_key=key,
        status="failed",
        attempts=1,
        error="boom",
    )


def test_staff_see_only_their_own_events_and_snapshots():
    me, someone = make_user(is_staff=True), make_user(is_staff=True)
    mine, theirs = failed_event(me, "a"), failed_event(someone, "b")
    CrmSnapshot.objects.create(integration=theirs.integration, synced_at=timezone.now())
    client = staff_client(me)

    listing = client.get(reverse("admin:crm_crmevent_changelist"))
    page = client.get(reverse("admin:crm_crmevent_change", args=[mine.pk]))
    foreign = client.get(reverse("admin:crm_crmevent_change", args=[theirs.pk]))
    snapshots = client.get(reverse("admin:crm_crmsnapshot_changelist"))

    assert listing.status_code == 200 and page.status_code == 200
    assert list(listing.context["cl"].queryset) == [mine]
    assert "142" in page.content.decode()
    assert foreign.status_code == 302  # "doesn't exist", back to the admin index
    assert list(snapshots.context["cl"].queryset) == []


def test_failed_events_can_be_processed_again():
    me = make_user(is_staff=True)
    event = failed_event(me)

    response = staff_client(me).post(
        reverse("admin:crm_crmevent_changelist"), {"action": "process_again", "_selected_action": [event.pk]}
    )

    assert response.status_code == 302
    event.refresh_from_db()
    assert event.status == "done" and event.error == ""  # tasks run synchronously in tests
