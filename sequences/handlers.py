"""Sequence starts and exits driven by what happens to a lead (CRM events in
settings.CRM_EVENT_HANDLERS, messenger replies in settings.INBOUND_MESSAGE_HANDLERS)."""
from __future__ import annotations

import functools
import logging
import operator
from collections import defaultdict

from django.db.models import Q

from agents.models import ConversationMessage, ExecutionLog
from crm.dispatch import batch_load
from crm.models import CrmEvent
from integrations.models import Integration
from triggers.engine import _equal, evaluate, first_failure, lead_from_webhook, lead_values
from triggers.execution import event_agent, event_facts, remember_state
from triggers.schemas import KIND_EVENTS

from .models import ACTIVE_RUN_STATUSES, Sequence, SequenceRun
from .runner import AlreadyRunning, CannotStart, run_exit, run_start
from .schemas import exit_rules_of

logger = logging.getLogger(__name__)


def on_crm_event(event: CrmEvent) -> None:
    """Exit the lead's runs whose rules say so, then start the sequences whose
    trigger_config matches the event (each at most once per event)."""
    integration = event.integration
    if integration.integration_type != Integration.Type.KOMMO:
        return
    if event.lead_id:
        _exit_on_event(event)
    _start_on_event(event)


def _agents_with_sequences(events: list[CrmEvent]) -> set[int]:
    agents = {event.integration.agent_id for event in events}
    return set(Sequence.objects.filter(agent_id__in=agents).values_list("agent_id", flat=True).distinct())


def _exit_on_event(event: CrmEvent) -> None:
    agents = batch_load(event, "sequences.agents", _agents_with_sequences)
    if agents is not None and event.integration.agent_id not in agents:
        return  # no sequence, so no run to end (for a batch, asked once for all its agents)
    runs = list(
        SequenceRun.objects.filter(
            agent_id=event.integration.agent_id, crm_lead_id=event.lead_id, status__in=ACTIVE_RUN_STATUSES
        ).select_related("sequence")
    )
    if not runs:
        return
    stage = None
    if event.kind in ("lead_status_changed", "lead_updated", "lead_added") and isinstance(event.data, dict):
        stage = (lead_values(lead_from_webhook(event.data)).get("status") or [None])[0]
    for run in runs:
        rules = exit_rules_of(run.sequence.exit_rules)
        if event.kind == CrmEvent.Kind.INCOMING_MESSAGE and rules.on_reply:
            run_exit(run, "the lead replied (in a Kommo chat)")
        elif stage and any(_equal(stage, rule, "stage") for rule in rules.on_stages):
            run_exit(run, f"the lead moved to status {stage[1]} (pipeline {stage[0]})")


def _start_on_event(event: CrmEvent) -> None:
    name = KIND_EVENTS.get(event.kind)
    if name is None or not event.lead_id:
        return
    loaded = batch_load(event, "sequences.starting", _starting_of)
    if loaded is None:
        sequences = list(
            Sequence.objects.filter(agent_id=event.integration.agent_id, active=True, trigger_config__event=name)
        )
    else:
        sequences = loaded.get((event.integration.agent_id, name), [])
    if not sequences:
        return
    agent = event_agent(event)
    if not agent.active:
        return
    facts = event_facts(event, agent, remember_state(event))
    ref = f"event:{event.pk}"
    for sequence in sequences:
        if SequenceRun.objects.filter(sequence=sequence, started_ref=ref).exists():
            continue  # this event started it already (a retry, a redelivery)
        result = evaluate(sequence.trigger_config.get("conditions") or [], facts)
        if not result.passed:
            if event.attempts:  # a retry of the event logged its skips already
                continue
            failed = first_failure(result)
            ExecutionLog.objects.create(
                agent=agent,
                kind=ExecutionLog.Kind.SEQUENCE,
                status=ExecutionLog.Status.SKIPPED,
                ref_type="sequence",
                ref_id=sequence.pk,
                crm_lead_id=event.lead_id,
                detail={"event_id": event.pk, "event": name, "reason": failed.reason if failed else result.reason},
            )
            continue
        try:
            run_start(
                sequence=sequence, lead_id=event.lead_id, started_by="event", started_ref=ref,
                integration=event.integration,
            )
        except (AlreadyRunning, CannotStart) as exc:
            ExecutionLog.objects.create(
                agent=agent,
                kind=ExecutionLog.Kind.SEQUENCE,
                status=ExecutionLog.Status.SKIPPED,
                ref_type="sequence",
                ref_id=sequence.pk,
                crm_lead_id=event.lead_id,
                detail={"event_id": event.pk, "event": name, "reason": str(exc)},
            )


def _starting_of(events: list[CrmEvent]) -> dict[tuple[int, str], list[Sequence]]:
    """The active sequences started by the (agent, event) pairs of a batch's events."""
    pairs = {
        (event.integration.agent_id, KIND_EVENTS[event.kind])
        for event in events
        if event.kind in KIND_EVENTS and event.lead_id and event.integration.integration_type == Integration.Type.KOMMO
    }
    found: dict[tuple[int, str], list[Sequence]] = defaultdict(list)
    if pairs:
        wanted = functools.reduce(
            operator.or_, (Q(agent_id=agent, trigger_config__event=name) for agent, name in sorted(pairs))
        )
        for sequence in Sequence.objects.filter(wanted, active=True):  # in the model's order, as one by one
            found[(sequence.agent_id, sequence.trigger_config.get("event"))].append(sequence)
    return found


def exit_on_reply(message: ConversationMessage) -> None:
    """The lead wrote in a messenger: its runs with the "replied" rule end."""
    conversation = message.conversation
    inbound = message.direction == ConversationMessage.Direction.INBOUND
    if conversation.is_test or not conversation.crm_lead_id or not inbound:
        return
    runs = SequenceRun.objects.filter(
        agent_id=conversation.agent_id, crm_lead_id=conversation.crm_lead_id, status__in=ACTIVE_RUN_STATUSES
    ).select_related("sequence")
    for run in runs:
        if exit_rules_of(run.sequence.exit_rules).on_reply and run.created_at < message.created_at:
            run_exit(run, "the lead replied")


def exit_on_meeting(*, agent_id: int, lead_id: int, except_run_id: int | None = None) -> int:
    """A meeting was booked with the lead: its runs with the "meeting booked" rule end
    (except the run whose own step booked it)."""
    ended = 0
    runs = (
        SequenceRun.objects.filter(agent_id=agent_id, crm_lead_id=lead_id, status__in=ACTIVE_RUN_STATUSES)
        .exclude(pk=except_run_id)
        .select_related("sequence")
    )
    for run in runs:
        if exit_rules_of(run.sequence.exit_rules).on_meeting_booked and run_exit(run, "a meeting was booked"):
            ended += 1
    return ended
