"""Sequence runs (flow 2.4): a lead goes through a sequence's steps over days.

State lives in the database. A run has one row per step (``SequenceStep``) with a
status and a due time; a delay is a step "waiting" until its due time, not a sleeping
process. Steps are executed by the django-q2 task ``sequences.tasks.run_step``:

* starting a run queues its first step at once;
* the *dispatcher* (``dispatch_due``) hands every step that has come due to the queue.
  ``manage.py worker`` runs it every SEQUENCE_DISPATCH_SECONDS beside the cluster, and
  a django-q2 schedule runs it every minute as well (so a plain ``qcluster`` still
  makes progress, only later);
* a finished step runs the next one in the same task when it is due now.

Exactly once: a step is *claimed* (scheduled/waiting → running, one conditional UPDATE)
before it is done, and marked done in the transaction that records its output, so a
repeated task or a second dispatcher finds nothing to claim. A worker killed mid-step
leaves the step "running"; the dispatcher notices it after STEP_TIMEOUT and recovers it
by kind: a delay, an AI text or a stage change is simply done again; a CRM task or note
is looked up in the CRM (created since the claim, same text) and only created again
when it is not there; a message is looked up in the conversation store, and when it is
not there the step fails visibly instead of sending it a second time (the channel
cannot tell whether it arrived).

Failures: transient ones (a 5xx, 429, timeout of the CRM, the channel or the AI
provider) put the step back with backoff (30 s, 2 min, 8 min, 32 min); after
MAX_ATTEMPTS, or at once for a permanent one, the step and the run fail with the
reason, and the admin can retry the run from that step.

Exits: before each step, and again right before a message goes out, the run's exit
rules are checked (the lead replied, the lead is in an exit stage); CRM events and
replies end runs as they arrive too (sequences/handlers.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.tasks import async_task

from agents.ai.errors import AIError, AIPermanentError
from agents.channels import sent_by_key
from agents.models import Agent, ConversationMessage, ExecutionLog
from agents.realtime import send_event_on_commit
from agents.schemas import parse_schedule
from crm.models import CrmEvent
from crm.services import write_find
from integrations.errors import IntegrationError, NotFound, PermanentError, RateLimited, TransientError, Unconfirmed
from integrations.models import Integration
from triggers import actions as crm_actions
from triggers.engine import Facts, _equal
from triggers.execution import UNCONFIRMED_KEY, VERIFY_MARGIN_SECONDS, agent_zone, contact_loader, lead_loader
from triggers.models import EntityState
from triggers.schemas import VERIFIABLE_ACTIONS

from .models import ACTIVE_RUN_STATUSES, Sequence, SequenceRun, SequenceStep
from .schemas import exit_rules_of

logger = logging.getLogger(__name__)

RUN_STEP_TASK = "sequences.tasks.run_step"
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 30
VERIFIABLE_STEPS = VERIFIABLE_ACTIONS  # a task or note: looked for before it is made again
RETRY_FACTOR = 4
STEP_TIMEOUT = timedelta(minutes=10)  # default; longer than any step (an AI call with its retries)
REQUEUE_AFTER = timedelta(minutes=2)  # default; a step queued and not started by then is queued again


def step_timeout() -> timedelta:
    """SEQUENCE_STEP_TIMEOUT_SECONDS: a step "running" longer was interrupted."""
    seconds = getattr(settings, "SEQUENCE_STEP_TIMEOUT_SECONDS", None)
    return timedelta(seconds=seconds) if seconds else STEP_TIMEOUT


def requeue_after() -> timedelta:
    """SEQUENCE_REQUEUE_SECONDS: a step queued and not started by then is queued again."""
    seconds = getattr(settings, "SEQUENCE_REQUEUE_SECONDS", None)
    return timedelta(seconds=seconds) if seconds else REQUEUE_AFTER


QUEUED_MAX = 1000  # default; due steps handed to the queue and not started yet, at most


def queued_max() -> int:
    """SEQUENCE_QUEUED_MAX: the dispatcher hands over no more steps while this many wait in
    the queue, so that a herd waits in the database, in due order, and a queued step is
    started long before SEQUENCE_REQUEUE_SECONDS (after which it counts as lost)."""
    return int(getattr(settings, "SEQUENCE_QUEUED_MAX", None) or QUEUED_MAX)


INLINE_STEPS = 20  # steps one task may run back to back when they are due at once
ERROR_MAX_CHARS = 1000

RunStatus = SequenceRun.Status
StepStatus = SequenceStep.Status
CLAIMABLE = (StepStatus.SCHEDULED, StepStatus.WAITING)
LIVE_RUN = (RunStatus.SCHEDULED, RunStatus.RUNNING, RunStatus.WAITING)


class AlreadyRunning(Exception):
    """The lead has an active run of this sequence."""

    def __init__(self, run: SequenceRun):
        super().__init__(
            f"lead {run.crm_lead_id} is already in this sequence (run {run.pk}, {run.status}); "
            "cancel that run to start it again"
        )
        self.run = run


class CannotStart(Exception):
    """The sequence cannot start (inactive, no steps, no CRM connection)."""


# --- starting and stopping -----------------------------------------------------------------


def _kommo_of(agent_id: int) -> Integration | None:
    return (
        Integration.objects.filter(agent_id=agent_id, integration_type=Integration.Type.KOMMO, active=True)
        .order_by("id")
        .first()
    )


def run_start(
    *,
    sequence: Sequence,
    lead_id: int,
    started_by: str,
    started_ref: str = "",
    integration: Integration | None = None,
) -> SequenceRun:
    """Start ``sequence`` for a lead; its first step is queued at once.

    Raises AlreadyRunning when the lead has an active run of it, CannotStart when the
    sequence is off or empty."""
    if not sequence.active:
        raise CannotStart(f"sequence “{sequence.name}” is switched off")
    if not sequence.steps:
        raise CannotStart(f"sequence “{sequence.name}” has no steps")
    integration = integration or _kommo_of(sequence.agent_id)
    if integration is None:
        raise CannotStart(f"the agent of “{sequence.name}” has no active Kommo integration: its leads are in the CRM")
    now = timezone.now()
    try:
        with transaction.atomic():
            run = SequenceRun.objects.create(
                sequence=sequence,
                agent_id=sequence.agent_id,
                integration=integration,
                crm_lead_id=lead_id,
                status=RunStatus.SCHEDULED,
                next_due_at=now,
                steps=list(sequence.steps),
                started_by=started_by,
                started_ref=str(started_ref)[:60],
            )
            SequenceStep.objects.bulk_create(
                SequenceStep(
                    run=run,
                    index=index,
                    type=step["type"],
                    status=StepStatus.SCHEDULED if index == 0 else StepStatus.PENDING,
                    due_at=now if index == 0 else None,
                    queued_at=now if index == 0 else None,
                )
                for index, step in enumerate(run.steps)
            )
            first = SequenceStep.objects.get(run=run, index=0)
            _record(run, "started", detail={"started_by": started_by, "ref": str(started_ref)})
            transaction.on_commit(lambda: async_task(RUN_STEP_TASK, first.pk, save=False))
    except IntegrityError:
        active = SequenceRun.objects.filter(
            sequence=sequence, crm_lead_id=lead_id, status__in=ACTIVE_RUN_STATUSES
        ).first()
        if active is None:
            raise
        raise AlreadyRunning(active) from None
    return run


def _end(run: SequenceRun, status: str, *, reason: str = "", error: str = "") -> bool:
    """End an active run (cancelled, exited, done, failed); False when it was not active."""
    now = timezone.now()
    with transaction.atomic():
        ended = SequenceRun.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES).update(
            status=status, exit_reason=reason[:200], error=error[:ERROR_MAX_CHARS], finished_at=now, next_due_at=None
        )
        if not ended:
            return False
        step_status = {RunStatus.CANCELLED: StepStatus.CANCELLED, RunStatus.EXITED: StepStatus.EXITED}.get(status)
        if step_status:
            SequenceStep.objects.filter(run=run, status__in=(*CLAIMABLE, StepStatus.PENDING)).update(
                status=step_status, finished_at=now
            )
        run.status, run.exit_reason, run.error, run.finished_at, run.next_due_at = status, reason, error, now, None
        _record(run, status, detail={"reason": reason} if reason else {}, error=error)
    return True


def run_cancel(run: SequenceRun, *, by: str = "a manager") -> bool:
    return _end(run, RunStatus.CANCELLED, reason=f"stopped by {by}")


def run_exit(run: SequenceRun, reason: str) -> bool:
    return _end(run, RunStatus.EXITED, reason=reason)


def run_pause(run: SequenceRun) -> bool:
    with transaction.atomic():
        paused = SequenceRun.objects.filter(pk=run.pk, status__in=LIVE_RUN).update(status=RunStatus.PAUSED)
        if paused:
            run.status = RunStatus.PAUSED
            _record(run, "paused")
    return bool(paused)


def run_resume(run: SequenceRun) -> bool:
    """A paused run goes on; a step whose time came while paused runs now."""
    with transaction.atomic():
        step = SequenceStep.objects.filter(run=run, index=run.current_step).first()
        status = RunStatus.WAITING if step and step.status == StepStatus.WAITING else RunStatus.SCHEDULED
        resumed = SequenceRun.objects.filter(pk=run.pk, status=RunStatus.PAUSED).update(status=status)
        if resumed:
            run.status = status
            _record(run, "resumed")
            if step and step.status in CLAIMABLE and step.due_at and step.due_at <= timezone.now():
                transaction.on_commit(lambda: async_task(RUN_STEP_TASK, step.pk, save=False))
    return bool(resumed)


def run_retry(run: SequenceRun) -> bool:
    """A failed run starts again from its failed step (attempts counted afresh)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            # the row lock makes two retries at once (two clicks, admin and API) one
            current = SequenceRun.objects.select_for_update().filter(pk=run.pk).values_list("status", flat=True)
            step = SequenceStep.objects.filter(run=run, status=StepStatus.FAILED).order_by("index").first()
            if step is None or current.first() != RunStatus.FAILED:
                return False
            if SequenceRun.objects.filter(
                sequence_id=run.sequence_id, crm_lead_id=run.crm_lead_id, status__in=ACTIVE_RUN_STATUSES
            ).exists():
                return False  # the lead is in a newer run of the sequence
            SequenceStep.objects.filter(pk=step.pk, status=StepStatus.FAILED).update(
                status=StepStatus.SCHEDULED, due_at=now, attempts=0, error="", finished_at=None, queued_at=now
            )
            # a message whose send was interrupted: staff decided it did not arrive
            ConversationMessage.objects.filter(
                key=step.idempotency_key, status=ConversationMessage.Status.SENDING
            ).update(
                status=ConversationMessage.Status.NOT_SENT,
                key="",
                error="its send was interrupted; the run was retried, so it is sent again",
            )
            SequenceRun.objects.filter(pk=run.pk, status=RunStatus.FAILED).update(
                status=RunStatus.SCHEDULED, current_step=step.index, next_due_at=now, error="", finished_at=None
            )
            _retried(run, step, now)
    except IntegrityError:  # a newer run of the lead started at that moment
        return False
    return True


def _retried(run: SequenceRun, step: SequenceStep, now: datetime) -> None:
    run.status, run.current_step, run.next_due_at, run.error = RunStatus.SCHEDULED, step.index, now, ""
    _record(run, "retried", detail={"step": step.index})
    transaction.on_commit(lambda: async_task(RUN_STEP_TASK, step.pk, save=False))


# --- logging and live events ---------------------------------------------------------------


def _record(run: SequenceRun, what: str, *, step: SequenceStep | None = None, detail=None, error: str = "") -> None:
    """One execution-log entry and one live event per transition (in the caller's
    transaction: the event exists only if the change was committed)."""
    status = {
        "done": ExecutionLog.Status.SUCCESS,
        "failed": ExecutionLog.Status.FAILED,
        "retrying": ExecutionLog.Status.RETRYING,
        "exited": ExecutionLog.Status.SKIPPED,
        "cancelled": ExecutionLog.Status.SKIPPED,
    }.get(what, ExecutionLog.Status.SUCCESS if step is not None else ExecutionLog.Status.STARTED)
    payload = {
        "run_id": run.pk,
        "sequence_id": run.sequence_id,
        "agent_id": run.agent_id,
        "lead_id": run.crm_lead_id,
        "run_status": run.status,
        "event": what,
        "next_due_at": run.next_due_at.isoformat() if run.next_due_at else None,
    }
    if error:
        payload["error"] = error[:300]
    if what in ("exited", "cancelled") and run.exit_reason:
        payload["exit_reason"] = run.exit_reason
    if step is not None:
        payload.update(step=step.index, step_type=step.type, step_status=step.status)
    ExecutionLog.objects.create(
        agent_id=run.agent_id,
        kind=ExecutionLog.Kind.SEQUENCE,
        status=status,
        ref_type="sequence_run",
        ref_id=run.pk,
        crm_lead_id=run.crm_lead_id,
        detail={**payload, **(detail or {})},
        error=error[:ERROR_MAX_CHARS],
        finished_at=timezone.now() if status != ExecutionLog.Status.STARTED else None,
    )
    failed = what in ("failed", "step_failed", "retrying")
    logger.log(logging.WARNING if failed else logging.INFO, "sequence.step", extra=payload)
    owner_id = getattr(run, "owner_id", None)  # set by the step runner, which has the agent
    if owner_id is None:
        owner_id = Agent.objects.filter(pk=run.agent_id).values_list("owner_id", flat=True).first()
    if owner_id:
        send_event_on_commit(owner_id=owner_id, type="sequence.step", payload=payload)


# --- exit rules ----------------------------------------------------------------------------


def exit_reason(run: SequenceRun) -> str | None:
    """Why the run should stop now, by its sequence's exit rules; None to go on."""
    rules = exit_rules_of(run.sequence.exit_rules)
    if rules.on_reply:
        replied = ConversationMessage.objects.filter(
            conversation__agent_id=run.agent_id,
            conversation__crm_lead_id=run.crm_lead_id,
            conversation__integration__isnull=False,  # a staff test chat is not the lead
            direction=ConversationMessage.Direction.INBOUND,
            created_at__gt=run.created_at,
        ).exists()
        if not replied and run.integration_id:
            replied = CrmEvent.objects.filter(
                integration_id=run.integration_id,
                lead_id=run.crm_lead_id,
                kind=CrmEvent.Kind.INCOMING_MESSAGE,
                received_at__gt=run.created_at,
            ).exists()
        if replied:
            return "the lead replied"
    if rules.on_stages and run.integration_id:
        state = EntityState.objects.filter(
            integration_id=run.integration_id, entity_type="lead", entity_id=run.crm_lead_id
        ).first()
        stage = (state.values.get("status") or [None])[0] if state else None
        if stage and any(_equal(stage, rule, "stage") for rule in rules.on_stages):
            return f"the lead moved to status {stage[1]} (pipeline {stage[0]})"
    return None


# --- running steps -------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # done, waiting, retry, failed
    output: dict[str, Any]
    error: str = ""
    due_at: datetime | None = None


class StepFailed(Exception):
    pass


def _claim(step_id: int, now: datetime) -> bool:
    return bool(
        SequenceStep.objects.filter(
            pk=step_id, status__in=CLAIMABLE, due_at__lte=now, run__status__in=LIVE_RUN
        ).update(status=StepStatus.RUNNING, claimed_at=now, attempts=F("attempts") + 1, queued_at=None)
    )


def step_run(step_id: int) -> str:
    """The task: claim the step and do it, then the steps after it that are due now."""
    results = []
    agents: dict[int, Agent] = {}  # the steps of one run share it
    for _ in range(INLINE_STEPS):
        now = timezone.now()
        if not _claim(step_id, now):
            break
        step = SequenceStep.objects.select_related("run__sequence", "run__integration").get(pk=step_id)
        agent = agents.get(step.run.agent_id) or agents.setdefault(
            step.run.agent_id, Agent.objects.get(pk=step.run.agent_id)
        )
        next_id = _do_claimed(step, agent)
        results.append(step.status)
        if next_id is None:
            break
        step_id = next_id
    return ",".join(results) or "not_due"


def _context(run: SequenceRun, agent: Agent) -> crm_actions.ActionContext:
    integration = run.integration
    facts = Facts(event="sequence", at=timezone.now(), zone=agent_zone(agent))
    if integration is not None:
        facts.load_lead = lead_loader(integration, run.crm_lead_id)
        facts.load_contact = contact_loader(integration, run.crm_lead_id)
    return crm_actions.ActionContext(
        agent=agent,
        kommo=integration,
        facts=facts,
        lead_id=run.crm_lead_id,
        depth=0,
        trigger_id=None,
        now=timezone.now(),
        reference=f"sequence_run:{run.pk}",
    )


def _do_claimed(step: SequenceStep, agent: Agent) -> int | None:
    """Do a claimed step; record the outcome; return the next step's id when it is due now."""
    run = step.run
    run.owner_id = agent.owner_id  # for _record's live events
    started = time.monotonic()
    was_waiting = step.output.get("wake_at") is not None
    reason = exit_reason(run)
    if reason:
        SequenceStep.objects.filter(pk=step.pk).update(status=StepStatus.EXITED, finished_at=timezone.now())
        run_exit(run, reason)
        return None
    SequenceRun.objects.filter(pk=run.pk, status__in=LIVE_RUN).update(status=RunStatus.RUNNING, current_step=step.index)
    try:
        outcome = _execute(step, run, agent, was_waiting)
    except Exception as exc:  # a bug: fail visibly, do not retry blindly
        logger.exception("sequences.step.error", extra={"step_id": step.pk, "type": step.type})
        outcome = Outcome("failed", {}, f"unexpected error: {type(exc).__name__}")
    outcome.output.setdefault("ms", int((time.monotonic() - started) * 1000))
    return _finish(step, run, outcome)


def _backoff(attempts: int, retry_after: float | None = None) -> timedelta:
    seconds = RETRY_BASE_SECONDS * RETRY_FACTOR ** max(attempts - 1, 0)
    return timedelta(seconds=max(seconds, retry_after or 0))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


def _execute(step: SequenceStep, run: SequenceRun, agent: Agent, was_waiting: bool) -> Outcome:
    spec = run.steps[step.index]
    kind = spec["type"]
    if kind == "delay":
        if was_waiting:
            return Outcome("done", dict(step.output))
        wake = delay_until(spec, agent, timezone.now())
        return Outcome("waiting", {"wake_at": wake.isoformat()}, due_at=wake)
    ctx = _context(run, agent)
    ctx.action_key = step.idempotency_key
    ctx.verify_since = step.output.get(UNCONFIRMED_KEY) if kind in VERIFIABLE_STEPS else None
    try:
        if kind == "generate_message":
            chat = _chat_or_none(ctx, None)
            completion = crm_actions.generate(ctx, chat, spec["instruction"])
            text = completion.text.strip()
            if not text:
                raise StepFailed("the model wrote an empty message")
            SequenceRun.objects.filter(pk=run.pk).update(context={**run.context, "generated": text})
            run.context = {**run.context, "generated": text}
            return Outcome(
                "done",
                {
                    "text": text[:2000],
                    "model": completion.model,
                    "input_tokens": completion.input_tokens,
                    "output_tokens": completion.output_tokens,
                },
            )
        if kind == "send_message":
            chat = crm_actions.lead_chat(ctx, spec.get("integration_id"))
            if spec.get("use_generated"):
                text = (run.context or {}).get("generated") or ""
                if not text:
                    raise StepFailed("no generated text to send: the generate_message step has not run")
            else:
                text = ctx.render(spec["text"])
            reason = exit_reason(run)  # a reply may have come while the text was being written
            if reason:
                return Outcome("exited", {}, reason)
            return Outcome("done", crm_actions.deliver(chat, text, key=step.idempotency_key))
        if kind in crm_actions.HANDLERS:
            return Outcome("done", crm_actions.HANDLERS[kind](spec, ctx))
        raise StepFailed(f"unknown step type {kind!r}")
    except Unconfirmed as exc:
        if kind not in VERIFIABLE_STEPS:
            return Outcome("failed", {}, f"not confirmed, so not done again: {_error(exc)}")
        # it may exist: the next attempt looks for it first (from a little before this one)
        since = ctx.verify_since or int(step.claimed_at.timestamp()) - VERIFY_MARGIN_SECONDS
        due = timezone.now() + _backoff(step.attempts, exc.retry_after)
        return Outcome("retry", {UNCONFIRMED_KEY: since}, _error(exc), due_at=due)
    except (TransientError, RateLimited) as exc:
        retry_after = getattr(exc, "retry_after", None)
        return Outcome("retry", {}, _error(exc), due_at=timezone.now() + _backoff(step.attempts, retry_after))
    except AIError as exc:
        if isinstance(exc, AIPermanentError):
            return Outcome("failed", {}, _error(exc))
        retry_after = getattr(exc, "retry_after", None)
        return Outcome("retry", {}, _error(exc), due_at=timezone.now() + _backoff(step.attempts, retry_after))
    except (StepFailed, PermanentError) as exc:
        plain = isinstance(exc, StepFailed | crm_actions.ActionFailed)  # our own words: no class name
        return Outcome("failed", {}, str(exc) if plain else _error(exc))
    except IntegrationError as exc:  # credentials refused
        return Outcome("failed", {}, f"the CRM or channel refused the credentials ({_error(exc)}); reconnect it")


def _chat_or_none(ctx, integration_id):
    try:
        return crm_actions.lead_chat(ctx, integration_id)
    except crm_actions.ActionFailed:
        return None


def delay_until(spec: dict[str, Any], agent: Agent, now: datetime) -> datetime:
    """When a delay ends. Counted in working hours (``working_hours_only``) only the
    open time counts: 2 hours asked at 17:00 with hours 9–18 end at 10:00 next working
    day. Without working hours the delay is plain."""
    total = timedelta(minutes=spec.get("minutes", 0), hours=spec.get("hours", 0), days=spec.get("days", 0))
    schedule = parse_schedule(agent.schedule) if spec.get("working_hours_only") else None
    if schedule is None or schedule.next_open(now) is None:
        return now + total
    return _add_working_time(schedule, now, total)


def _add_working_time(schedule, start: datetime, amount: timedelta) -> datetime:
    moment, left = start, amount
    for _ in range(1000):  # a bound: a schedule is open some minutes every week
        opens = schedule.next_open(moment)
        if opens is None:
            return moment + left
        closes = _closing(schedule, opens)
        if opens + left <= closes:
            return opens + left
        left -= closes - opens
        moment = closes
    return moment + left


def _closing(schedule, opened: datetime) -> datetime:
    """The end of the working interval that contains ``opened``."""
    from datetime import time as clock

    local = opened.astimezone(schedule.zone)
    minute = local.hour * 60 + local.minute
    day = local.date()
    from agents.schemas import DAYS

    for start, end in sorted(i.span for i in schedule.days.get(DAYS[day.weekday()], [])):
        if start <= minute < end:
            closes = datetime.combine(day, clock(0), tzinfo=schedule.zone) + timedelta(minutes=end)
            return closes.astimezone(opened.tzinfo)
    return opened + timedelta(minutes=1)


def _finish(step: SequenceStep, run: SequenceRun, outcome: Outcome) -> int | None:
    """Record a step's outcome and move the run on; returns the next step's id when it is
    due now. Only the holder of the step's claim may: a worker that took longer than
    SEQUENCE_STEP_TIMEOUT_SECONDS finds its step recovered by another one, and its late
    result is dropped rather than moving the run on a second time."""
    now = timezone.now()
    with transaction.atomic():
        live = SequenceRun.objects.select_for_update().filter(pk=run.pk).values_list("status", flat=True).first()
        mine = SequenceStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING, claimed_at=step.claimed_at)
        if outcome.status == "exited":
            if mine.update(status=StepStatus.EXITED, finished_at=now):
                run_exit(run, outcome.error)
            return None
        if outcome.status == "waiting":
            if not mine.update(status=StepStatus.WAITING, due_at=outcome.due_at, output=outcome.output):
                return _claim_lost(step)
            step.status = StepStatus.WAITING
            if live in LIVE_RUN:
                SequenceRun.objects.filter(pk=run.pk).update(status=RunStatus.WAITING, next_due_at=outcome.due_at)
                run.status, run.next_due_at = RunStatus.WAITING, outcome.due_at
            _record(run, "waiting", step=step, detail={"wake_at": outcome.output.get("wake_at")})
            return None
        if outcome.status == "retry" and step.attempts < MAX_ATTEMPTS:
            retry = {"status": StepStatus.SCHEDULED, "due_at": outcome.due_at, "error": outcome.error}
            if outcome.output:  # what the next attempt must know (a write to look for first)
                retry["output"] = step.output = {**step.output, **outcome.output}
            if not mine.update(**retry):
                return _claim_lost(step)
            step.status = StepStatus.SCHEDULED
            if live in LIVE_RUN:
                SequenceRun.objects.filter(pk=run.pk).update(status=RunStatus.SCHEDULED, next_due_at=outcome.due_at)
                run.status, run.next_due_at = RunStatus.SCHEDULED, outcome.due_at
            _record(run, "retrying", step=step, error=outcome.error)
            return None
        if outcome.status in ("retry", "failed"):
            error = outcome.error
            if outcome.status == "retry":
                error = f"gave up after {step.attempts} attempts: {error}"
            if not mine.update(status=StepStatus.FAILED, error=error, finished_at=now):
                return _claim_lost(step)
            step.status = StepStatus.FAILED
            _record(run, "step_failed", step=step, error=error)
            _end(run, RunStatus.FAILED, error=f"step {step.index} ({step.type}): {error}")
            return None
        # done
        if not mine.update(status=StepStatus.DONE, output=outcome.output, error="", finished_at=now):
            return _claim_lost(step)
        step.status = StepStatus.DONE
        nxt = SequenceStep.objects.filter(run=run, index=step.index + 1).first()
        pending = SequenceStep.objects.filter(pk=nxt.pk, status=StepStatus.PENDING) if nxt else None
        if live == RunStatus.PAUSED and nxt is not None:
            # paused while the step ran: the next step waits, due now, for the resume
            pending.update(status=StepStatus.SCHEDULED, due_at=now)
            SequenceRun.objects.filter(pk=run.pk).update(current_step=nxt.index, next_due_at=now)
            _record(run, "step_done", step=step)
            return None
        if live not in LIVE_RUN and live != RunStatus.PAUSED:  # ended (a reply, a manager) meanwhile
            _record(run, "step_done", step=step)
            return None
        if nxt is None:
            SequenceRun.objects.filter(pk=run.pk).update(current_step=step.index)
            _record(run, "step_done", step=step)
            _end(run, RunStatus.DONE)
            return None
        if not pending.update(status=StepStatus.SCHEDULED, due_at=now, queued_at=now):
            return _claim_lost(nxt)
        SequenceRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SCHEDULED, current_step=nxt.index, next_due_at=now
        )
        run.status, run.current_step, run.next_due_at = RunStatus.SCHEDULED, nxt.index, now
        _record(run, "step_done", step=step)
    return nxt.pk


def _claim_lost(step: SequenceStep) -> None:
    logger.warning("sequences.step.claim_lost", extra={"step_id": step.pk, "run_id": step.run_id})
    return None


# --- the dispatcher and recovery -----------------------------------------------------------


def dispatch_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """Hand the steps that have come due to the task queue (each once), and recover
    steps stuck "running" past STEP_TIMEOUT. Returns how many were queued.

    At most SEQUENCE_QUEUED_MAX steps wait in the queue, handed over and not started; the
    rest of a herd waits here, oldest due first. A step is handed over again only when its
    task looks lost: queued longer ago than SEQUENCE_REQUEUE_SECONDS, still not started,
    and the queue holds fewer tasks than the steps waiting for one (so some have none). A
    queue that is merely slow to drain is left alone."""
    now = now or timezone.now()
    recovered = recover_stuck(now=now)
    handed = SequenceStep.objects.filter(status__in=CLAIMABLE, queued_at__isnull=False)
    waiting = handed.count()
    stale: list[int] = []
    old = handed.filter(queued_at__lt=now - requeue_after())
    if waiting and old.exists():
        from config.tasks import task_queue_size

        size = task_queue_size()
        lost = 0 if size is None else waiting - size  # the queue holds other tasks too: at most this many
        if lost > 0:  # the longest queued: tasks are taken oldest first, so theirs are the ones gone
            stale = list(old.order_by("queued_at").values_list("id", flat=True)[:lost])
    limit = min(limit, queued_max() - waiting + len(stale))
    if limit <= 0:
        return 0
    due_steps = (
        SequenceStep.objects.filter(status__in=CLAIMABLE, due_at__lte=now, run__status__in=LIVE_RUN)
        .filter(Q(queued_at__isnull=True) | Q(pk__in=stale))
        .order_by(F("queued_at").asc(nulls_last=True), "due_at")  # a lost one first, then the oldest due
    )
    if not due_steps.exists():  # the usual case: no write transaction (SQLite takes its lock for one)
        if recovered:
            logger.info("sequences.dispatched", extra={"steps": 0, "recovered": recovered})
        return 0
    with transaction.atomic():
        due = list(
            due_steps.select_for_update(skip_locked=True, of=("self",)).values_list("id", flat=True)[:limit]
        )
        if due:
            SequenceStep.objects.filter(id__in=due).update(queued_at=now)
            for step_id in due:
                async_task(RUN_STEP_TASK, step_id, save=False)
    if due or recovered:
        logger.info("sequences.dispatched", extra={"steps": len(due), "recovered": recovered})
    return len(due)


def recover_stuck(*, now: datetime | None = None) -> int:
    """Steps left "running" by a worker that died (SEQUENCE_STEP_TIMEOUT_SECONDS ago):
    done again, found done, or failed."""
    now = now or timezone.now()
    stuck = list(
        SequenceStep.objects.filter(status=StepStatus.RUNNING, claimed_at__lt=now - step_timeout())
        .select_related("run__integration")
        .order_by("claimed_at")[:100]
    )
    for step in stuck:
        try:
            _recover(step, now)
        except IntegrationError as exc:  # the CRM cannot tell now: ask again next time
            logger.warning("sequences.recover.later", extra={"step_id": step.pk, "error": str(exc)})
    return len(stuck)


def _recover(step: SequenceStep, now: datetime) -> None:
    run = step.run
    kind = step.type
    if run.status not in ACTIVE_RUN_STATUSES:  # the run ended while the step ran
        ended = StepStatus.EXITED if run.status == RunStatus.EXITED else StepStatus.CANCELLED
        SequenceStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING).update(
            status=ended, finished_at=now, error="interrupted after its run had ended"
        )
        return
    found: dict[str, Any] | None = None
    if kind in ("create_task", "add_note") and run.integration is not None:
        found = _find_in_crm(step, run)
    elif kind == "send_message":
        message = sent_by_key(step.idempotency_key)
        if message is not None and message.status == ConversationMessage.Status.SENT:
            found = {"conversation_id": message.conversation_id, "message_id": message.pk, "text": message.text[:500]}
        elif message is not None:
            reason = (
                "interrupted while sending (the worker stopped); the message was not sent again, "
                "since whether it reached the lead is not known — retry the run if it did not"
            )
            _finish(step, run, Outcome("failed", {}, reason))
            return
        # no row: the channel was never called; send it now
    if found is not None:
        next_id = _finish(step, run, Outcome("done", {**found, "recovered": True}))
        if next_id is not None:
            transaction.on_commit(lambda: async_task(RUN_STEP_TASK, next_id, save=False))
        return
    # not done, or safe to do again: back to the queue, now
    SequenceStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING).update(
        status=StepStatus.SCHEDULED, due_at=now, queued_at=None, error="interrupted: the worker stopped; done again"
    )


def _find_in_crm(step: SequenceStep, run: SequenceRun) -> dict[str, Any] | None:
    spec = run.steps[step.index]
    agent = Agent.objects.get(pk=run.agent_id)
    text = _context(run, agent).render(spec["text"]) or spec["text"]
    since = int(step.claimed_at.timestamp()) - VERIFY_MARGIN_SECONDS
    kind = "task" if step.type == "create_task" else "note"
    try:
        found = write_find(run.integration, kind, run.crm_lead_id, text, since=since)
    except NotFound:
        return None
    return None if found is None else {f"{kind}_id": found, "text": text[:500]}


def dispatch_interval() -> float:
    return float(getattr(settings, "SEQUENCE_DISPATCH_SECONDS", 1.0))
