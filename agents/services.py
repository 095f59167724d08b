"""Every write to agents goes through here: the API, the admin and commands alike."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet

from config.services import model_save

from .models import Agent, AgentCrmAccess, ExecutionLog
from .realtime import send_event_on_commit

AGENT_FIELDS = (
    "name",
    "active",
    "instructions",
    "ai_model",
    "language_detection",
    "default_language",
    "schedule",
    "outside_hours",
    "away_message",
    "handoff_minutes",
)
CRM_ACCESS_FIELDS = ("lead_fields", "contact_fields")


def _notify(agent: Agent, change: str) -> None:
    send_event_on_commit(
        owner_id=agent.owner_id,
        type="agent.changed",
        payload={"agent_id": agent.id, "name": agent.name, "active": agent.active, "change": change},
    )


@transaction.atomic
def agent_create(
    *, owner: AbstractBaseUser, data: Mapping[str, Any], crm_access: Mapping[str, Any] | None = None
) -> Agent:
    agent = model_save(Agent(owner=owner), data, allowed=AGENT_FIELDS)
    model_save(AgentCrmAccess(agent=agent), crm_access or {}, allowed=CRM_ACCESS_FIELDS)
    _notify(agent, "created")
    return agent


@transaction.atomic
def agent_update(*, agent: Agent, data: Mapping[str, Any], crm_access: Mapping[str, Any] | None = None) -> Agent:
    """Update the agent and, when given, its CRM access, in one transaction."""
    model_save(agent, data, allowed=AGENT_FIELDS)
    if crm_access is not None:
        access, _ = AgentCrmAccess.objects.select_for_update().get_or_create(agent=agent)
        model_save(access, crm_access, allowed=CRM_ACCESS_FIELDS)
        # keep a prefetched/cached copy on the instance current for the response
        agent.crm_access = access
    _notify(agent, "updated")
    return agent


@transaction.atomic
def agent_set_active(*, agents: QuerySet[Agent], active: bool) -> int:
    changed = list(agents.exclude(active=active).select_for_update())
    for agent in changed:
        agent.active = active
        agent.save(update_fields=["active", "updated_at"])
        _notify(agent, "activated" if active else "deactivated")
    return len(changed)


@transaction.atomic
def agent_duplicate(*, agent: Agent, owner: AbstractBaseUser | None = None) -> Agent:
    """A copy of the agent with its CRM access, triggers and sequences, inactive.

    Integrations are not copied: their credentials (a bot token, a CRM grant) belong to
    one agent, and two agents on one bot would answer the same lead twice.
    """
    from sequences.models import Sequence
    from triggers.models import Trigger

    access = AgentCrmAccess.objects.filter(agent=agent).first()
    copy = agent_create(
        owner=owner or agent.owner,
        data={field: getattr(agent, field) for field in AGENT_FIELDS}
        | {"name": f"{agent.name} (copy)"[:200], "active": False},
        crm_access={field: getattr(access, field) for field in CRM_ACCESS_FIELDS} if access else None,
    )
    Trigger.objects.bulk_create(
        Trigger(agent=copy, name=t.name, active=t.active, conditions=t.conditions, actions=t.actions)
        for t in agent.triggers.all()
    )
    Sequence.objects.bulk_create(
        Sequence(
            agent=copy,
            name=s.name,
            description=s.description,
            active=s.active,
            trigger_config=s.trigger_config,
            steps=s.steps,
        )
        for s in agent.sequences.all()
    )
    return copy


@transaction.atomic
def agent_delete(*, agent: Agent) -> None:
    owner_id, agent_id, name = agent.owner_id, agent.id, agent.name
    agent.delete()
    send_event_on_commit(
        owner_id=owner_id, type="agent.changed", payload={"agent_id": agent_id, "name": name, "change": "deleted"}
    )


# rows per INSERT statement: 11 parameters a row stays far under SQLite's variable limit
LOG_INSERT_CHUNK = 500


class LogEntry(NamedTuple):
    """An execution log entry to append with ``execution_logs_insert``, lighter than an
    unsaved ExecutionLog (whose construction costs more than its share of the insert)."""

    agent_id: int
    kind: str
    status: str
    ref_type: str
    ref_id: int | None
    crm_lead_id: int | None
    detail: dict[str, Any]
    error: str = ""
    duration_ms: int | None = None
    finished_at: datetime | None = None


def execution_logs_insert(*, entries: Sequence[ExecutionLog | LogEntry]) -> None:
    """Append many entries in one statement, without the ORM's per-field work: the trigger
    engine logs every skipped trigger of every event, ~100 rows for a busy agent, and the
    ORM's bulk_create spends more time building that statement than the database spends
    running it. ``created_at`` is now; the entries get no ids back."""
    if not entries:
        return
    import orjson  # several times faster than json for ~100 small dicts an event
    from django.db import connection
    from django.utils import timezone

    ops = connection.ops
    now = ops.adapt_datetimefield_value(timezone.now())
    columns = ("agent_id", "kind", "status", "ref_type", "ref_id", "crm_lead_id", "detail", "error",
               "duration_ms", "created_at", "finished_at")  # fmt: skip
    column_of = {field.attname: field.column for field in ExecutionLog._meta.concrete_fields}
    head = "INSERT INTO {} ({}) ".format(
        ops.quote_name(ExecutionLog._meta.db_table), ", ".join(ops.quote_name(column_of[name]) for name in columns)
    )
    adapted: dict[datetime | None, Any] = {}  # the entries of one event share their finish time
    rows: list[list[Any]] = []
    for entry in entries:
        if entry.finished_at not in adapted:
            adapted[entry.finished_at] = ops.adapt_datetimefield_value(entry.finished_at)
        rows.append([
            entry.agent_id, entry.kind, entry.status, entry.ref_type, entry.ref_id, entry.crm_lead_id,
            entry.detail, entry.error, entry.duration_ms, now, adapted[entry.finished_at],
        ])  # fmt: skip
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # every row in one JSON parameter: a short statement whatever the rows (psycopg
            # parses a statement of over 50 parameters again on every execution, and dumps
            # arrays of text in Python), and orjson and PostgreSQL read JSON in C
            types = ("bigint", "text", "text", "text", "bigint", "bigint", None, "text", "integer",
                     "timestamptz", "timestamptz")  # fmt: skip
            values = ", ".join(f"(r->>{n})::{t}" if t else f"r->{n}" for n, t in enumerate(types))
            cursor.execute(
                head + f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r",
                [orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS).decode()],
            )
            return
        row = "(" + ", ".join("%s" for _ in columns) + ")"
        for r in rows:
            r[6] = orjson.dumps(r[6], option=orjson.OPT_NON_STR_KEYS).decode()
        for start in range(0, len(rows), LOG_INSERT_CHUNK):
            chunk = rows[start : start + LOG_INSERT_CHUNK]
            cursor.execute(head + "VALUES " + ", ".join([row] * len(chunk)), [value for r in chunk for value in r])


def execution_log_write(
    *,
    agent: Agent | int,
    kind: str,
    status: str,
    ref_type: str = "",
    ref_id: int | None = None,
    crm_lead_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
    error: str = "",
    duration_ms: int | None = None,
) -> ExecutionLog:
    """Append an entry to the execution log (later features log through this)."""
    from django.utils import timezone

    agent_id = agent if isinstance(agent, int) else agent.id
    return ExecutionLog.objects.create(
        agent_id=agent_id,
        kind=kind,
        status=status,
        ref_type=ref_type,
        ref_id=ref_id,
        crm_lead_id=crm_lead_id,
        detail=dict(detail or {}),
        error=error,
        duration_ms=duration_ms,
        finished_at=timezone.now() if status != ExecutionLog.Status.STARTED else None,
    )
