"""Trigger execution (flow 2.3): a stored CRM event → the agent's active triggers for
that event kind → conditions → actions. Runs in the worker as a CRM event handler
(settings.CRM_EVENT_HANDLERS), never in the webhook request.

Per event:

1. the lead's (or contact's) values are remembered (``EntityState``) so that "changed"
   can be told next time, and the previous ones are the facts' ``previous``;
2. only the agent's active triggers for this event kind are read (one indexed query);
3. the event's cause is looked up (triggers/loops.py): a trigger skips its own change,
   and chains stop at MAX_CHAIN_DEPTH;
4. each trigger is evaluated; a skip is logged with the first condition that failed and
   the value it saw; a match becomes a ``TriggerFiring`` (one per event and trigger)
   holding a copy of the actions;
5. each firing's actions run in order, each through an ``ActionRun`` row claimed before
   the action and marked done after it.

Exactly once: a repeated event (the sweeper, a redelivered task, a retry) finds the
firing and its done actions and does only what is left. An action found "running" was
interrupted (a worker killed mid-action): a stage, field or tag change, a sequence start
or stop and a calendar booking are done again (the same result twice); a message is sent
only if its row (keyed by the action, written before the channel is called) shows it
never went out, found done if it did, and failed if that is unknown; a task or note is
looked for among the lead's in the CRM (by its text, since shortly before the claim) and
made only if it is not there. An action claimed less than
ACTION_CLAIM_TIMEOUT ago is another worker's, and is left to it.

Failures: a transient one (the CRM's or a messenger's 5xx, 429, timeouts, the AI
provider's) leaves the action pending and raises TransientError, so the dispatcher runs
this handler again with backoff; on the event's last attempt it fails instead. A
permanent one fails the action, marks the firing's remaining actions "not run", and is
logged with the reason. Other triggers of the event go on either way.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import operator
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.ai.errors import AIError, AIPermanentError
from agents.models import Agent, ExecutionLog
from agents.realtime import send_events_on_commit
from agents.schemas import parse_schedule
from agents.services import LogEntry, execution_logs_insert
from config.services import rows_update
from crm.dispatch import MAX_ATTEMPTS, Batch, batch_load, batch_writer
from crm.models import CrmEvent
from integrations.errors import IntegrationError, NotFound, PermanentError, RateLimited, TransientError, Unconfirmed
from integrations.models import Integration

from . import actions as action_types
from .engine import (
    Facts,
    Result,
    contact_from_api,
    contact_from_webhook,
    contact_values,
    evaluate,
    first_failure,
    lead_from_api,
    lead_from_webhook,
    lead_values,
)
from .loops import MAX_CHAIN_DEPTH, Cause, find_cause, recent_changes
from .models import ActionRun, EntityState, Trigger, TriggerFiring
from .schemas import IDEMPOTENT_ACTIONS, KIND_EVENTS, VERIFIABLE_ACTIONS

logger = logging.getLogger(__name__)

ACTION_CLAIM_TIMEOUT = timedelta(minutes=5)
# A firing's first action of these types is claimed in the transaction that creates the
# firing (one write fewer). Should the worker die before doing it, the claim looks like
# one interrupted mid-action, which for these is safe: a task or note is looked for in
# the CRM before it is made, a stage, field or tag change is done again.
PRECLAIMED_ACTIONS = VERIFIABLE_ACTIONS | {"change_stage", "update_field", "add_tags", "remove_tags"}
UNCONFIRMED_KEY = "unconfirmed_since"  # in ActionRun.result: an attempt's write was not confirmed then
VERIFY_MARGIN_SECONDS = 60  # looking for a write: from this long before it (clocks differ)
ERROR_MAX_CHARS = 1000
# In a batch, an event is decided with the events that follow it, up to this many in all:
# their lead states, skips, firings and action rows are written together (_BatchWork)
PLAN_AHEAD = 25
LEAD_KINDS = frozenset({"lead_added", "lead_updated", "lead_status_changed", "lead_responsible_changed"})
CONTACT_KINDS = frozenset({"contact_added", "contact_updated"})


# --- facts of an event ---------------------------------------------------------------------


def agent_zone(agent: Agent) -> ZoneInfo:
    schedule = parse_schedule(agent.schedule)
    return schedule.zone if schedule else ZoneInfo(settings.TIME_ZONE)


def remember_state(event: CrmEvent) -> dict[str, list] | None:
    """Store the values this event shows for its lead or contact; return the values they
    replaced (None when unknown: the first event seen, or an older one arriving late)."""
    return remember_states([event]).get(event.pk)


def remember_states(events: list[CrmEvent]) -> dict[int, dict[str, list] | None]:
    """``remember_state`` of each event, in their order: {event id: the values replaced}.
    One statement per round: an entity seen n times among the events takes n rounds."""
    rounds: list[list[tuple[CrmEvent, str, dict]]] = []
    sightings: Counter = Counter()
    for event in events:
        if event.kind in LEAD_KINDS:
            entity_type, values = "lead", lead_values(lead_from_webhook(event.data))
        elif event.kind in CONTACT_KINDS:
            entity_type, values = "contact", contact_values(contact_from_webhook(event.data))
        else:
            continue
        if not event.entity_id:
            continue
        seen = sightings[(event.integration_id, entity_type, event.entity_id)]
        sightings[(event.integration_id, entity_type, event.entity_id)] += 1
        if seen == len(rounds):
            rounds.append([])
        rounds[seen].append((event, entity_type, values))
    remembered: dict[int, dict[str, list] | None] = {}
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    postgresql = connection.vendor == "postgresql"
    for rows in rounds:
        if postgresql:  # the rows as one JSON parameter (see config.services.rows_update)
            cells = [[e.integration_id, entity_type, e.entity_id, values, e.id] for e, entity_type, values in rows]
            params: list[Any] = [now, orjson.dumps(cells, option=orjson.OPT_NON_STR_KEYS).decode()]
        else:
            params = []
            for event, entity_type, values in rows:
                params += [event.integration_id, entity_type, event.entity_id, json.dumps(values), event.id, now]
        statement = _remember_statement(connection.vendor, connection.ops.quote_name, 1 if postgresql else len(rows))
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            returned = {(row[0], row[1], row[2]): (row[3], row[4]) for row in cursor.fetchall()}
        for event, entity_type, _ in rows:
            previous, event_id = returned[(event.integration_id, entity_type, event.entity_id)]
            if event_id != event.id:
                remembered[event.id] = None  # a later event was seen already
            else:
                # a new row (None); the values this event replaced; or, for this event
                # again (a retry), the same change as the first time
                remembered[event.id] = json.loads(previous) if isinstance(previous, str) else previous
    return remembered


@functools.cache
def _remember_statement(vendor: str, quote: Callable[[str], str], rows: int = 1) -> str:
    """One statement for ``rows`` entities, atomic under concurrent workers: a row moves
    to an event's values only when it has not seen that event or a later one."""
    table = quote(EntityState._meta.db_table)
    integration, entity_type, entity_id, values, previous, event_id, updated_at = (
        quote(EntityState._meta.get_field(name).column)
        for name in ("integration", "entity_type", "entity_id", "values", "previous", "event_id", "updated_at")
    )
    newer = f"({table}.{event_id} IS NULL OR {table}.{event_id} < EXCLUDED.{event_id})"

    def moved(column: str, to: str) -> str:
        return f"{column} = CASE WHEN {newer} THEN {to} ELSE {table}.{column} END"

    if vendor == "postgresql":  # any number of rows, as one JSON array
        source = (
            "SELECT (r->>0)::bigint, r->>1, (r->>2)::bigint, r->3, NULL, (r->>4)::bigint, %s "
            "FROM jsonb_array_elements(%s::jsonb) AS r"
        )
    else:
        source = "VALUES " + ", ".join(["(%s, %s, %s, %s, NULL, %s, %s)"] * rows)
    return (
        f"INSERT INTO {table} ({integration}, {entity_type}, {entity_id}, {values}, {previous}, {event_id}, "
        f"{updated_at}) {source} "
        f"ON CONFLICT ({integration}, {entity_type}, {entity_id}) DO UPDATE SET "
        f"{moved(previous, f'{table}.{values}')}, {moved(values, f'EXCLUDED.{values}')}, "
        f"{moved(updated_at, f'EXCLUDED.{updated_at}')}, {moved(event_id, f'EXCLUDED.{event_id}')} "
        f"RETURNING {integration}, {entity_type}, {entity_id}, {previous}, {event_id}"
    )


def lead_loader(integration: Integration, lead_id: int | None):
    if not lead_id:
        return None

    def load() -> dict[str, Any] | None:
        from agents.pipeline import read_lead_context

        try:
            return lead_from_api(read_lead_context(integration, lead_id).lead)
        except NotFound:
            return None

    return load


def contact_loader(integration: Integration, lead_id: int | None, contact_id: int | None = None):
    if not lead_id and not contact_id:
        return None

    def load() -> dict[str, Any] | None:
        from agents.pipeline import read_lead_context
        from crm import connection

        try:
            if lead_id:
                contact = read_lead_context(integration, lead_id, contact_id=contact_id).contact
            else:
                contact = connection.call(integration, lambda c: c.get_contact(contact_id), max_wait=10)
        except NotFound:
            return None
        return contact_from_api(contact) if contact else None

    return load


def event_facts(event: CrmEvent, agent: Agent, previous: dict[str, list] | None) -> Facts:
    data = event.data if isinstance(event.data, dict) else {}
    facts = Facts(event=KIND_EVENTS.get(event.kind, event.kind), at=event.received_at, zone=agent_zone(agent))
    integration = event.integration
    overrides: dict[str, list] = {}
    if event.kind in LEAD_KINDS:
        facts.lead = lead_from_webhook(data)
        lead = facts.lead
        if data.get("old_status_id"):
            old_pipeline = data.get("old_pipeline_id") or lead.get("pipeline_id")
            overrides["status"] = [[int(old_pipeline or 0), int(data["old_status_id"])]]
            if data.get("old_pipeline_id"):
                overrides["pipeline"] = [int(data["old_pipeline_id"])]
            elif previous is None:
                overrides["pipeline"] = [lead.get("pipeline_id")] if lead.get("pipeline_id") else []
        if data.get("old_responsible_user_id"):
            overrides["responsible_user"] = [int(data["old_responsible_user_id"])]
    elif event.kind in CONTACT_KINDS:
        facts.contact = contact_from_webhook(data)
    elif event.kind == "incoming_message":
        facts.message_text = str(data.get("text") or "")
    elif event.kind == "note_added":
        note = data.get("note") if isinstance(data.get("note"), dict) else data
        facts.note_text = str(note.get("text") or "")
    if previous is not None or overrides:
        facts.previous = {**(previous or {}), **overrides}
        facts.previous_complete = previous is not None
    if facts.lead is None:
        facts.load_lead = lead_loader(integration, event.lead_id)
    if facts.contact is None:
        contact_id = data.get("contact_id") if event.kind == "incoming_message" else None
        facts.load_contact = contact_loader(integration, event.lead_id, _int(contact_id))
    return facts


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- the handler ---------------------------------------------------------------------------


def run_triggers(event: CrmEvent) -> None:
    """The CRM event handler (settings.CRM_EVENT_HANDLERS)."""
    if event.integration.integration_type != Integration.Type.KOMMO:
        return
    work = batch_writer(event, "triggers", _BatchWork)
    if work is None:  # alone: decided and written now
        plan = _plan(event, remember_state(event))
        if plan is not None:
            _record([plan])
    else:  # in a batch: decided and written with the next events (_BatchWork)
        plan = work.plan(event)
    if plan is None:
        return
    if plan.error is not None:  # what was decided before it is kept; the rest is retried
        raise plan.error
    final = event.attempts + 1 >= MAX_ATTEMPTS
    retry: IntegrationError | None = None
    for trigger, firing in plan.to_run:
        ctx = action_types.ActionContext(
            agent=plan.agent,
            kommo=event.integration,
            facts=plan.facts,
            lead_id=event.lead_id,
            depth=plan.depth,
            trigger_id=trigger.pk,
            reference=f"trigger:{trigger.pk}:event:{event.pk}",
        )
        try:
            firing_run(firing, ctx, final=final, later=work)
        except (TransientError, RateLimited) as exc:
            retry = exc
    if retry is not None:
        raise retry


class _Plan:
    """One event's decisions before they are written: the skips to log, and per candidate
    trigger in order its firing (an earlier attempt's) or the match to fire."""

    __slots__ = ("event", "agent", "facts", "cause", "depth", "started", "skipped", "decided", "to_run", "error")

    def __init__(self, event: CrmEvent, agent: Agent, facts: Facts, cause: Cause | None, started: float) -> None:
        self.event, self.agent, self.facts, self.cause, self.started = event, agent, facts, cause, started
        self.depth = cause.depth if cause else 0
        self.skipped: list[LogEntry] = []
        self.decided: list[tuple[Trigger, TriggerFiring | Result]] = []
        self.to_run: list[tuple[Trigger, TriggerFiring]] = []
        self.error: Exception | None = None


def _plan(event: CrmEvent, previous: dict[str, list] | None) -> _Plan | None:
    """Steps 2–4 without writing: None when no active trigger listens to the event. A
    failure midway (a CRM read, retried later) is kept in ``error``, with what was decided
    before it."""
    event_name = KIND_EVENTS.get(event.kind)
    if event_name is None:
        return None
    triggers = _candidates(event, event.integration.agent_id, event_name)
    if not triggers:
        return None
    agent = event_agent(event)
    if not agent.active:
        return None
    started = time.monotonic()
    facts = event_facts(event, agent, previous)
    cause = find_cause(
        integration_id=event.integration_id,
        lead_id=event.lead_id,
        kind=event.kind,
        event_id=event.pk,
        facts=facts,
        recent=_own_changes(event),
    )
    plan = _Plan(event, agent, facts, cause, started)
    firings = _firings(event)
    logged = _skips_logged(event) if event.attempts else set()
    skips: list[tuple[Trigger, dict[str, Any]]] = []
    try:
        for trigger in triggers:
            firing = firings.get(trigger.pk)
            if firing is not None:
                plan.decided.append((trigger, firing))
                continue
            result, why_not = _decide(trigger, facts, cause)
            if why_not is not None:
                if trigger.pk not in logged:  # a retry does not log a skip twice
                    skips.append((trigger, why_not))
                continue
            plan.decided.append((trigger, result))
    except Exception as exc:
        plan.error = exc
    # the event's skips share its evaluation's end and duration
    finished, duration_ms = timezone.now(), int((time.monotonic() - started) * 1000)
    about = {"event_id": event.pk, "event": KIND_EVENTS.get(event.kind, event.kind)}
    caused = {"cause": cause.as_dict()} if cause else {}
    plan.skipped = [
        LogEntry(
            **_log_fields(trigger, event, ExecutionLog.Status.SKIPPED),
            detail={"trigger": trigger.name, **about, **why_not, **caused},
            duration_ms=duration_ms,
            finished_at=finished,
        )
        for trigger, why_not in skips
    ]
    return plan


def _log_fields(trigger: Trigger, event: CrmEvent, status: str) -> dict[str, Any]:
    """What a trigger's execution log entry about an event says besides its detail."""
    return {
        "agent_id": trigger.agent_id,
        "kind": ExecutionLog.Kind.TRIGGER,
        "status": status,
        "ref_type": "trigger",
        "ref_id": trigger.pk,
        "crm_lead_id": event.lead_id,
    }


def _record(plans: list[_Plan]) -> None:
    """Write the plans' skips and new firings in one transaction, and set their
    ``to_run``. Should a firing exist already (another worker matched the same event a
    moment ago), each is written on its own and shares that worker's."""
    matches = [
        (trigger, plan.event, item, plan.depth, plan.cause)
        for plan in plans
        for trigger, item in plan.decided
        if isinstance(item, Result)
    ]
    skipped = [entry for plan in plans for entry in plan.skipped]
    fired: dict[tuple[int, int], TriggerFiring] = {}
    if skipped or matches:
        try:
            with transaction.atomic():
                execution_logs_insert(entries=skipped)
                fired = _fire_all(matches)
        except IntegrityError:
            with transaction.atomic():
                execution_logs_insert(entries=skipped)
                for trigger, event, result, depth, cause in matches:
                    fired[(event.pk, trigger.pk)] = _fire(trigger, event, result, depth, cause)
    for plan in plans:
        plan.to_run = [
            (trigger, fired[(plan.event.pk, trigger.pk)] if isinstance(item, Result) else item)
            for trigger, item in plan.decided
        ]
        plan.skipped, plan.decided = [], []


class _BatchWork:
    """The trigger engine's part of a batch of events (crm.dispatch.Batch).

    Decisions: the first event not yet decided is decided with the PLAN_AHEAD that follow
    it: their lead states in one statement per round (``remember_states``), their skips,
    firings, logs and action rows in one transaction (``_record``). Not the whole batch at
    once: a worker killed midway leaves at most that many events whose first action is
    claimed but not begun (taken up again after ACTION_CLAIM_TIMEOUT).

    Outcomes: a firing whose actions all got done is not finished at once: its last
    action's "done", its outcome, its log and its live event are written for the batch's
    done firings together, in the transaction that marks the batch's events done (every
    OUTCOMES_EVERY_SECONDS, crm/dispatch.py). A worker dying first leaves them as dying
    just before the write always did: the events run again and the last action is found
    interrupted. A firing that failed or is to be retried is written at once, as alone."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.plans: dict[int, _Plan | None] = {}
        self.done: list[tuple[TriggerFiring, ExecutionLog | None, dict, list[ActionRun]]] = []
        self.writing: list[tuple[TriggerFiring, ExecutionLog | None, dict, list[ActionRun]]] = []

    def plan(self, event: CrmEvent) -> _Plan | None:
        if event.pk not in self.plans:
            events = self.batch.events
            at = next(n for n, e in enumerate(events) if e.pk == event.pk)
            # ahead only events never tried: every handler runs on them (a retry may run
            # only the handlers that failed, and this one may not be among them)
            kommo = Integration.Type.KOMMO
            ahead = [event] + [
                e
                for e in events[at + 1 : at + PLAN_AHEAD]
                if e.pk not in self.plans and not e.attempts and e.integration.integration_type == kommo
            ]
            previous = remember_states(ahead)
            plans: dict[int, _Plan | None] = {}
            for e in ahead:
                try:
                    plans[e.pk] = _plan(e, previous.get(e.pk))
                except Exception:
                    if e is event:
                        raise
                    # decided at its own turn instead, where the failure is its own
            _record([plan for plan in plans.values() if plan is not None])
            self.plans.update(plans)
        return self.plans.pop(event.pk)

    # -- crm.dispatch.BatchWriter ---------------------------------------------------------

    def finished(
        self, firing: TriggerFiring, log: ExecutionLog | None, live: dict, unwritten: list[ActionRun]
    ) -> None:
        self.done.append((firing, log, live, unwritten))

    def pending(self) -> bool:
        return bool(self.done)

    def write(self) -> None:
        done, self.done = self.done, []
        self.writing = done  # until the transaction commits: what salvage() keeps
        transaction.on_commit(lambda: self._committed(done))
        runs = [run for *_, unwritten in done for run in unwritten]
        rows_update(runs, ["status", "result", "error", "finished_at"])
        rows_update([firing for firing, *_ in done], ["status", "error", "finished_at"])
        rows_update([log for _, log, *_ in done if log is not None], _LOG_FIELDS)
        send_events_on_commit([live for _, _, live, _ in done])

    def _committed(self, done: list) -> None:
        if self.writing is done:
            self.writing = []

    def salvage(self) -> None:
        """The actions done are recorded one by one if the database allows; the rest
        stays to be written with the batch's next done marks."""
        self.done, self.writing = self.writing + self.done, []
        for *_, unwritten in self.done:
            for run in unwritten:
                with contextlib.suppress(DatabaseError):
                    ActionRun.objects.filter(pk=run.pk).update(**run.unwritten)

    def release(self, event_ids: list[int]) -> None:
        """The first actions claimed with their firings, of events let go unbegun: pending
        again, for the drain that takes the events."""
        runs = [
            run.pk
            for event_id in event_ids
            if (plan := self.plans.pop(event_id, None)) is not None
            for _, firing in plan.to_run
            for run in getattr(firing, "fresh_runs", ())
            if getattr(run, "preclaimed", False)
        ]
        if runs:
            ActionRun.objects.filter(pk__in=runs, status=ActionRun.Status.RUNNING, attempts=1).update(
                status=ActionRun.Status.PENDING, attempts=0, claimed_at=None
            )


def _candidates(event: CrmEvent, agent_id: int, event_name: str) -> list[Trigger]:
    """The agent's active triggers for this event, in id order: for a batch, one query for
    the (agent, event) pairs of all its events."""
    loaded = batch_load(event, "triggers.candidates", _candidates_of)
    if loaded is None:
        return list(Trigger.objects.filter(agent_id=agent_id, event=event_name, active=True).order_by("id"))
    return loaded.get((agent_id, event_name), [])


def _candidates_of(events: list[CrmEvent]) -> dict[tuple[int, str], list[Trigger]]:
    pairs = {
        (event.integration.agent_id, KIND_EVENTS[event.kind])
        for event in events
        if event.kind in KIND_EVENTS and event.integration.integration_type == Integration.Type.KOMMO
    }
    found: dict[tuple[int, str], list[Trigger]] = defaultdict(list)
    if pairs:
        wanted = functools.reduce(operator.or_, (Q(agent_id=agent, event=name) for agent, name in sorted(pairs)))
        for trigger in Trigger.objects.filter(wanted, active=True).order_by("id"):
            found[(trigger.agent_id, trigger.event)].append(trigger)
    return found


def _own_changes(event: CrmEvent) -> list | None:
    """The lead's recent own changes (triggers/loops.py): for a batch, one query for the
    leads of all its events. None outside a batch."""
    loaded = batch_load(
        event,
        "triggers.own_changes",
        lambda events: recent_changes([(e.integration_id, e.lead_id) for e in events if e.lead_id]),
    )
    return None if loaded is None else loaded.get((event.integration_id, event.lead_id), [])


def event_agent(event: CrmEvent) -> Agent:
    """The agent of the event's integration: for a batch, read once for all its events."""
    agent_id = event.integration.agent_id
    loaded = batch_load(
        event, "agents", lambda events: Agent.objects.in_bulk({e.integration.agent_id for e in events})
    )
    if loaded is None or agent_id not in loaded:
        return Agent.objects.get(pk=agent_id)
    return loaded[agent_id]


def _firings(event: CrmEvent) -> dict[int, TriggerFiring]:
    """{trigger id: firing} of the event (a repeated event's); for a batch, one query."""
    loaded = batch_load(
        event,
        "triggers.firings",
        lambda events: list(TriggerFiring.objects.filter(event_id__in=[e.pk for e in events])),
    )
    if loaded is None:
        return {f.trigger_id: f for f in TriggerFiring.objects.filter(event_id=event.pk)}
    return {f.trigger_id: f for f in loaded if f.event_id == event.pk}


def _skips_logged(event: CrmEvent) -> set[int]:
    """Triggers whose skip of this event an earlier attempt logged."""
    entries = ExecutionLog.objects.filter(
        ref_type="trigger",
        status=ExecutionLog.Status.SKIPPED,
        crm_lead_id=event.lead_id,
        created_at__gte=event.received_at,
    ).values_list("ref_id", "detail")
    return {ref_id for ref_id, detail in entries if (detail or {}).get("event_id") == event.pk}


def _decide(trigger: Trigger, facts: Facts, cause: Cause | None) -> tuple[Result | None, dict[str, Any] | None]:
    """(the evaluation, None) for a match; (evaluation or None, why not) for a skip."""
    if cause is not None and cause.trigger_id == trigger.pk:
        return None, {"reason": "this event reports this trigger's own change to the lead: it does not fire on it"}
    if cause is not None and cause.depth >= MAX_CHAIN_DEPTH:
        return None, {
            "reason": f"this event is a change made by a chain of {cause.depth} trigger firings: "
            f"chains stop at {MAX_CHAIN_DEPTH}"
        }
    try:
        result = evaluate(trigger.conditions, facts)
    except (TransientError, RateLimited):
        raise
    except IntegrationError as exc:  # the lead or contact could not be read for good
        return None, {"reason": f"the CRM could not tell a value: {exc}"}
    if result.passed:
        return result, None
    failed = first_failure(result)
    if failed is None:
        return result, {"reason": result.reason, "failed": None}
    detail = failed.as_dict()
    if failed.field:  # one test: its reason is the skip's, and it did not pass
        del detail["reason"], detail["passed"]
    return result, {"reason": failed.reason, "failed": detail}


def _fire(trigger: Trigger, event: CrmEvent, result: Result, depth: int, cause: Cause | None) -> TriggerFiring:
    try:
        with transaction.atomic():
            (firing,) = _fire_all([(trigger, event, result, depth, cause)]).values()
            return firing
    except IntegrityError:  # another worker matched it a moment ago: share its firing
        return TriggerFiring.objects.get(event=event, trigger=trigger)


def _fire_all(
    matches: list[tuple[Trigger, CrmEvent, Result, int, Cause | None]],
) -> dict[tuple[int, int], TriggerFiring]:
    """The matches' firings, {(event id, trigger id): firing}, each with its log entry
    and every action's row (so that running them needs no look-ups), one insert of each
    kind; the first action already claimed when it only writes to the CRM (see
    PRECLAIMED_ACTIONS). The caller holds the transaction."""
    if not matches:
        return {}
    explained = [result.as_dict() for _, _, result, _, _ in matches]
    logs = ExecutionLog.objects.bulk_create(
        [
            ExecutionLog(
                **_log_fields(trigger, event, ExecutionLog.Status.STARTED),
                detail={
                    "trigger": trigger.name,
                    "event_id": event.pk,
                    "event": KIND_EVENTS.get(event.kind, event.kind),
                    "matched": explanation,
                    **({"cause": cause.as_dict()} if cause else {}),
                },
            )
            for (trigger, event, _, _, cause), explanation in zip(matches, explained, strict=True)
        ]
    )
    firings = TriggerFiring.objects.bulk_create(
        [
            TriggerFiring(
                trigger=trigger,
                event=event,
                agent_id=trigger.agent_id,
                crm_lead_id=event.lead_id,
                actions=list(trigger.actions),
                explanation=explanation,
                depth=depth,
                log=log,
            )
            for (trigger, event, _, depth, _), log, explanation in zip(matches, logs, explained, strict=True)
        ]
    )
    now = timezone.now()
    runs: list[ActionRun] = []
    for firing in firings:
        firing.fresh_runs = [
            ActionRun(firing=firing, index=index, type=action["type"]) for index, action in enumerate(firing.actions)
        ]
        if firing.fresh_runs and firing.fresh_runs[0].type in PRECLAIMED_ACTIONS:
            first = firing.fresh_runs[0]
            first.status, first.attempts, first.claimed_at, first.preclaimed = ActionRun.Status.RUNNING, 1, now, True
        runs += firing.fresh_runs
    ActionRun.objects.bulk_create(runs)
    return {(firing.event_id, firing.trigger_id): firing for firing in firings}


# --- running a firing ----------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


def firing_run(
    firing: TriggerFiring, ctx: action_types.ActionContext, *, final: bool = False, later: _BatchWork | None = None
) -> str:
    """Do what is left of the firing's actions; returns the firing's status. Raises
    TransientError when an action should be tried again later (unless ``final``).
    ``later``: a firing done is finished with its batch's others (``_BatchWork``)."""
    if firing.status in (TriggerFiring.Status.DONE, TriggerFiring.Status.FAILED):
        return firing.status
    started = time.monotonic()
    fresh = getattr(firing, "fresh_runs", None)  # just created by _fire, all pending
    runs = {run.index: run for run in (fresh if fresh is not None else ActionRun.objects.filter(firing=firing))}
    status, error, retry = TriggerFiring.Status.DONE, "", None
    failed_at: int | None = None
    for index, action in enumerate(firing.actions):
        run = runs.get(index)
        if run is None:  # a firing from before its rows were made with it
            run = runs[index] = _run_row(firing, index, action["type"])
        if run.status == ActionRun.Status.DONE:
            continue
        if run.status in (ActionRun.Status.FAILED, ActionRun.Status.NOT_RUN):
            status, error, failed_at = TriggerFiring.Status.FAILED, run.error, index
            break
        last = index == len(firing.actions) - 1
        outcome, detail = _run_action(run, action, ctx, final=final, last=last)
        if outcome == "done":
            continue
        if outcome == "busy":
            status, error, retry = TriggerFiring.Status.RETRYING, detail, TransientError(detail)
            runs = None  # another worker holds a row: what it did is read afresh for the log
            break
        if outcome == "retry":
            status, error = TriggerFiring.Status.RETRYING, detail
            retry = TransientError(f"action {index} ({action['type']}): {detail}")
            break
        status, error, failed_at = TriggerFiring.Status.FAILED, f"action {index} ({action['type']}): {detail}", index
        break
    if failed_at is not None:
        _not_run(firing, failed_at + 1, runs)
    _finish(firing, ctx, status, error, started, runs, later)
    if retry is not None:
        raise retry
    return status


def _run_row(firing: TriggerFiring, index: int, kind: str) -> ActionRun:
    run, _ = ActionRun.objects.get_or_create(firing=firing, index=index, defaults={"type": kind})
    return run


def _run_action(run: ActionRun, action: dict[str, Any], ctx, *, final: bool, last: bool = False) -> tuple[str, str]:
    """Claim and do one action: ("done" | "retry" | "failed" | "busy", detail). ``last``:
    the firing's last action, whose "done" ``_finish`` writes with the firing's outcome
    (one transaction fewer; it follows at once, so a worker dying in between leaves the
    action "running" exactly as dying just before its own write would)."""
    now = timezone.now()
    ctx.action_key = f"trigger-firing-{run.firing_id}-action-{run.index}"
    # an earlier attempt whose write was not confirmed: look for it before writing again
    ctx.verify_since = (run.result or {}).get(UNCONFIRMED_KEY) if action["type"] in VERIFIABLE_ACTIONS else None
    if getattr(run, "preclaimed", False):  # claimed by _fire, with the firing: this worker's
        run.preclaimed = False
        attempts = run.attempts
    else:
        if run.status == ActionRun.Status.RUNNING:
            if run.claimed_at and run.claimed_at > now - ACTION_CLAIM_TIMEOUT:
                return "busy", f"action {run.index} is being done by another worker"
            if action["type"] == "send_message":
                # the message row tells: none — not sent, send it now; "sent" — done; "sending" —
                # unknown, and deliver() refuses to send it a second time
                pass
            elif action["type"] in VERIFIABLE_ACTIONS:
                # the worker died while doing it: done again only if the CRM does not have it
                since = int((run.claimed_at or now).timestamp()) - VERIFY_MARGIN_SECONDS
                ctx.verify_since = min(ctx.verify_since or since, since)
            elif action["type"] not in IDEMPOTENT_ACTIONS:
                reason = (
                    "interrupted: the worker stopped while doing it, and whether it reached the lead is not known; "
                    "not done again, so that it is never done twice"
                )
                _set(run, status=ActionRun.Status.FAILED, error=reason, finished_at=now)
                return "failed", reason
        claimed = ActionRun.objects.filter(pk=run.pk, status=run.status, attempts=run.attempts).update(
            status=ActionRun.Status.RUNNING, attempts=F("attempts") + 1, claimed_at=now
        )
        if not claimed:
            return "busy", f"action {run.index} was taken by another worker"
        attempts = run.attempts = run.attempts + 1
        run.status, run.claimed_at = ActionRun.Status.RUNNING, now
    try:
        result = action_types.HANDLERS[action["type"]](action, ctx)
    except Unconfirmed as exc:
        if action["type"] in VERIFIABLE_ACTIONS and not final:
            # it may exist: the next attempt looks for it before writing (from a little
            # before this attempt, for the CRM's clock)
            since = ctx.verify_since or int(now.timestamp()) - VERIFY_MARGIN_SECONDS
            _set(run, status=ActionRun.Status.PENDING, error=_error(exc), result={UNCONFIRMED_KEY: since})
            return "retry", _error(exc)
        reason = f"not confirmed, so not done again: {_error(exc)}"
        _set(run, status=ActionRun.Status.FAILED, error=reason[:ERROR_MAX_CHARS], finished_at=timezone.now())
        return "failed", reason
    except (TransientError, RateLimited, IntegrationError, AIError) as exc:
        transient = isinstance(exc, TransientError | RateLimited) or (
            isinstance(exc, AIError) and not isinstance(exc, AIPermanentError)
        )
        if transient and not final:
            _set(run, status=ActionRun.Status.PENDING, error=_error(exc))
            return "retry", _error(exc)
        reason = _error(exc) if not transient else f"gave up after {attempts} attempts: {_error(exc)}"
        if isinstance(exc, IntegrationError) and not isinstance(exc, PermanentError | TransientError | RateLimited):
            reason = f"the CRM or channel refused the credentials ({_error(exc)}); reconnect the integration"
        _set(run, status=ActionRun.Status.FAILED, error=reason[:ERROR_MAX_CHARS], finished_at=timezone.now())
        return "failed", reason
    except DatabaseError as exc:  # the database went away or was locked: worth another try
        if not final:
            values: dict[str, Any] = {"status": ActionRun.Status.PENDING, "error": _error(exc)}
            if action["type"] in VERIFIABLE_ACTIONS:  # the write may have been done before the error
                values["result"] = {UNCONFIRMED_KEY: ctx.verify_since or int(now.timestamp()) - VERIFY_MARGIN_SECONDS}
            _set(run, **values)
            return "retry", _error(exc)
        reason = f"gave up after {attempts} attempts: {_error(exc)}"
        _set(run, status=ActionRun.Status.FAILED, error=reason[:ERROR_MAX_CHARS], finished_at=timezone.now())
        return "failed", reason
    except Exception as exc:  # a bug: fail it visibly rather than retry blindly
        logger.exception("triggers.action.error", extra={"action_run_id": run.pk, "type": action["type"]})
        reason = f"unexpected error: {type(exc).__name__}"
        _set(run, status=ActionRun.Status.FAILED, error=reason, finished_at=timezone.now())
        return "failed", reason
    done = {"status": ActionRun.Status.DONE, "result": result, "error": "", "finished_at": timezone.now()}
    if last:
        for name, value in done.items():
            setattr(run, name, value)
        run.unwritten = done
    else:
        _set(run, **done)
    return "done", ""


def _set(run: ActionRun, **values: Any) -> None:
    """Write ``values`` to the action's row, and to the object (the firing's log reads it)."""
    ActionRun.objects.filter(pk=run.pk).update(**values)
    for name, value in values.items():
        setattr(run, name, value)


NOT_RUN_REASON = "an earlier action failed"


def _not_run(firing: TriggerFiring, start: int, runs: dict[int, ActionRun] | None) -> None:
    """Mark the actions after a failed one "not run" (those still pending)."""
    if runs is not None and all(index in runs for index in range(start, len(firing.actions))):
        ActionRun.objects.filter(firing=firing, index__gte=start, status=ActionRun.Status.PENDING).update(
            status=ActionRun.Status.NOT_RUN, error=NOT_RUN_REASON
        )
        for index in range(start, len(firing.actions)):
            if runs[index].status == ActionRun.Status.PENDING:
                runs[index].status, runs[index].error = ActionRun.Status.NOT_RUN, NOT_RUN_REASON
        return
    for index in range(start, len(firing.actions)):
        run = _run_row(firing, index, firing.actions[index]["type"])
        if run.status == ActionRun.Status.PENDING:
            ActionRun.objects.filter(pk=run.pk, status=ActionRun.Status.PENDING).update(
                status=ActionRun.Status.NOT_RUN, error=NOT_RUN_REASON
            )


_LOG_STATUS = {
    TriggerFiring.Status.DONE: ExecutionLog.Status.SUCCESS,
    TriggerFiring.Status.FAILED: ExecutionLog.Status.FAILED,
    TriggerFiring.Status.RETRYING: ExecutionLog.Status.RETRYING,
}


def action_outcomes(firing: TriggerFiring, runs: dict[int, ActionRun] | None = None) -> list[dict[str, Any]]:
    """Each action's status, result, error and attempts: from ``runs`` when the caller
    holds them up to date, else read."""
    if runs is None:
        runs = {run.index: run for run in ActionRun.objects.filter(firing=firing)}
    outcomes = []
    for index, action in enumerate(firing.actions):
        run = runs.get(index)
        outcome: dict[str, Any] = {"index": index, "type": action["type"], "status": run.status if run else "pending"}
        if run and run.result:
            outcome["result"] = run.result
        if run and run.error:
            outcome["error"] = run.error
        if run:
            outcome["attempts"] = run.attempts
        outcomes.append(outcome)
    return outcomes


def _finish(
    firing: TriggerFiring,
    ctx,
    status: str,
    error: str,
    started: float,
    runs: dict[int, ActionRun] | None,
    later: _BatchWork | None = None,
) -> None:
    outcomes = action_outcomes(firing, runs)
    finished = timezone.now() if status != TriggerFiring.Status.RETRYING else None
    unwritten = [run for run in (runs or {}).values() if getattr(run, "unwritten", None)]
    firing.status, firing.error, firing.finished_at = status, error, finished
    log = _finished_log(firing, outcomes, finished, started) if firing.log_id else None
    live = _live_event(firing, ctx, outcomes)
    if later is not None and status == TriggerFiring.Status.DONE:
        later.finished(firing, log, live, unwritten)
    else:
        try:
            _finish_write(firing, log, live, unwritten)
        except DatabaseError:
            for run in unwritten:  # the action was done: that much is kept if the database allows
                with contextlib.suppress(DatabaseError):
                    ActionRun.objects.filter(pk=run.pk).update(**run.unwritten)
            raise
        for run in unwritten:
            run.unwritten = None
    logger.log(
        logging.WARNING if status == TriggerFiring.Status.FAILED else logging.INFO,
        "trigger.fired",
        extra={
            "firing_id": firing.pk,
            "trigger_id": firing.trigger_id,
            "agent_id": ctx.agent.pk,
            "lead_id": firing.crm_lead_id,
            "event_id": firing.event_id,
            "status": status,
            "actions": ",".join(f"{o['type']}:{o['status']}" for o in outcomes),
            "duration_ms": int((time.monotonic() - started) * 1000),
            **({"error": error[:300]} if error else {}),
        },
    )


def _finished_log(firing: TriggerFiring, outcomes: list, finished: datetime | None, started: float) -> ExecutionLog:
    """The firing's log entry with its outcome (not saved): the one _fire wrote is still
    in memory; an older firing's is read."""
    log = firing.log if TriggerFiring.log.is_cached(firing) else ExecutionLog.objects.get(pk=firing.log_id)
    log.status = _LOG_STATUS[firing.status]
    log.error = firing.error
    log.detail = {**log.detail, "firing_id": firing.pk, "actions": outcomes}
    log.duration_ms = (log.duration_ms or 0) + int((time.monotonic() - started) * 1000)
    log.finished_at = finished
    return log


def _live_event(firing: TriggerFiring, ctx, outcomes: list) -> dict[str, Any]:
    return {
        "owner_id": ctx.agent.owner_id,
        "type": "trigger.fired",
        "payload": {
            "firing_id": firing.pk,
            "trigger_id": firing.trigger_id,
            "agent_id": ctx.agent.pk,
            "lead_id": firing.crm_lead_id,
            "event_id": firing.event_id,
            "status": firing.status,
            "error": firing.error,
            "actions": [{"type": o["type"], "status": o["status"]} for o in outcomes],
        },
    }


_LOG_FIELDS = ["status", "error", "detail", "duration_ms", "finished_at"]


def _finish_write(firing: TriggerFiring, log: ExecutionLog | None, live: dict, unwritten: list[ActionRun]) -> None:
    """One transaction: the last action's "done", the firing's outcome, its log, the live event."""
    with transaction.atomic():
        for run in unwritten:
            ActionRun.objects.filter(pk=run.pk).update(**run.unwritten)
        TriggerFiring.objects.filter(pk=firing.pk).update(
            status=firing.status, error=firing.error, finished_at=firing.finished_at
        )
        if log is not None:
            log.save(update_fields=_LOG_FIELDS)
        send_events_on_commit([live])
