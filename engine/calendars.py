"""Business calendars: working hours, public holidays and make-up working days, with exact
arithmetic on working time.

Everything is pure Python (no database): a calendar is a frozen value that round-trips
through ``to_dict()`` / ``from_dict()`` so it can be stored as data and edited per year.

Model
-----
* ``hours[weekday]`` (0 = Monday) lists half-open ``[start, end)`` working intervals in local
  wall-clock time; an ``end`` of ``time(0)`` means 24:00 (end of the day). A weekday without
  intervals is a rest day (the weekend).
* ``holidays`` are dates without work; ``makeup_days`` (调休) are dates that work with the
  hours of ``makeup_weekday`` (Monday by default) even though they fall on a rest day.
* A calendar whose every day is ``00:00-24:00`` with no holidays is "always open" (24x7);
  its arithmetic is plain clock arithmetic.

Rules
-----
* All arithmetic is done on UTC instants, so it is exact across nights, weekends, holidays,
  make-up days and year ends. Inputs must be timezone-aware (any zone); results are in the
  calendar's zone. In zones with DST, wall-clock times that fall in a gap or fold are
  resolved the way ``zoneinfo`` does (``fold=0``).
* ``add_working_time``: a start outside working hours counts from the next working moment.
  When the amount runs out exactly at the end of an interval the result is that end
  (Friday 16:00 + 2 h = Friday 18:00, not Monday 09:00). Negative amounts are refused.
* ``working_time_between(a, b)`` is antisymmetric: negative when ``b < a``, zero when equal.
* ``add_duration`` (ISO 8601) on a business calendar, applied in this order:
  1. years/months: calendar months on the local wall clock (the day is clamped to the end of
     a shorter month, Jan 31 + P1M = Feb 28), then rolled forward to the next working moment;
  2. weeks/days: working days, a week being 5 working days. The start is first moved to the
     next working moment; the result is the same wall-clock time on the N-th following
     working day. If that time is not working time on that day it is moved to the day's next
     working moment, or clamped to the end of the day's last interval when it is later than
     that, so the result always stays on the N-th working day;
  3. hours/minutes/seconds: working time (``add_working_time``).
  On an always-open calendar months are calendar months, weeks are 7 days and days are
  calendar days (same wall-clock time), and the time part is elapsed time.
"""

from __future__ import annotations

import calendar as _stdcalendar
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_data

__all__ = [
    "BusinessCalendar",
    "CalendarError",
    "DEFAULT_TIMEZONE",
    "Duration",
    "MAX_IDLE_DAYS",
    "STANDARD_HOURS",
    "WORKING_DAYS_PER_WEEK",
    "always_open",
    "china_calendar",
    "parse_duration",
]

DEFAULT_TIMEZONE = "Asia/Shanghai"
# An interval ending at midnight ends at 24:00 of its own day.
END_OF_DAY = time(0)
ONE_DAY = timedelta(days=1)
WORKING_DAYS_PER_WEEK = 5
# Searching further than this for working time means the calendar has none; fail, don't spin.
MAX_IDLE_DAYS = 3 * 366

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Interval = tuple[time, time]
WeeklyHours = tuple[tuple[Interval, ...], ...]

_WORKDAY: tuple[Interval, ...] = ((time(9), time(12)), (time(13, 30), time(18)))
# Mainland China office hours: Monday to Friday with a lunch break.
STANDARD_HOURS: WeeklyHours = (_WORKDAY,) * 5 + ((), ())
_FULL_DAY: tuple[Interval, ...] = ((time(0), END_OF_DAY),)


class CalendarError(ValueError):
    """A calendar definition is invalid, or it has no working time where some is needed."""


def _minutes_of(t: time, *, is_end: bool) -> timedelta:
    if is_end and t == END_OF_DAY:
        return ONE_DAY
    return timedelta(hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond)


def _normalise_hours(hours: Mapping[int, Sequence[Interval]] | Sequence[Sequence[Interval]]) -> WeeklyHours:
    if isinstance(hours, Mapping):
        unknown = set(hours) - set(range(7))
        if unknown:
            raise CalendarError(f"weekday keys must be 0 (Monday) to 6 (Sunday), got {sorted(unknown)}")
        per_day = [hours.get(i, ()) for i in range(7)]
    else:
        per_day = list(hours)
        if len(per_day) != 7:
            raise CalendarError(f"hours needs 7 entries (Monday to Sunday), got {len(per_day)}")
    result = []
    for weekday, intervals in enumerate(per_day):
        day: list[Interval] = []
        previous_end = timedelta(0)
        for interval in intervals:
            start, end = interval
            if not isinstance(start, time) or not isinstance(end, time):
                raise CalendarError(f"{WEEKDAY_NAMES[weekday]}: interval bounds must be datetime.time")
            if start.tzinfo is not None or end.tzinfo is not None:
                raise CalendarError(f"{WEEKDAY_NAMES[weekday]}: times are local, they take no tzinfo")
            lo, hi = _minutes_of(start, is_end=False), _minutes_of(end, is_end=True)
            if lo >= hi:
                raise CalendarError(f"{WEEKDAY_NAMES[weekday]}: interval {start}-{end} is empty")
            if lo < previous_end:
                raise CalendarError(f"{WEEKDAY_NAMES[weekday]}: intervals must be sorted and not overlap")
            previous_end = hi
            day.append((start, end))
        result.append(tuple(day))
    return tuple(result)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"unknown timezone {name!r}") from exc


def _require_aware(value: datetime, what: str = "datetime") -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value


def _add_months(local: datetime, months: int) -> datetime:
    index = local.month - 1 + months
    year, month = local.year + index // 12, index % 12 + 1
    day = min(local.day, _stdcalendar.monthrange(year, month)[1])
    # replace() keeps the wall clock; the zone recomputes the offset for the new date.
    return local.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class BusinessCalendar:
    """Working hours plus holidays and make-up days in one timezone; see the module docs."""

    name: str
    timezone: str = DEFAULT_TIMEZONE
    hours: WeeklyHours = STANDARD_HOURS
    holidays: frozenset[date] = frozenset()
    makeup_days: frozenset[date] = frozenset()
    makeup_weekday: int = 0
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _always_open: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise whatever collections were passed so the value stays hashable and immutable.
        object.__setattr__(self, "hours", _normalise_hours(self.hours))
        object.__setattr__(self, "holidays", frozenset(self.holidays))
        object.__setattr__(self, "makeup_days", frozenset(self.makeup_days))
        object.__setattr__(self, "_tz", _zone(self.timezone))
        for d in (*self.holidays, *self.makeup_days):
            if type(d) is not date:
                raise CalendarError(f"holidays and make-up days must be dates, got {d!r}")
        both = self.holidays & self.makeup_days
        if both:
            raise CalendarError(f"dates cannot be both holiday and make-up day: {sorted(both)}")
        if not (isinstance(self.makeup_weekday, int) and 0 <= self.makeup_weekday <= 6):
            raise CalendarError("makeup_weekday must be 0 (Monday) to 6 (Sunday)")
        if self.makeup_days and not self.hours[self.makeup_weekday]:
            raise CalendarError(
                f"make-up days take the hours of {WEEKDAY_NAMES[self.makeup_weekday]}, which has none"
            )
        object.__setattr__(
            self, "_always_open", not self.holidays and all(day == _FULL_DAY for day in self.hours)
        )

    # ----------------------------------------------------------------- days and intervals

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    @property
    def is_always_open(self) -> bool:
        """Every day 00:00-24:00 and no holidays: arithmetic is plain clock arithmetic."""
        return self._always_open

    def hours_on(self, day: date) -> tuple[Interval, ...]:
        """The wall-clock working intervals of one date, after holidays and make-up days."""
        if day in self.holidays:
            return ()
        if day in self.makeup_days:
            return self.hours[self.makeup_weekday]
        return self.hours[day.weekday()]

    def is_working_day(self, day: date) -> bool:
        return bool(self.hours_on(day))

    def intervals_on(self, day: date) -> list[tuple[datetime, datetime]]:
        """The working intervals of one date as aware datetimes in the calendar's zone."""
        return [(s.astimezone(self._tz), e.astimezone(self._tz)) for s, e in self._spans(day)]

    def _spans(self, day: date) -> list[tuple[datetime, datetime]]:
        spans = []
        for start, end in self.hours_on(day):
            lo = datetime.combine(day, start, tzinfo=self._tz).astimezone(UTC)
            end_day = day + ONE_DAY if end == END_OF_DAY else day
            hi = datetime.combine(end_day, end, tzinfo=self._tz).astimezone(UTC)
            if hi > lo:  # only a DST gap swallowing a whole interval could make it empty
                spans.append((lo, hi))
        return spans

    def _spans_after(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Working spans (UTC) that end after ``instant``, clipped to start no earlier than it."""
        day = instant.astimezone(self._tz).date()
        idle = 0
        while True:
            found = False
            for lo, hi in self._spans(day):
                if hi > instant:
                    found = True
                    yield max(lo, instant), hi
            idle = 0 if found else idle + 1
            if idle > MAX_IDLE_DAYS:
                raise CalendarError(
                    f"calendar {self.name!r} has no working time within {MAX_IDLE_DAYS} days after "
                    f"{instant.isoformat()}"
                )
            day += ONE_DAY

    # ----------------------------------------------------------------- arithmetic

    def is_working_time(self, dt: datetime) -> bool:
        instant = _require_aware(dt).astimezone(UTC)
        if self.is_always_open:
            return True
        day = instant.astimezone(self._tz).date()
        return any(lo <= instant < hi for lo, hi in self._spans(day))

    def next_working_moment(self, dt: datetime) -> datetime:
        """``dt`` itself if it is working time, else the start of the next working interval."""
        instant = _require_aware(dt).astimezone(UTC)
        if self.is_always_open:
            return instant.astimezone(self._tz)
        lo, _ = next(self._spans_after(instant))
        return lo.astimezone(self._tz)

    def add_working_time(self, start: datetime, amount: timedelta) -> datetime:
        """The moment when ``amount`` of working time has elapsed since ``start``."""
        instant = _require_aware(start, "start").astimezone(UTC)
        if amount < timedelta(0):
            raise ValueError(f"amount must not be negative, got {amount}")
        if self.is_always_open:
            return (instant + amount).astimezone(self._tz)
        remaining = amount
        # Whole intervals are consumed at once, so cost grows with days, not minutes.
        for lo, hi in self._spans_after(instant):
            if remaining <= hi - lo:
                return (lo + remaining).astimezone(self._tz)
            remaining -= hi - lo
        raise AssertionError("unreachable: _spans_after never ends")  # pragma: no cover

    def working_time_between(self, a: datetime, b: datetime) -> timedelta:
        """Working time in ``[a, b)``; negative when ``b`` is before ``a``."""
        lo_at = _require_aware(a, "a").astimezone(UTC)
        hi_at = _require_aware(b, "b").astimezone(UTC)
        if hi_at < lo_at:
            return -self.working_time_between(b, a)
        if self.is_always_open:
            return hi_at - lo_at
        total = timedelta(0)
        day = lo_at.astimezone(self._tz).date()
        last = hi_at.astimezone(self._tz).date()
        while day <= last:
            for lo, hi in self._spans(day):
                overlap = min(hi, hi_at) - max(lo, lo_at)
                if overlap > timedelta(0):
                    total += overlap
            day += ONE_DAY
        return total

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """Same wall-clock time ``days`` working days later (the P1D rule in the module docs)."""
        if days < 0:
            raise ValueError(f"days must not be negative, got {days}")
        begin = self.next_working_moment(start)
        if days == 0:
            return begin
        if self.is_always_open:
            return begin + timedelta(days=days)  # aware + timedelta keeps the wall clock
        clock = begin.time()
        day = begin.date()
        counted = idle = 0
        while counted < days:
            day += ONE_DAY
            if self.is_working_day(day):
                counted += 1
                idle = 0
            else:
                idle += 1
                if idle > MAX_IDLE_DAYS:
                    raise CalendarError(
                        f"calendar {self.name!r} has no working day within {MAX_IDLE_DAYS} days "
                        f"after {day - timedelta(days=idle)}"
                    )
        target = datetime.combine(day, clock, tzinfo=self._tz).astimezone(UTC)
        spans = self._spans(day)
        for lo, hi in spans:
            if target < hi:
                return max(lo, target).astimezone(self._tz)
        if not spans:  # pragma: no cover - a working day whose hours vanished in a DST gap
            return self.next_working_moment(target)
        return spans[-1][1].astimezone(self._tz)

    def add_months(self, start: datetime, months: int) -> datetime:
        """Calendar months on the local wall clock, then rolled to the next working moment."""
        if months < 0:
            raise ValueError(f"months must not be negative, got {months}")
        local = _require_aware(start, "start").astimezone(self._tz)
        return self.next_working_moment(_add_months(local, months))

    def add_duration(self, start: datetime, duration: str | Duration) -> datetime:
        """Add an ISO 8601 duration (``PT2H``, ``P1D``, ``P1W``, ``P1M``...); rules in the module docs."""
        parts = parse_duration(duration) if isinstance(duration, str) else duration
        local = _require_aware(start, "start").astimezone(self._tz)
        if self.is_always_open:
            shifted = _add_months(local, parts.months) + timedelta(days=7 * parts.weeks + parts.days)
            return (shifted.astimezone(UTC) + parts.time).astimezone(self._tz)
        result = local
        applied = False
        if parts.months:
            result, applied = self.add_months(result, parts.months), True
        days = WORKING_DAYS_PER_WEEK * parts.weeks + parts.days
        if days:
            result, applied = self.add_working_days(result, days), True
        # A zero time part must not push a day result that was clamped to an interval's end.
        if parts.time or not applied:
            result = self.add_working_time(result, parts.time)
        return result

    # ----------------------------------------------------------------- editing per year

    def holidays_in(self, year: int) -> frozenset[date]:
        return frozenset(d for d in self.holidays if d.year == year)

    def makeup_days_in(self, year: int) -> frozenset[date]:
        return frozenset(d for d in self.makeup_days if d.year == year)

    def with_year(
        self, year: int, *, holidays: Iterable[date] = (), makeup_days: Iterable[date] = ()
    ) -> BusinessCalendar:
        """A copy whose holidays and make-up days for ``year`` are replaced by the given ones."""
        new_holidays, new_makeup = frozenset(holidays), frozenset(makeup_days)
        stray = sorted(d for d in new_holidays | new_makeup if d.year != year)
        if stray:
            raise CalendarError(f"dates outside {year}: {stray}")
        return BusinessCalendar(
            name=self.name,
            timezone=self.timezone,
            hours=self.hours,
            holidays=frozenset(d for d in self.holidays if d.year != year) | new_holidays,
            makeup_days=frozenset(d for d in self.makeup_days if d.year != year) | new_makeup,
            makeup_weekday=self.makeup_weekday,
        )

    # ----------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; holidays and make-up days are grouped by year for editing."""
        years: dict[str, dict[str, list[str]]] = {}
        for key, dates in (("holidays", self.holidays), ("makeup_days", self.makeup_days)):
            for d in sorted(dates):
                entry = years.setdefault(str(d.year), {"holidays": [], "makeup_days": []})
                entry[key].append(d.isoformat())
        return {
            "name": self.name,
            "timezone": self.timezone,
            "hours": {
                WEEKDAY_NAMES[i]: [[_format_time(s, False), _format_time(e, True)] for s, e in day]
                for i, day in enumerate(self.hours)
            },
            "makeup_weekday": WEEKDAY_NAMES[self.makeup_weekday],
            "years": {year: years[year] for year in sorted(years)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BusinessCalendar:
        """Inverse of ``to_dict``; raises ``CalendarError`` on malformed data."""
        try:
            raw_hours = data.get("hours")
            hours: Any = STANDARD_HOURS
            if raw_hours is not None:
                unknown = set(raw_hours) - set(WEEKDAY_NAMES)
                if unknown:
                    raise CalendarError(f"unknown weekday names in hours: {sorted(unknown)}")
                hours = {
                    WEEKDAY_NAMES.index(name): [
                        (_parse_time(s, False), _parse_time(e, True)) for s, e in intervals
                    ]
                    for name, intervals in raw_hours.items()
                }
            holidays: set[date] = set()
            makeup: set[date] = set()
            for year, entry in (data.get("years") or {}).items():
                for target, key in ((holidays, "holidays"), (makeup, "makeup_days")):
                    for text in entry.get(key, []):
                        d = date.fromisoformat(text)
                        if str(d.year) != str(year):
                            raise CalendarError(f"{text} is listed under year {year}")
                        target.add(d)
            weekday_name = data.get("makeup_weekday", WEEKDAY_NAMES[0])
            if weekday_name not in WEEKDAY_NAMES:
                raise CalendarError(f"unknown makeup_weekday {weekday_name!r}")
            return cls(
                name=str(data["name"]),
                timezone=str(data.get("timezone", DEFAULT_TIMEZONE)),
                hours=hours,
                holidays=frozenset(holidays),
                makeup_days=frozenset(makeup),
                makeup_weekday=WEEKDAY_NAMES.index(weekday_name),
            )
        except CalendarError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalendarError(f"invalid calendar data: {exc}") from exc


def _format_time(t: time, is_end: bool) -> str:
    if is_end and t == END_OF_DAY:
        return "24:00"
    return t.strftime("%H:%M") if not (t.second or t.microsecond) else t.isoformat()


def _parse_time(text: str, is_end: bool) -> time:
    if is_end and text in ("24:00", "24:00:00"):
        return END_OF_DAY
    parsed = time.fromisoformat(text)
    if parsed.tzinfo is not None:
        raise CalendarError(f"working hours are local times, got {text!r}")
    return parsed


# --------------------------------------------------------------------- ISO 8601 durations


class Duration(NamedTuple):
    """An ISO 8601 duration split the way calendars apply it (years are folded into months)."""

    months: int = 0
    weeks: int = 0
    days: int = 0
    time: timedelta = timedelta(0)


_NUMBER = r"\d+(?:[.,]\d+)?"
_DURATION_RE = re.compile(
    rf"P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    rf"(?:T(?=\d)(?:(?P<hours>{_NUMBER})H)?(?:(?P<minutes>{_NUMBER})M)?(?:(?P<seconds>{_NUMBER})S)?)?"
)
_MICROSECONDS = {"hours": 3_600_000_000, "minutes": 60_000_000, "seconds": 1_000_000}


def parse_duration(text: str) -> Duration:
    """Parse ``PnYnMnWnDTnHnMnS``; only hours, minutes and seconds may have a fraction.

    Day-like parts must be whole because on a business calendar they count working days;
    sub-microsecond fractions are rounded to the microsecond.
    """
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a supported ISO 8601 duration: {text!r}")
    parts = match.groupdict()
    micros = Decimal(0)
    for unit, scale in _MICROSECONDS.items():
        if parts[unit] is not None:
            micros += Decimal(parts[unit].replace(",", ".")) * scale
    return Duration(
        months=12 * int(parts["years"] or 0) + int(parts["months"] or 0),
        weeks=int(parts["weeks"] or 0),
        days=int(parts["days"] or 0),
        time=timedelta(microseconds=int(micros.to_integral_value())),
    )


# --------------------------------------------------------------------- ready-made calendars


def always_open(name: str = "24x7", timezone: str = DEFAULT_TIMEZONE) -> BusinessCalendar:
    """Around the clock, every day: working time is plain elapsed time."""
    return BusinessCalendar(name=name, timezone=timezone, hours=(_FULL_DAY,) * 7)


def china_calendar(
    years: int | Iterable[int], name: str = "china", timezone: str = DEFAULT_TIMEZONE
) -> BusinessCalendar:
    """Mainland China office calendar for ``years``, from the ``holidays`` package.

    ``holidays.China`` publishes both the days off and the 调休 weekend working days
    (``weekend_workdays``). Only dates inside ``years`` are kept: the package also attaches
    make-up days of unrelated years, and a year not listed has no holiday data at all.
    Years the State Council has not announced yet only carry the package's estimates and
    no make-up days; replace them with ``with_year`` once the schedule is published.
    """
    wanted = {years} if isinstance(years, int) else set(years)
    if not wanted:
        raise CalendarError("china_calendar needs at least one year")
    source = holiday_data.China(years=sorted(wanted))
    return BusinessCalendar(
        name=name,
        timezone=timezone,
        hours=STANDARD_HOURS,
        holidays=frozenset(d for d in source if d.year in wanted),
        makeup_days=frozenset(d for d in source.weekend_workdays if d.year in wanted),
        makeup_weekday=0,
    )
