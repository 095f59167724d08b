"""Sequence runs: steps as rows with a status and a due time, executed by tasks, each
at most once, with exits, retries, recovery of interrupted steps and live status."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import responses

from agents.ai import Completion
from agents.models import Conversation, ConversationMessage, ExecutionLog, LiveEvent
from sequences import runner
from sequences.models import SequenceRun, SequenceStep
from sequences.runner import AlreadyRunning, dispatch_due, recover_stuck, run_start, step_run
from tests.factories import make_integration, make_sequence, make_trigger
from triggers import actions

CRM = "https://acme.kommo.com"
TELEGRAM = "https://api.telegram.org/bot123456:ABC-def"
FIXTURES = Path(__file__).resolve().parents[1]
SENT_OK = json.loads((FIXTURES / "integrations/channels/fixtures/telegram_send_message_ok.json").read_text())
LEAD = 23416597
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock(T0)
    monkeypatch.setattr(runner.timezone, "now", clock)
    monkeypatch.setattr(actions.timezone, "now", clock)
    return clock


@pytest.fixture
def kommo(agent, settings):
    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers", "sequences.handlers.on_crm_event"]
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": 31416592},
        credentials={"access_token": "crm-token"},
    )


@pytest.fixture
def telegram(agent):
    return make_integration(
        agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def", "secret_token": "s"}
    )


@pytest.fixture
def chat(agent, telegram, clock):
    return Conversation.objects.create(
        agent=agent, integration=telegram, crm_lead_id=LEAD, chat_id="287431920", last_inbound_at=clock.now
    )


@pytest.fixture
def vendors():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.patch(f"{CRM}/api/v4/leads/{LEAD}", json={"id": LEAD})
        mock.get(
            f"{CRM}/api/v4/leads/{LEAD}",
            json={"id": LEAD, "name": "Заявка", "status_id": 1, "pipeline_id": 2, "responsible_user_id": 8374811},
        )
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.post(f"{CRM}/api/v4/leads/{LEAD}/notes", json={"_embedded": {"notes": [{"id": 7001}]}})
        mock.post(f"{TELEGRAM}/sendMessage", json=SENT_OK)
        yield mock


def calls(mock, suffix: str, method: str = "POST"):
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


THREE_STEPS = [
    {"type": "delay", "hours": 1},
    {"type": "send_message", "text": "Still interested?"},
    {"type": "create_task", "text": "Call back", "due_in_minutes": 30},
]


def start(sequence, lead_id: int = LEAD) -> SequenceRun:
    return run_start(sequence=sequence, lead_id=lead_id, started_by="api")


def steps_of(run) -> list[tuple[str, str]]:
    return list(SequenceStep.objects.filter(run=run).order_by("index").values_list("type", "status"))


def first_step(run) -> SequenceStep:
    return SequenceStep.objects.get(run=run, index=0)


def test_a_run_waits_in_the_database_then_sends_and_creates_the_task(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    assert steps_of(run) == [("delay", "scheduled"), ("send_message", "pending"), ("create_task", "pending")]

    step_run(first_step(run).pk)  # the task queued at the start

    run.refresh_from_db()
    assert (run.status, run.next_due_at) == ("waiting", T0 + timedelta(hours=1))
    assert dispatch_due() == 0  # not due yet
    clock.advance(minutes=59)
    assert dispatch_due() == 0
    clock.advance(minutes=1, seconds=1)

    assert dispatch_due() == 1  # queued; the test settings run tasks at once

    run.refresh_from_db()
    assert run.status == "done" and run.finished_at is not None
    assert steps_of(run) == [("delay", "done"), ("send_message", "done"), ("create_task", "done")]
    (sent,) = calls(vendors, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == "Still interested?"
    (task,) = calls(vendors, "/api/v4/tasks")
    assert json.loads(task.request.body)[0]["complete_till"] == int((clock.now + timedelta(minutes=30)).timestamp())
    assert ConversationMessage.objects.get(direction="out").text == "Still interested?"
    logged = ExecutionLog.objects.filter(kind="sequence", ref_id=run.pk).order_by("id")
    assert [entry.detail["event"] for entry in logged] == [
        "started",
        "waiting",
        "step_done",
        "step_done",
        "step_done",
        "done",
    ]
    assert dispatch_due() == 0 and step_run(first_step(run).pk) == "not_due"  # nothing runs twice


def test_a_lead_has_one_active_run_of_a_sequence(agent, kommo, api, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    first = start(sequence)

    with pytest.raises(AlreadyRunning) as refused:
        start(sequence)
    response = api.post(f"/api/sequences/{sequence.pk}/start/", {"lead_id": LEAD}, format="json")

    assert refused.value.run.pk == first.pk
    assert response.status_code == 409 and response.json()["run"] == first.pk
    assert "already in this sequence" in response.json()["detail"]
    assert start(sequence, lead_id=LEAD + 1).pk != first.pk  # another lead may
    runner.run_cancel(first)
    assert start(sequence).status == "scheduled"  # once the first has ended, again


def test_the_lead_replying_ends_the_run_before_the_next_step(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    step_run(first_step(run).pk)
    clock.advance(minutes=10)
    ConversationMessage.objects.create(conversation=chat, direction="in", author="lead", text="Yes!", status="received")
    clock.advance(hours=1)

    dispatch_due()

    run.refresh_from_db()
    assert run.status == "exited" and run.exit_reason == "the lead replied"
    assert steps_of(run) == [("delay", "exited"), ("send_message", "exited"), ("create_task", "exited")]
    assert calls(vendors, "/sendMessage") == []


def test_a_reply_while_the_message_is_being_written_stops_it_from_being_sent(
    agent, kommo, chat, vendors, clock, monkeypatch
):
    sequence = make_sequence(
        agent,
        trigger_config={},
        steps=[{"type": "generate_message", "instruction": "Nudge"}, {"type": "send_message", "use_generated": True}],
    )

    def slow_model(model_spec, system, messages, **kwargs):
        # the lead writes while the model is still writing
        clock.advance(seconds=5)
        ConversationMessage.objects.create(
            conversation=chat, direction="in", author="lead", text="stop", status="received"
        )
        return Completion(text="Hey!", provider="openai", model="m", input_tokens=1, output_tokens=1, latency_ms=1)

    monkeypatch.setattr(actions.ai, "complete", slow_model)
    clock.advance(seconds=1)
    run = start(sequence)

    step_run(first_step(run).pk)

    run.refresh_from_db()
    assert run.status == "exited" and calls(vendors, "/sendMessage") == []
    assert steps_of(run) == [("generate_message", "done"), ("send_message", "exited")]


def test_moving_the_lead_to_won_ends_its_runs(agent, kommo, clock):
    from crm.intake import delivery_store
    from crm.tasks import process_events
    from crm.webhooks import parse_delivery
    from tests.triggers.test_execution import lead_form

    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)

    stored = delivery_store(
        integration_id=kommo.id, changes=parse_delivery(lead_form("status", status_id=142, old_status_id=1)).changes
    )
    process_events(list(stored.event_ids))

    run.refresh_from_db()
    assert run.status == "exited" and "status 142" in run.exit_reason


def test_a_crm_event_starts_a_sequence_once(agent, kommo, clock):
    from crm.intake import delivery_store
    from crm.models import CrmEvent
    from crm.tasks import process_events
    from crm.webhooks import parse_delivery
    from tests.triggers.test_execution import lead_form
    from triggers.execution import run_triggers  # noqa: F401 - the handler list in the fixture

    sequence = make_sequence(
        agent,
        trigger_config={"event": "lead_added", "conditions": [{"field": "price", "operator": "gte", "value": 10000}]},
        steps=THREE_STEPS,
    )
    make_sequence(
        agent,
        trigger_config={"event": "lead_added", "conditions": [{"field": "price", "operator": "gt", "value": 99999}]},
        steps=THREE_STEPS,
    )
    stored = delivery_store(integration_id=kommo.id, changes=parse_delivery(lead_form("add")).changes)
    (event_id,) = stored.event_ids

    process_events([event_id])
    CrmEvent.objects.filter(pk=event_id).update(status="pending")
    process_events([event_id])  # the same event again

    (run,) = SequenceRun.objects.all()
    assert (run.sequence_id, run.crm_lead_id, run.started_by, run.started_ref) == (
        sequence.pk,
        LEAD,
        "event",
        f"event:{event_id}",
    )
    skipped = ExecutionLog.objects.get(kind="sequence", status="skipped")
    assert "not greater than 99999" in skipped.detail["reason"]


def test_a_batch_of_events_starts_and_ends_each_agents_runs(agent, kommo, clock):
    """A drain's batch of events for two agents: the sequences they start are read once
    for the batch, an agent with no sequence is not asked for runs, and each event starts
    or ends only its own agent's runs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from crm.drain import events_drain
    from crm.intake import delivery_store
    from crm.webhooks import parse_delivery
    from tests.factories import make_agent
    from tests.triggers.test_execution import lead_form

    starting = make_sequence(agent, trigger_config={"event": "lead_added", "conditions": []}, steps=THREE_STEPS)
    running = start(make_sequence(agent, trigger_config={}, steps=THREE_STEPS), lead_id=LEAD + 1)
    bare = make_integration(
        make_agent(), integration_type="kommo", config={"base_url": CRM}, credentials={"access_token": "t"}
    )

    def deliver(integration, body: bytes) -> None:
        delivery_store(integration_id=integration.id, changes=parse_delivery(body).changes)

    deliver(kommo, lead_form("add"))
    deliver(kommo, lead_form("status", lead_id=LEAD + 1, status_id=142, old_status_id=1))
    deliver(bare, lead_form("add", lead_id=LEAD + 2))
    deliver(bare, lead_form("status", lead_id=LEAD + 3, status_id=142, old_status_id=1))

    with CaptureQueriesContext(connection) as captured:
        assert events_drain()["done"] == 4

    (started,) = SequenceRun.objects.filter(started_by="event")
    assert (started.sequence_id, started.crm_lead_id) == (starting.pk, LEAD)
    running.refresh_from_db()
    assert running.status == "exited"
    reads = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert sum('FROM "sequences_sequence" ' in sql for sql in reads) == 2  # who has any; who starts on what
    assert sum('FROM "sequences_sequencerun" ' in sql and "crm_lead_id" in sql for sql in reads) == 2  # kommo's


def test_trigger_actions_start_and_stop_a_sequence(agent, kommo, vendors, clock):
    from crm.intake import delivery_store
    from crm.tasks import process_events
    from crm.webhooks import parse_delivery
    from tests.triggers.test_execution import lead_form

    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    start_it = [{"type": "start_sequence", "sequence_id": sequence.pk}]
    make_trigger(agent, event="lead_added", conditions=[], actions=start_it)
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "stop_sequence", "sequence_id": sequence.pk}],
    )

    added = delivery_store(integration_id=kommo.id, changes=parse_delivery(lead_form("add")).changes)
    process_events(list(added.event_ids))
    run = SequenceRun.objects.get()
    assert run.status in ("scheduled", "waiting") and run.started_by == "trigger"
    process_events(
        list(
            delivery_store(
                integration_id=kommo.id,
                changes=parse_delivery(lead_form("status", status_id=5, old_status_id=4)).changes,
            ).event_ids
        )
    )

    run.refresh_from_db()
    assert run.status == "cancelled" and "trigger" in run.exit_reason


def test_a_transient_failure_retries_with_backoff_then_fails_visibly_and_can_be_retried(
    agent, kommo, vendors, clock, api
):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    vendors.replace(responses.POST, f"{CRM}/api/v4/tasks", status=503)
    vendors.get(f"{CRM}/api/v4/tasks", status=204)  # each retry looks for the task first: none
    run = start(sequence)
    step = first_step(run)

    step_run(step.pk)
    step.refresh_from_db()
    assert (step.status, step.attempts, step.due_at) == ("scheduled", 1, T0 + timedelta(seconds=30))
    assert "503" in step.error and "not confirmed" in step.error
    for _ in range(2, runner.MAX_ATTEMPTS + 1):
        clock.now = SequenceStep.objects.get(pk=step.pk).due_at
        dispatch_due()

    run.refresh_from_db()
    step.refresh_from_db()
    assert (step.status, step.attempts) == ("failed", runner.MAX_ATTEMPTS)
    assert run.status == "failed" and "gave up after 5 attempts" in run.error
    assert LiveEvent.objects.filter(type="sequence.step", payload__run_status="failed").exists()

    vendors.replace(responses.POST, f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 1}]}})
    response = api.post(f"/api/sequence-runs/{run.pk}/retry/")

    assert response.status_code == 200
    step_run(step.pk)  # the queued retry
    run.refresh_from_db()
    assert run.status == "done" and steps_of(run) == [("create_task", "done")]


def test_a_task_whose_creation_was_not_confirmed_is_found_by_the_retry_not_made_twice(agent, kommo, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    vendors.replace(responses.POST, f"{CRM}/api/v4/tasks", body=requests.ReadTimeout("read timed out"))
    run = start(sequence)
    step = first_step(run)

    step_run(step.pk)

    step.refresh_from_db()
    assert step.status == "scheduled" and step.output["unconfirmed_since"] == int(T0.timestamp()) - 60
    vendors.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 4242, "text": "Call"}]}})
    clock.now = step.due_at
    dispatch_due()

    run.refresh_from_db()
    step.refresh_from_db()
    assert run.status == "done" and step.output["task_id"] == 4242 and step.output["found_done"] is True
    assert len(calls(vendors, "/api/v4/tasks")) == 1  # the POST that timed out, never repeated
    (look,) = calls(vendors, "/api/v4/tasks", "GET")
    assert f"filter%5Bupdated_at%5D%5Bfrom%5D={int(T0.timestamp()) - 60}" in look.request.url


def test_a_message_the_messenger_did_not_confirm_is_not_sent_again(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    vendors.replace(responses.POST, f"{TELEGRAM}/sendMessage", status=502, json={"ok": False})
    run = start(sequence)

    step_run(first_step(run).pk)

    run.refresh_from_db()
    assert run.status == "failed" and "did not confirm" in run.error and "not sent again" in run.error
    message = ConversationMessage.objects.get(direction="out")
    assert message.status == "sending" and "may have reached the lead" in message.error
    assert len(calls(vendors, "/sendMessage")) == 1

    vendors.replace(responses.POST, f"{TELEGRAM}/sendMessage", json=SENT_OK)
    assert runner.run_retry(run) is True  # staff checked: the lead did not get it
    step_run(first_step(run).pk)

    run.refresh_from_db()
    assert run.status == "done" and len(calls(vendors, "/sendMessage")) == 2


def test_a_permanent_failure_fails_the_run_with_the_reason(agent, kommo, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    run = start(sequence)

    step_run(first_step(run).pk)

    run.refresh_from_db()
    assert run.status == "failed" and f"lead {LEAD} has no chat with this agent" in run.error


def test_pause_and_resume(agent, kommo, chat, vendors, clock, api):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    step_run(first_step(run).pk)

    assert api.post(f"/api/sequence-runs/{run.pk}/pause/").json()["status"] == "paused"
    clock.advance(hours=2)
    assert dispatch_due() == 0  # a paused run does not go on
    resumed = api.post(f"/api/sequence-runs/{run.pk}/resume/")
    assert resumed.json()["status"] == "waiting"
    dispatch_due()

    run.refresh_from_db()
    assert run.status == "done" and len(calls(vendors, "/sendMessage")) == 1
    assert api.post(f"/api/sequence-runs/{run.pk}/pause/").status_code == 409


def test_the_api_lists_runs_with_their_steps_and_cancels(agent, kommo, clock, api, other_api):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    start_response = api.post(f"/api/sequences/{sequence.pk}/start/", {"lead_id": LEAD}, format="json")
    run_id = start_response.json()["id"]

    listed = api.get(f"/api/sequences/{sequence.pk}/runs/").json()["results"]
    detail = api.get(f"/api/sequence-runs/{run_id}/").json()
    cancelled = api.post(f"/api/sequence-runs/{run_id}/cancel/")
    again = api.post(f"/api/sequence-runs/{run_id}/cancel/")
    theirs = other_api.get(f"/api/sequence-runs/{run_id}/")

    assert start_response.status_code == 201 and [r["id"] for r in listed] == [run_id]
    assert [s["type"] for s in detail["steps"]] == ["delay", "send_message", "create_task"]
    assert cancelled.json()["status"] == "cancelled"
    assert [s["status"] for s in cancelled.json()["steps"]] == ["cancelled"] * 3
    assert again.status_code == 409 and theirs.status_code == 404


def test_the_live_event_reaches_the_owner_only(agent, kommo, clock, other_user):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    step_run(first_step(run).pk)

    events = LiveEvent.objects.filter(type="sequence.step")
    assert {e.owner_id for e in events} == {agent.owner_id} != {other_user.id}
    waiting = events.get(payload__event="waiting")
    assert waiting.payload["next_due_at"] == (T0 + timedelta(hours=1)).isoformat()
    assert (waiting.payload["run_id"], waiting.payload["step"], waiting.payload["step_type"]) == (run.pk, 0, "delay")
    assert waiting.payload["agent_id"] == agent.pk
    runner.run_cancel(run, by="Olga")
    cancelled = LiveEvent.objects.get(type="sequence.step", payload__event="cancelled")
    assert cancelled.payload["exit_reason"] == "stopped by Olga" and cancelled.payload["run_status"] == "cancelled"


# --- interrupted steps ---------------------------------------------------------------------


def _stuck(run, index: int, clock) -> SequenceStep:
    SequenceStep.objects.filter(run=run, index=index).update(
        status="running", claimed_at=clock.now - runner.step_timeout() - timedelta(seconds=1), attempts=1
    )
    SequenceRun.objects.filter(pk=run.pk).update(status="running", current_step=index)
    return SequenceStep.objects.get(run=run, index=index)


def test_an_interrupted_task_found_in_the_crm_is_not_created_again(agent, kommo, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    run = start(sequence)
    _stuck(run, 0, clock)
    vendors.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 555, "text": "Call"}]}})

    recover_stuck()

    run.refresh_from_db()
    step = first_step(run)
    assert (run.status, step.status, step.output["task_id"], step.output["recovered"]) == ("done", "done", 555, True)
    assert calls(vendors, "/api/v4/tasks") == []


def test_an_interrupted_task_not_in_the_crm_is_created_once(agent, kommo, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    run = start(sequence)
    _stuck(run, 0, clock)
    vendors.get(f"{CRM}/api/v4/tasks", status=204)

    recover_stuck()
    dispatch_due()

    run.refresh_from_db()
    assert run.status == "done" and len(calls(vendors, "/api/v4/tasks")) == 1


def test_a_message_interrupted_while_sending_is_not_sent_again(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    run = start(sequence)
    step = _stuck(run, 0, clock)
    # the row written before the channel was called, never marked sent
    ConversationMessage.objects.create(
        conversation=chat, direction="out", author="agent", text="Hi", status="sending", key=step.idempotency_key
    )

    recover_stuck()
    dispatch_due()

    run.refresh_from_db()
    assert run.status == "failed" and "not sent again" in run.error
    assert calls(vendors, "/sendMessage") == []


def test_a_message_interrupted_before_the_channel_was_called_is_sent_once(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    run = start(sequence)
    _stuck(run, 0, clock)

    recover_stuck()
    dispatch_due()

    run.refresh_from_db()
    assert run.status == "done" and len(calls(vendors, "/sendMessage")) == 1
    assert ConversationMessage.objects.get(direction="out").status == "sent"


def test_a_failed_send_retried_by_staff_is_sent(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    run = start(sequence)
    step = _stuck(run, 0, clock)
    ConversationMessage.objects.create(
        conversation=chat, direction="out", author="agent", text="Hi", status="sending", key=step.idempotency_key
    )
    recover_stuck()
    run.refresh_from_db()
    assert run.status == "failed"

    assert runner.run_retry(run) is True  # staff checked: the lead did not get it
    step_run(step.pk)

    run.refresh_from_db()
    assert run.status == "done" and len(calls(vendors, "/sendMessage")) == 1
    given_up = ConversationMessage.objects.get(status="not_sent")
    assert given_up.key == "" and "retried" in given_up.error


def test_an_interrupted_message_that_was_stored_counts_as_sent(agent, kommo, chat, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "send_message", "text": "Hi"}])
    run = start(sequence)
    step = _stuck(run, 0, clock)
    ConversationMessage.objects.create(
        conversation=chat, direction="out", author="agent", text="Hi", status="sent", key=step.idempotency_key
    )

    recover_stuck()

    run.refresh_from_db()
    assert run.status == "done" and calls(vendors, "/sendMessage") == []


def test_a_step_running_within_its_timeout_is_left_alone(agent, kommo, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    run = start(sequence)
    SequenceStep.objects.filter(run=run).update(status="running", claimed_at=clock.now - timedelta(minutes=1))

    assert recover_stuck() == 0 and dispatch_due() == 0
    assert first_step(run).status == "running"


# --- delays in working hours ---------------------------------------------------------------

MOSCOW_WEEKDAYS = {
    "timezone": "Europe/Moscow",
    "days": {day: [{"start": "09:00", "end": "18:00"}] for day in ("mon", "tue", "wed", "thu", "fri")},
}


@pytest.mark.parametrize(
    "start_at, delay, expected",
    [
        # Friday 17:00 Moscow (14:00 UTC) + 2 working hours → Monday 10:00 Moscow
        (datetime(2026, 11, 27, 14, 0, tzinfo=UTC), {"hours": 2}, datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
        # Saturday + 30 minutes → Monday 09:30
        (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), {"minutes": 30}, datetime(2026, 11, 30, 6, 30, tzinfo=UTC)),
        # Tuesday 10:00 + 1 day of working time (9 h) → Wednesday 10:00
        (datetime(2026, 11, 24, 7, 0, tzinfo=UTC), {"hours": 9}, datetime(2026, 11, 25, 7, 0, tzinfo=UTC)),
        # within the same day
        (datetime(2026, 11, 24, 7, 0, tzinfo=UTC), {"minutes": 45}, datetime(2026, 11, 24, 7, 45, tzinfo=UTC)),
    ],
)
def test_a_delay_in_working_hours_skips_nights_and_weekends(agent, start_at, delay, expected):
    agent.schedule = MOSCOW_WEEKDAYS

    assert runner.delay_until({**delay, "working_hours_only": True}, agent, start_at) == expected


def test_a_delay_in_working_hours_across_a_dst_change(agent):
    agent.schedule = {"timezone": "Europe/Berlin", "days": {"fri": [{"start": "16:00", "end": "18:00"}],
                                                           "mon": [{"start": "09:00", "end": "18:00"}]}}
    friday = datetime(2026, 10, 23, 15, 0, tzinfo=UTC)  # 17:00 CEST; clocks go back on Sunday the 25th

    wake = runner.delay_until({"hours": 2, "working_hours_only": True}, agent, friday)

    assert wake == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)  # Monday 10:00 CET: 1 h on Friday, 1 h on Monday


def test_a_plain_delay_counts_calendar_time(agent):
    agent.schedule = MOSCOW_WEEKDAYS

    assert runner.delay_until({"days": 2}, agent, T0) == T0 + timedelta(days=2)


def test_every_step_kind_in_one_run(agent, kommo, chat, vendors, clock, monkeypatch):
    monkeypatch.setattr(
        actions.ai,
        "complete",
        lambda model_spec, system, messages, **kw: Completion(
            text="Written for you", provider="openai", model="m", input_tokens=3, output_tokens=2, latency_ms=5
        ),
    )
    sequence = make_sequence(
        agent,
        trigger_config={},
        steps=[
            {"type": "generate_message", "instruction": "Remind them of the offer"},
            {"type": "send_message", "use_generated": True},
            {"type": "change_stage", "pipeline_id": 6213074, "status_id": 48293916},
            {"type": "add_note", "text": "Follow-up sent to {{lead.name}}"},
            {"type": "create_task", "text": "Call", "responsible_user_id": 42},
        ],
    )
    run = start(sequence)

    step_run(first_step(run).pk)  # every step is due at once: one task does them all

    run.refresh_from_db()
    assert run.status == "done" and run.context == {"generated": "Written for you"}
    assert [s for _, s in steps_of(run)] == ["done"] * 5
    (sent,) = calls(vendors, "/sendMessage")
    assert json.loads(sent.request.body)["text"] == "Written for you"
    (patch,) = calls(vendors, f"/leads/{LEAD}", "PATCH")
    assert json.loads(patch.request.body) == {"pipeline_id": 6213074, "status_id": 48293916}
    (note,) = calls(vendors, "/notes")
    assert json.loads(note.request.body)[0]["params"]["text"] == "Follow-up sent to Заявка"
    (task,) = calls(vendors, "/api/v4/tasks")
    assert json.loads(task.request.body)[0]["responsible_user_id"] == 42
    assert SequenceStep.objects.get(run=run, index=0).output["output_tokens"] == 2


def test_a_reply_in_the_messenger_ends_the_run_when_the_worker_takes_it(agent, kommo, chat, clock, monkeypatch):
    from agents import pipeline

    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    clock.advance(minutes=5)
    message = ConversationMessage.objects.create(
        conversation=chat, direction="in", author="lead", text="Thanks, not now", status="received"
    )
    monkeypatch.setattr(pipeline, "_reply", lambda message: ("skipped", "not answered in this test"))

    pipeline.message_reply(message_id=message.pk)

    run.refresh_from_db()
    assert run.status == "exited" and run.exit_reason == "the lead replied"


def test_a_staff_test_chat_does_not_end_a_real_run(agent, kommo, clock):
    from agents.pipeline import test_chat_send

    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)
    run = start(sequence)
    clock.advance(minutes=5)

    with pytest.MonkeyPatch.context() as patch:
        answer = Completion(text="ok", provider="openai", model="m", input_tokens=1, output_tokens=1, latency_ms=1)
        patch.setattr("agents.pipeline.ai.complete", lambda **kw: answer)
        patch.setattr("agents.pipeline._lead_context", lambda kommo, conversation: pipeline_context())
        test_chat_send(agent=agent, chat_id="staff", sender_name="Staff", text="hello", crm_lead_id=LEAD)

    run.refresh_from_db()
    assert run.status == "scheduled"


def pipeline_context():
    from agents.pipeline import LeadContext

    return LeadContext(None, None)


def test_a_sequence_does_not_start_without_the_agents_crm(agent, clock, api):
    sequence = make_sequence(agent, trigger_config={}, steps=THREE_STEPS)

    with pytest.raises(runner.CannotStart) as refused:
        start(sequence)
    response = api.post(f"/api/sequences/{sequence.pk}/start/", {"lead_id": LEAD}, format="json")

    assert "no active Kommo integration" in str(refused.value)
    assert response.status_code == 400 and "no active Kommo integration" in response.json()["detail"][0]


def test_a_step_interrupted_after_its_run_was_cancelled_stays_ended(agent, kommo, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    run = start(sequence)
    _stuck(run, 0, clock)
    SequenceRun.objects.filter(pk=run.pk).update(status="cancelled")

    recover_stuck()

    assert first_step(run).status == "cancelled" and dispatch_due() == 0


def test_retrying_twice_runs_the_step_once(agent, kommo, vendors, clock):
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "create_task", "text": "Call"}])
    vendors.replace(responses.POST, f"{CRM}/api/v4/tasks", status=400, json={"title": "Bad Request"})
    run = start(sequence)
    step_run(first_step(run).pk)
    run.refresh_from_db()
    assert run.status == "failed"
    stale_copy = SequenceRun.objects.get(pk=run.pk)

    assert runner.run_retry(run) is True
    assert runner.run_retry(stale_copy) is False  # the second click sees the run is no longer failed


def test_a_herd_waits_in_the_database_and_only_a_lost_task_is_handed_over_again(
    agent, kommo, clock, settings, monkeypatch
):
    settings.SEQUENCE_QUEUED_MAX = 3
    settings.SEQUENCE_REQUEUE_SECONDS = 120
    queued: list[int] = []
    monkeypatch.setattr(runner, "async_task", lambda name, step_id, **kwargs: queued.append(step_id))
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "delay", "hours": 1}])
    runs = [start(sequence, lead_id=LEAD + n) for n in range(5)]
    queued.clear()  # the starts' own tasks (each run's first step is due at once)
    SequenceStep.objects.update(queued_at=None)
    for n, run in enumerate(runs):  # due one after another, the last first in id order
        SequenceStep.objects.filter(run=run).update(due_at=T0 - timedelta(minutes=10 - n))
    by_due = [first_step(run).pk for run in runs]

    assert dispatch_due() == 3 and queued == by_due[:3]  # the oldest due first, up to the cap
    clock.advance(seconds=30)
    assert dispatch_due() == 0  # three wait in the queue: the others wait here
    step_run(by_due[0])  # a worker takes one: there is room for one more
    assert dispatch_due() == 1 and queued[-1] == by_due[3]
    clock.advance(seconds=100)  # two of the first three, queued 130 s ago and never started, are lost
    assert dispatch_due() == 2 and queued[-2:] == by_due[1:3]  # handed over again; the fifth still waits
    assert dispatch_due() == 0 and by_due[4] not in queued


def test_a_queue_that_is_slow_to_drain_is_not_handed_the_same_steps_again(agent, kommo, clock, settings, monkeypatch):
    """Steps queued long ago are lost only if the queue holds fewer tasks than steps that
    wait for one; behind a slow queue (a herd on a slow database) they are left alone."""
    from config import tasks

    settings.SEQUENCE_QUEUED_MAX = 3
    settings.SEQUENCE_REQUEUE_SECONDS = 120
    queued: list[int] = []
    monkeypatch.setattr(runner, "async_task", lambda name, step_id, **kwargs: queued.append(step_id))
    in_queue = {"size": 0}
    monkeypatch.setattr(tasks, "task_queue_size", lambda: in_queue["size"])
    sequence = make_sequence(agent, trigger_config={}, steps=[{"type": "delay", "hours": 1}])
    runs = [start(sequence, lead_id=LEAD + n) for n in range(4)]
    queued.clear()
    SequenceStep.objects.update(queued_at=None, due_at=T0 - timedelta(minutes=1))

    assert dispatch_due() == 3
    in_queue["size"] = 3  # their three tasks still wait in the queue
    clock.advance(minutes=10)
    assert dispatch_due() == 0  # slow, not lost: nothing handed twice, the fourth waits here
    in_queue["size"] = 2  # one task is gone (the oldest queued first)
    assert dispatch_due() == 1 and len(queued) == 4 and len(set(queued)) == 3
    assert first_step(runs[3]).queued_at is None
