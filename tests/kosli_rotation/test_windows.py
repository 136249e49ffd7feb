"""When a scheduled rotation may start: the window's days and hours in its time zone, minus the blackouts."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from kosli_rotation.lifecycle import LifecycleSettings
from kosli_rotation.windows import NoOpeningError, describe, describe_moment, is_open, next_opening, restricted

OSLO = ZoneInfo("Europe/Oslo")


def settings(days=None, hours=None, timezone=None, blackout=None, window=True) -> LifecycleSettings:
    spec = {k: v for k, v in {"days": days, "hours": hours, "timezone": timezone}.items() if v is not None}
    return LifecycleSettings.model_validate({"rotation_window": spec if window else None, "blackout": blackout or []})


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def oslo(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=OSLO)


WORKDAYS = settings(days=["tue", "wed", "thu"], hours="09:00-16:00", timezone="Europe/Oslo")


def test_without_window_or_blackout_every_moment_is_open():
    plain = LifecycleSettings()
    now = utc("2026-12-01T03:17:00")
    assert not restricted(plain)
    assert next_opening(plain, now) == now


def test_inside_the_window_the_opening_is_now():
    now = oslo("2026-12-01T10:30")  # a Tuesday
    assert next_opening(WORKDAYS, now) == now
    assert is_open(WORKDAYS, now)


def test_before_the_hours_it_opens_later_that_day_at_the_local_time():
    assert next_opening(WORKDAYS, oslo("2026-12-01T07:00")) == oslo("2026-12-01T09:00")
    assert next_opening(WORKDAYS, oslo("2026-12-01T07:00")) == utc("2026-12-01T08:00")  # CET is UTC+1


def test_the_end_is_excluded_and_after_the_last_day_it_opens_next_week():
    assert next_opening(WORKDAYS, oslo("2026-12-03T16:00")) == oslo("2026-12-08T09:00")  # Thu 16:00 -> next Tue
    assert next_opening(WORKDAYS, oslo("2026-12-03T15:59")) == oslo("2026-12-03T15:59")


def test_hours_that_cross_midnight_belong_to_the_day_they_open_on():
    friday_night = settings(days=["fri"], hours="22:00-02:00", timezone="Europe/Oslo")
    assert next_opening(friday_night, oslo("2026-12-04T21:00")) == oslo("2026-12-04T22:00")
    assert next_opening(friday_night, oslo("2026-12-05T01:30")) == oslo("2026-12-05T01:30")  # Saturday, still open
    assert next_opening(friday_night, oslo("2026-12-05T02:00")) == oslo("2026-12-11T22:00")
    # Thursday's night is not in the window: Friday 01:00 waits for Friday 22:00.
    assert next_opening(friday_night, oslo("2026-12-04T01:00")) == oslo("2026-12-04T22:00")


def test_hours_ending_at_24_00_run_to_midnight():
    evening = settings(days=["tue"], hours="20:00-24:00", timezone="UTC")
    assert next_opening(evening, utc("2026-12-01T23:59:59")) == utc("2026-12-01T23:59:59")
    assert next_opening(evening, utc("2026-12-02T00:00")) == utc("2026-12-08T20:00")


def test_local_hours_follow_daylight_saving_time():
    mornings = settings(hours="09:00-10:00", timezone="Europe/Oslo")
    assert next_opening(mornings, utc("2027-03-27T06:00")) == utc("2027-03-27T08:00")  # CET, UTC+1
    assert next_opening(mornings, utc("2027-03-28T06:00")) == utc("2027-03-28T07:00")  # CEST, UTC+2
    assert next_opening(mornings, utc("2026-10-25T06:00")) == utc("2026-10-25T08:00")  # back to CET


def test_a_start_time_skipped_by_spring_forward_opens_when_the_clock_jumps():
    # 2027-03-28 in Oslo the clock goes from 02:00 CET straight to 03:00 CEST (01:00 UTC): 02:30 never happens.
    night = settings(days=["sun"], hours="02:30-04:00", timezone="Europe/Oslo")
    opening = next_opening(night, utc("2027-03-27T12:00"))
    assert opening == utc("2027-03-28T01:00")
    assert opening.astimezone(OSLO).strftime("%H:%M %Z") == "03:00 CEST"


def test_a_window_inside_the_skipped_hour_has_no_moment_that_day():
    skipped = settings(days=["sun"], hours="02:10-02:50", timezone="Europe/Oslo")
    assert next_opening(skipped, utc("2027-03-27T12:00")) == oslo("2027-04-04T02:10")


def test_a_start_time_repeated_by_fall_back_opens_at_its_first_occurrence():
    # 2026-10-25 in Oslo 02:00-03:00 happens twice: first in CEST (00:00-01:00 UTC), then in CET.
    night = settings(days=["sun"], hours="02:30-05:00", timezone="Europe/Oslo")
    assert next_opening(night, utc("2026-10-24T12:00")) == utc("2026-10-25T00:30")


def test_a_window_crossing_midnight_on_a_dst_night_keeps_its_local_hours():
    night = settings(days=["sat"], hours="23:00-03:00", timezone="America/New_York")
    # 2027-03-14 02:00 EST jumps to 03:00 EDT: the window closes at 03:00 EDT = 07:00 UTC, 3 h after it opened.
    assert next_opening(night, utc("2027-03-14T06:59")) == utc("2027-03-14T06:59")
    assert next_opening(night, utc("2027-03-14T07:00")) == utc("2027-03-21T03:00")  # next Sat 23:00 EDT


def test_a_blackout_pushes_to_the_first_allowed_moment_after_it():
    holidays = settings(hours="09:00-16:00", timezone="Europe/Oslo", blackout=["2026-12-20..2027-01-03"])
    assert next_opening(holidays, oslo("2026-12-21T10:00")) == oslo("2027-01-04T09:00")
    assert next_opening(holidays, oslo("2026-12-19T10:00")) == oslo("2026-12-19T10:00")


def test_a_blackout_blocks_the_part_of_a_window_that_crosses_into_it():
    friday_night = settings(days=["fri"], hours="22:00-02:00", timezone="Europe/Oslo", blackout=["2026-12-05"])
    assert next_opening(friday_night, oslo("2026-12-04T23:00")) == oslo("2026-12-04T23:00")
    assert next_opening(friday_night, oslo("2026-12-05T00:30")) == oslo("2026-12-11T22:00")


def test_a_window_opening_on_a_blackout_date_resumes_at_the_next_local_midnight():
    friday_night = settings(days=["fri"], hours="22:00-02:00", timezone="Europe/Oslo", blackout=["2026-12-04"])
    assert next_opening(friday_night, oslo("2026-12-04T21:00")) == oslo("2026-12-05T00:00")


def test_blackout_dates_are_in_the_window_time_zone():
    auckland = settings(timezone="Pacific/Auckland", blackout=["2026-12-25"])
    # 2026-12-24 12:00 UTC is already Christmas Day (01:00 NZDT) in Auckland; it ends at 11:00 UTC on the 25th.
    assert next_opening(auckland, utc("2026-12-24T12:00")) == utc("2026-12-25T11:00")


def test_without_a_window_blackout_dates_are_utc():
    only_blackout = settings(window=False, blackout=["2026-12-25"])
    assert restricted(only_blackout)
    assert next_opening(only_blackout, utc("2026-12-25T08:00")) == utc("2026-12-26T00:00")


def test_a_blackout_over_every_opening_day_is_a_clear_error():
    mondays = settings(days=["mon"], hours="09:00-10:00", blackout=["2026-01-01..2028-12-31"])
    with pytest.raises(NoOpeningError, match=r"no moment to rotate in within 400 days.*blackout 2026-01-01\.\.2028"):
        next_opening(mondays, utc("2026-12-01T00:00"))


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError, match="aware"):
        next_opening(WORKDAYS, datetime(2026, 12, 1, 9))


def test_descriptions_for_logs_and_the_page():
    holidays = settings(days=["tue", "wed"], hours="09:00-16:00", timezone="Europe/Oslo", blackout=["2026-12-24"])
    assert describe(holidays) == "tue, wed 09:00-16:00 Europe/Oslo; blackout 2026-12-24 (Europe/Oslo)"
    assert describe(settings(window=False, blackout=["2026-12-20..2027-01-03"])) == (
        "any time; blackout 2026-12-20..2027-01-03 (UTC)"
    )
    assert describe_moment(utc("2026-12-01T08:00"), holidays) == "2026-12-01 09:00 CET (2026-12-01 08:00 UTC)"
    assert describe_moment(utc("2026-12-01T08:00"), LifecycleSettings()) == "2026-12-01 08:00 UTC"
