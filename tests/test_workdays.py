"""Tests for the working-day calendar (gateway/workdays.py and conf/calendar/).

Expected deadlines are worked out by hand from the State Council notices for
2025 (国办发明电〔2024〕12号, 2024-11-12) and 2026 (2025-11-04) and written as
literals; none is computed by the code under test.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from twisted.logger import LogLevel, capturedLogs

from gateway.config import ConfigError
from gateway.workdays import (
    CalendarError,
    CalendarGap,
    CalendarYear,
    WorkCalendar,
    load_calendar,
)

CONF = Path(__file__).resolve().parent.parent / "conf" / "calendar"


@pytest.fixture(scope="module")
def cal() -> WorkCalendar:
    return load_calendar(CONF)


def _days(first: date, last: date) -> set[date]:
    out, d = set(), first
    while d <= last:
        out.add(d)
        d += timedelta(days=1)
    return out


# --- the shipped data against the notices -----------------------------------


def test_2025_file_matches_the_notice(cal):
    """cn-2025.toml holds exactly the 放假 periods and 上班 days of 国办发明电〔2024〕12号."""
    y = cal.for_year(2025)
    notice_off = (
        {date(2025, 1, 1)}                                   # 元旦, 1 day
        | _days(date(2025, 1, 28), date(2025, 2, 4))         # 春节, 8 days
        | _days(date(2025, 4, 4), date(2025, 4, 6))          # 清明节, 3 days
        | _days(date(2025, 5, 1), date(2025, 5, 5))          # 劳动节, 5 days
        | _days(date(2025, 5, 31), date(2025, 6, 2))         # 端午节, 3 days
        | _days(date(2025, 10, 1), date(2025, 10, 8))        # 国庆节、中秋节, 8 days
    )
    assert len(notice_off) == 1 + 8 + 3 + 5 + 3 + 8
    assert y.holidays == notice_off
    assert y.workdays == {date(2025, 1, 26), date(2025, 2, 8), date(2025, 4, 27),
                          date(2025, 9, 28), date(2025, 10, 11)}
    assert not y.provisional


def test_2026_file_matches_the_notice(cal):
    """cn-2026.toml holds exactly the 放假 periods and 上班 days of the notice of 2025-11-04."""
    y = cal.for_year(2026)
    notice_off = (
        _days(date(2026, 1, 1), date(2026, 1, 3))            # 元旦, 3 days
        | _days(date(2026, 2, 15), date(2026, 2, 23))        # 春节, 9 days
        | _days(date(2026, 4, 4), date(2026, 4, 6))          # 清明节, 3 days
        | _days(date(2026, 5, 1), date(2026, 5, 5))          # 劳动节, 5 days
        | _days(date(2026, 6, 19), date(2026, 6, 21))        # 端午节, 3 days
        | _days(date(2026, 9, 25), date(2026, 9, 27))        # 中秋节, 3 days
        | _days(date(2026, 10, 1), date(2026, 10, 7))        # 国庆节, 7 days
    )
    assert len(notice_off) == 3 + 9 + 3 + 5 + 3 + 3 + 7
    assert y.holidays == notice_off
    assert y.workdays == {date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28),
                          date(2026, 5, 9), date(2026, 9, 20), date(2026, 10, 10)}
    assert not y.provisional


def test_2027_is_provisional_with_fixed_date_holidays_only(cal):
    """cn-2027.toml is marked provisional and holds only 元旦, 5月1-2日 and 10月1-3日."""
    assert cal.years == (2025, 2026, 2027)
    assert cal.provisional_years == frozenset({2027})
    y = cal.for_year(2027)
    assert y.holidays == {date(2027, 1, 1), date(2027, 5, 1), date(2027, 5, 2),
                          date(2027, 10, 1), date(2027, 10, 2), date(2027, 10, 3)}
    assert y.workdays == frozenset()


# --- is_working_day -----------------------------------------------------------


@pytest.mark.parametrize("d, working", [
    (date(2026, 1, 4), True),     # Sunday, 元旦 make-up day
    (date(2026, 2, 14), True),    # Saturday, 春节 make-up day
    (date(2026, 2, 20), False),   # Friday inside 春节 (调休 day off)
    (date(2026, 2, 23), False),   # Monday, last day of 春节
    (date(2026, 2, 24), True),    # Tuesday, first day back
    (date(2026, 3, 7), False),    # ordinary Saturday
    (date(2026, 3, 9), True),     # ordinary Monday
    (date(2025, 10, 8), False),   # Wednesday, 8th day of 国庆节、中秋节 2025
    (date(2025, 10, 11), True),   # Saturday make-up day 2025
])
def test_is_working_day(cal, d, working):
    """Make-up days work, holiday-period weekdays do not, other days follow Monday-Friday."""
    assert cal.is_working_day(d) is working


# --- add_working_days ---------------------------------------------------------


def test_five_working_days_across_national_day_2026(cal):
    """5 working days from Wed 2026-09-30 skip 10-01..07 and count Sat 10-10: Tue 10-13.

    8 Thu (1), 9 Fri (2), 10 Sat make-up (3), 12 Mon (4), 13 Tue (5);
    weekday arithmetic would have said Wed 10-07.
    """
    assert cal.add_working_days(date(2026, 9, 30), 5) == date(2026, 10, 13)


def test_three_working_days_across_a_sunday_make_up_day(cal):
    """From Fri 2026-09-18, Sun 09-20 (国庆 make-up) counts: 20 (1), 21 (2), 22 (3) gives Tue 09-22."""
    assert cal.add_working_days(date(2026, 9, 18), 3) == date(2026, 9, 22)


def test_saturday_make_up_day_can_be_the_deadline(cal):
    """1 working day after Fri 2026-05-08 is Sat 05-09 (劳动节 make-up), not Mon 05-11."""
    assert cal.add_working_days(date(2026, 5, 8), 1) == date(2026, 5, 9)


def test_spring_festival_2026(cal):
    """春节 2026: Sat 02-14 and Sat 02-28 work, 02-15..23 do not.

    From Fri 02-13: 14 (1), 24 (2), 25 (3), 26 (4), 27 (5).
    From Thu 02-26 (3 days): 27 (1), Sat 28 (2), Mon 03-02 (3).
    """
    assert cal.add_working_days(date(2026, 2, 13), 5) == date(2026, 2, 27)
    assert cal.add_working_days(date(2026, 2, 13), 3) == date(2026, 2, 25)
    assert cal.add_working_days(date(2026, 2, 26), 3) == date(2026, 3, 2)


def test_start_on_a_holiday(cal):
    """Results received on 春节 day 02-17: 3 working days are Tue 02-24, Wed 02-25, Thu 02-26."""
    assert cal.add_working_days(date(2026, 2, 17), 3) == date(2026, 2, 26)


def test_national_day_and_mid_autumn_2025(cal):
    """From Tue 2025-09-30, 5 working days skip 10-01..08: 9 (1), 10 (2), Sat 11 (3), 13 (4), 14 (5)."""
    assert cal.add_working_days(date(2025, 9, 30), 5) == date(2025, 10, 14)


def test_year_boundary_2025_to_2026(cal):
    """Counting crosses from cn-2025 into cn-2026: 2026-01-01..03 off, Sun 01-04 works.

    From Wed 2025-12-31, the 1st working day is Sun 2026-01-04.
    From Mon 2025-12-29: 30 (1), 31 (2), Jan 4 (3), Jan 5 (4), Jan 6 (5).
    """
    assert cal.add_working_days(date(2025, 12, 31), 1) == date(2026, 1, 4)
    assert cal.add_working_days(date(2025, 12, 29), 5) == date(2026, 1, 6)


def test_zero_days_is_the_start_and_negative_is_refused(cal):
    """n=0 returns the start unchanged; a negative n is an error, not a silent count backwards."""
    assert cal.add_working_days(date(2026, 2, 17), 0) == date(2026, 2, 17)
    with pytest.raises(ValueError):
        cal.add_working_days(date(2026, 3, 2), -1)


def test_datetime_is_refused(cal):
    """A datetime is refused: it never equals a date, so it would miss every holiday."""
    with pytest.raises(TypeError):
        cal.is_working_day(datetime(2026, 10, 1, 9, 0))
    with pytest.raises(TypeError):
        cal.add_working_days(datetime(2026, 9, 30, 9, 0), 5)


# --- working_days_between -----------------------------------------------------


def test_working_days_between(cal):
    """Counts working days in (a, b]: the inverse of add_working_days, signed, 0 on the same day."""
    assert cal.working_days_between(date(2026, 9, 30), date(2026, 10, 13)) == 5
    assert cal.working_days_between(date(2026, 10, 13), date(2026, 9, 30)) == -5
    assert cal.working_days_between(date(2026, 2, 13), date(2026, 2, 23)) == 1
    assert cal.working_days_between(date(2025, 12, 31), date(2026, 1, 4)) == 1
    assert cal.working_days_between(date(2026, 3, 2), date(2026, 3, 2)) == 0
    # Whole of October 2026: 22 weekdays, minus 5 off (1,2,5,6,7), plus Sat 10-10.
    assert cal.working_days_between(date(2026, 9, 30), date(2026, 10, 31)) == 18


# --- CalendarGap --------------------------------------------------------------


def test_gap_before_the_first_year(cal):
    """A date in 2024 (no file) raises CalendarGap naming 2024, never a weekday guess."""
    with pytest.raises(CalendarGap) as e:
        cal.is_working_day(date(2024, 12, 31))
    assert e.value.year == 2024
    assert "2024" in str(e.value)
    with pytest.raises(CalendarGap):
        cal.for_year(2024)
    with pytest.raises(CalendarGap):
        cal.add_working_days(date(2024, 12, 31), 1)


def test_gap_reached_while_counting(cal):
    """Counting past 2027-12-31 raises CalendarGap for 2028 although 2027-12-31 was a working day."""
    assert cal.add_working_days(date(2027, 12, 30), 1) == date(2027, 12, 31)
    with pytest.raises(CalendarGap) as e:
        cal.add_working_days(date(2027, 12, 30), 2)
    assert e.value.year == 2028
    assert "cn-2028.toml" in str(e.value)
    with pytest.raises(CalendarGap) as e:
        cal.working_days_between(date(2026, 6, 1), date(2028, 1, 5))
    assert e.value.year == 2028


def test_gap_between_loaded_years_in_a_hand_built_calendar():
    """A WorkCalendar built without 2026 raises CalendarGap for 2026 when counting through it."""
    c = WorkCalendar([CalendarYear(2025, frozenset(), frozenset()),
                      CalendarYear(2027, frozenset(), frozenset())])
    with pytest.raises(CalendarGap) as e:
        c.add_working_days(date(2025, 12, 31), 1)
    assert e.value.year == 2026


# --- loading and validation ---------------------------------------------------


GOOD_2026 = """\
year = 2026
provisional = false
source = "test"
holidays = [2026-01-01, 2026-01-02, 2026-01-03]
workdays = [2026-01-04]
"""


def _write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def _errors(d: Path) -> list[str]:
    with pytest.raises(CalendarError) as e:
        load_calendar(d)
    return e.value.errors


def _only_error(d: Path) -> str:
    errors = _errors(d)
    assert len(errors) == 1, errors
    return errors[0]


def test_minimal_valid_file_loads(tmp_path):
    """The baseline file used by the error tests loads, and its make-up Sunday counts."""
    _write(tmp_path, "cn-2026.toml", GOOD_2026)
    c = load_calendar(tmp_path)
    assert c.years == (2026,)
    assert c.add_working_days(date(2026, 1, 1), 1) == date(2026, 1, 4)


def test_unknown_key_is_an_error(tmp_path):
    """A misspelt key ('holiday') is reported with file and key, not ignored."""
    p = _write(tmp_path, "cn-2026.toml", GOOD_2026 + "holiday = [2026-05-01]\n")
    assert _only_error(tmp_path).startswith(f"{p}: holiday: unknown key")


def test_date_listed_twice_in_one_list(tmp_path):
    """The same holiday twice in `holidays` is an error naming the date."""
    p = _write(tmp_path, "cn-2026.toml",
               GOOD_2026.replace("2026-01-03]", "2026-01-03, 2026-01-02]"))
    assert _only_error(tmp_path) == f"{p}: holidays: 2026-01-02 is listed twice"


def test_date_in_both_lists(tmp_path):
    """A date that is both a holiday and a make-up workday is an error."""
    p = _write(tmp_path, "cn-2026.toml",
               GOOD_2026.replace("2026-01-03]", "2026-01-03, 2026-01-04]"))
    assert _only_error(tmp_path) == f"{p}: workdays: 2026-01-04 is listed in both holidays and workdays"


def test_make_up_day_on_a_weekday(tmp_path):
    """A make-up workday on a Monday (2026-01-05) is an error: it would change nothing, so it is a typo."""
    p = _write(tmp_path, "cn-2026.toml", GOOD_2026.replace("[2026-01-04]", "[2026-01-05]"))
    err = _only_error(tmp_path)
    assert err.startswith(f"{p}: workdays: 2026-01-05 is a Monday")


def test_holiday_outside_the_file_year(tmp_path):
    """A 2025 date in cn-2026.toml's holidays is an error naming the file it belongs in."""
    p = _write(tmp_path, "cn-2026.toml", GOOD_2026.replace("2026-01-03]", "2026-01-03, 2025-12-31]"))
    assert _only_error(tmp_path) == f"{p}: holidays: 2025-12-31 is outside 2026; it belongs in cn-2025.toml"


def test_make_up_day_outside_the_file_year(tmp_path):
    """A make-up Saturday of 2027 in cn-2026.toml is an error too."""
    p = _write(tmp_path, "cn-2026.toml", GOOD_2026.replace("[2026-01-04]", "[2026-01-04, 2027-01-02]"))
    assert _only_error(tmp_path) == f"{p}: workdays: 2027-01-02 is outside 2026; it belongs in cn-2027.toml"


def test_year_key_must_match_file_name(tmp_path):
    """`year = 2025` in cn-2026.toml is an error."""
    p = _write(tmp_path, "cn-2026.toml", GOOD_2026.replace("year = 2026", "year = 2025"))
    assert _only_error(tmp_path) == f"{p}: year: is 2025 but the file name says 2026"


def test_required_keys(tmp_path):
    """A file with none of the keys reports year, source, holidays and workdays as required."""
    p = _write(tmp_path, "cn-2026.toml", "provisional = false\n")
    errors = _errors(tmp_path)
    for key in ("year", "source", "holidays", "workdays"):
        assert any(e.startswith(f"{p}: {key}: is required") for e in errors), (key, errors)
    assert len(errors) == 4


def test_wrong_types(tmp_path):
    """A string date, a date-time, a non-list and a non-bool provisional are each reported."""
    p = _write(tmp_path, "cn-2026.toml", """\
year = 2026
provisional = "no"
source = "test"
holidays = ["2026-01-01", 2026-01-02T00:00:00]
workdays = 2026-01-04
""")
    errors = _errors(tmp_path)
    assert sorted(errors) == sorted([
        f"{p}: provisional: must be true or false, got 'no'",
        f"{p}: holidays[0]: must be a bare date like 2026-01-01, got '2026-01-01'",
        f"{p}: holidays[1]: must be a bare date like 2026-01-01, got datetime.datetime(2026, 1, 2, 0, 0)",
        f"{p}: workdays: must be a list of dates, got datetime.date(2026, 1, 4)",
    ])


def test_unreadable_toml(tmp_path):
    """A TOML syntax error is reported against the file."""
    p = _write(tmp_path, "cn-2026.toml", "year = \n")
    assert _only_error(tmp_path).startswith(f"{p}: (file): cannot be read")


def test_bad_file_name(tmp_path):
    """A .toml file not named cn-YYYY.toml (here a letter O for a zero) is an error, not skipped."""
    _write(tmp_path, "cn-2026.toml", GOOD_2026)
    p = _write(tmp_path, "cn-2O27.toml", GOOD_2026)
    assert _only_error(tmp_path) == f"{p}: (file): name must be cn-YYYY.toml"


def test_empty_or_missing_directory(tmp_path):
    """No calendar files, or no directory at all, is an error rather than an empty calendar."""
    assert "no cn-YYYY.toml calendar files" in _only_error(tmp_path)
    assert "not a directory" in _only_error(tmp_path / "absent")


def test_missing_year_between_files(tmp_path):
    """cn-2025 and cn-2027 without cn-2026 is an error at load time, naming 2026."""
    _write(tmp_path, "cn-2025.toml", 'year = 2025\nsource = "t"\nholidays = []\nworkdays = []\n')
    _write(tmp_path, "cn-2027.toml", 'year = 2027\nsource = "t"\nholidays = []\nworkdays = []\n')
    assert "years 2026 are missing between 2025 and 2027" in _only_error(tmp_path)


def test_all_errors_reported_together(tmp_path):
    """Problems in two files come back in one CalendarError (a ConfigError), each naming file and key."""
    a = _write(tmp_path, "cn-2025.toml", """\
year = 2025
source = "t"
holidays = [2025-01-01, 2025-01-01]
workdays = [2025-01-27]
color = "red"
""")
    b = _write(tmp_path, "cn-2026.toml", GOOD_2026.replace("2026-01-03]", "2026-01-03, 2027-01-01]"))
    with pytest.raises(ConfigError) as e:
        load_calendar(tmp_path)
    assert isinstance(e.value, CalendarError)
    errors = e.value.errors
    assert any(x.startswith(f"{a}: color: unknown key") for x in errors)
    assert f"{a}: holidays: 2025-01-01 is listed twice" in errors
    assert any(x.startswith(f"{a}: workdays: 2025-01-27 is a Monday") for x in errors)
    assert f"{b}: holidays: 2027-01-01 is outside 2026; it belongs in cn-2027.toml" in errors
    assert len(errors) == 4
    for x in errors:
        assert x in str(e.value)


def test_provisional_year_is_warned_about(tmp_path):
    """Loading a provisional file logs one warning naming the year and file; a final file logs none."""
    _write(tmp_path, "cn-2026.toml", GOOD_2026)
    with capturedLogs() as events:
        load_calendar(tmp_path)
    assert [e for e in events if e.get("log_namespace") == "gateway.workdays"] == []

    p = _write(tmp_path, "cn-2027.toml",
               'year = 2027\nprovisional = true\nsource = "t"\nholidays = [2027-01-01]\nworkdays = []\n')
    with capturedLogs() as events:
        c = load_calendar(tmp_path)
    warnings = [e for e in events if e.get("log_namespace") == "gateway.workdays"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == LogLevel.warn
    assert warnings[0]["year"] == 2027
    assert warnings[0]["file"] == str(p)
    assert c.provisional_years == frozenset({2027})


def test_a_loopback_installations_calendar_runs_past_the_last_shipped_year(tmp_path):
    """The demo and the tests count deadlines from today's date: their installation's calendar
    holds the shipped years unchanged and, past the last one, provisional weekends-only years
    up to next year, so deadlines computed in 2029 do not raise CalendarGap; conf/calendar
    itself is not touched (a real installation still gets the gap)."""
    from simulators import harness
    shipped = sorted(p.name for p in harness.CALENDAR_DIR.glob("cn-*.toml"))
    last = max(int(n[3:7]) for n in shipped)
    d = harness.calendar_dir(harness.Paths(tmp_path), date(last + 2, 12, 30))
    cal = load_calendar(d)
    start, weekdays = date(last + 2, 12, 30), []
    day = start
    while len(weekdays) < 5:
        day += timedelta(days=1)
        if day.weekday() < 5:
            weekdays.append(day)
    assert cal.add_working_days(start, 5) == weekdays[-1]
    for n in shipped:
        assert (d / n).read_bytes() == (harness.CALENDAR_DIR / n).read_bytes()
    assert sorted(p.name for p in harness.CALENDAR_DIR.glob("cn-*.toml")) == shipped
    with pytest.raises(CalendarGap):
        load_calendar(harness.CALENDAR_DIR).add_working_days(date(last + 1, 6, 1), 1)
