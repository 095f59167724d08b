"""The admin of sequence runs: a sequence is started for a lead by hand, runs are listed
and shown with their steps, and cancelled, paused, resumed or retried like in the API —
each staff member only their own."""
from __future__ import annotations

import html
import json

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import ExecutionLog
from sequences.models import SequenceRun, SequenceStep
from sequences.runner import run_cancel, run_start, step_run
from tests.admin_forms import post_data
from tests.factories import make_agent, make_integration, make_sequence, make_user
from triggers import actions
from triggers.actions import ActionFailed

pytestmark = pytest.mark.django_db

LEAD = 23416597
DELAY_THEN_TASK = [{"type": "delay", "hours": 1}, {"type": "create_task", "text": "Call back"}]


def text(response) -> str:
    return html.unescape(response.content.decode())


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def run_url(run: SequenceRun, view: str = "change") -> str:
    return reverse(f"admin:sequences_sequencerun_{view}", args=[run.pk])


RUNS = reverse("admin:sequences_sequencerun_changelist")


def start(sequence, lead_id: int = LEAD) -> SequenceRun:
    return run_start(sequence=sequence, lead_id=lead_id, started_by="api")


def first_step(run: SequenceRun) -> SequenceStep:
    return SequenceStep.objects.get(run=run, index=0)


def status_of(run: SequenceRun) -> str:
    run.refresh_from_db()
    return run.status


def agent_with_kommo(owner):
    """Runs need the agent's Kommo account (their leads live there)."""
    agent = make_agent(owner=owner)
    make_integration(agent, integration_type="kommo", config={"base_url": "https://acme.kommo.com"}, credentials={})
    return agent


@pytest.fixture
def staff(db):
    return make_user(is_staff=True)


@pytest.fixture
def staff_client(staff) -> Client:
    return client_for(staff)


@pytest.fixture
def sequence(staff):
    return make_sequence(agent_with_kommo(staff), name="Warm-up", trigger_config={}, steps=DELAY_THEN_TASK)


@pytest.fixture
def theirs(db):
    """Another staff member's sequence with a run."""
    sequence = make_sequence(agent_with_kommo(make_user(is_staff=True)), name="Their nudge", steps=DELAY_THEN_TASK)
    return start(sequence, lead_id=777)


@pytest.fixture
def failed_run(sequence, monkeypatch):
    def refused(spec, ctx):
        raise ActionFailed("the CRM refused the task: lead 23416597 is closed")

    monkeypatch.setitem(actions.HANDLERS, "create_task", refused)
    call = [{"type": "create_task", "text": "Call"}]
    calls = make_sequence(sequence.agent, name="Call", trigger_config={}, steps=call)
    run = start(calls, lead_id=404)
    step_run(first_step(run).pk)
    assert status_of(run) == "failed"
    return run


def act(client: Client, action: str, runs: list[SequenceRun]):
    return client.post(RUNS, {"action": action, "_selected_action": [run.pk for run in runs]}, follow=True)


def press(client: Client, run: SequenceRun, change: str):
    return client.post(run_url(run, "control"), {"change": change}, follow=True)


# --- The sequence page -----------------------------------------------------------------------


def test_exit_rules_are_edited_on_the_sequence_page(staff_client, sequence):
    page = staff_client.get(reverse("admin:sequences_sequence_change", args=[sequence.pk]))
    rules = {"on_reply": False, "on_stages": [{"status_id": 143}], "on_meeting_booked": True}

    response = staff_client.post(
        reverse("admin:sequences_sequence_change", args=[sequence.pk]), post_data(page, exit_rules=json.dumps(rules))
    )

    assert response.status_code == 302
    sequence.refresh_from_db()
    assert sequence.exit_rules == rules


def test_a_wrong_exit_rule_is_refused_at_its_field(staff_client, sequence):
    page = staff_client.get(reverse("admin:sequences_sequence_change", args=[sequence.pk]))

    response = staff_client.post(
        reverse("admin:sequences_sequence_change", args=[sequence.pk]),
        post_data(page, exit_rules='{"on_reply": "sometimes"}'),
    )

    assert response.status_code == 200
    assert "exit_rules" in response.context["adminform"].form.errors


def test_the_sequence_list_counts_active_runs_only(staff_client, sequence):
    start(sequence, lead_id=1)
    start(sequence, lead_id=2)
    run_cancel(start(sequence, lead_id=3))

    response = staff_client.get(reverse("admin:sequences_sequence_changelist"))

    (row,) = response.context["cl"].result_list
    assert row.active_run_count == 2
    page = staff_client.get(reverse("admin:sequences_sequence_change", args=[sequence.pk]))
    assert "2 active, 3 in all" in text(page)


# --- Starting a run by hand --------------------------------------------------------------------


def start_url(sequence) -> str:
    return reverse("admin:sequences_sequence_start", args=[sequence.pk])


def test_the_sequence_page_links_to_start_it_for_a_lead(staff_client, sequence):
    response = staff_client.get(reverse("admin:sequences_sequence_change", args=[sequence.pk]))

    assert f'href="{start_url(sequence)}"' in response.content.decode()
    assert "Start for a lead" in text(response)


def test_starting_for_a_lead_opens_the_new_run(staff_client, staff, sequence):
    assert staff_client.get(start_url(sequence)).status_code == 200

    response = staff_client.post(start_url(sequence), {"lead_id": str(LEAD)}, follow=True)

    run = SequenceRun.objects.get()
    assert response.redirect_chain == [(run_url(run), 302)]
    assert (run.sequence, run.crm_lead_id, run.status) == (sequence, LEAD, "scheduled")
    assert (run.started_by, run.started_ref) == ("admin", f"user:{staff.pk}")
    assert f"“Warm-up” started for lead {LEAD}" in text(response)


def test_a_lead_already_in_the_sequence_gets_a_link_to_its_run(staff_client, sequence):
    running = start(sequence)

    response = staff_client.post(start_url(sequence), {"lead_id": str(LEAD)})

    assert response.status_code == 200
    assert f"Lead {LEAD} is already in this sequence" in text(response)
    assert f'href="{run_url(running)}"' in response.content.decode()
    assert SequenceRun.objects.count() == 1


def test_a_switched_off_sequence_cannot_be_started(staff_client, sequence):
    sequence.active = False
    sequence.save()

    response = staff_client.post(start_url(sequence), {"lead_id": str(LEAD)})

    assert response.status_code == 200
    assert "The sequence cannot start: sequence “Warm-up” is switched off." in text(response)
    assert not SequenceRun.objects.exists()


def test_the_lead_id_must_be_a_crm_id(staff_client, sequence):
    response = staff_client.post(start_url(sequence), {"lead_id": "0"})

    assert response.status_code == 200
    assert response.context["form"].errors["lead_id"]
    assert not SequenceRun.objects.exists()


def test_another_users_sequence_cannot_be_started(staff_client, theirs):
    response = staff_client.post(start_url(theirs.sequence), {"lead_id": str(LEAD)})

    assert response.status_code == 404
    assert SequenceRun.objects.filter(sequence=theirs.sequence).count() == 1


# --- The list of runs ---------------------------------------------------------------------------


def test_runs_are_listed_with_their_current_step(staff_client, sequence):
    waiting = start(sequence, lead_id=1)
    step_run(first_step(waiting).pk)
    scheduled = start(sequence, lead_id=2)

    response = staff_client.get(RUNS)

    assert [run.pk for run in response.context["cl"].result_list] == [scheduled.pk, waiting.pk]
    page = text(response)
    assert "0: delay (of 2)" in page and "Warm-up" in page and "waiting" in page


def test_runs_are_filtered_by_status_sequence_and_starter_and_found_by_lead(staff_client, staff, sequence):
    other = make_sequence(sequence.agent, name="Second", steps=DELAY_THEN_TASK)
    waiting = start(sequence, lead_id=1)
    step_run(first_step(waiting).pk)
    by_hand = run_start(sequence=other, lead_id=2, started_by="admin")

    def found(**query) -> list[int]:
        return [run.pk for run in staff_client.get(RUNS, query).context["cl"].result_list]

    assert found(status__exact="waiting") == [waiting.pk]
    assert found(sequence__id__exact=other.pk) == [by_hand.pk]
    assert found(started_by="admin") == [by_hand.pk]
    assert found(agent__id__exact=sequence.agent_id) == [by_hand.pk, waiting.pk]
    assert found(q="2") == [by_hand.pk]


def test_another_users_runs_are_neither_listed_nor_offered_as_filters(staff_client, sequence, theirs):
    mine = start(sequence)

    response = staff_client.get(RUNS)

    assert [run.pk for run in response.context["cl"].result_list] == [mine.pk]
    assert "Their nudge" not in text(response)


def test_another_users_run_reads_as_missing_and_cannot_be_controlled(staff_client, theirs):
    page = staff_client.get(run_url(theirs), follow=True)
    pressed = staff_client.post(run_url(theirs, "control"), {"change": "cancel"})
    acted = act(staff_client, "cancel_runs", [theirs])

    assert page.redirect_chain == [(reverse("admin:index"), 302)]
    assert "doesn’t exist" in text(page)
    assert pressed.status_code == 404
    assert "0 cancelled." in text(acted)
    assert status_of(theirs) == "scheduled"


def test_runs_cannot_be_added_or_edited(staff_client, sequence):
    run = start(sequence)

    assert staff_client.get(reverse("admin:sequences_sequencerun_add")).status_code == 403
    response = staff_client.post(run_url(run), {"status": "done"})
    assert response.status_code == 403
    assert status_of(run) == "scheduled"


# --- The run page --------------------------------------------------------------------------------


def test_the_run_page_shows_each_steps_output_and_error(staff_client, sequence, failed_run):
    waiting = start(sequence, lead_id=1)
    step_run(first_step(waiting).pk)
    output = first_step(waiting).output

    waiting_page = text(staff_client.get(run_url(waiting)))
    failed_page = text(staff_client.get(run_url(failed_run)))

    assert "wake_at" in output
    assert json.dumps(output, indent=2) in waiting_page
    assert "0: delay (of 2)" in waiting_page
    assert "the CRM refused the task: lead 23416597 is closed" in failed_page  # the step's error
    assert "step 0 (create_task): the CRM refused the task" in failed_page  # the run's error


def test_a_cancelled_run_shows_why_it_ended(staff_client, staff, sequence):
    run = start(sequence)
    press(staff_client, run, "cancel")

    page = text(staff_client.get(run_url(run)))

    assert f"stopped by user {staff.pk} in the admin" in page


def test_the_run_page_links_to_its_execution_log(staff_client, sequence):
    run = start(sequence)
    other = start(sequence, lead_id=2)
    log_url = reverse("admin:agents_executionlog_changelist") + f"?ref_type=sequence_run&ref_id={run.pk}"

    page = staff_client.get(run_url(run))
    log = staff_client.get(log_url)

    assert f'href="{html.escape(log_url)}"' in page.content.decode()
    assert log.status_code == 200
    shown = {entry.ref_id for entry in log.context["cl"].result_list}
    assert shown == {run.pk} and ExecutionLog.objects.filter(ref_id=other.pk).exists()


@pytest.mark.parametrize(
    ("prepare", "buttons"),
    [
        ("scheduled", ["cancel", "pause"]),
        ("paused", ["cancel", "resume"]),
        ("failed", ["retry"]),
        ("cancelled", []),
    ],
)
def test_the_run_page_offers_the_controls_its_status_allows(staff_client, sequence, failed_run, prepare, buttons):
    run = failed_run if prepare == "failed" else start(sequence)
    if prepare in ("paused", "cancelled"):
        press(staff_client, run, "pause" if prepare == "paused" else "cancel")

    page = staff_client.get(run_url(run)).content.decode()

    shown = [name for name in ("cancel", "pause", "resume", "retry") if f'name="change" value="{name}"' in page]
    assert shown == buttons


# --- Controls: buttons on the run page ----------------------------------------------------------


def test_the_buttons_pause_resume_and_cancel_the_run(staff_client, sequence):
    run = start(sequence)
    step_run(first_step(run).pk)  # waiting in its delay

    paused = press(staff_client, run, "pause")
    assert paused.redirect_chain == [(run_url(run), 302)]
    assert status_of(run) == "paused" and "1 paused." in text(paused)

    resumed = press(staff_client, run, "resume")
    assert status_of(run) == "waiting" and "1 resumed." in text(resumed)

    cancelled = press(staff_client, run, "cancel")
    assert status_of(run) == "cancelled" and "1 cancelled." in text(cancelled)
    assert list(run.step_rows.values_list("status", flat=True)) == ["cancelled", "cancelled"]


def test_a_button_that_no_longer_applies_says_so(staff_client, sequence):
    run = start(sequence)
    run_cancel(run)

    response = press(staff_client, run, "pause")

    assert f"1 was not scheduled, running or waiting (run {run.pk}: cancelled)." in text(response)
    assert status_of(run) == "cancelled"


def test_retry_starts_a_failed_run_again_from_its_failed_step(staff_client, failed_run):
    response = press(staff_client, failed_run, "retry")

    assert "1 retried from the failed step." in text(response)
    assert status_of(failed_run) == "scheduled" and failed_run.error == ""
    step = first_step(failed_run)
    assert (step.status, step.attempts, step.error) == ("scheduled", 0, "")


def test_the_control_page_takes_posts_of_known_changes_only(staff_client, sequence):
    run = start(sequence)

    assert staff_client.get(run_url(run, "control")).status_code == 405
    assert staff_client.post(run_url(run, "control"), {"change": "delete"}).status_code == 400
    assert status_of(run) == "scheduled"


# --- Controls: actions on the list --------------------------------------------------------------


def test_cancel_reports_what_happened_to_each_run(staff_client, sequence):
    active = [start(sequence, lead_id=lead) for lead in (1, 2, 3)]
    ended = start(sequence, lead_id=4)
    run_cancel(ended)

    response = act(staff_client, "cancel_runs", [*active, ended])

    assert f"3 cancelled, 1 was not active (run {ended.pk}: cancelled)." in text(response)
    assert [status_of(run) for run in active] == ["cancelled"] * 3


def test_pause_and_resume_act_on_the_runs_they_apply_to(staff_client, sequence):
    first, second = start(sequence, lead_id=1), start(sequence, lead_id=2)

    paused = act(staff_client, "pause_runs", [first])
    resumed = act(staff_client, "resume_runs", [first, second])

    assert "1 paused." in text(paused)
    assert f"1 resumed, 1 was not paused (run {second.pk}: scheduled)." in text(resumed)
    assert (status_of(first), status_of(second)) == ("scheduled", "scheduled")


def test_retry_skips_runs_that_did_not_fail_and_leads_in_a_newer_run(staff_client, failed_run):
    newer = start(failed_run.sequence, lead_id=failed_run.crm_lead_id)

    blocked = act(staff_client, "retry_runs", [failed_run, newer])
    assert "1 could not be retried: the lead is in a newer run" in text(blocked)
    assert f"1 was not failed (run {newer.pk}: scheduled)" in text(blocked)
    assert status_of(failed_run) == "failed"

    run_cancel(newer)
    retried = act(staff_client, "retry_runs", [failed_run])
    assert "1 retried from the failed step." in text(retried)
    assert status_of(failed_run) == "scheduled"
