"""Staff pick the agent's CRM fields by name from the CRM snapshot; ids are stored."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import AgentCrmAccess
from crm.models import CrmSnapshot
from tests.admin_forms import inline_prefix, post_data
from tests.factories import make_agent, make_integration, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    user = make_user(is_staff=True)
    client = Client()
    client.force_login(user)
    return user, client


def synced_agent(owner):
    agent = make_agent(owner=owner)
    integration = make_integration(agent=agent, integration_type="kommo", config={"base_url": "https://a.kommo.com"})
    CrmSnapshot.objects.create(
        integration=integration,
        lead_fields=[{"id": 101, "name": "Budget"}, {"id": 555, "name": "Delivery address"}],
        contact_fields=[{"id": 201, "name": "Birthday"}],
        synced_at=timezone.now(),
    )
    return agent


def test_the_crm_access_editor_offers_fields_by_name(staff):
    user, client = staff
    agent = synced_agent(user)

    page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))

    html = page.content.decode()
    assert "Budget (101)" in html and "Delivery address (555)" in html and "Birthday (201)" in html
    # 102 is stored (see factories) but the CRM no longer has it: shown, not lost
    assert "unknown field (102)" in html


def test_picked_fields_are_stored_as_ids(staff):
    user, client = staff
    agent = synced_agent(user)
    page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    prefix = inline_prefix(page, AgentCrmAccess)
    data = post_data(page)
    data[f"{prefix}-0-lead_fields"] = ["555", "101"]
    data[f"{prefix}-0-contact_fields"] = []

    response = client.post(reverse("admin:agents_agent_change", args=[agent.pk]), data)

    assert response.status_code == 302, response.context and response.context["errors"]
    access = AgentCrmAccess.objects.get(agent=agent)
    assert sorted(access.lead_fields) == [101, 555]
    assert access.contact_fields == []


def test_without_a_snapshot_ids_are_typed_as_json(staff):
    user, client = staff
    agent = make_agent(owner=user)

    page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))

    assert "Budget (" not in page.content.decode()
    assert "[\n  101,\n  102\n]" in page.content.decode()
