"""config.services.rows_update: bulk_update's effect in one plain statement."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents.models import ExecutionLog
from config import services
from tests.factories import make_log

pytestmark = pytest.mark.django_db


def test_each_row_gets_its_own_values_of_every_type_and_no_other_row_changes(django_assert_num_queries):
    first, second, untouched = make_log(), make_log(), make_log(status="started")
    first.status, first.detail, first.duration_ms = "success", {"actions": [{"ok": True}], "ключ": "значение"}, 7
    first.finished_at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    second.status, second.detail, second.duration_ms, second.finished_at = "failed", [], None, None
    second.error = "it's 'quoted' -- and long " * 10

    with django_assert_num_queries(1):
        services.rows_update([first, second], ["status", "detail", "duration_ms", "finished_at", "error"])

    first.refresh_from_db(), second.refresh_from_db()
    assert (first.status, first.duration_ms) == ("success", 7)
    assert first.detail == {"actions": [{"ok": True}], "ключ": "значение"}
    assert first.finished_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert (second.status, second.detail, second.duration_ms, second.finished_at) == ("failed", [], None, None)
    assert second.error == "it's 'quoted' -- and long " * 10
    assert ExecutionLog.objects.get(pk=untouched.pk).status == "started"


def test_many_rows_go_in_chunks_on_sqlite_in_one_on_postgresql_and_none_costs_nothing(
    monkeypatch, django_assert_num_queries
):
    from django.db import connection

    monkeypatch.setattr(services, "ROWS_UPDATE_CHUNK", 2)
    logs = [make_log() for _ in range(5)]
    for n, log in enumerate(logs):
        log.duration_ms = n
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 3):
        services.rows_update(logs, ["duration_ms"])
    assert list(ExecutionLog.objects.order_by("id").values_list("duration_ms", flat=True)) == [0, 1, 2, 3, 4]
    with django_assert_num_queries(0):
        services.rows_update([], ["duration_ms"])
