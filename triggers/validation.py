"""Checks of a trigger against its agent and the CRM, in the user's words.

The JSON shapes are checked without context (triggers/schemas.py). Here, with the agent
known: do the custom fields, pipelines, stages and users a trigger names exist in the
agent's CRM (its last synced snapshot, ``manage.py sync_crm_fields``), is a
messenger integration the agent's own, and has the agent a Google Calendar for a
meeting to be booked in. Without a snapshot the CRM ids cannot be checked and are
accepted; the integration checks always run.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.booking import agent_calendar
from config.validation import format_loc
from crm.models import CrmSnapshot
from integrations.models import Integration

from .schemas import LOST, WON, custom_field_of, walk_conditions

MESSENGERS = (Integration.Type.TELEGRAM, Integration.Type.WHATSAPP_CLOUD, Integration.Type.TWILIO_WHATSAPP)
SHOWN_CHOICES = 8


def agent_kommo(agent_id: int) -> Integration | None:
    """The Kommo account an agent's triggers and sequences act on: its first active
    Kommo integration (the same one the engine and the reply pipeline use)."""
    return (
        Integration.objects.filter(agent_id=agent_id, integration_type=Integration.Type.KOMMO, active=True)
        .order_by("id")
        .first()
    )


@dataclass
class CrmCatalogue:
    """Names by id from the agent's CRM snapshot."""

    lead_fields: dict[int, str] = field(default_factory=dict)
    contact_fields: dict[int, str] = field(default_factory=dict)
    pipelines: dict[int, str] = field(default_factory=dict)
    statuses: dict[int, dict[int, str]] = field(default_factory=dict)  # pipeline → status → name
    users: dict[int, str] = field(default_factory=dict)

    @classmethod
    def for_agent(cls, agent_id: int | None) -> CrmCatalogue | None:
        """Names from the snapshot of the agent's Kommo integration (``agent_kommo``)."""
        kommo = agent_kommo(agent_id) if agent_id else None
        snapshot = CrmSnapshot.objects.filter(integration=kommo, synced_at__isnull=False).first() if kommo else None
        if snapshot is None:
            return None
        return cls(
            lead_fields={int(f["id"]): f.get("name") or "" for f in snapshot.lead_fields},
            contact_fields={int(f["id"]): f.get("name") or "" for f in snapshot.contact_fields},
            pipelines={int(p["id"]): p.get("name") or "" for p in snapshot.pipelines},
            statuses={
                int(p["id"]): {int(s["id"]): s.get("name") or "" for s in p.get("statuses") or []}
                for p in snapshot.pipelines
            },
            users={int(u["id"]): u.get("name") or "" for u in snapshot.users},
        )


def _choices(names: Mapping[int, str]) -> str:
    shown = [f"{name} ({item_id})" if name else str(item_id) for item_id, name in list(names.items())[:SHOWN_CHOICES]]
    more = len(names) - SHOWN_CHOICES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "none"


def _absent(what: str, names: Mapping[int, str]) -> str:
    return f"{what} is not in the CRM (known: {_choices(names)})"


class _Problems:
    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, column: str, loc: tuple, message: str) -> None:
        self.by_field.setdefault(column, []).append(f"{format_loc(column, loc)}: {message}")


def _stage(problems: _Problems, crm: CrmCatalogue, column: str, loc: tuple, pipeline: Any, status: Any) -> None:
    if pipeline is None:
        if status not in (WON, LOST):
            problems.add(column, loc, f"status {status} needs its pipeline")
        return
    if pipeline not in crm.pipelines:
        problems.add(column, loc + ("pipeline_id",), _absent(f"pipeline {pipeline}", crm.pipelines))
        return
    statuses = crm.statuses.get(pipeline, {})
    if status not in statuses and status not in (WON, LOST):
        problems.add(
            column,
            loc + ("status_id",),
            f"status {status} is not in pipeline “{crm.pipelines[pipeline]}” (known: {_choices(statuses)})",
        )


def _condition_values(value: Any) -> Iterable[tuple[tuple, Any]]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield ("value", index), item
    elif value is not None:
        yield ("value",), value


def _check_conditions(
    problems: _Problems, crm: CrmCatalogue, conditions: Any, column: str = "conditions", prefix: tuple = ()
) -> None:
    for loc, condition in walk_conditions(conditions, prefix):
        name = condition.get("field")
        parsed = custom_field_of(str(name))
        if parsed:
            entity, field_id = parsed
            known = crm.lead_fields if entity == "lead" else crm.contact_fields
            if field_id not in known:
                problems.add(column, loc + ("field",), _absent(f"{entity} field {field_id}", known))
            continue
        for where, value in _condition_values(condition.get("value")):
            if name in ("status", "previous_status") and isinstance(value, dict):
                _stage(problems, crm, column, loc + where, value.get("pipeline_id"), value.get("status_id"))
            elif name == "pipeline" and value not in crm.pipelines:
                problems.add(column, loc + where, _absent(f"pipeline {value}", crm.pipelines))
            elif name == "responsible_user" and value not in crm.users:
                problems.add(column, loc + where, _absent(f"user {value}", crm.users))


def _check_actions(
    problems: _Problems, crm: CrmCatalogue | None, agent_id: int, actions: Any, column: str = "actions"
) -> None:
    messengers: dict[int, str] | None = None
    has_calendar: bool | None = None
    for index, action in enumerate(actions or []):
        loc = (index,)
        kind = action.get("type")
        if kind == "create_calendar_event":
            if has_calendar is None:
                has_calendar = agent_calendar(agent_id) is not None
            if not has_calendar:
                problems.add(
                    column,
                    loc + ("type",),
                    "create_calendar_event needs the agent's Google Calendar integration "
                    "(connect one to the agent, or switch it back on)",
                )
        if kind == "send_message" and action.get("integration_id"):
            if messengers is None:
                messengers = dict(
                    Integration.objects.filter(agent_id=agent_id, integration_type__in=MESSENGERS).values_list(
                        "id", "integration_type"
                    )
                )
            if action["integration_id"] not in messengers:
                problems.add(
                    column,
                    loc + ("integration_id",),
                    f"integration {action['integration_id']} is not one of this agent's messengers "
                    f"(its messengers: {', '.join(map(str, messengers)) or 'none'})",
                )
        if kind in ("start_sequence", "stop_sequence") and action.get("sequence_id"):
            from sequences.models import Sequence

            if not Sequence.objects.filter(pk=action["sequence_id"], agent_id=agent_id).exists():
                problems.add(
                    column, loc + ("sequence_id",), f"sequence {action['sequence_id']} is not one of this agent's"
                )
        if crm is None:
            continue
        user = action.get("responsible_user_id")
        if kind == "create_task" and user and user not in crm.users:
            problems.add(column, loc + ("responsible_user_id",), _absent(f"user {user}", crm.users))
        elif kind == "change_stage":
            _stage(problems, crm, column, loc, action.get("pipeline_id"), action.get("status_id"))
        elif kind == "update_field":
            parsed = custom_field_of(str(action.get("field")))
            if parsed and parsed[1] not in crm.lead_fields:
                problems.add(column, loc + ("field",), _absent(f"lead field {parsed[1]}", crm.lead_fields))


def trigger_problems(*, agent_id: int, conditions: Any, actions: Any) -> dict[str, list[str]]:
    """Field → messages for what the agent's CRM and integrations do not have; a column
    given as None (its shape is wrong) is not looked at."""
    problems = _Problems()
    crm = CrmCatalogue.for_agent(agent_id)
    if crm is not None and conditions is not None:
        _check_conditions(problems, crm, conditions)
    if actions is not None:
        _check_actions(problems, crm, agent_id, actions)
    return problems.by_field


def sequence_problems(*, agent_id: int, trigger_config: Any, steps: Any) -> dict[str, list[str]]:
    """The same checks for a sequence: its start conditions and its steps that name
    messengers, users, stages or fields."""
    problems = _Problems()
    crm = CrmCatalogue.for_agent(agent_id)
    if crm is not None and isinstance(trigger_config, dict):
        _check_conditions(problems, crm, trigger_config.get("conditions") or [], "trigger_config", ("conditions",))
    _check_actions(problems, crm, agent_id, steps, "steps")
    return problems.by_field
