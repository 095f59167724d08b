"""Trigger execution: a stored CRM event → the agent's triggers for its kind → actions,
each done at most once, loops stopped, everything explained in the execution log."""
from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
import requests
import responses

from agents.models import ExecutionLog, LiveEvent
from crm.intake import delivery_store
from crm.models import CrmEvent
from crm.tasks import process_events
from crm.webhooks import parse_delivery
from tests.crm.webhook_helpers import ACCOUNT_ID
from tests.factories import make_integration, make_trigger
from triggers.models import ActionRun, TriggerFiring

CRM = "https://acme.kommo.com"
LEAD = 23416597
PIPELINE, NEW, WON = 6213074, 48293914, 142


@pytest.fixture
def kommo(agent, settings):
    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers"]
    return make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": CRM, "account_id": ACCOUNT_ID},
        credentials={"access_token": "crm-token"},
    )


@pytest.fixture
def crm_api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.patch(f"{CRM}/api/v4/leads/{LEAD}", json={"id": LEAD})
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.post(f"{CRM}/api/v4/leads/{LEAD}/notes", json={"_embedded": {"notes": [{"id": 7001}]}})
        yield mock


def lead_form(action: str, *, lead_id: int = LEAD, modified: int = 1717079340, **fields) -> bytes:
    p = f"leads[{action}][0]"
    values = {"id": lead_id, "name": "Заявка с сайта", "pipeline_id": PIPELINE, "status_id": NEW, "price": 15000}
    values |= {"responsible_user_id": 8374811, "last_modified": modified} | fields
    pairs = [(f"{p}[{key}]", str(value)) for key, value in values.items()]
    pairs += [("account[subdomain]", "acmesales"), ("account[id]", str(ACCOUNT_ID))]
    return urlencode(pairs).encode()


def changed_to(status_id: int) -> dict:
    return {"field": "status", "operator": "changed_to", "value": {"pipeline_id": PIPELINE, "status_id": status_id}}


def deliver(integration, data: bytes) -> list[int]:
    stored = delivery_store(integration_id=integration.id, changes=parse_delivery(data).changes)
    return list(stored.event_ids)


def task_and_note_event(agent, integration) -> int:
    """A trigger that makes a task, then a note; and a stored event that fires it (not run yet)."""
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "create_task", "text": "Call"}, {"type": "add_note", "text": "Noted"}],
    )
    (event_id,) = deliver(integration, lead_form("status", status_id=WON, old_status_id=NEW))
    return event_id


def run(integration, data: bytes) -> list[int]:
    ids = deliver(integration, data)
    process_events(ids)
    return ids


def calls(mock, suffix: str, method: str = "POST"):
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


def test_a_matching_trigger_acts_and_logs(agent, kommo, crm_api):
    trigger = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[{"field": "status", "operator": "changed_to", "value": {"status_id": WON}}],
        actions=[
            {"type": "create_task", "text": "Thank {{lead.name}} for {{lead.price}}", "due_in_minutes": 30},
            {"type": "add_note", "text": "Won by trigger"},
        ],
    )

    (event_id,) = run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    (task,) = calls(crm_api, "/api/v4/tasks")
    body = json.loads(task.request.body)[0]
    assert body["text"] == "Thank Заявка с сайта for 15000"
    assert body["entity_id"] == LEAD and body["responsible_user_id"] == 8374811
    assert len(calls(crm_api, "/notes")) == 1
    firing = TriggerFiring.objects.get()
    assert (firing.trigger_id, firing.event_id, firing.status) == (trigger.id, event_id, "done")
    assert list(ActionRun.objects.values_list("status", flat=True)) == ["done", "done"]
    log = ExecutionLog.objects.get(kind="trigger")
    assert (log.status, log.ref_id, log.crm_lead_id) == ("success", trigger.id, LEAD)
    assert [a["status"] for a in log.detail["actions"]] == ["done", "done"]
    assert LiveEvent.objects.filter(owner=agent.owner, type="trigger.fired").count() == 1
    assert CrmEvent.objects.get(pk=event_id).status == "done"


def test_a_skip_is_logged_with_the_first_failing_condition_and_what_it_saw(agent, kommo, crm_api):
    trigger = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[
            {"field": "status", "operator": "changed_to", "value": {"status_id": WON}},
            {"field": "price", "operator": "gt", "value": 20000},
        ],
    )

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    assert len(crm_api.calls) == 0
    assert not TriggerFiring.objects.exists()
    log = ExecutionLog.objects.get(kind="trigger")
    assert (log.status, log.ref_type, log.ref_id, log.crm_lead_id) == ("skipped", "trigger", trigger.id, LEAD)
    assert log.detail["failed"]["path"] == "conditions[1]"
    assert log.detail["failed"]["seen"] == "15000"
    assert log.detail["reason"] == "The lead's price (budget) is 15000, not greater than 20000"


def test_why_a_trigger_did_not_fire_for_a_lead_is_in_the_api(agent, kommo, crm_api, api):
    trigger = make_trigger(
        agent, event="lead_status_changed", conditions=[{"field": "tags", "operator": "contains", "value": "vip"}]
    )
    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    response = api.get(f"/api/execution-logs/?ref_type=trigger&ref_id={trigger.id}&crm_lead_id={LEAD}")

    (entry,) = response.json()["results"]
    assert entry["status"] == "skipped"
    assert entry["detail"]["reason"] == "The lead's tags are empty, not containing 'vip'"


def test_only_the_agents_triggers_for_the_event_kind_are_read(agent, kommo, crm_api, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[])
    process_events(deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW)))  # the lead is known now
    (second,) = deliver(kommo, lead_form("status", status_id=NEW, old_status_id=WON, modified=1717079500))
    with CaptureQueriesContext(connection) as few:
        process_events([second])
    for _ in range(60):  # other kinds of this agent, and other agents
        make_trigger(agent, event="note_added", conditions=[], actions=[])
        make_trigger(event="lead_status_changed", conditions=[], actions=[])
    (third,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW, modified=1717079999))
    with CaptureQueriesContext(connection) as many:
        process_events([third])

    assert len(many.captured_queries) == len(few.captured_queries)
    assert TriggerFiring.objects.count() == 3


def test_a_batch_of_events_reads_triggers_agents_and_firings_once_and_each_agent_gets_its_own(
    agent, kommo, crm_api, settings
):
    """A drain's batch: the candidates of every (agent, event) pair in one query, the
    agents in one, the events' firings in one, the leads' own changes in one; each event
    still sees only its agent's triggers for its kind, in order."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from crm.drain import events_drain
    from tests.factories import make_agent

    other_agent = make_agent()
    other = make_integration(
        other_agent, integration_type="kommo", config={"base_url": CRM}, credentials={"access_token": "t"}
    )
    mine = make_trigger(agent, event="lead_status_changed", conditions=[], actions=[])
    theirs = make_trigger(other_agent, event="lead_status_changed", conditions=[], actions=[])
    note = make_trigger(agent, event="note_added", conditions=[], actions=[])
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[], active=False)
    events = [
        *deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW)),
        *deliver(other, lead_form("status", status_id=WON, old_status_id=NEW, lead_id=LEAD + 1)),
        *deliver(kommo, lead_form("status", status_id=NEW, old_status_id=WON, lead_id=LEAD + 2)),
    ]

    with CaptureQueriesContext(connection) as captured:
        assert events_drain()["done"] == 3

    fired = sorted(TriggerFiring.objects.values_list("event_id", "trigger_id"))
    assert fired == sorted([(events[0], mine.id), (events[1], theirs.id), (events[2], mine.id)])
    assert note.id not in {trigger for _, trigger in fired}
    reads = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert sum('FROM "triggers_trigger" ' in sql for sql in reads) == 1
    assert sum('FROM "triggers_triggerfiring" ' in sql for sql in reads) == 1
    assert sum('FROM "triggers_ownchange" ' in sql for sql in reads) == 1  # the causes (triggers/loops.py)
    assert sum('FROM "agents_agent" ' in sql and "IN (" in sql for sql in reads) == 1


def test_a_repeated_event_does_not_act_twice(agent, kommo, crm_api):
    from triggers.execution import run_triggers

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "create_task", "text": "Call"}])
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    event = CrmEvent.objects.select_related("integration").get(pk=event_id)

    run_triggers(event)
    run_triggers(event)  # a redelivered task, a sweeper, a second worker
    process_events([event_id])

    assert len(calls(crm_api, "/api/v4/tasks")) == 1
    assert TriggerFiring.objects.count() == 1 and ActionRun.objects.get().attempts == 1


class WorkerKilled(BaseException):
    """Stands in for kill -9: nothing after it runs, no handler catches it."""


def test_a_crash_between_two_actions_resumes_with_the_second_only(agent, kommo, crm_api, monkeypatch):
    from triggers import execution

    event_id = task_and_note_event(agent, kommo)
    real = execution._run_action

    def die_before_the_second(run, action, ctx, **options):
        if run.index == 1:
            raise WorkerKilled
        return real(run, action, ctx, **options)

    monkeypatch.setattr(execution, "_run_action", die_before_the_second)
    with pytest.raises(WorkerKilled):
        process_events([event_id])
    assert CrmEvent.objects.get(pk=event_id).status == "pending"
    monkeypatch.setattr(execution, "_run_action", real)

    process_events([event_id])  # the task is delivered again after the crash

    assert len(calls(crm_api, "/api/v4/tasks")) == 1
    assert len(calls(crm_api, "/notes")) == 1
    assert [r.status for r in ActionRun.objects.order_by("index")] == ["done", "done"]
    assert TriggerFiring.objects.get().status == "done"


def test_the_last_actions_done_is_written_with_the_firing_and_kept_if_that_write_fails(
    agent, kommo, crm_api, monkeypatch
):
    """Alone (outside a batch), the last action's "done" goes in the transaction of the
    firing's outcome (one write fewer). Should that transaction fail, the action is still
    recorded done, and the retry finishes the firing without doing anything again."""
    from django.db import OperationalError

    from triggers import execution

    event_id = task_and_note_event(agent, kommo)
    real = execution._finish_write

    def database_gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    def alone():
        execution.run_triggers(CrmEvent.objects.select_related("integration").get(pk=event_id))

    monkeypatch.setattr(execution, "_finish_write", database_gone)
    with pytest.raises(OperationalError):
        alone()
    assert [r.status for r in ActionRun.objects.order_by("index")] == ["done", "done"]
    assert TriggerFiring.objects.get().status == "running"  # its outcome was not written

    monkeypatch.setattr(execution, "_finish_write", real)
    alone()

    assert len(calls(crm_api, "/api/v4/tasks")) == 1 and len(calls(crm_api, "/notes")) == 1
    assert TriggerFiring.objects.get().status == "done"
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 1


def test_in_a_batch_a_done_firing_is_written_with_the_events_done_and_its_actions_kept_if_that_fails(
    agent, kommo, crm_api, monkeypatch
):
    """In a batch, the done firings' outcomes are written in the transaction that marks
    the events done. Should it fail, the actions are still recorded done one by one, the
    event is not done, and running it again finishes the firing without acting again."""
    from django.db import OperationalError

    from triggers import execution

    event_id = task_and_note_event(agent, kommo)
    real = execution._BatchWork.write

    def database_gone(self):
        real(self)  # the statements run, then the commit fails
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(execution._BatchWork, "write", database_gone)
    with pytest.raises(OperationalError):
        process_events([event_id])
    assert [r.status for r in ActionRun.objects.order_by("index")] == ["done", "done"]
    assert TriggerFiring.objects.get().status == "running"  # its outcome was rolled back
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 0
    event = CrmEvent.objects.get(pk=event_id)
    assert (event.status, event.attempts) == ("pending", 0)

    monkeypatch.setattr(execution._BatchWork, "write", real)
    process_events([event_id])

    assert len(calls(crm_api, "/api/v4/tasks")) == 1 and len(calls(crm_api, "/notes")) == 1
    assert TriggerFiring.objects.get().status == "done"
    assert ExecutionLog.objects.get(kind="trigger").status == "success"
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 1
    assert CrmEvent.objects.get(pk=event_id).status == "done"


def test_a_batch_writes_its_events_firings_and_outcomes_together(agent, kommo, crm_api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[changed_to(WON)],
        actions=[{"type": "add_note", "text": "Won"}],
    )
    make_trigger(agent, event="lead_status_changed", conditions=[changed_to(NEW)], actions=[])
    leads = [LEAD + n for n in range(1, 7)]
    for lead in leads:
        crm_api.post(f"{CRM}/api/v4/leads/{lead}/notes", json={"_embedded": {"notes": [{"id": lead}]}})
    ids = [i for lead in leads for i in deliver(kommo, won_form(lead))]

    type(kommo).objects.filter(pk=kommo.pk).update(status="connected")  # no status change to announce
    with CaptureQueriesContext(connection) as queries:
        process_events(ids)

    def statements(what: str) -> int:
        return sum(1 for q in queries.captured_queries if what in q["sql"])

    assert TriggerFiring.objects.filter(status="done").count() == 6
    assert ExecutionLog.objects.filter(kind="trigger", status="success").count() == 6
    assert ExecutionLog.objects.filter(kind="trigger", status="skipped").count() == 6
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 6
    assert len(calls(crm_api, "/notes")) == 6
    assert statements('INSERT INTO "triggers_entitystate"') == 1
    assert statements('INSERT INTO "triggers_triggerfiring"') == 1
    assert statements('INSERT INTO "triggers_actionrun"') == 1
    assert statements('INSERT INTO "agents_executionlog"') == 2  # the skips, the firings' entries
    assert statements('UPDATE "triggers_triggerfiring"') == 1
    assert statements('UPDATE "triggers_actionrun"') == 1
    assert statements('UPDATE "agents_executionlog"') == 1
    assert statements('INSERT INTO "agents_liveevent"') == 1


def test_events_let_go_unbegun_have_their_claimed_first_actions_pending_again(agent, kommo, crm_api):
    """A batch slowed by a vendor lets go of the events it has not begun (crm/dispatch.py):
    their firings are written already, and the first action claimed with each is given
    back, so that the drain taking the events does it at once."""
    from crm.dispatch import events_process

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "Hi"}])
    leads = [LEAD + n for n in range(1, 4)]

    def slow(request):
        time.sleep(0.4)
        return 200, {}, json.dumps({"_embedded": {"notes": [{"id": 1}]}})

    for lead in leads:
        crm_api.add_callback(responses.POST, f"{CRM}/api/v4/leads/{lead}/notes", callback=slow)
    ids = [i for lead in leads for i in deliver(kommo, won_form(lead))]
    CrmEvent.objects.filter(pk__in=ids).update(claimed_at=timezone_now())

    counts = events_process(event_ids=ids, claimed=True, deadline=time.monotonic() + 0.2)

    assert counts["released"] == 2 and counts["done"] == 1
    assert TriggerFiring.objects.count() == 3  # decided together
    runs = ActionRun.objects.filter(firing__event_id__in=ids[1:])
    assert [(r.status, r.attempts, r.claimed_at) for r in runs] == [("pending", 0, None)] * 2
    process_events(ids[1:])
    assert len(calls(crm_api, "/notes")) == 3
    assert set(ActionRun.objects.values_list("status", flat=True)) == {"done"}


def won_form(lead_id: int) -> bytes:
    return lead_form("status", lead_id=lead_id, status_id=WON, old_status_id=NEW)


def timezone_now():
    from django.utils import timezone

    return timezone.now()


def _crash_inside(monkeypatch, kind: str):
    """The worker dies after the action reached the CRM and before it was recorded."""
    from triggers import actions

    real = actions.HANDLERS[kind]

    def reach_then_die(action, ctx):
        real(action, ctx)
        raise WorkerKilled

    monkeypatch.setitem(actions.HANDLERS, kind, reach_then_die)
    return real


def _age_claims(minutes: int = 10):
    from datetime import timedelta

    from django.utils import timezone

    ActionRun.objects.update(claimed_at=timezone.now() - timedelta(minutes=minutes))


@pytest.mark.parametrize("made", [True, False], ids=["the task was made", "it was not"])
def test_an_interrupted_task_is_looked_for_in_the_crm_and_made_at_most_once(agent, kommo, crm_api, monkeypatch, made):
    from triggers import actions

    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "create_task", "text": "Call"}, {"type": "add_note", "text": "after"}],
    )
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    real = _crash_inside(monkeypatch, "create_task")
    with pytest.raises(WorkerKilled):
        process_events([event_id])
    monkeypatch.setitem(actions.HANDLERS, "create_task", real)

    process_events([event_id])  # soon after: another worker's claim is respected
    assert ActionRun.objects.get(index=0).status == "running"
    _age_claims()
    # the claim is stale now; the dispatcher's schedule runs the handler again
    CrmEvent.objects.filter(pk=event_id).update(status="pending")
    tasks = [{"id": 9001, "text": "Call"}] if made else []
    crm_api.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": tasks}})
    process_events([event_id])

    assert len(calls(crm_api, "/api/v4/tasks")) == (1 if made else 2)
    assert len(calls(crm_api, "/api/v4/tasks", "GET")) == 1
    first, second = ActionRun.objects.order_by("index")
    assert first.status == "done" and first.result.get("found_done", False) is made
    assert second.status == "done" and len(calls(crm_api, "/notes")) == 1
    assert TriggerFiring.objects.get().status == "done"


def test_a_first_action_claimed_with_its_firing_and_never_done_is_made_once_after_a_crash(
    agent, kommo, crm_api, monkeypatch
):
    """A firing's first action, when it only writes to the CRM, is claimed in the firing's
    own transaction. The worker dying before doing it leaves it "running", like one
    interrupted mid-action: the retry looks for the task in the CRM, then makes it."""
    from triggers import actions

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "create_task", "text": "Call"}])
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    real = actions.HANDLERS["create_task"]

    def die_first(action, ctx):
        raise WorkerKilled

    monkeypatch.setitem(actions.HANDLERS, "create_task", die_first)
    with pytest.raises(WorkerKilled):
        process_events([event_id])
    run = ActionRun.objects.get()
    assert (run.status, run.attempts) == ("running", 1) and run.claimed_at is not None
    monkeypatch.setitem(actions.HANDLERS, "create_task", real)
    _age_claims()
    crm_api.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": []}})

    process_events([event_id])

    assert len(calls(crm_api, "/api/v4/tasks", "GET")) == 1 and len(calls(crm_api, "/api/v4/tasks")) == 1
    assert ActionRun.objects.get().status == "done" and TriggerFiring.objects.get().status == "done"


def test_an_interrupted_message_is_not_sent_again(agent, kommo, crm_api, monkeypatch):
    from agents import channels
    from agents.models import Conversation

    telegram = make_integration(agent, integration_type="telegram", credentials={"bot_token": "123456:ABC-def"})
    Conversation.objects.create(agent=agent, integration=telegram, chat_id="42", crm_lead_id=LEAD)
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "send_message", "text": "Hi"}, {"type": "add_note", "text": "after"}],
    )
    sent = {"ok": True, "result": {"message_id": 77, "chat": {"id": 42, "type": "private"}, "date": 1, "text": "Hi"}}
    crm_api.post("https://api.telegram.org/bot123456:ABC-def/sendMessage", json=sent)
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    monkeypatch.setattr(channels, "mark_sent", _die)  # sent, never marked sent
    with pytest.raises(WorkerKilled):
        process_events([event_id])
    monkeypatch.undo()
    _age_claims()
    CrmEvent.objects.filter(pk=event_id).update(status="pending")

    process_events([event_id])

    assert len(calls(crm_api, "/sendMessage")) == 1  # not a second time
    first, second = ActionRun.objects.order_by("index")
    assert first.status == "failed" and "not sent again" in first.error
    assert second.status == "not_run" and calls(crm_api, "/notes") == []
    assert TriggerFiring.objects.get().status == "failed"
    assert ExecutionLog.objects.get(kind="trigger").status == "failed"


def _die(*args, **kwargs):
    raise WorkerKilled


def test_an_interrupted_stage_change_is_done_again(agent, kommo, crm_api, monkeypatch):
    from triggers import actions

    make_trigger(
        agent,
        event="lead_added",
        conditions=[],
        actions=[{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": WON}],
    )
    (event_id,) = deliver(kommo, lead_form("add"))
    real = _crash_inside(monkeypatch, "change_stage")
    with pytest.raises(WorkerKilled):
        process_events([event_id])
    monkeypatch.setitem(actions.HANDLERS, "change_stage", real)
    _age_claims()

    process_events([event_id])

    assert len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == 2  # the same stage, set twice: harmless
    assert ActionRun.objects.get().status == "done"


def test_a_transient_failure_is_retried_later_and_done_once(agent, kommo, crm_api):
    from django_q.models import Schedule

    from tests.crm.webhook_helpers import run_schedule

    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "add_note", "text": "first"}, {"type": "change_stage", "pipeline_id": 1, "status_id": 2}],
    )
    # refused for longer than the client waits: tried again by the event's retry
    crm_api.replace(responses.PATCH, f"{CRM}/api/v4/leads/{LEAD}", status=429, headers={"Retry-After": "60"})
    (event_id,) = run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    firing = TriggerFiring.objects.get()
    assert firing.status == "retrying" and "429" in firing.error
    assert [r.status for r in ActionRun.objects.order_by("index")] == ["done", "pending"]
    assert CrmEvent.objects.get(pk=event_id).status == "pending"
    assert ExecutionLog.objects.get(kind="trigger").status == "retrying"
    (retry,) = Schedule.objects.filter(func="crm.tasks.process_events")

    crm_api.replace(responses.PATCH, f"{CRM}/api/v4/leads/{LEAD}", json={"id": LEAD})
    run_schedule(retry)

    assert len(calls(crm_api, "/notes")) == 1  # the done note is not repeated
    assert [r.status for r in ActionRun.objects.order_by("index")] == ["done", "done"]
    assert TriggerFiring.objects.get().status == "done"
    assert CrmEvent.objects.get(pk=event_id).status == "done"
    log = ExecutionLog.objects.get(kind="trigger")
    assert log.status == "success" and log.detail["actions"][1]["attempts"] == 2


@pytest.mark.parametrize("failure", [{"status": 503}, {"body": requests.ReadTimeout("read timed out")}])
@pytest.mark.parametrize("made", [True, False], ids=["the task was made", "it was not"])
def test_a_task_whose_creation_was_not_confirmed_is_looked_for_before_it_is_made_again(
    agent, kommo, crm_api, failure, made
):
    """A timeout or a 5xx after the POST left: the task may exist. The retry looks at the
    lead's tasks first, and creates it only when it is not there."""
    from django_q.models import Schedule

    from tests.crm.webhook_helpers import run_schedule

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "create_task", "text": "Call"}])
    crm_api.replace(responses.POST, f"{CRM}/api/v4/tasks", **failure)
    (event_id,) = run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    action = ActionRun.objects.get()
    assert action.status == "pending" and "not confirmed" in action.error
    assert action.result["unconfirmed_since"] <= int(time.time()) - 59
    assert len(calls(crm_api, "/api/v4/tasks")) == 1  # not repeated at once
    (retry,) = Schedule.objects.filter(func="crm.tasks.process_events")

    tasks = [{"id": 4242, "text": "Call"}] if made else [{"id": 1, "text": "Another task"}]
    crm_api.get(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": tasks}})
    crm_api.replace(responses.POST, f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
    run_schedule(retry)

    (look,) = calls(crm_api, "/api/v4/tasks", "GET")
    assert f"filter%5Bentity_id%5D%5B%5D={LEAD}" in look.request.url
    assert len(calls(crm_api, "/api/v4/tasks")) == (1 if made else 2)
    action.refresh_from_db()
    assert action.status == "done" and action.result["task_id"] == (4242 if made else 9001)
    assert action.result.get("found_done", False) is made
    assert CrmEvent.objects.get(pk=event_id).status == "done"


def test_a_transient_failure_on_the_last_attempt_fails_visibly(agent, kommo, crm_api):
    from crm.dispatch import MAX_ATTEMPTS

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "create_task", "text": "x"}])
    crm_api.replace(responses.POST, f"{CRM}/api/v4/tasks", status=503)
    (event_id,) = deliver(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    CrmEvent.objects.filter(pk=event_id).update(attempts=MAX_ATTEMPTS - 1)

    process_events([event_id])

    run_ = ActionRun.objects.get()
    assert run_.status == "failed" and "not confirmed, so not done again" in run_.error
    assert TriggerFiring.objects.get().status == "failed"
    assert ExecutionLog.objects.get(kind="trigger").status == "failed"


def test_a_permanent_failure_stops_the_remaining_actions_with_the_reason(agent, kommo, crm_api):
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "create_task", "text": "x"}, {"type": "add_note", "text": "y"}],
    )
    crm_api.replace(
        responses.POST,
        f"{CRM}/api/v4/tasks",
        status=400,
        json={"title": "Bad Request", "detail": "complete_till is in the past"},
    )

    (event_id,) = run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    first, second = ActionRun.objects.order_by("index")
    assert first.status == "failed" and "400" in first.error
    assert second.status == "not_run"
    assert calls(crm_api, "/notes") == []
    firing = TriggerFiring.objects.get()
    assert firing.status == "failed" and firing.error.startswith("action 0 (create_task)")
    assert CrmEvent.objects.get(pk=event_id).status == "done"  # the trigger failed, the event was handled
    entry = LiveEvent.objects.get(type="trigger.fired")
    assert entry.payload["status"] == "failed"


def test_a_trigger_does_not_fire_on_its_own_change(agent, kommo, crm_api):
    """"Stage changed → change stage" would loop: its own change comes back as an event."""
    mover = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[],
        actions=[{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": 48293918}],
    )
    run(kommo, lead_form("status", status_id=48293916, old_status_id=NEW))
    assert len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == 1

    # Kommo reports the change the trigger made
    run(kommo, lead_form("status", status_id=48293918, old_status_id=48293916, modified=1717079400))

    assert len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == 1
    skipped = ExecutionLog.objects.get(kind="trigger", status="skipped")
    assert skipped.ref_id == mover.id and "own change" in skipped.detail["reason"]
    assert skipped.detail["cause"]["trigger_id"] == mover.id


def test_in_one_batch_the_echo_takes_the_own_change_and_a_look_alike_after_it_does_not(agent, kommo, crm_api):
    """The batch reads the lead's own changes once; the second event that shows the same
    change finds it taken by the first (read again under its lock), so it is a person's."""
    mover = make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[changed_to(48293916)],
        actions=[{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": 48293918}],
    )
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[changed_to(48293918)],
        actions=[{"type": "create_task", "text": "Moved on"}],
    )
    run(kommo, lead_form("status", status_id=48293916, old_status_id=NEW))
    assert len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == 1

    echo = deliver(kommo, lead_form("status", status_id=48293918, old_status_id=48293916, modified=1717079400))
    person = deliver(kommo, lead_form("status", status_id=48293918, old_status_id=48293916, modified=1717079500))
    process_events(echo + person)  # one batch

    firings = TriggerFiring.objects.exclude(trigger=mover)
    assert [(f.event_id, f.depth) for f in firings.order_by("event_id")] == [(echo[0], 1), (person[0], 0)]


def test_a_person_making_a_change_later_is_not_taken_for_the_trigger(agent, kommo, crm_api):
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[changed_to(WON)],
        actions=[{"type": "create_task", "text": "Won"}],
    )
    make_trigger(
        agent,
        event="lead_status_changed",
        conditions=[changed_to(48293916)],
        actions=[{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": WON}],
    )
    run(kommo, lead_form("status", status_id=48293916, old_status_id=NEW))
    run(kommo, lead_form("status", status_id=WON, old_status_id=48293916, modified=1717079400))  # its change
    assert len(calls(crm_api, "/api/v4/tasks")) == 1  # a chain: the other trigger reacts to it

    # a person moves the lead back and then to won again: both are people's changes
    run(kommo, lead_form("status", status_id=NEW, old_status_id=WON, modified=1717079500))
    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW, modified=1717079600))

    assert len(calls(crm_api, "/api/v4/tasks")) == 2
    assert TriggerFiring.objects.filter(depth=0).count() == 2


def test_a_cycle_between_triggers_stops_at_the_chain_limit(agent, kommo, crm_api):
    from triggers.loops import MAX_CHAIN_DEPTH

    a, b = 48293916, 48293918

    def mover(source, target):
        return make_trigger(
            agent,
            event="lead_status_changed",
            conditions=[changed_to(source)],
            actions=[{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": target}],
        )

    mover(a, b)
    mover(b, a)
    run(kommo, lead_form("status", status_id=a, old_status_id=NEW))
    previous, current, modified = a, b, 1717079400
    patches = calls(crm_api, f"/leads/{LEAD}", "PATCH")
    while len(patches) < 10:  # Kommo reports each change the triggers make, until they stop
        run(kommo, lead_form("status", status_id=current, old_status_id=previous, modified=modified))
        if len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == len(patches):
            break
        patches = calls(crm_api, f"/leads/{LEAD}", "PATCH")
        previous, current, modified = current, previous, modified + 60

    assert len(calls(crm_api, f"/leads/{LEAD}", "PATCH")) == MAX_CHAIN_DEPTH
    skipped = ExecutionLog.objects.filter(kind="trigger", status="skipped")
    assert any("chains stop at" in entry.detail["reason"] for entry in skipped)


def test_the_live_event_reaches_the_owner_only(agent, kommo, crm_api, other_user):
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "x"}])

    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))

    (event,) = LiveEvent.objects.filter(type="trigger.fired")
    assert event.owner_id == agent.owner_id != other_user.id
    assert event.payload["lead_id"] == LEAD and event.payload["actions"] == [{"type": "add_note", "status": "done"}]


def test_an_inactive_trigger_or_agent_does_nothing(agent, kommo, crm_api):
    note = [{"type": "add_note", "text": "x"}]
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=note, active=False)
    run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "x"}])
    agent.active = False
    agent.save()
    run(kommo, lead_form("status", status_id=NEW, old_status_id=WON, modified=1717079999))

    assert len(crm_api.calls) == 0 and not ExecutionLog.objects.filter(kind="trigger").exists()


def test_a_field_change_is_told_from_the_previous_event(agent, kommo, crm_api):
    make_trigger(
        agent,
        event="lead_field_changed",
        conditions=[{"field": "price", "operator": "changed_from", "value": 15000}],
        actions=[{"type": "add_tags", "tags": ["upsell"]}],
    )
    run(kommo, lead_form("update"))  # first seen: nothing to compare with
    assert len(crm_api.calls) == 0
    first_skip = ExecutionLog.objects.get(kind="trigger")
    assert "previous value is not known" in first_skip.detail["reason"]

    run(kommo, lead_form("update", price=30000, modified=1717079999))

    (patch,) = calls(crm_api, f"/leads/{LEAD}", "PATCH")
    assert json.loads(patch.request.body) == {"tags_to_add": [{"name": "upsell"}]}


def test_update_field_and_tags_are_sent_as_kommo_expects(agent, kommo, crm_api):
    make_trigger(
        agent,
        event="lead_added",
        conditions=[],
        actions=[
            {"type": "update_field", "field": "lead.cf.1033479", "value": "from {{lead.name}}"},
            {"type": "update_field", "field": "price", "value": 99},
            {"type": "remove_tags", "tags": ["cold"]},
        ],
    )

    run(kommo, lead_form("add"))

    bodies = [json.loads(c.request.body) for c in calls(crm_api, f"/leads/{LEAD}", "PATCH")]
    assert bodies == [
        {"custom_fields_values": [{"field_id": 1033479, "values": [{"value": "from Заявка с сайта"}]}]},
        {"price": 99},
        {"tags_to_delete": [{"name": "cold"}]},
    ]


def test_change_stage_is_sent_as_kommo_expects_and_recorded_as_the_triggers_own(agent, kommo, crm_api):
    from triggers.models import OwnChange

    move = [{"type": "change_stage", "pipeline_id": PIPELINE, "status_id": WON}]
    trigger = make_trigger(agent, event="lead_added", conditions=[], actions=move)

    run(kommo, lead_form("add"))

    (patch,) = calls(crm_api, f"/leads/{LEAD}", "PATCH")
    assert json.loads(patch.request.body) == {"pipeline_id": PIPELINE, "status_id": WON}
    change = OwnChange.objects.get()
    assert (change.crm_lead_id, change.trigger_id, change.depth) == (LEAD, trigger.id, 1)
    assert change.expect == {"status": [[PIPELINE, WON]]}


def test_a_crm_read_failing_midway_is_retried_and_each_skip_logged_once(agent, kommo, crm_api, monkeypatch):
    rich = [{"field": "price", "operator": "gt", "value": 10**6}]
    first = make_trigger(agent, event="lead_status_changed", conditions=rich)
    needs_contact = make_trigger(
        agent, event="lead_status_changed", conditions=[{"field": "contact.name", "operator": "equals", "value": "Ann"}]
    )
    crm_api.get(f"{CRM}/api/v4/leads/{LEAD}", status=429, headers={"Retry-After": "0"})  # busy: try later
    (event_id,) = run(kommo, lead_form("status", status_id=WON, old_status_id=NEW))
    assert CrmEvent.objects.get(pk=event_id).status == "pending"  # retried later
    assert list(ExecutionLog.objects.filter(kind="trigger").values_list("ref_id", flat=True)) == [first.id]

    lead = {"id": LEAD, "name": "x", "status_id": 1, "pipeline_id": 2}
    crm_api.replace(responses.GET, f"{CRM}/api/v4/leads/{LEAD}", json=lead)
    process_events([event_id])

    skipped = sorted(ExecutionLog.objects.filter(kind="trigger", status="skipped").values_list("ref_id", flat=True))
    assert skipped == sorted([first.id, needs_contact.id])
    assert CrmEvent.objects.get(pk=event_id).status == "done"


def test_lead_states_of_a_batch_are_remembered_in_order_one_statement_a_round(kommo, django_assert_num_queries):
    """Two events of one lead in a batch: the second sees what the first showed. A lead
    seen twice takes a second round (one statement can change a row only once)."""
    from triggers.execution import remember_states

    first, second = deliver(kommo, lead_form("update", price=100, modified=1717079000)), deliver(
        kommo, lead_form("update", price=200, modified=1717079100)
    )
    (other,) = deliver(kommo, lead_form("update", lead_id=LEAD + 1, price=5))
    events = list(CrmEvent.objects.filter(pk__in=first + second + [other]).order_by("id"))

    with django_assert_num_queries(2):
        previous = remember_states(events)

    assert previous[first[0]] is None and previous[other] is None  # never seen before
    assert previous[second[0]]["price"] == [100]
    # run again (a retry): the first is older than what the row holds now, the second
    # sees the same change as the first time
    again = remember_states(events)
    assert again[first[0]] is None and again[second[0]]["price"] == [100]


def test_a_retry_decides_no_event_whose_trigger_handling_it_does_not_rerun(agent, kommo, crm_api, settings):
    """A retry batch runs only the handlers that failed: an event whose triggers were
    handled already is not decided again (it would get firings nobody runs)."""
    from crm.dispatch import events_process

    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers", "crm.handlers.log_event"]
    first, second = (deliver(kommo, won_form(LEAD + n))[0] for n in (1, 2))
    CrmEvent.objects.filter(pk__in=[first, second]).update(attempts=1)
    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "Hi"}])
    crm_api.post(f"{CRM}/api/v4/leads/{LEAD + 1}/notes", json={"_embedded": {"notes": [{"id": 1}]}})

    events_process(
        event_ids=[first, second],
        pending_handlers={first: ["triggers.execution.run_triggers"], second: ["crm.handlers.log_event"]},
    )

    assert list(TriggerFiring.objects.values_list("event_id", "status")) == [(first, "done")]


def test_outcomes_whose_write_failed_are_written_with_the_next(agent, kommo, crm_api, monkeypatch):
    """A failed write of the batch's outcomes keeps them pending: the next write (here the
    one at the batch's end) records the firing and its event together."""
    from django.db import OperationalError

    from crm import dispatch
    from triggers import execution

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "Hi"}])
    ids = [deliver(kommo, won_form(LEAD + n))[0] for n in (1, 2)]
    for n in (1, 2):
        crm_api.post(f"{CRM}/api/v4/leads/{LEAD + n}/notes", json={"_embedded": {"notes": [{"id": n}]}})
    monkeypatch.setattr(dispatch, "OUTCOMES_EVERY_SECONDS", 0)  # a write after every event
    real, failures = execution._BatchWork.write, []

    def fails_once(self):
        real(self)
        if not failures:
            failures.append(1)
            raise OperationalError("the database went away for a moment")

    monkeypatch.setattr(execution._BatchWork, "write", fails_once)
    with pytest.raises(OperationalError):
        process_events(ids)

    first = TriggerFiring.objects.get(event_id=ids[0])
    assert first.status == "done" and CrmEvent.objects.get(pk=ids[0]).status == "done"
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 1
    assert CrmEvent.objects.get(pk=ids[1]).status == "pending"  # not begun: the batch stopped
    # its firing was written with the first's; its claimed first action is given back
    (run,) = ActionRun.objects.filter(firing__event_id=ids[1])
    assert (run.status, run.attempts, run.claimed_at) == ("pending", 0, None)
    process_events(ids[1:])
    assert TriggerFiring.objects.get(event_id=ids[1]).status == "done"
    assert len(calls(crm_api, "/notes")) == 2


def test_outcomes_written_once_are_not_written_again_when_a_later_write_fails(agent, kommo, crm_api, monkeypatch):
    from django.db import OperationalError

    from crm import dispatch
    from triggers import execution

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "Hi"}])
    ids = [deliver(kommo, won_form(LEAD + n))[0] for n in (1, 2)]
    for n in (1, 2):
        crm_api.post(f"{CRM}/api/v4/leads/{LEAD + n}/notes", json={"_embedded": {"notes": [{"id": n}]}})
    monkeypatch.setattr(dispatch, "OUTCOMES_EVERY_SECONDS", 0)  # a write after every event
    real, writes = execution._BatchWork.write, []

    def second_fails(self):
        real(self)
        writes.append(1)
        if len(writes) == 2:
            raise OperationalError("the database went away for a moment")

    monkeypatch.setattr(execution._BatchWork, "write", second_fails)
    with pytest.raises(OperationalError):  # the second write fails, the one at the batch's end succeeds
        process_events(ids)

    assert set(TriggerFiring.objects.values_list("status", flat=True)) == {"done"}
    assert LiveEvent.objects.filter(type="trigger.fired").count() == 2
    assert set(CrmEvent.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"done"}


def test_an_event_failing_to_be_decided_ahead_fails_alone_not_the_event_that_decided_it(
    agent, kommo, crm_api, monkeypatch
):
    from triggers import execution

    make_trigger(agent, event="lead_status_changed", conditions=[], actions=[{"type": "add_note", "text": "Hi"}])
    ids = [deliver(kommo, won_form(LEAD + n))[0] for n in (1, 2)]
    crm_api.post(f"{CRM}/api/v4/leads/{LEAD + 1}/notes", json={"_embedded": {"notes": [{"id": 1}]}})
    real = execution.event_facts

    def broken_for_the_second(event, *args):
        if event.pk == ids[1]:
            raise ValueError("a bug in one event's facts")
        return real(event, *args)

    monkeypatch.setattr(execution, "event_facts", broken_for_the_second)
    process_events(ids)

    assert CrmEvent.objects.get(pk=ids[0]).status == "done"
    assert TriggerFiring.objects.get(event_id=ids[0]).status == "done"
    second = CrmEvent.objects.get(pk=ids[1])
    assert second.status == "failed" and "a bug in one event's facts" in second.error
