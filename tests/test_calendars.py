"""Business calendar arithmetic: concrete mainland-China cases plus property tests."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.calendars import (
    MAX_IDLE_DAYS,
    BusinessCalendar,
    CalendarError,
    Duration,
    always_open,
    china_calendar,
    parse_duration,
)

SH = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")
H = timedelta(hours=1)

CHINA = china_calendar([2025, 2026, 2027])
OPEN = always_open()
# Unusual hours in a DST-free zone other than Shanghai: midnight ends, a Saturday shift and
# make-up days working Saturday hours.
ODD = BusinessCalendar(
    name="odd",
    timezone="Asia/Kolkata",
    hours={
        0: [(time(8), time(12)), (time(12, 30), time(17))],
        1: [(time(8), time(12)), (time(12, 30), time(17))],
        2: [(time(8), time(12)), (time(12, 30), time(17))],
        3: [(time(0), time(6)), (time(22), time(0))],
        4: [(time(0), time(0))],
        5: [(time(10), time(14))],
    },
    holidays=frozenset({date(2026, 1, 1), date(2026, 5, 1)}),
    makeup_days=frozenset({date(2026, 1, 4)}),
    makeup_weekday=5,
)


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)


# ----------------------------------------------------------------- package data (2026 schedule)


def test_china_2026_holidays_and_makeup_days_come_from_the_package() -> None:
    cal = china_calendar(2026)
    # Spring Festival 2026: 15-23 Feb off (weekdays 16-20 and 23), Sat 14 and Sat 28 Feb worked.
    assert {date(2026, 2, d) for d in (16, 17, 18, 19, 20, 23)} <= cal.holidays
    assert cal.makeup_days == {
        date(2026, 1, 4),  # New Year, Sunday worked
        date(2026, 2, 14),
        date(2026, 2, 28),
        date(2026, 5, 9),  # Labour Day
        date(2026, 9, 20),  # National Day
        date(2026, 10, 10),
    }
    assert {date(2026, 1, 1), date(2026, 1, 2), date(2026, 5, 5), date(2026, 10, 7)} <= cal.holidays
    # Make-up days of unrelated years that the package attaches are dropped.
    assert all(d.year == 2026 for d in cal.holidays | cal.makeup_days)
    assert cal.is_working_day(date(2026, 2, 14)) and cal.is_working_day(date(2026, 2, 28))
    assert not cal.is_working_day(date(2026, 2, 15)) and not cal.is_working_day(date(2026, 2, 23))
    assert cal.hours_on(date(2026, 2, 14)) == cal.hours_on(date(2026, 2, 9))  # Monday hours


# ----------------------------------------------------------------- working time


@pytest.mark.parametrize(
    ("start", "amount", "expected"),
    [
        (sh(2026, 3, 6, 17), 2 * H, sh(2026, 3, 9, 10)),  # Friday 17:00 + 2 h -> Monday 10:00
        (sh(2026, 3, 9, 11), 2 * H, sh(2026, 3, 9, 14, 30)),  # across the lunch break
        (sh(2026, 3, 9, 12, 15), H, sh(2026, 3, 9, 14, 30)),  # starting in the lunch break
        (sh(2026, 3, 9, 7), H, sh(2026, 3, 9, 10)),  # starting before opening
        (sh(2026, 3, 6, 16), 2 * H, sh(2026, 3, 6, 18)),  # ends exactly at closing: stays Friday
        (sh(2026, 10, 1, 10), H, sh(2026, 10, 8, 10)),  # starting on National Day
        (sh(2026, 2, 13, 17), 2 * H, sh(2026, 2, 14, 10)),  # 调休 Saturday counts
        (sh(2026, 2, 14, 17), 2 * H, sh(2026, 2, 24, 10)),  # then the whole Spring Festival
        (sh(2026, 12, 31, 17), 2 * H, sh(2027, 1, 4, 10)),  # year end, 1 Jan 2027 off
        (sh(2026, 3, 9, 9), 37 * H + 30 * timedelta(minutes=1), sh(2026, 3, 13, 18)),  # one week
        (sh(2026, 3, 7, 10), timedelta(0), sh(2026, 3, 9, 9)),  # zero from a weekend
        (sh(2026, 3, 9, 10), timedelta(microseconds=1), sh(2026, 3, 9, 10, 0, 0, 1)),
    ],
)
def test_add_working_time(start: datetime, amount: timedelta, expected: datetime) -> None:
    result = CHINA.add_working_time(start, amount)
    assert result == expected
    assert result.tzinfo == SH


def test_add_working_time_accepts_any_zone_and_answers_in_the_calendar_zone() -> None:
    start = datetime(2026, 3, 6, 9, tzinfo=UTC)  # Friday 17:00 in Shanghai
    result = CHINA.add_working_time(start, 2 * H)
    assert result == sh(2026, 3, 9, 10)
    assert result.utcoffset() == timedelta(hours=8)


def test_naive_and_negative_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CHINA.add_working_time(datetime(2026, 3, 6, 17), H)
    with pytest.raises(ValueError, match="negative"):
        CHINA.add_working_time(sh(2026, 3, 6, 17), -H)


def test_working_time_between() -> None:
    assert CHINA.working_time_between(sh(2026, 3, 6, 17), sh(2026, 3, 9, 10)) == 2 * H
    assert CHINA.working_time_between(sh(2026, 3, 9, 10), sh(2026, 3, 6, 17)) == -2 * H
    assert CHINA.working_time_between(sh(2026, 3, 9, 10), sh(2026, 3, 9, 10)) == timedelta(0)
    assert CHINA.working_time_between(sh(2026, 3, 7, 0), sh(2026, 3, 8, 23)) == timedelta(0)
    assert CHINA.working_time_between(sh(2026, 3, 9), sh(2026, 3, 16)) == timedelta(hours=37.5)
    # Spring Festival week: only Saturday 14 Feb (make-up day) between 14 and 24 Feb.
    assert CHINA.working_time_between(sh(2026, 2, 14), sh(2026, 2, 24)) == timedelta(hours=7.5)
    # 2026: 261 weekdays - 19 weekday holidays + 6 make-up days = 248 working days.
    year = CHINA.working_time_between(datetime(2025, 12, 31, 16, tzinfo=UTC), sh(2027, 1, 1))
    assert year == timedelta(hours=7.5) * 248


def test_is_working_time_and_next_working_moment() -> None:
    assert CHINA.is_working_time(sh(2026, 3, 9, 9))
    assert not CHINA.is_working_time(sh(2026, 3, 9, 12))  # intervals are half-open
    assert CHINA.is_working_time(sh(2026, 2, 28, 10))  # 调休 Saturday
    assert not CHINA.is_working_time(sh(2026, 2, 17, 10))  # Spring Festival
    assert CHINA.next_working_moment(sh(2026, 3, 9, 10)) == sh(2026, 3, 9, 10)
    assert CHINA.next_working_moment(sh(2026, 3, 9, 12)) == sh(2026, 3, 9, 13, 30)
    assert CHINA.next_working_moment(sh(2026, 9, 30, 18)) == sh(2026, 10, 8, 9)


# ----------------------------------------------------------------- ISO 8601 durations


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (sh(2026, 3, 9, 10), "PT2H", sh(2026, 3, 9, 12)),
        (sh(2026, 3, 9, 11, 50), "PT30M", sh(2026, 3, 9, 13, 50)),
        (sh(2026, 3, 9, 10), "PT0.5S", sh(2026, 3, 9, 10, 0, 0, 500_000)),
        # P1D: same clock time on the next working day.
        (sh(2026, 3, 6, 17), "P1D", sh(2026, 3, 9, 17)),
        (sh(2026, 3, 6, 20), "P1D", sh(2026, 3, 10, 9)),  # after hours: counts from Mon 09:00
        (sh(2026, 3, 7, 10), "P1D", sh(2026, 3, 10, 9)),  # weekend: counts from Mon 09:00
        (sh(2026, 3, 9, 12, 30), "P1D", sh(2026, 3, 10, 13, 30)),  # lunch: counts from 13:30
        (sh(2026, 2, 13, 10), "P1D", sh(2026, 2, 14, 10)),  # the 调休 Saturday
        (sh(2026, 2, 13, 10), "P2D", sh(2026, 2, 24, 10)),
        (sh(2026, 12, 31, 10), "P1D", sh(2027, 1, 4, 10)),
        (sh(2026, 3, 9, 10), "P1W", sh(2026, 3, 16, 10)),  # 5 working days
        (sh(2026, 2, 9, 10), "P1W", sh(2026, 2, 14, 10)),  # the 调休 Saturday is the 5th day
        (sh(2026, 2, 12, 10), "P1W", sh(2026, 2, 26, 10)),  # across Spring Festival
        (sh(2026, 3, 6, 17), "P1DT2H", sh(2026, 3, 10, 10)),
        # Months: calendar months, day clamped, then rolled to a working moment.
        (sh(2026, 3, 9, 10), "P1M", sh(2026, 4, 9, 10)),
        (sh(2026, 1, 31, 10), "P1M", sh(2026, 2, 28, 10)),  # clamped onto a 调休 Saturday
        (sh(2026, 9, 1, 10), "P1M", sh(2026, 10, 8, 9)),  # lands in National Day week
        (sh(2026, 11, 30, 10), "P1Y", sh(2027, 11, 30, 10)),
        (sh(2026, 3, 7, 10), "P0D", sh(2026, 3, 9, 9)),
    ],
)
def test_add_duration_business(start: datetime, duration: str, expected: datetime) -> None:
    assert CHINA.add_duration(start, duration) == expected


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # Friday works around the clock, Saturday 10:00-14:00.
        ((2026, 1, 2, 16), (2026, 1, 3, 14)),  # later than Saturday's close: clamped to 14:00
        ((2026, 1, 2, 9), (2026, 1, 3, 10)),  # before Saturday's opening: moved to 10:00
        # Sunday 4 Jan 2026 is a make-up day working Saturday hours.
        ((2026, 1, 3, 12), (2026, 1, 4, 12)),
        ((2026, 1, 3, 16), (2026, 1, 5, 10)),  # after hours: counts from Sunday 10:00
    ],
)
def test_p1d_stays_on_the_target_day(start: tuple[int, ...], expected: tuple[int, ...]) -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    assert ODD.add_duration(datetime(*start, tzinfo=kolkata), "P1D") == datetime(*expected, tzinfo=kolkata)


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (sh(2026, 3, 7, 23), "PT2H", sh(2026, 3, 8, 1)),
        (sh(2026, 10, 1, 10), "P1D", sh(2026, 10, 2, 10)),
        (sh(2026, 3, 7, 10), "P1W", sh(2026, 3, 14, 10)),
        (sh(2026, 1, 31, 10), "P1M", sh(2026, 2, 28, 10)),
        (sh(2028, 1, 31, 10), "P1M", sh(2028, 2, 29, 10)),
        (sh(2026, 12, 31, 23, 59, 59), "PT0.5S", sh(2026, 12, 31, 23, 59, 59, 500_000)),
    ],
)
def test_always_open_is_plain_clock_arithmetic(start: datetime, duration: str, expected: datetime) -> None:
    assert OPEN.is_always_open and not CHINA.is_always_open
    assert OPEN.add_duration(start, duration) == expected


def test_always_open_with_dst_counts_elapsed_time_and_wall_clock_days() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    cal = always_open(timezone="Europe/Berlin")
    before = datetime(2026, 3, 28, 12, tzinfo=berlin)  # clocks go forward on 29 March
    assert cal.add_working_time(before, 24 * H) == datetime(2026, 3, 29, 13, tzinfo=berlin)
    assert cal.add_duration(before, "P1D") == datetime(2026, 3, 29, 12, tzinfo=berlin)
    assert cal.working_time_between(before, datetime(2026, 3, 29, 12, tzinfo=berlin)) == 23 * H


def test_parse_duration() -> None:
    assert parse_duration("PT2H") == Duration(time=2 * H)
    assert parse_duration("P1Y2M3W4DT1H2M3.25S") == Duration(
        months=14, weeks=3, days=4, time=timedelta(hours=1, minutes=2, seconds=3.25)
    )
    assert parse_duration("PT1,5H") == Duration(time=timedelta(minutes=90))
    assert parse_duration("P1D") == Duration(days=1)
    for bad in ("", "P", "PT", "P1.5D", "-P1D", "1D", "P1H", "PT1D", "P1DT", "p1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ----------------------------------------------------------------- guards and validation


def test_calendar_without_working_time_raises_instead_of_looping() -> None:
    empty = BusinessCalendar(name="empty", hours=((),) * 7)
    with pytest.raises(CalendarError, match="no working time"):
        empty.add_working_time(sh(2026, 3, 9, 10), H)
    with pytest.raises(CalendarError):
        empty.add_duration(sh(2026, 3, 9, 10), "P1M")
    assert empty.working_time_between(sh(2026, 1, 1), sh(2027, 1, 1)) == timedelta(0)
    assert not empty.is_working_time(sh(2026, 3, 9, 10))

    start = date(2026, 1, 1)
    closed = BusinessCalendar(
        name="closed", holidays=frozenset(start + timedelta(days=i) for i in range(MAX_IDLE_DAYS + 10))
    )
    with pytest.raises(CalendarError, match="no working time"):
        closed.next_working_moment(sh(2026, 1, 1))
    # A long but finite closure is searched through.
    long_break = BusinessCalendar(
        name="long", holidays=frozenset(start + timedelta(days=i) for i in range(400))
    )
    assert long_break.next_working_moment(sh(2026, 1, 1)) == sh(2027, 2, 5, 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timezone": "Mars/Olympus"},
        {"hours": {0: [(time(12), time(9))]}},
        {"hours": {0: [(time(9), time(12)), (time(11), time(13))]}},
        {"hours": {7: [(time(9), time(12))]}},
        {"hours": [[(time(9), time(12))]]},
        {"holidays": frozenset({date(2026, 2, 14)}), "makeup_days": frozenset({date(2026, 2, 14)})},
        {"makeup_days": frozenset({date(2026, 2, 14)}), "makeup_weekday": 6},
        {"holidays": frozenset({datetime(2026, 1, 1)})},
    ],
)
def test_invalid_definitions_are_refused(kwargs: dict) -> None:
    with pytest.raises(CalendarError):
        BusinessCalendar(name="bad", **kwargs)


# ----------------------------------------------------------------- data form and per-year edits


def test_round_trip_through_json() -> None:
    for cal in (CHINA, OPEN, ODD):
        data = json.loads(json.dumps(cal.to_dict()))
        assert BusinessCalendar.from_dict(data) == cal
    data = CHINA.to_dict()
    assert data["hours"]["mon"] == [["09:00", "12:00"], ["13:30", "18:00"]]
    assert data["hours"]["sat"] == []
    assert OPEN.to_dict()["hours"]["sun"] == [["00:00", "24:00"]]
    assert "2026-02-14" in data["years"]["2026"]["makeup_days"]
    assert data["makeup_weekday"] == "mon"


def test_from_dict_rejects_malformed_data() -> None:
    good = CHINA.to_dict()
    for bad in (
        {**good, "hours": {"funday": []}},
        {**good, "hours": {"mon": [["9am", "12:00"]]}},
        {**good, "years": {"2025": {"holidays": ["2026-01-01"]}}},
        {**good, "makeup_weekday": "someday"},
        {k: v for k, v in good.items() if k != "name"},
    ):
        with pytest.raises(CalendarError):
            BusinessCalendar.from_dict(bad)


def test_with_year_replaces_only_that_year() -> None:
    edited = CHINA.with_year(2027, holidays={date(2027, 2, 8)}, makeup_days={date(2027, 2, 20)})
    assert edited.holidays_in(2027) == {date(2027, 2, 8)}
    assert edited.makeup_days_in(2027) == {date(2027, 2, 20)}
    assert edited.holidays_in(2026) == CHINA.holidays_in(2026)
    assert edited.is_working_time(sh(2027, 2, 20, 10))
    assert edited.is_working_time(sh(2027, 2, 9, 10)) and not CHINA.is_working_time(sh(2027, 2, 9, 10))
    with pytest.raises(CalendarError, match="outside 2027"):
        CHINA.with_year(2027, holidays={date(2026, 1, 1)})


# ----------------------------------------------------------------- properties

ZONES = st.sampled_from([SH, UTC, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")])
STARTS = st.datetimes(
    min_value=datetime(2025, 12, 1), max_value=datetime(2026, 12, 31), timezones=ZONES, allow_imaginary=False
)
AMOUNTS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=300))
GAPS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))
CALENDARS = st.sampled_from([CHINA, ODD, OPEN])
PROPERTY = settings(max_examples=150, deadline=None)


def _ends_an_interval(cal: BusinessCalendar, moment: datetime) -> bool:
    day = moment.astimezone(cal.tz).date()
    return any(end == moment for d in (day - timedelta(days=1), day) for _, end in cal.intervals_on(d))


@PROPERTY
@given(CALENDARS, STARTS, AMOUNTS)
def test_between_inverts_add(cal: BusinessCalendar, start: datetime, amount: timedelta) -> None:
    end = cal.add_working_time(start, amount)
    assert cal.working_time_between(start, end) == amount
    working_start = cal.next_working_moment(start)
    assert cal.is_working_time(working_start)
    assert cal.working_time_between(working_start, cal.add_working_time(working_start, amount)) == amount
    assert cal.working_time_between(end, start) == -amount


@PROPERTY
@given(CALENDARS, STARTS, AMOUNTS)
def test_result_is_a_working_moment_or_an_interval_end(
    cal: BusinessCalendar, start: datetime, amount: timedelta
) -> None:
    end = cal.add_working_time(start, amount)
    assert end >= start
    assert cal.is_working_time(end) or _ends_an_interval(cal, end)


@PROPERTY
@given(CALENDARS, STARTS, GAPS, AMOUNTS, AMOUNTS)
# The repeated hour of New York's autumn change: 01:00 the second time (fold=1).
@example(OPEN, datetime(2026, 11, 1, 1, 0, fold=1, tzinfo=ZoneInfo("America/New_York")), timedelta(0),
         timedelta(0), timedelta(0))
def test_monotonic(
    cal: BusinessCalendar, start: datetime, gap: timedelta, first: timedelta, second: timedelta
) -> None:
    small, large = sorted((first, second))
    assert cal.add_working_time(start, small) <= cal.add_working_time(start, large)
    # Later in absolute time: aware datetime arithmetic is wall-clock arithmetic and drops
    # ``fold``, so ``start + gap`` can be an hour earlier in a zone's repeated autumn hour.
    later = start.astimezone(UTC) + gap
    assert cal.add_working_time(start, small) <= cal.add_working_time(later, small)


@PROPERTY
@given(CALENDARS, STARTS, AMOUNTS, AMOUNTS.filter(lambda d: d > timedelta(0)))
def test_additive(cal: BusinessCalendar, start: datetime, first: timedelta, second: timedelta) -> None:
    stepwise = cal.add_working_time(cal.add_working_time(start, first), second)
    assert stepwise == cal.add_working_time(start, first + second)


@PROPERTY
@given(STARTS, st.integers(min_value=1, max_value=30))
def test_a_working_day_is_a_full_days_work(start: datetime, days: int) -> None:
    # Every Chinese working day (make-up days included) has the same 7.5 hours, so N working
    # days from any start hold exactly N * 7.5 h of working time and land on a working day.
    end = CHINA.add_duration(start, f"P{days}D")
    assert CHINA.working_time_between(start, end) == days * timedelta(hours=7.5)
    assert CHINA.is_working_day(end.date())
    assert end == CHINA.add_working_days(start, days)


@PROPERTY
@given(STARTS, AMOUNTS)
def test_always_open_matches_elapsed_time(start: datetime, amount: timedelta) -> None:
    end = OPEN.add_working_time(start, amount)
    assert end == start.astimezone(UTC) + amount
    assert OPEN.working_time_between(start, end) == amount
    # compare instants: PEP 495 makes an ambiguous wall time unequal to any other zone's
    assert OPEN.next_working_moment(start).timestamp() == start.timestamp()
