"""The live activity page and its JSON rows: only the signed-in user's events, the last N,
in words a person reads; and the admin's integration health badges the page's script
keeps live. (The page in a real browser: test_activity_browser.py.)"""
from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import LiveEvent
from agents.realtime import send_event_on_commit
from integrations.services import integration_set_status
from sequences.runner import run_start
from tests.factories import make_agent, make_integration, make_sequence, make_trigger, make_user

PAGE = "/activity/"
EVENTS = "/activity/events"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_rows(response) -> list[dict]:
    """The rows the page opens with (its json_script data, drawn by activity.js)."""
    match = re.search(r'<script id="activity-initial" type="application/json">(.*?)</script>', response.text, re.S)
    assert match, response.text[:2000]
    return json.loads(match.group(1))


def raise_event(owner, type: str, **payload) -> LiveEvent:
    return send_event_on_commit(owner_id=owner.id, type=type, payload=payload)


@pytest.fixture
def staff(db):
    return make_user(is_staff=True)


@pytest.fixture
def other_staff(db):
    return make_user(is_staff=True)


# --- who sees what -------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login():
    response = Client().get(PAGE)

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/activity/"


def test_the_events_endpoint_answers_401_without_a_session(db):
    response = Client().get(EVENTS)

    assert response.status_code == 401
    assert response.json() == {"detail": "Sign in to see the activity."}


def test_a_user_sees_the_firings_of_their_own_triggers_only(
    staff, other_staff, kommo_for, crm_api, thank_you_for, leads_won
):
    mine = thank_you_for(make_agent(owner=staff, name="Sales bot"))
    theirs = thank_you_for(make_agent(owner=other_staff))
    leads_won(kommo_for(theirs.agent))
    leads_won(kommo_for(mine.agent))

    rows = page_rows(signed_in(staff).get(PAGE))
    api_rows = signed_in(staff).get(EVENTS).json()["events"]

    mine_ids = list(LiveEvent.objects.filter(owner=staff).order_by("-id").values_list("id", flat=True))
    assert [row["id"] for row in rows] == [row["id"] for row in api_rows] == mine_ids
    assert [(row["kind"], row["text"]) for row in rows] == [
        ("Trigger", "Trigger “Won → thank you” fired for lead 23416601: 2 actions done"),
        ("Trigger", "Trigger “Won → thank you” fired for lead 23416597: 2 actions done"),
        ("Integration", "Kommo / amoCRM is connected"),  # its first CRM call went through
    ]
    assert {(row["agent"], row["tone"]) for row in rows} == {("Sales bot", "ok")}
    assert rows[0]["url"] == reverse("admin:triggers_trigger_change", args=[mine.id])
    other_rows = signed_in(other_staff).get(EVENTS).json()["events"]
    assert len(other_rows) == 3 and not {row["id"] for row in other_rows} & set(mine_ids)


def test_a_superuser_sees_their_own_agents_activity_not_everyones(staff, db):
    boss = make_user(is_staff=True, is_superuser=True)
    raise_event(staff, "integration.status", integration_id=1, agent_id=1, status="failing", detail="x")
    own = raise_event(boss, "integration.status", integration_id=2, agent_id=2, status="connected", detail="")

    assert [row["id"] for row in page_rows(signed_in(boss).get(PAGE))] == [own.id]


def test_an_id_in_a_payload_never_reveals_another_users_names(staff, other_staff):
    """Payloads are written by the services, but names are looked up among the reader's
    own objects all the same."""
    their_trigger = make_trigger(make_agent(owner=other_staff, name="Their agent"), name="Their secret rule")
    raise_event(
        staff, "trigger.fired", trigger_id=their_trigger.id, agent_id=their_trigger.agent_id, lead_id=5,
        status="done", error="", actions=[],
    )  # fmt: skip

    (row,) = signed_in(staff).get(EVENTS).json()["events"]

    assert row["text"] == f"Trigger #{their_trigger.id} (deleted) fired for lead 5: no actions"
    assert (row["agent"], row["url"]) == ("", None)


# --- the last N, and what came after -------------------------------------------------------


def test_the_page_opens_with_the_last_n_activity_events_newest_first(staff, settings):
    settings.ACTIVITY_PAGE_EVENTS = 3
    events = [
        raise_event(staff, "integration.status", integration_id=9, agent_id=9, status="failing", detail=f"error {n}")
        for n in range(5)
    ]
    raise_event(staff, "agent.changed", agent_id=9, name="Bot", change="updated")  # not activity

    rows = page_rows(signed_in(staff).get(PAGE))

    assert [row["id"] for row in rows] == [e.id for e in reversed(events)][:3]
    assert signed_in(staff).get(PAGE).context["limit"] == 3


def test_the_events_endpoint_gives_what_came_after_an_id(staff, settings):
    settings.ACTIVITY_PAGE_EVENTS = 2
    first, second, third, fourth = (
        raise_event(staff, "integration.status", integration_id=9, agent_id=9, status="connected", detail="")
        for _ in range(4)
    )
    client = signed_in(staff)

    assert [e["id"] for e in client.get(EVENTS, {"after": second.id}).json()["events"]] == [fourth.id, third.id]
    assert client.get(EVENTS, {"after": fourth.id}).json()["events"] == []
    # more missed than the page keeps: the newest N
    assert [e["id"] for e in client.get(EVENTS, {"after": 0}).json()["events"]] == [fourth.id, third.id]


@pytest.mark.parametrize("after", ["-1", "abc", "1.5", "٣", "9" * 30])
def test_the_events_endpoint_refuses_an_after_that_is_not_an_id(staff, after):
    response = signed_in(staff).get(EVENTS, {"after": after})

    assert response.status_code == 400
    assert "after" in response.json()["detail"]


# --- in words ------------------------------------------------------------------------------


def test_a_failed_firing_says_how_far_it_got_and_why(staff):
    trigger = make_trigger(make_agent(owner=staff), name="Lost → note")
    raise_event(
        staff, "trigger.fired", trigger_id=trigger.id, agent_id=trigger.agent_id, lead_id=77, status="failed",
        error="Kommo refused the note: 400 Bad Request",
        actions=[{"type": "create_task", "status": "done"}, {"type": "add_note", "status": "failed"}],
    )  # fmt: skip

    (row,) = signed_in(staff).get(EVENTS).json()["events"]

    assert row["text"] == (
        "Trigger “Lost → note” fired for lead 77: 1 of 2 actions done, then it failed: "
        "Kommo refused the note: 400 Bad Request"
    )
    assert row["tone"] == "failed"


def test_a_sequence_run_reads_as_its_steps(staff, kommo_for, django_capture_on_commit_callbacks):
    agent = make_agent(owner=staff, name="Follow-up bot")
    kommo_for(agent)
    steps = [{"type": "delay", "days": 1}, {"type": "add_note", "text": "Nurtured"}]
    sequence = make_sequence(agent, name="Nurture", steps=steps)

    with django_capture_on_commit_callbacks(execute=True):  # the first step is queued and run (Q_SYNC)
        run = run_start(sequence=sequence, lead_id=555, started_by="api")

    rows = signed_in(staff).get(EVENTS).json()["events"]
    assert [row["text"] for row in reversed(rows)] == [
        "Sequence “Nurture” started for lead 555",
        "Sequence “Nurture” for lead 555: step 1 (delay) waiting",
    ]
    assert {(row["kind"], row["agent"]) for row in rows} == {("Sequence", "Follow-up bot")}
    run.refresh_from_db()
    assert rows[0]["next_at"] == run.next_due_at.isoformat()
    assert rows[0]["url"] == reverse("admin:sequences_sequencerun_change", args=[run.id])


def test_an_integration_status_change_reads_with_its_last_error(staff):
    telegram = make_integration(make_agent(owner=staff, name="Support bot"), integration_type="telegram")

    integration_set_status(integration=telegram, status="failing", detail="Telegram answered 502 Bad Gateway")
    integration_set_status(integration=telegram, status="connected")

    rows = signed_in(staff).get(EVENTS).json()["events"]
    assert [(row["text"], row["tone"]) for row in rows] == [
        ("Telegram is connected", "ok"),
        ("Telegram is failing: Telegram answered 502 Bad Gateway", "warning"),
    ]
    assert rows[0]["url"] == reverse("admin:integrations_integration_change", args=[telegram.id])


# --- the page itself and the admin -----------------------------------------------------


def test_the_page_loads_its_script_from_static_files_and_runs_no_inline_code(staff):
    html = signed_in(staff).get(PAGE).text

    assert '<script src="/static/observability/live.js" defer></script>' in html
    assert '<script src="/static/observability/activity.js" defer></script>' in html
    inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html)
    assert inline == [], "inline scripts break under a Content-Security-Policy"
    assert " style=" not in html and " onclick=" not in html


def test_every_admin_page_links_to_the_live_activity(staff):
    html = signed_in(staff).get("/admin/").text

    assert '<a href="/activity/">Live activity</a>' in html


def test_the_admin_shows_each_integrations_health_ready_for_live_updates(staff):
    telegram = make_integration(make_agent(owner=staff), integration_type="telegram")
    integration_set_status(integration=telegram, status="failing", detail="Bot token <revoked>")
    telegram.refresh_from_db()
    client = signed_in(staff)

    listing = client.get(reverse("admin:integrations_integration_changelist")).text
    change = client.get(reverse("admin:integrations_integration_change", args=[telegram.id])).text

    for html in (listing, change):
        assert f'<strong class="health-badge health-failing" data-integration-health-status="{telegram.id}"' in html
        assert re.search(rf'data-integration-health-detail="{telegram.id}"[^>]*>Bot token &lt;revoked&gt;</span>', html)
        assert f'datetime="{telegram.status_changed_at.isoformat()}"' in html
        assert "/static/observability/integration_health.js" in html


def test_the_admin_health_endpoint_gives_the_current_state_of_the_users_integrations(staff, other_staff):
    mine = make_integration(make_agent(owner=staff), integration_type="telegram")
    theirs = make_integration(make_agent(owner=other_staff), integration_type="telegram")
    integration_set_status(integration=mine, status="needs_reconnect", detail="Token has been revoked")
    mine.refresh_from_db()
    url = reverse("admin:integrations_integration_health")

    response = signed_in(staff).get(url, {"id": [mine.id, theirs.id]})

    assert response.json() == {
        "integrations": [
            {
                "id": mine.id,
                "status": "needs_reconnect",
                "label": "Needs re-connection",
                "detail": "Token has been revoked",
                "changed_at": mine.status_changed_at.isoformat(),
            }
        ]
    }
    assert signed_in(staff).get(url, {"id": "x"}).status_code == 400
    assert Client().get(url, {"id": mine.id}).status_code == 302  # to the admin login
