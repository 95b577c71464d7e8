"""The working-day calendar behind every deadline counted in working days.

Article 26 gives the department 5 working days to check a batch's results and
3 to report errors, and banks count their own deadlines the same way. In
mainland China a working day is not "Monday to Friday": the State Council
publishes each year's public holidays (放假) together with make-up working days
(调休上班) that fall on weekends, so the calendar is data, one file per year in
`conf/calendar/cn-YYYY.toml`, validated whole when loaded. A date in a year
with no file raises `CalendarGap` rather than falling back to weekday
arithmetic, and a year whose notice is not yet published can be shipped as
provisional, which the loader logs as a warning.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

from adapters.settings import ConfigError


_FILE_NAME = re.compile(r"cn-(\d{4})\.toml")
_KEYS = ("year", "provisional", "source", "holidays", "workdays")
_WEEKDAY = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ONE_DAY = timedelta(days=1)


class CalendarError(ConfigError):
    """The calendar files are invalid; `errors` lists every problem as 'file: key: message'.

    A `ConfigError`, so the daemon reports it with the rest of its configuration.
    """


class CalendarGap(LookupError):
    """A date falls in a year for which no calendar file is loaded.

    Raised instead of guessing with weekday arithmetic, because a guessed
    deadline across an unknown 春节 would be wrong by a week.
    """

    def __init__(self, year: int, loaded: Iterable[int]):
        self.year = year
        self.loaded = tuple(sorted(loaded))
        have = ", ".join(map(str, self.loaded)) or "none"
        super().__init__(
            f"no working-day calendar for {year} (loaded: {have}); "
            f"add cn-{year}.toml from the State Council's notice for {year}"
        )


@dataclass(frozen=True)
class CalendarYear:
    """One year of the calendar, as read from one file."""

    year: int
    holidays: frozenset[date]
    workdays: frozenset[date]
    provisional: bool = False
    source: str = ""
    file: str = ""


class WorkCalendar:
    """Answers whether a date is a working day, and counts working days.

    Dates are calendar dates in China (UTC+8); a caller holding a timestamp
    converts it first. A `datetime` is refused because it never compares equal
    to a `date`, so it would silently miss every holiday.
    """

    def __init__(self, years: Iterable[CalendarYear]):
        self._years: dict[int, CalendarYear] = {}
        for y in years:
            if y.year in self._years:
                raise ValueError(f"calendar year {y.year} given twice")
            self._years[y.year] = y

    def __repr__(self) -> str:
        prov = sorted(self.provisional_years)
        return f"WorkCalendar(years={list(self.years)}, provisional={prov})"

    @property
    def years(self) -> tuple[int, ...]:
        """The years loaded, ascending."""
        return tuple(sorted(self._years))

    @property
    def provisional_years(self) -> frozenset[int]:
        """Loaded years whose official notice has not been entered yet."""
        return frozenset(y for y, cy in self._years.items() if cy.provisional)

    def for_year(self, year: int) -> CalendarYear:
        """The loaded data for one year (its dates, source and file), or CalendarGap."""
        try:
            return self._years[year]
        except KeyError:
            raise CalendarGap(year, self._years) from None

    def _year(self, d: Any) -> CalendarYear:
        if isinstance(d, datetime) or not isinstance(d, date):
            raise TypeError(f"expected a datetime.date, got {type(d).__name__} {d!r}")
        return self.for_year(d.year)

    def is_working_day(self, d: date) -> bool:
        """A make-up day is working, a holiday is not, otherwise Monday to Friday."""
        y = self._year(d)
        if d in y.workdays:
            return True
        if d in y.holidays:
            return False
        return d.weekday() < 5

    def add_working_days(self, start: date, n: int) -> date:
        """The n-th working day after `start` (start itself never counts; n=0 gives start).

        The deadline "within 5 working days of receipt" is
        `add_working_days(receipt_date, 5)`, whatever kind of day receipt was.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"n must be 0 or more, got {n}")
        self._year(start)
        d = start
        while n:
            d += _ONE_DAY
            if self.is_working_day(d):
                n -= 1
        return d

    def working_days_between(self, a: date, b: date) -> int:
        """How many working days lie after `a` up to and including `b`.

        The inverse of `add_working_days`: between(a, add_working_days(a, n)) == n.
        Negative when b is before a; 0 when they are the same day.
        """
        if b < a:
            return -self.working_days_between(b, a)
        self._year(a)
        self._year(b)
        count = 0
        d = a
        while d < b:
            d += _ONE_DAY
            if self.is_working_day(d):
                count += 1
        return count


def load_calendar(directory: str | Path, *, warn: bool = True) -> WorkCalendar:
    """Read and validate every `cn-YYYY.toml` in `directory`; all problems are raised together.

    Logs a warning for each provisional year (`warn_provisional`), unless *warn* is false:
    configuration loading leaves it to the daemon's start, so gatewayctl needs no Twisted.
    """
    base = Path(directory)
    errors: list[str] = []
    years: list[CalendarYear] = []
    if not base.is_dir():
        raise CalendarError([f"{base}: not a directory"])
    for path in sorted(base.glob("*.toml")):
        m = _FILE_NAME.fullmatch(path.name)
        if m is None:
            errors.append(f"{path}: (file): name must be cn-YYYY.toml")
            continue
        cy = _read_year(path, int(m.group(1)), errors)
        if cy is not None:
            years.append(cy)
    if not years and not errors:
        errors.append(f"{base}: no cn-YYYY.toml calendar files")
    if years:
        have = {y.year for y in years}
        missing = sorted(set(range(min(have), max(have) + 1)) - have)
        if missing:
            errors.append(
                f"{base}: (files): years {', '.join(map(str, missing))} are missing between "
                f"{min(have)} and {max(have)}"
            )
    if errors:
        raise CalendarError(errors)
    calendar = WorkCalendar(years)
    if warn:
        warn_provisional(calendar)
    return calendar


def warn_provisional(calendar: WorkCalendar) -> None:
    """One warning per provisional year: its deadlines may be wrong until the notice is entered."""
    provisional = [y for y in calendar._years.values() if y.provisional]  # noqa: SLF001
    if not provisional:
        return
    from twisted.logger import Logger   # here: gatewayctl loads calendars and needs no Twisted
    log = Logger(namespace=__name__)
    for y in sorted(provisional, key=lambda y: y.year):
        log.warn(
            "working-day calendar for {year} is provisional ({file}): deadlines in {year} "
            "may be wrong until the State Council's notice is entered",
            year=y.year, file=y.file,
        )


def _read_year(path: Path, year: int, errors: list[str]) -> CalendarYear | None:
    """One file's year, or None after appending its problems to `errors`."""
    start = len(errors)

    def err(key: str, msg: str) -> None:
        errors.append(f"{path}: {key}: {msg}")

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        err("(file)", f"cannot be read: {e}")
        return None

    for key in data:
        if key not in _KEYS:
            err(key, f"unknown key (known: {', '.join(sorted(_KEYS))})")

    if "year" not in data:
        err("year", "is required")
    elif isinstance(data["year"], bool) or not isinstance(data["year"], int):
        err("year", f"must be an integer, got {data['year']!r}")
    elif data["year"] != year:
        err("year", f"is {data['year']} but the file name says {year}")

    provisional = data.get("provisional", False)
    if not isinstance(provisional, bool):
        err("provisional", f"must be true or false, got {provisional!r}")

    source = data.get("source")
    if source is None:
        err("source", "is required (name the State Council notice the dates come from)")
    elif not isinstance(source, str) or not source.strip():
        err("source", f"must be a non-empty string, got {source!r}")

    lists: dict[str, list[date]] = {}
    for key in ("holidays", "workdays"):
        lists[key] = _read_dates(data, key, year, err)

    seen: dict[date, str] = {}
    for key in ("holidays", "workdays"):
        for d in lists[key]:
            if d in seen:
                where = "twice" if seen[d] == key else f"in both {seen[d]} and {key}"
                err(key, f"{d.isoformat()} is listed {where}")
            else:
                seen[d] = key
    for d in lists["workdays"]:
        if d.weekday() < 5:
            err("workdays", f"{d.isoformat()} is a {_WEEKDAY[d.weekday()]}; "
                            "a make-up working day must be a Saturday or Sunday")

    if len(errors) > start:
        return None
    return CalendarYear(
        year=year,
        holidays=frozenset(lists["holidays"]),
        workdays=frozenset(lists["workdays"]),
        provisional=provisional,
        source=source,
        file=str(path),
    )


def _read_dates(data: dict, key: str, year: int, err) -> list[date]:
    if key not in data:
        err(key, "is required (may be an empty list)")
        return []
    value = data[key]
    if not isinstance(value, list):
        err(key, f"must be a list of dates, got {value!r}")
        return []
    out: list[date] = []
    for i, d in enumerate(value):
        # TOML date-times load as datetime, a subclass of date: refuse them,
        # a time of day has no meaning here and would never match a date.
        if isinstance(d, datetime) or not isinstance(d, date):
            err(f"{key}[{i}]", f"must be a bare date like {year}-01-01, got {d!r}")
            continue
        if d.year != year:
            err(key, f"{d.isoformat()} is outside {year}; it belongs in cn-{d.year}.toml")
        out.append(d)
    return out
