"""The fiscal calendar (SPEC §4): periods and their labels, to-date windows, and the windows of a cadence.

Labels: months are calendar months `2026-10`; quarters and years are fiscal, `FY2026-Q3` and `FY2026`, a fiscal
year named by the calendar year in which it ends (`named_by="end"`) or starts (`named_by="start"`); weeks are ISO
weeks `2026-W43` (Monday to Sunday, the year is the ISO week-numbering year). A fiscal month is a calendar month.
Every period end is inclusive (the last day of the period).
"""

from __future__ import annotations

import calendar as _cal
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import pandas as pd

from spm_lib.errors import PeriodError, did_you_mean

GRAINS = ["week", "month", "quarter", "year"]
CADENCES = ["weekly", "monthly", "quarterly", "annual"]
CADENCE_GRAIN = {"weekly": "week", "monthly": "month", "quarterly": "quarter", "annual": "year"}
FORWARD_GRAIN = {"weekly": "month", "monthly": "quarter", "quarterly": "year", "annual": "year"}
TREND_LENGTH = {"weekly": 13, "monthly": 12, "quarterly": 8, "annual": 3}
TO_DATE_GRAIN = {"mtd": "month", "qtd": "quarter", "ytd": "year"}
LABEL_SHAPES = "`2026-10` (month), `FY2026-Q3` (fiscal quarter), `FY2026` (fiscal year), `2026-W43` (ISO week)"

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_QUARTER = re.compile(r"^FY(\d{4})-Q(\d)$")
_YEAR = re.compile(r"^FY(\d{4})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class Period:
    """A labelled span of days, `start` to `end` inclusive; `grain` is week/month/quarter/year (or mtd/qtd/ytd)."""

    grain: str
    label: str
    start: date
    end: date

    def __str__(self) -> str:
        return self.label

    @property
    def days(self) -> int:
        """Number of days in the period."""
        return (self.end - self.start).days + 1

    def contains(self, d: date | str) -> bool:
        """True when day `d` falls inside the period."""
        return self.start <= as_date(d) <= self.end


@dataclass(frozen=True)
class Window:
    """An unlabelled span of days, `start` to `end` inclusive (e.g. the remaining part of a forward period)."""

    start: date
    end: date

    @property
    def days(self) -> int:
        """Number of days in the window (0 when empty)."""
        return max((self.end - self.start).days + 1, 0)

    def contains(self, d: date | str) -> bool:
        """True when day `d` falls inside the window."""
        return self.start <= as_date(d) <= self.end


@dataclass(frozen=True)
class CadenceWindows:
    """The periods one cadence's run looks at (SPEC §4).

    closed: P, the period of the cadence's grain containing as_of (lagging KPIs, trust).
    forward: Q, the larger period looked forward at; when as_of is Q's last day, Q is the next one (`moved_on`).
    remaining: the part of Q after as_of (all of Q when it moved on).
    to_date: the part of Q up to as_of, None when Q moved on.
    months_remaining: months of Q after as_of; the month containing as_of counts as the fraction of its days that
        lie after as_of (as_of 2026-08-15 with Q = Jul..Sep: 16/31 + 1 = 1.516), every later month of Q counts 1.
    trend: the last N periods of the cadence's grain, oldest first, ending with P.
    """

    cadence: str
    as_of: date
    closed: Period
    forward: Period
    moved_on: bool
    remaining: Window
    to_date: Window | None
    months_remaining: float
    trend: tuple[Period, ...]


def as_date(d: date | datetime | str | pd.Timestamp) -> date:
    """A day given as a date, datetime, Timestamp or YYYY-MM-DD text, as a plain date."""
    if isinstance(d, datetime):  # pd.Timestamp is a datetime
        return d.date()
    if isinstance(d, date):
        return d
    try:
        return date.fromisoformat(str(d).strip())
    except ValueError:
        raise PeriodError(f"{d!r} is not a date: write it as YYYY-MM-DD, e.g. 2026-09-30") from None


def _add_months(d: date, n: int) -> date:
    """The first day of the month `n` months after the month of `d`."""
    k = d.year * 12 + (d.month - 1) + n
    return date(k // 12, k % 12 + 1, 1)


def _month_end(first: date) -> date:
    return first.replace(day=_cal.monthrange(first.year, first.month)[1])


def _check_grain(grain: str) -> str:
    if grain not in GRAINS:
        raise PeriodError(f"unknown period grain {grain!r}{did_you_mean(grain, GRAINS)}; allowed: {', '.join(GRAINS)}")
    return grain


def check_cadence(cadence: str) -> str:
    """Return `cadence` when it is a known cadence, else raise PeriodError naming the allowed ones."""
    if cadence not in CADENCES:
        raise PeriodError(f"unknown cadence {cadence!r}{did_you_mean(str(cadence), CADENCES)}; "
                          f"allowed: {', '.join(CADENCES)}")
    return cadence


@dataclass(frozen=True)
class FiscalCalendar:
    """A fiscal calendar: the month the fiscal year starts in and whether a year is named by its end or start."""

    start_month: int = 1
    named_by: Literal["end", "start"] = "end"

    def __post_init__(self) -> None:
        if not 1 <= int(self.start_month) <= 12:
            raise PeriodError(f"fiscal year start month must be 1..12, got {self.start_month!r} "
                              "(config/company.yml: fiscal_year_start_month)")
        if self.named_by not in ("end", "start"):
            raise PeriodError(f"fiscal_year_named_by must be 'end' or 'start', got {self.named_by!r} "
                              "(config/company.yml)")

    @classmethod
    def from_config(cls, cfg: Any) -> FiscalCalendar:
        """The calendar of a project's config (a Config or its `company` section)."""
        company = getattr(cfg, "company", cfg)
        return cls(start_month=int(company.fiscal_year_start_month), named_by=company.fiscal_year_named_by)

    # ------------------------------------------------------------ fiscal years
    def _fy_start_year(self, d: date) -> int:
        """Calendar year in which the fiscal year containing `d` starts."""
        return d.year if d.month >= self.start_month else d.year - 1

    def _fy_name(self, start_year: int) -> int:
        """The number in the label of the fiscal year starting in calendar year `start_year`."""
        ends_in = start_year if self.start_month == 1 else start_year + 1
        return ends_in if self.named_by == "end" else start_year

    def _fy_start_year_of_name(self, name: int) -> int:
        if self.named_by == "start":
            return name
        return name if self.start_month == 1 else name - 1

    # ------------------------------------------------------------ periods
    def period(self, grain: str, d: date | str) -> Period:
        """The period of `grain` (week/month/quarter/year) containing day `d`."""
        _check_grain(grain)
        d = as_date(d)
        if grain == "week":
            iso = d.isocalendar()
            start = d - timedelta(days=iso.weekday - 1)
            return Period("week", f"{iso.year:04d}-W{iso.week:02d}", start, start + timedelta(days=6))
        if grain == "month":
            first = d.replace(day=1)
            return Period("month", f"{d.year:04d}-{d.month:02d}", first, _month_end(first))
        sy = self._fy_start_year(d)
        fy_start = date(sy, self.start_month, 1)
        if grain == "year":
            return Period("year", f"FY{self._fy_name(sy)}", fy_start, _add_months(fy_start, 12) - timedelta(days=1))
        q = ((d.month - self.start_month) % 12) // 3 + 1
        q_start = _add_months(fy_start, 3 * (q - 1))
        return Period("quarter", f"FY{self._fy_name(sy)}-Q{q}", q_start, _add_months(q_start, 3) - timedelta(days=1))

    def parse(self, label: str) -> Period:
        """The period named by `label` (`2026-10`, `FY2026-Q3`, `FY2026`, `2026-W43`)."""
        text = str(label).strip().upper()
        if m := _MONTH.match(text):
            year, month = int(m.group(1)), int(m.group(2))
            if 1 <= month <= 12:
                return self.period("month", date(year, month, 1))
        elif m := _QUARTER.match(text):
            q = int(m.group(2))
            if 1 <= q <= 4:
                fy_start = date(self._fy_start_year_of_name(int(m.group(1))), self.start_month, 1)
                start = _add_months(fy_start, 3 * (q - 1))
                return self.period("quarter", start)
        elif m := _YEAR.match(text):
            return self.period("year", date(self._fy_start_year_of_name(int(m.group(1))), self.start_month, 1))
        elif m := _WEEK.match(text):
            try:
                return self.period("week", date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1))
            except ValueError:
                pass
        raise PeriodError(f"period label {label!r} is not valid; allowed shapes: {LABEL_SHAPES}")

    def shift(self, period: Period, n: int) -> Period:
        """The period of the same grain `n` periods later (earlier when n < 0)."""
        grain = _check_grain(period.grain)
        if grain == "week":
            return self.period("week", period.start + timedelta(weeks=n))
        months = {"month": 1, "quarter": 3, "year": 12}[grain]
        return self.period(grain, _add_months(period.start, months * n))

    def months_in(self, period: Period | Window) -> list[Period]:
        """The calendar (= fiscal) months overlapping `period`, in order."""
        first, last = period.start.replace(day=1), period.end.replace(day=1)
        count = (last.year - first.year) * 12 + last.month - first.month + 1
        return [self.period("month", _add_months(first, i)) for i in range(max(count, 0))]

    def fiscal_month(self, d: date | str) -> int:
        """The position of the month of `d` in its fiscal year, 1..12."""
        return (as_date(d).month - self.start_month) % 12 + 1

    # ------------------------------------------------------------ to date
    def to_date(self, kind: str, as_of: date | str) -> Period:
        """The MTD/QTD/YTD window (`kind` mtd/qtd/ytd): from the start of the period containing as_of to as_of."""
        key = str(kind).lower()
        if key not in TO_DATE_GRAIN:
            raise PeriodError(f"unknown to-date window {kind!r}{did_you_mean(key, TO_DATE_GRAIN)}; "
                              f"allowed: {', '.join(TO_DATE_GRAIN)}")
        as_of = as_date(as_of)
        p = self.period(TO_DATE_GRAIN[key], as_of)
        return Period(key, f"{p.label}-{key.upper()}", p.start, as_of)

    def mtd(self, as_of: date | str) -> Period:
        """Month to date: the first day of as_of's month to as_of."""
        return self.to_date("mtd", as_of)

    def qtd(self, as_of: date | str) -> Period:
        """Fiscal quarter to date: the first day of as_of's fiscal quarter to as_of."""
        return self.to_date("qtd", as_of)

    def ytd(self, as_of: date | str) -> Period:
        """Fiscal year to date: the first day of as_of's fiscal year to as_of."""
        return self.to_date("ytd", as_of)

    # ------------------------------------------------------------ cadences
    def windows(self, cadence: str, as_of: date | str) -> CadenceWindows:
        """The closed period, forward period, remaining/to-date parts and trend of a `cadence` run on `as_of`."""
        check_cadence(cadence)
        as_of = as_date(as_of)
        closed = self.period(CADENCE_GRAIN[cadence], as_of)
        forward = self.period(FORWARD_GRAIN[cadence], as_of)
        moved_on = as_of == forward.end
        if moved_on:
            forward = self.shift(forward, 1)
            remaining = Window(forward.start, forward.end)
            to_date = None
        else:
            remaining = Window(as_of + timedelta(days=1), forward.end)
            to_date = Window(forward.start, as_of)
        n = TREND_LENGTH[cadence]
        trend = tuple(self.shift(closed, k) for k in range(-(n - 1), 1))
        return CadenceWindows(cadence=cadence, as_of=as_of, closed=closed, forward=forward, moved_on=moved_on,
                              remaining=remaining, to_date=to_date,
                              months_remaining=self._months_after(forward, remaining.start), trend=trend)

    def last_closed_end(self, cadence: str, today: date) -> date:
        """The natural as-of of a `cadence` run made on `today`: the last day of its last closed period."""
        check_cadence(cadence)
        current = self.period(CADENCE_GRAIN[cadence], today)
        return self.shift(current, -1).end

    def _months_after(self, q: Period, first_day: date) -> float:
        """Months of `q` from `first_day` on: whole months count 1, a partial month the share of its days."""
        total = 0.0
        for m in self.months_in(q):
            if m.end < first_day:
                continue
            total += 1.0 if m.start >= first_day else ((m.end - first_day).days + 1) / m.days
        return total

    # ------------------------------------------------------------ vectorised labels
    def labels(self, grain: str, dates: pd.Series) -> pd.Series:
        """The label of the `grain` period containing each date of `dates` (NA for missing dates)."""
        _check_grain(grain)
        d = pd.to_datetime(dates)
        missing = d.isna()
        if grain == "week":
            iso = d.dt.isocalendar()
            text = iso["year"].astype("string") + "-W" + iso["week"].astype("string").str.zfill(2)
        elif grain == "month":
            text = d.dt.strftime("%Y-%m").astype("string")
        else:
            month, year = d.dt.month, d.dt.year
            start_year = year.where(month >= self.start_month, year - 1)
            ends_in = start_year if self.start_month == 1 else start_year + 1
            name = (ends_in if self.named_by == "end" else start_year).astype("Int64")
            text = "FY" + name.astype("string")
            if grain == "quarter":
                q = (((month - self.start_month) % 12) // 3 + 1).astype("Int64")
                text = text + "-Q" + q.astype("string")
        return text.astype("string").mask(missing).set_axis(dates.index)
