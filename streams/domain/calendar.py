"""Business calendar: which instants are working time in mainland China, and deadline arithmetic on it.

WHY: 12345 time limits are counted in working hours and working days, and China's working days are
not Monday-Friday: public holidays take weekdays, and make-up working days (调休上班) turn Saturdays
and Sundays into working days. A deadline counted on the wrong calendar breaches the wrong unit.

The hot path works on epoch milliseconds (ints) because deadlines are recomputed on every case event.
The calendar precomputes, once at load, every working period of every covered day as UTC instants
together with the working time elapsed before it, so "N working hours after t" is two bisects.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from whistle.ground.datafiles import config_error, files_sha256, read_yaml
from whistle.ground.errors import ConfigError
from whistle.ground.times import from_epoch_ms, to_epoch_ms

SLA_REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference" / "sla"
DEFAULT_CALENDAR_FILE = SLA_REFERENCE_DIR / "calendar-cn.yaml"

_DAY_MS = 86_400_000

ELAPSED_UNIT_MS = {"minutes": 60_000, "hours": 3_600_000, "days": _DAY_MS}
WORKING_UNITS = ("working_hours", "working_days")
SAME_DAY = "same_day"
UNITS = (*ELAPSED_UNIT_MS, *WORKING_UNITS, SAME_DAY)


@dataclass(frozen=True, slots=True)
class Duration:
    """A time limit as policies write it: "30 minutes", "4 hours", "7 days", "2 working_hours", "5 working_days", "same_day".

    minutes/hours/days are elapsed time, round the clock. working_hours count only working periods of
    working days. "N working_days" ends at the close of the N-th working day after the start's local
    date (the start day itself does not count, as in "N个工作日内", counted from the next day).
    same_day ends at local midnight after the start.
    """

    amount: int
    unit: str

    @classmethod
    def parse(cls, text: Any) -> Duration:
        """Raises ValueError saying what is wrong; loaders turn it into a ConfigError naming file and field."""
        if not isinstance(text, str):
            raise ValueError(f"must be a string like '2 working_hours', got {text!r}")
        parts = text.split()
        if parts == [SAME_DAY]:
            return cls(0, SAME_DAY)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"must be '<whole number> <unit>' or 'same_day', got {text!r}")
        amount, unit = int(parts[0]), parts[1]
        if unit not in UNITS or unit == SAME_DAY:
            raise ValueError(f"unit {unit!r} is not one of {[u for u in UNITS if u != SAME_DAY]}")
        if amount <= 0:
            raise ValueError(f"must be positive, got {text!r}")
        return cls(amount, unit)

    @property
    def on_working_time(self) -> bool:
        """True when pauses and fractions of this limit are measured in working time, not elapsed time."""
        return self.unit in WORKING_UNITS

    def __str__(self) -> str:
        return SAME_DAY if self.unit == SAME_DAY else f"{self.amount} {self.unit}"


@dataclass(frozen=True, slots=True)
class YearSchedule:
    """One year's published schedule: days off that would be working days, and weekend days that are working days."""

    year: int
    holidays: frozenset[date]
    make_up_working_days: frozenset[date]
    in_force_from_ms: int | None = None  # None: in force from the start; else decisions from this instant on use it


@dataclass(frozen=True, slots=True)
class CalendarSource:
    """One file a calendar was read from, for the rules registry (streams.domain.rules): what it is and when it counts."""

    name: str  # the version name it goes by: the calendar id, or "<calendar id>/<year>" for a year's schedule
    path: Path
    in_force_from_ms: int | None  # a year file's `in_force_from`; None for the base file and for years in force from the start


@dataclass(frozen=True, slots=True, eq=False)
class BusinessCalendar:
    """Working time over a contiguous range of local days. Build it with load_calendar() or build_calendar().

    Every method takes and returns epoch milliseconds. Instants outside the covered days raise a
    ConfigError telling which year file to add.
    """

    calendar_id: str
    timezone: str
    working_hours: tuple[tuple[int, int], ...]  # local (start, end) minutes after midnight
    first_day: date
    last_day: date
    provisional_from: date | None  # first day counted by the Monday-Friday rule (no published schedule)
    _tz: ZoneInfo = field(repr=False)
    _day_starts: tuple[int, ...] = field(repr=False)  # local midnights, one more than days (the end sentinel)
    _day_close: tuple[int, ...] = field(repr=False)  # end of the day's last working period (0 on days off)
    _working_through: tuple[int, ...] = field(repr=False)  # number of working days with index <= i
    _working_days: tuple[int, ...] = field(repr=False)  # indexes of the working days
    _period_starts: tuple[int, ...] = field(repr=False)
    _work_before: tuple[int, ...] = field(repr=False)  # working ms elapsed before each period starts
    _work_through: tuple[int, ...] = field(repr=False)  # working ms elapsed when each period ends
    _holidays: frozenset[date] = field(repr=False)
    _make_up_days: frozenset[date] = field(repr=False)
    sha256: str = ""  # content hash of this edition: the base file and the year files it counts (streams.domain.rules)
    sources: tuple[CalendarSource, ...] = ()  # every file of the calendar, later editions' too
    _later: tuple[tuple[int, BusinessCalendar], ...] = field(default=(), repr=False)  # (in force from, edition), ascending

    def edition_at(self, ms: int) -> BusinessCalendar:
        """The calendar as it stood at `ms`: a year file with `in_force_from` counts only for decisions from then on.

        WHY: a year's holiday schedule is published in November of the year before. Deadlines already
        decided by the provisional rule must stay as they were when the schedule is added (a replay of the
        log gives the same decisions), so a schedule added later applies to decisions at or after its
        `in_force_from`, an instant of trusted time (the decision's, never the wall clock's).
        """
        chosen = self
        for since, edition in self._later:
            if since > ms:
                break
            chosen = edition
        return chosen

    def is_provisional(self, ms: int) -> bool:
        """Whether the instant falls on a day counted by the provisional rule (no published schedule for its year)."""
        return self.provisional_from is not None and self.local_time(ms).date() >= self.provisional_from

    def is_working_day(self, day: date) -> bool:
        """Make-up working days work; holidays do not; otherwise Monday-Friday."""
        return _is_working_day(day, self._holidays, self._make_up_days)

    def local_time(self, ms: int) -> datetime:
        """The instant in the calendar's time zone (for human-readable summaries)."""
        return from_epoch_ms(ms).astimezone(self._tz)

    def working_ms_between(self, start_ms: int, end_ms: int) -> int:
        """Working time elapsed from start to end (0 when end <= start)."""
        if end_ms <= start_ms:
            return 0
        return self._work_at(end_ms) - self._work_at(start_ms)

    def add_working_hours(self, start_ms: int, hours: float) -> int:
        """The instant when `hours` of working time have passed since start."""
        return self._instant_at_work(self._work_at(start_ms) + round(hours * 3_600_000))

    def add_working_days(self, start_ms: int, days: int) -> int:
        """Close of business on the `days`-th working day after the start's local date."""
        if days < 1:
            raise ValueError(f"working days must be >= 1, got {days}")
        day = self._day_index(start_ms)
        target = self._working_through[day] + days - 1
        if target >= len(self._working_days):
            raise self._out_of_range(self._day_starts[-1])
        return self._day_close[self._working_days[target]]

    def end_of_day(self, start_ms: int) -> int:
        """Local midnight after start (a "same day" limit)."""
        return self._day_starts[self._day_index(start_ms) + 1]

    def add(self, start_ms: int, limit: Duration) -> int:
        """The deadline `limit` after start, on the axis the limit's unit counts on."""
        unit = limit.unit
        if unit == "working_hours":
            return self.add_working_hours(start_ms, limit.amount)
        if unit == "working_days":
            return self.add_working_days(start_ms, limit.amount)
        if unit == SAME_DAY:
            return self.end_of_day(start_ms)
        if not self._day_starts[0] <= start_ms < self._day_starts[-1]:
            raise self._out_of_range(start_ms)
        return start_ms + limit.amount * ELAPSED_UNIT_MS[unit]

    def add_paused(self, start_ms: int, limit: Duration, pauses: Iterable[tuple[int, int]]) -> int:
        """The deadline `limit` after start, pushed back by every pause that began before it.

        `pauses` are closed (start, end) intervals sorted by start. Each pause starting before the
        (already extended) deadline extends it by the time the pause took on the limit's axis:
        working time for working units, elapsed time otherwise. A pause after the deadline changes
        nothing: the deadline had already passed.
        """
        due = self.add(start_ms, limit)
        working = limit.on_working_time
        for pause_start, pause_end in pauses:
            pause_start = max(pause_start, start_ms)
            if pause_end <= pause_start:
                continue
            if pause_start >= due:
                break
            if working:
                due = self._instant_at_work(self._work_at(due) + self.working_ms_between(pause_start, pause_end))
            else:
                due = due + pause_end - pause_start
        return due

    def fraction_point(self, start_ms: int, due_ms: int, fraction: float, on_working_time: bool) -> int:
        """The instant `fraction` of the way from start to due, measured on working or elapsed time."""
        if not on_working_time:
            return start_ms + int((due_ms - start_ms) * fraction)
        begin = self._work_at(start_ms)
        return max(start_ms, self._instant_at_work(begin + int((self._work_at(due_ms) - begin) * fraction)))

    # -- the working-time axis ------------------------------------------------------------------

    def _day_index(self, ms: int) -> int:
        day = bisect_right(self._day_starts, ms) - 1
        if day < 0 or day >= len(self._day_starts) - 1:
            raise self._out_of_range(ms)
        return day

    def _work_at(self, ms: int) -> int:
        """Working ms elapsed between the calendar's first day and `ms`."""
        if not self._day_starts[0] <= ms < self._day_starts[-1]:
            raise self._out_of_range(ms)
        period = bisect_right(self._period_starts, ms) - 1
        if period < 0:
            return 0
        return min(self._work_before[period] + ms - self._period_starts[period], self._work_through[period])

    def _instant_at_work(self, work_ms: int) -> int:
        """The earliest instant at which `work_ms` of working time have elapsed (a period's end, not the next start)."""
        period = bisect_left(self._work_through, work_ms)
        if period >= len(self._work_through):
            raise self._out_of_range(self._day_starts[-1])
        return self._period_starts[period] + work_ms - self._work_before[period]

    def _out_of_range(self, ms: int) -> ConfigError:
        when = self.local_time(ms).date() if ms < self._day_starts[-1] else self.last_day + timedelta(days=1)
        return ConfigError(
            f"deadline arithmetic reaches {when}, outside business calendar {self.calendar_id} "
            f"({self.first_day}..{self.last_day}): add the year's holiday schedule file under "
            f"{self.sources[0].path.parent if self.sources else SLA_REFERENCE_DIR}",
            field="calendar",
        )


def build_calendar(calendar_id: str, tz_name: str, working_hours: Iterable[tuple[int, int]],
                   schedules: Iterable[YearSchedule], provisional_years: int = 0,
                   provisional_holidays: Iterable[tuple[int, int]] = ()) -> BusinessCalendar:
    """Precompute the working-time axis over the schedules' years plus `provisional_years` more.

    Provisional years have no published schedule: Monday-Friday work except the fixed-date
    `provisional_holidays` ((month, day) pairs).
    """
    schedules = tuple(sorted(schedules, key=lambda s: s.year))
    periods = tuple(working_hours)
    tz = ZoneInfo(tz_name)
    first = date(schedules[0].year, 1, 1)
    provisional_from = date(schedules[-1].year + 1, 1, 1) if provisional_years else None
    last = date(schedules[-1].year + provisional_years, 12, 31)
    provisional = {date(year, month, day) for year in range(schedules[-1].year + 1, last.year + 1) for month, day in provisional_holidays}
    holidays = frozenset().union(provisional, *(s.holidays for s in schedules))
    make_up_days = frozenset().union(*(s.make_up_working_days for s in schedules))
    day_starts: list[int] = []
    day_close: list[int] = []
    working_through: list[int] = []
    working_days: list[int] = []
    period_starts: list[int] = []
    work_before: list[int] = []
    work_through: list[int] = []
    elapsed = 0
    day = first
    index = 0
    while day <= last:
        day_starts.append(to_epoch_ms(datetime.combine(day, time(0), tzinfo=tz)))
        close = 0
        if _is_working_day(day, holidays, make_up_days):
            working_days.append(index)
            for start_min, end_min in periods:
                start = to_epoch_ms(datetime.combine(day, time(start_min // 60, start_min % 60), tzinfo=tz))
                close = to_epoch_ms(datetime.combine(day, time(end_min // 60, end_min % 60), tzinfo=tz))
                period_starts.append(start)
                work_before.append(elapsed)
                elapsed += close - start
                work_through.append(elapsed)
        day_close.append(close)
        working_through.append(len(working_days))
        day += timedelta(days=1)
        index += 1
    day_starts.append(to_epoch_ms(datetime.combine(day, time(0), tzinfo=tz)))
    return BusinessCalendar(calendar_id, tz_name, periods, first, last, provisional_from, tz,
                            tuple(day_starts), tuple(day_close), tuple(working_through), tuple(working_days),
                            tuple(period_starts), tuple(work_before), tuple(work_through), holidays, make_up_days)


def _is_working_day(day: date, holidays: frozenset[date], make_up_days: frozenset[date]) -> bool:
    return day in make_up_days or (day.weekday() < 5 and day not in holidays)


def load_calendar(path: Path | str = DEFAULT_CALENDAR_FILE) -> BusinessCalendar:
    """Load and validate calendar-cn.yaml and the year files it lists; errors name the file and field."""
    path = Path(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise config_error(path, "-", "must be a mapping")
    calendar_id = _text(doc, "calendar_id", path)
    tz_name = _text(doc, "timezone", path)
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise config_error(path, "timezone", f"unknown time zone {tz_name!r}") from exc
    raw_hours = doc.get("working_hours")
    if not isinstance(raw_hours, list) or not raw_hours:
        raise config_error(path, "working_hours", "must be a non-empty list like ['09:00-12:00', '13:30-18:00']")
    periods = [_period(text, path, f"working_hours[{i}]") for i, text in enumerate(raw_hours)]
    for i in range(1, len(periods)):
        if periods[i][0] < periods[i - 1][1]:
            raise config_error(path, f"working_hours[{i}]", "periods must be in order and must not overlap")
    provisional_years = doc.get("provisional_years", 0)
    if isinstance(provisional_years, bool) or not isinstance(provisional_years, int) or provisional_years < 0:
        raise config_error(path, "provisional_years", f"must be a whole number >= 0, got {provisional_years!r}")
    provisional_holidays = [_month_day(text, path, f"provisional_holidays[{i}]") for i, text in enumerate(doc.get("provisional_holidays") or [])]
    year_files = doc.get("year_files")
    if isinstance(year_files, str):  # a pattern: a year published later is added as a file, leaving this one (and its hash) as it was
        year_files = sorted(p.name for p in path.parent.glob(year_files))
    if not isinstance(year_files, list) or not year_files:
        raise config_error(path, "year_files", "must list at least one year file, or be a file name pattern that matches one")
    year_paths = {path.parent / str(name): _load_year(path.parent / str(name)) for name in year_files}
    schedules = list(year_paths.values())
    years = sorted(s.year for s in schedules)
    if years != list(range(years[0], years[0] + len(years))):
        raise config_error(path, "year_files", f"years must be consecutive with no repeats, got {years}")
    clash = frozenset().union(*(s.holidays for s in schedules)) & frozenset().union(*(s.make_up_working_days for s in schedules))
    if clash:
        raise config_error(path, "year_files", f"{min(clash)} is a holiday in one year file and a make-up working day in another")
    sources = (CalendarSource(calendar_id, path, None),
               *(CalendarSource(f"{calendar_id}/{s.year}", p, s.in_force_from_ms) for p, s in sorted(year_paths.items(), key=lambda ps: ps[1].year)))
    return _editions(path, calendar_id, tz_name, periods, year_paths, provisional_years, provisional_holidays, sources)


def _editions(path: Path, calendar_id: str, tz_name: str, periods: list[tuple[int, int]], year_paths: dict[Path, YearSchedule],
              provisional_years: int, provisional_holidays: list[tuple[int, int]], sources: tuple[CalendarSource, ...]) -> BusinessCalendar:
    """The calendar from the start, holding each later edition (a year file with `in_force_from` adds one).

    Every edition counts through the same last day (the start's last year plus `provisional_years`), so a
    schedule added later only replaces provisional days by published ones.
    """
    initial = {p: s for p, s in year_paths.items() if s.in_force_from_ms is None}
    if not initial:
        raise config_error(path, "year_files", "at least one year file must be in force from the start (no in_force_from)")
    last_initial = max(s.year for s in initial.values())
    last_year = last_initial + provisional_years
    for p, s in year_paths.items():
        if s.in_force_from_ms is not None and s.year <= last_initial:
            raise config_error(p, "in_force_from", f"only a year after those in force from the start ({last_initial}) can come into force later")
        if s.year > last_year:
            raise config_error(p, "year", f"{s.year} is after the calendar's last year {last_year} (raise provisional_years)")

    def edition(files: dict[Path, YearSchedule]) -> BusinessCalendar:
        ordered = sorted(files.items(), key=lambda ps: ps[1].year)
        last = ordered[-1][1].year
        built = build_calendar(calendar_id, tz_name, periods, [s for _, s in ordered], last_year - last, provisional_holidays)
        return replace(built, sha256=files_sha256([path, *(p for p, _ in ordered)]), sources=sources)

    later: list[tuple[int, BusinessCalendar]] = []
    counted = dict(initial)
    for since in sorted({s.in_force_from_ms for s in year_paths.values() if s.in_force_from_ms is not None}):
        counted.update({p: s for p, s in year_paths.items() if s.in_force_from_ms == since})
        later.append((since, edition(counted)))
    return replace(edition(initial), _later=tuple(later))


def _load_year(path: Path) -> YearSchedule:
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise config_error(path, "-", "must be a mapping")
    year = doc.get("year")
    if isinstance(year, bool) or not isinstance(year, int):
        raise config_error(path, "year", f"must be a year number, got {year!r}")
    holidays: set[date] = set()
    for i, entry in enumerate(_entries(doc, "holidays", path)):
        where = f"holidays[{i}]"
        _text(entry, "name", path, where)
        first, last = _date(entry, "from", path, where), _date(entry, "to", path, where)
        if last < first or (last - first).days > 15:
            raise config_error(path, f"{where}.to", f"must be on or up to 15 days after 'from' ({first}), got {last}")
        if year not in (first.year, last.year):
            raise config_error(path, where, f"holiday {first}..{last} is not in {year}")
        span = {first + timedelta(days=d) for d in range((last - first).days + 1)}
        if span & holidays:
            raise config_error(path, where, f"overlaps another holiday on {min(span & holidays)}")
        holidays |= span
    make_up: set[date] = set()
    for i, entry in enumerate(_entries(doc, "make_up_working_days", path)):
        where = f"make_up_working_days[{i}]"
        _text(entry, "for", path, where)
        day = _date(entry, "date", path, where)
        if day.weekday() < 5:
            raise config_error(path, f"{where}.date", f"{day} is a {day:%A}: a make-up working day must be a Saturday or Sunday")
        if day in holidays:
            raise config_error(path, f"{where}.date", f"{day} is also listed as a holiday")
        make_up.add(day)
    return YearSchedule(year, frozenset(holidays), frozenset(make_up), _in_force_from(doc, path))


def _in_force_from(doc: dict, path: Path) -> int | None:
    """A year file published after the calendar went live says from when it counts (an aware date-time)."""
    value = doc.get("in_force_from")
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise config_error(path, "in_force_from", f"must be a date-time with its zone, like 2026-11-20T00:00:00+08:00, got {value!r}")
    return to_epoch_ms(value)


def _entries(doc: dict, key: str, path: Path) -> list[dict]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise config_error(path, key, "must be a list of mappings")
    return value


def _text(doc: dict, key: str, path: Path, where: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise config_error(path, f"{where}.{key}" if where else key, f"must be a non-empty string, got {value!r}")
    return value


def _date(doc: dict, key: str, path: Path, where: str) -> date:
    value = doc.get(key)
    if not isinstance(value, date) or isinstance(value, datetime):
        raise config_error(path, f"{where}.{key}", f"must be a date YYYY-MM-DD, got {value!r}")
    return value


def _month_day(text: Any, path: Path, where: str) -> tuple[int, int]:
    try:
        month, day = (int(part) for part in str(text).split("-"))
        date(2000, month, day)  # a leap year: 02-29 is a valid month-day
    except ValueError as exc:
        raise config_error(path, where, f"must be 'MM-DD', got {text!r}") from exc
    return month, day


def _period(text: Any, path: Path, where: str) -> tuple[int, int]:
    try:
        start, end = (_minutes(part) for part in str(text).split("-"))
    except ValueError as exc:
        raise config_error(path, where, f"must be 'HH:MM-HH:MM', got {text!r}") from exc
    if end <= start:
        raise config_error(path, where, f"ends before it starts: {text!r}")
    return start, end


def _minutes(text: str) -> int:
    hours, minutes = text.strip().split(":")
    value = int(hours) * 60 + int(minutes)
    if not (0 <= int(minutes) < 60 and 0 <= value < 24 * 60):
        raise ValueError(text)
    return value
