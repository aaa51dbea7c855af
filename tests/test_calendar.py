"""Business calendar: China's 2026 holiday schedule, working-time deadlines, pauses, and data-file validation."""
from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from streams.domain.calendar import Duration, load_calendar
from whistle.ground.errors import ConfigError, ValidationError
from whistle.ground.times import to_epoch_ms

CALENDAR = load_calendar()


def ms(local: str) -> int:
    """Epoch ms of a China-time wall clock, e.g. '2026-03-06 17:00'."""
    return to_epoch_ms(datetime.fromisoformat(local + "+08:00"))


def local(ms_value: int) -> str:
    return CALENDAR.local_time(ms_value).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize("day, working", [
    ("2026-01-01", False), ("2026-01-02", False), ("2026-01-04", True),  # New Year; Sunday make-up day
    ("2026-02-14", True), ("2026-02-16", False), ("2026-02-23", False), ("2026-02-24", True), ("2026-02-28", True),  # Spring Festival
    ("2026-04-06", False), ("2026-05-05", False), ("2026-05-09", True), ("2026-06-19", False), ("2026-09-25", False),
    ("2026-09-20", True), ("2026-10-07", False), ("2026-10-08", True), ("2026-10-10", True),  # National Day and make-up days
    ("2026-03-07", False), ("2026-03-09", True),  # an ordinary Saturday and Monday
    ("2025-01-28", False), ("2025-02-08", True), ("2025-10-08", False), ("2025-10-11", True),
])
def test_working_days_follow_the_published_schedule(day, working):
    assert CALENDAR.is_working_day(date.fromisoformat(day)) is working


def test_years_without_a_published_schedule_keep_fixed_date_statutory_holidays():
    assert CALENDAR.provisional_from == date(2027, 1, 1)
    assert not CALENDAR.is_working_day(date(2027, 1, 1))
    assert not CALENDAR.is_working_day(date(2027, 10, 2))
    assert CALENDAR.is_working_day(date(2027, 1, 4))


@pytest.mark.parametrize("start, hours, due", [
    ("2026-03-06 17:00", 2, "2026-03-09 10:00"),  # across a weekend
    ("2026-09-30 17:00", 2, "2026-10-08 10:00"),  # across the National Day holiday
    ("2026-02-13 17:00", 2, "2026-02-14 10:00"),  # onto a Saturday make-up working day
    ("2026-03-09 11:30", 1, "2026-03-09 14:00"),  # across the lunch break
    ("2026-03-09 16:00", 2, "2026-03-09 18:00"),  # ends exactly at close of business, not next morning
    ("2026-03-09 18:00", 2, "2026-03-10 11:00"),  # starts at close of business
    ("2026-03-09 07:00", 1, "2026-03-09 10:00"),  # starts before opening
    ("2026-03-07 10:00", 1, "2026-03-09 10:00"),  # starts on a weekend
])
def test_add_working_hours(start, hours, due):
    assert local(CALENDAR.add_working_hours(ms(start), hours)) == due


@pytest.mark.parametrize("start, days, due", [
    ("2026-03-09 10:00", 5, "2026-03-16 18:00"),  # Monday + 5 working days: next Monday, close of business
    ("2026-03-13 20:00", 1, "2026-03-16 18:00"),  # a Friday evening start counts from Monday
    ("2026-09-29 10:00", 2, "2026-10-08 18:00"),  # Sep 30, then Oct 8 after the holiday
    ("2026-09-18 10:00", 1, "2026-09-20 18:00"),  # Friday + 1: the Sunday make-up working day
    ("2026-12-30 10:00", 2, "2027-01-04 18:00"),  # into the provisional year: 1 January stays a holiday
])
def test_add_working_days(start, days, due):
    assert local(CALENDAR.add_working_days(ms(start), days)) == due


def test_elapsed_and_same_day_limits_ignore_working_hours():
    assert local(CALENDAR.add(ms("2026-10-01 23:50"), Duration.parse("30 minutes"))) == "2026-10-02 00:20"
    assert local(CALENDAR.add(ms("2026-10-01 15:00"), Duration.parse("same_day"))) == "2026-10-02 00:00"
    assert local(CALENDAR.add(ms("2026-10-01 15:00"), Duration.parse("7 days"))) == "2026-10-08 15:00"


def test_a_pause_extends_a_working_hours_deadline_by_the_working_time_it_took():
    start, limit = ms("2026-03-09 09:00"), Duration.parse("4 working_hours")
    assert local(CALENDAR.add_paused(start, limit, [])) == "2026-03-09 14:30"
    paused = [(ms("2026-03-09 10:00"), ms("2026-03-09 15:00"))]  # 2 h morning + 1.5 h afternoon of working time
    assert local(CALENDAR.add_paused(start, limit, paused)) == "2026-03-09 18:00"


def test_a_weekend_pause_costs_no_working_time_but_all_elapsed_time():
    weekend = [(ms("2026-03-07 00:00"), ms("2026-03-09 00:00"))]
    assert local(CALENDAR.add_paused(ms("2026-03-06 17:00"), Duration.parse("2 working_hours"), weekend)) == "2026-03-09 10:00"
    assert local(CALENDAR.add_paused(ms("2026-03-06 17:00"), Duration.parse("24 hours"), weekend)) == "2026-03-09 17:00"


def test_a_pause_after_the_deadline_changes_nothing_and_consecutive_pauses_add_up():
    start, limit = ms("2026-03-09 09:00"), Duration.parse("1 working_hours")
    assert local(CALENDAR.add_paused(start, limit, [(ms("2026-03-09 11:00"), ms("2026-03-09 16:00"))])) == "2026-03-09 10:00"
    two = [(ms("2026-03-09 09:30"), ms("2026-03-09 10:00")), (ms("2026-03-09 10:15"), ms("2026-03-09 10:45"))]
    assert local(CALENDAR.add_paused(start, limit, two)) == "2026-03-09 11:00"


def test_fraction_point_is_measured_on_the_limits_own_axis():
    start, due = ms("2026-03-06 17:00"), ms("2026-03-09 10:00")  # 2 working hours across a weekend
    # Half of the working time is used up at Friday's close (the earliest such instant), not on Monday.
    assert local(CALENDAR.fraction_point(start, due, 0.5, on_working_time=True)) == "2026-03-06 18:00"
    assert local(CALENDAR.fraction_point(start, due, 0.5, on_working_time=False)) == "2026-03-08 01:30"


def test_years_without_a_schedule_count_provisionally_through_2099_and_beyond_that_name_the_missing_year():
    assert CALENDAR.add_working_days(ms("2027-12-30 10:00"), 5) == ms("2028-01-06 18:00")  # Mon-Fri; 1 January a holiday
    assert CALENDAR.is_provisional(ms("2028-01-06 18:00")) and not CALENDAR.is_provisional(ms("2026-12-31 18:00"))
    with pytest.raises(ConfigError, match="add the year's holiday schedule"):
        CALENDAR.add_working_days(ms("2099-12-30 10:00"), 5)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValidationError, match="no time zone"):
        to_epoch_ms(datetime(2026, 3, 9, 9, 0))  # noqa: DTZ001 (a naive datetime is the input under test)
    assert to_epoch_ms(datetime(2026, 3, 9, 1, 0, tzinfo=UTC)) == ms("2026-03-09 09:00")


@pytest.mark.parametrize("text, problem", [
    ("2 fortnights", "unit 'fortnights'"), ("0 working_days", "positive"), ("two working_days", "whole number"), (5, "string"),
])
def test_bad_durations_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=problem):
        Duration.parse(text)


def write_calendar(tmp_path, header: str, year: str) -> str:
    (tmp_path / "calendar-cn-2026.yaml").write_text(year, encoding="utf-8")
    path = tmp_path / "calendar-cn.yaml"
    path.write_text(header + "year_files: [calendar-cn-2026.yaml]\n", encoding="utf-8")
    return str(path)


GOOD_HEADER = "calendar_id: t\ntimezone: Asia/Shanghai\nworking_hours: ['09:00-12:00', '13:30-18:00']\n"
GOOD_YEAR = "year: 2026\nholidays: [{name: x, from: 2026-10-01, to: 2026-10-07}]\nmake_up_working_days: [{date: 2026-10-10, for: x}]\n"


@pytest.mark.parametrize("header, year, file, field", [
    (GOOD_HEADER.replace("Asia/Shanghai", "Asia/Atlantis"), GOOD_YEAR, "calendar-cn.yaml", "timezone"),
    (GOOD_HEADER.replace("13:30", "11:30"), GOOD_YEAR, "calendar-cn.yaml", "working_hours[1]"),
    (GOOD_HEADER.replace("09:00-12:00", "9h-12h"), GOOD_YEAR, "calendar-cn.yaml", "working_hours[0]"),
    (GOOD_HEADER, GOOD_YEAR.replace("2026-10-10", "2026-10-12"), "calendar-cn-2026.yaml", "make_up_working_days[0].date"),
    (GOOD_HEADER, GOOD_YEAR.replace("2026-10-10", "2026-10-03"), "calendar-cn-2026.yaml", "make_up_working_days[0].date"),
    (GOOD_HEADER, GOOD_YEAR.replace("to: 2026-10-07", "to: 2026-09-07"), "calendar-cn-2026.yaml", "holidays[0].to"),
    (GOOD_HEADER, GOOD_YEAR.replace("from: 2026-10-01", "from: soon"), "calendar-cn-2026.yaml", "holidays[0].from"),
])
def test_calendar_file_errors_name_file_and_field(tmp_path, header, year, file, field):
    path = write_calendar(tmp_path, header, year)
    with pytest.raises(ConfigError) as caught:
        load_calendar(path)
    assert caught.value.context["file"].endswith(file)
    assert caught.value.context["field"] == field


def test_a_valid_calendar_file_loads(tmp_path):
    calendar = load_calendar(write_calendar(tmp_path, GOOD_HEADER, GOOD_YEAR))
    assert calendar.is_working_day(date(2026, 10, 10)) and not calendar.is_working_day(date(2026, 10, 5))
    assert calendar.last_day == date(2026, 12, 31)
