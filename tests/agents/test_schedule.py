"""Working hours: the schedule object used by replies, task due times and delays."""
from __future__ import annotations

from datetime import UTC, datetime

from agents.schemas import check_schedule, parse_schedule

SCHEDULE = {
    "timezone": "Europe/Berlin",
    "days": {
        "mon": [{"start": "09:00", "end": "12:00"}, {"start": "13:00", "end": "18:00"}],
        "fri": [{"start": "09:00", "end": "24:00"}],
    },
}


def test_empty_schedule_means_around_the_clock():
    assert check_schedule({}) == []
    assert parse_schedule({}) is None


def test_open_and_closed_moments_follow_the_agents_time_zone():
    schedule = parse_schedule(SCHEDULE)

    # Monday 2026-11-23 08:30 UTC is 09:30 in Berlin (CET, UTC+1)
    assert schedule.is_open(datetime(2026, 11, 23, 8, 30, tzinfo=UTC))
    assert not schedule.is_open(datetime(2026, 11, 23, 11, 30, tzinfo=UTC))  # 12:30 lunch
    assert not schedule.is_open(datetime(2026, 11, 24, 9, 0, tzinfo=UTC))  # Tuesday: day off
    assert schedule.is_open(datetime(2026, 11, 27, 22, 59, tzinfo=UTC))  # Friday 23:59


def test_next_open_moment_skips_breaks_and_days_off():
    schedule = parse_schedule(SCHEDULE)

    lunch = datetime(2026, 11, 23, 11, 30, tzinfo=UTC)
    assert schedule.next_open(lunch) == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    tuesday = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert schedule.next_open(tuesday) == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    already_open = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
    assert schedule.next_open(already_open) == already_open


def test_next_open_across_a_daylight_saving_change():
    schedule = parse_schedule({"timezone": "Europe/Berlin", "days": {"mon": [{"start": "09:00", "end": "17:00"}]}})

    # Sunday 2026-03-29 clocks go forward; Monday 09:00 CEST is 07:00 UTC
    assert schedule.next_open(datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


def test_a_schedule_with_no_working_day_is_never_open():
    schedule = parse_schedule({"timezone": "UTC", "days": {}})

    assert schedule.next_open(datetime(2026, 1, 1, tzinfo=UTC)) is None
