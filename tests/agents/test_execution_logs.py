from __future__ import annotations

import pytest

from agents.services import execution_log_write
from tests.factories import make_agent

pytestmark = pytest.mark.django_db


def test_logs_are_filterable_by_agent_kind_status_and_lead(api, user):
    first, second = make_agent(owner=user), make_agent(owner=user)
    wanted = execution_log_write(agent=first, kind="trigger", status="failed", crm_lead_id=123, error="CRM said 400")
    execution_log_write(agent=first, kind="trigger", status="success", crm_lead_id=123)
    execution_log_write(agent=first, kind="sequence", status="failed", crm_lead_id=123)
    execution_log_write(agent=first, kind="trigger", status="failed", crm_lead_id=999)
    execution_log_write(agent=second, kind="trigger", status="failed", crm_lead_id=123)

    response = api.get(f"/api/execution-logs/?agent={first.id}&kind=trigger&status=failed&crm_lead_id=123")

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [wanted.id]
    assert response.json()["results"][0]["error"] == "CRM said 400"


def test_all_entries_of_a_lead_newest_first(api, agent):
    older = execution_log_write(agent=agent, kind="trigger", status="success", crm_lead_id=5)
    newer = execution_log_write(agent=agent, kind="reply", status="success", crm_lead_id=5)

    response = api.get("/api/execution-logs/?crm_lead_id=5")

    assert [row["id"] for row in response.json()["results"]] == [newer.id, older.id]


def test_an_unknown_filter_value_is_a_400(api, agent):
    response = api.get("/api/execution-logs/?status=exploded")

    assert response.status_code == 400
    assert "status" in response.json()


def test_logs_are_read_only(api, agent):
    entry = execution_log_write(agent=agent, kind="trigger", status="success")

    assert api.post("/api/execution-logs/", {}, format="json").status_code == 405
    assert api.delete(f"/api/execution-logs/{entry.id}/").status_code == 405


def test_entries_inserted_in_bulk_read_back_as_written(agent):
    from datetime import UTC, datetime

    from django.utils import timezone

    from agents.models import ExecutionLog
    from agents.services import LOG_INSERT_CHUNK, execution_logs_insert

    finished = datetime(2026, 11, 25, 9, 30, 15, 123456, tzinfo=UTC)
    entries = [
        ExecutionLog(
            agent_id=agent.id, kind="trigger", status="skipped", ref_type="trigger", ref_id=n, crm_lead_id=77,
            detail={"reason": "Цена «100» не больше 200", "n": n, "seen": [1, None]}, error="", duration_ms=n,
            finished_at=finished,
        )  # fmt: skip
        for n in range(LOG_INSERT_CHUNK + 3)  # two statements
    ]
    before = timezone.now()

    execution_logs_insert(entries=entries)

    rows = list(ExecutionLog.objects.filter(crm_lead_id=77).order_by("ref_id"))
    assert [row.ref_id for row in rows] == list(range(LOG_INSERT_CHUNK + 3))
    last = rows[-1]
    assert (last.agent_id, last.kind, last.status, last.ref_type, last.duration_ms) == (
        agent.id, "trigger", "skipped", "trigger", LOG_INSERT_CHUNK + 2,
    )  # fmt: skip
    assert last.detail == {"reason": "Цена «100» не больше 200", "n": LOG_INSERT_CHUNK + 2, "seen": [1, None]}
    assert last.finished_at == finished
    assert before <= last.created_at <= timezone.now()
    # the ORM's own filters see them as it would its own rows
    assert ExecutionLog.objects.filter(crm_lead_id=77, created_at__gte=before, detail__n=5).count() == 1
