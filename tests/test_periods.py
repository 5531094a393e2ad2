"""Fiscal calendar: labels, parsing, shifting, to-date windows and cadence windows (SPEC §4)."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pandas as pd
import pytest

from spm_lib.domain.periods import FiscalCalendar, Period, Window
from spm_lib.errors import PeriodError

JAN = FiscalCalendar(1, "end")
FEB_END = FiscalCalendar(2, "end")  # FY2026 = 2025-02-01 .. 2026-01-31 (ends in 2026)
FEB_START = FiscalCalendar(2, "start")  # FY2025 = 2025-02-01 .. 2026-01-31 (starts in 2025)


# ---------------------------------------------------------------- labels and periods
def test_february_fiscal_year_named_by_its_end() -> None:
    d = date(2026, 1, 15)
    assert FEB_END.period("year", d) == Period("year", "FY2026", date(2025, 2, 1), date(2026, 1, 31))
    # Nov, Dec, Jan are the 4th fiscal quarter
    assert FEB_END.period("quarter", d) == Period("quarter", "FY2026-Q4", date(2025, 11, 1), date(2026, 1, 31))
    # February 2026 opens the next fiscal year, which ends in January 2027
    assert FEB_END.period("quarter", date(2026, 2, 1)).label == "FY2027-Q1"
    assert FEB_END.period("year", date(2026, 2, 1)).label == "FY2027"


def test_february_fiscal_year_named_by_its_start() -> None:
    d = date(2026, 1, 15)
    assert FEB_START.period("year", d) == Period("year", "FY2025", date(2025, 2, 1), date(2026, 1, 31))
    assert FEB_START.period("quarter", d).label == "FY2025-Q4"
    assert FEB_START.period("quarter", date(2025, 5, 1)) == Period("quarter", "FY2025-Q2", date(2025, 5, 1),
                                                                    date(2025, 7, 31))


def test_january_calendar_names_the_year_the_same_both_ways() -> None:
    assert JAN.period("year", date(2026, 7, 4)).label == "FY2026"
    assert FiscalCalendar(1, "start").period("year", date(2026, 7, 4)).label == "FY2026"
    assert JAN.period("quarter", date(2026, 7, 4)) == Period("quarter", "FY2026-Q3", date(2026, 7, 1),
                                                             date(2026, 9, 30))


def test_months_are_calendar_months() -> None:
    assert FEB_END.period("month", date(2024, 2, 10)) == Period("month", "2024-02", date(2024, 2, 1),
                                                                date(2024, 2, 29))


def test_iso_weeks_across_a_year_boundary() -> None:
    # Thursday 2026-01-01 is in ISO week 1 of 2026, which starts on Monday 2025-12-29
    assert JAN.period("week", date(2026, 1, 1)) == Period("week", "2026-W01", date(2025, 12, 29), date(2026, 1, 4))
    assert JAN.period("week", date(2025, 12, 29)).label == "2026-W01"
    # Friday 2027-01-01 still belongs to the 53rd week of 2026
    assert JAN.period("week", date(2027, 1, 1)) == Period("week", "2026-W53", date(2026, 12, 28), date(2027, 1, 3))
    assert JAN.shift(JAN.parse("2026-W53"), 1).label == "2027-W01"
    assert JAN.shift(JAN.parse("2026-W01"), -1) == Period("week", "2025-W52", date(2025, 12, 22), date(2025, 12, 28))


def test_parse_reads_every_label_shape() -> None:
    assert FEB_END.parse("2026-10") == Period("month", "2026-10", date(2026, 10, 1), date(2026, 10, 31))
    assert FEB_END.parse("FY2026-Q3") == Period("quarter", "FY2026-Q3", date(2025, 8, 1), date(2025, 10, 31))
    assert FEB_START.parse("FY2026-Q3") == Period("quarter", "FY2026-Q3", date(2026, 8, 1), date(2026, 10, 31))
    assert FEB_END.parse("FY2026") == Period("year", "FY2026", date(2025, 2, 1), date(2026, 1, 31))
    assert FEB_END.parse(" fy2026 ").label == "FY2026"
    assert FEB_END.parse("2026-W43") == Period("week", "2026-W43", date(2026, 10, 19), date(2026, 10, 25))


@pytest.mark.parametrize("label", ["2026-13", "FY2026-Q5", "Q3 2026", "2025-W53", "2026/10", ""])
def test_parse_rejects_other_shapes_and_lists_the_allowed_ones(label: str) -> None:
    with pytest.raises(PeriodError, match=r"FY2026-Q3.*2026-W43"):
        FEB_END.parse(label)


def test_unknown_grain_suggests_the_closest() -> None:
    with pytest.raises(PeriodError, match="did you mean 'quarter'"):
        JAN.period("quater", date(2026, 1, 1))


def test_shift_and_months_in() -> None:
    assert FEB_END.shift(FEB_END.parse("FY2026-Q4"), 1).label == "FY2027-Q1"
    assert FEB_END.shift(FEB_END.parse("FY2026-Q1"), -1).label == "FY2025-Q4"
    assert JAN.shift(JAN.parse("2026-01"), -13).label == "2024-12"
    assert FEB_END.shift(FEB_END.parse("FY2026"), -2) == Period("year", "FY2024", date(2023, 2, 1), date(2024, 1, 31))
    assert [m.label for m in FEB_END.months_in(FEB_END.parse("FY2026-Q4"))] == ["2025-11", "2025-12", "2026-01"]
    assert len(FEB_END.months_in(FEB_END.parse("FY2026"))) == 12
    # a week spanning two months overlaps both
    assert [m.label for m in JAN.months_in(JAN.parse("2026-W01"))] == ["2025-12", "2026-01"]


def test_to_date_windows_run_from_period_start_to_as_of() -> None:
    as_of = date(2026, 1, 15)
    assert FEB_END.mtd(as_of) == Period("mtd", "2026-01-MTD", date(2026, 1, 1), as_of)
    assert FEB_END.qtd(as_of) == Period("qtd", "FY2026-Q4-QTD", date(2025, 11, 1), as_of)
    assert FEB_END.ytd(as_of) == Period("ytd", "FY2026-YTD", date(2025, 2, 1), as_of)


def test_from_config_reads_the_company_section() -> None:
    company = SimpleNamespace(fiscal_year_start_month=2, fiscal_year_named_by="start")
    assert FiscalCalendar.from_config(SimpleNamespace(company=company)) == FEB_START


def test_vectorised_labels_match_the_period_labels() -> None:
    dates = pd.Series(pd.to_datetime(["2026-01-15", None, "2026-02-01", "2027-01-01"]))
    assert FEB_END.labels("quarter", dates).tolist() == ["FY2026-Q4", pd.NA, "FY2027-Q1", "FY2027-Q4"]
    assert FEB_START.labels("year", dates).tolist() == ["FY2025", pd.NA, "FY2026", "FY2026"]
    assert JAN.labels("week", dates).tolist() == ["2026-W03", pd.NA, "2026-W05", "2026-W53"]
    assert JAN.labels("month", dates).tolist() == ["2026-01", pd.NA, "2026-02", "2027-01"]


# ---------------------------------------------------------------- cadence windows
def test_monthly_mid_quarter() -> None:
    w = JAN.windows("monthly", date(2026, 8, 15))
    assert w.closed.label == "2026-08"
    assert w.forward.label == "FY2026-Q3" and not w.moved_on
    assert w.remaining == Window(date(2026, 8, 16), date(2026, 9, 30))
    assert w.to_date == Window(date(2026, 7, 1), date(2026, 8, 15))
    # 16 of August's 31 days lie after as_of, plus all of September
    assert w.months_remaining == pytest.approx(16 / 31 + 1)
    assert len(w.trend) == 12
    assert (w.trend[0].label, w.trend[-1].label) == ("2025-09", "2026-08")


def test_monthly_run_at_month_end_closing_the_quarter_moves_on() -> None:
    w = JAN.windows("monthly", date(2026, 9, 30))
    assert w.closed == Period("month", "2026-09", date(2026, 9, 1), date(2026, 9, 30))
    assert w.moved_on
    assert w.forward == Period("quarter", "FY2026-Q4", date(2026, 10, 1), date(2026, 12, 31))
    assert w.remaining == Window(date(2026, 10, 1), date(2026, 12, 31))
    assert w.to_date is None
    assert w.months_remaining == 3.0


def test_monthly_run_at_a_month_end_inside_the_quarter_keeps_the_quarter() -> None:
    w = JAN.windows("monthly", date(2026, 8, 31))
    assert w.forward.label == "FY2026-Q3" and not w.moved_on
    assert w.remaining == Window(date(2026, 9, 1), date(2026, 9, 30))
    assert w.months_remaining == 1.0


def test_weekly_looks_forward_at_the_month() -> None:
    w = FEB_END.windows("weekly", date(2026, 1, 15))  # a Thursday
    assert w.closed == Period("week", "2026-W03", date(2026, 1, 12), date(2026, 1, 18))
    assert w.forward.label == "2026-01"
    assert w.remaining == Window(date(2026, 1, 16), date(2026, 1, 31))
    assert w.months_remaining == pytest.approx(16 / 31)
    assert len(w.trend) == 13
    assert (w.trend[0].label, w.trend[-1].label) == ("2025-W43", "2026-W03")


def test_quarterly_looks_forward_at_the_fiscal_year() -> None:
    w = FEB_END.windows("quarterly", date(2025, 10, 31))  # last day of FY2026-Q3, not of the year
    assert w.closed.label == "FY2026-Q3"
    assert w.forward.label == "FY2026" and not w.moved_on
    assert w.remaining == Window(date(2025, 11, 1), date(2026, 1, 31))
    assert w.to_date == Window(date(2025, 2, 1), date(2025, 10, 31))
    assert w.months_remaining == 3.0
    assert [p.label for p in w.trend] == ["FY2024-Q4", "FY2025-Q1", "FY2025-Q2", "FY2025-Q3", "FY2025-Q4",
                                          "FY2026-Q1", "FY2026-Q2", "FY2026-Q3"]


def test_annual_run_at_year_end_looks_at_the_next_year() -> None:
    w = FEB_END.windows("annual", date(2026, 1, 31))
    assert w.closed == Period("year", "FY2026", date(2025, 2, 1), date(2026, 1, 31))
    assert w.moved_on
    assert w.forward == Period("year", "FY2027", date(2026, 2, 1), date(2027, 1, 31))
    assert w.remaining == Window(date(2026, 2, 1), date(2027, 1, 31))
    assert w.to_date is None
    assert w.months_remaining == 12.0
    assert [p.label for p in w.trend] == ["FY2024", "FY2025", "FY2026"]


def test_annual_run_mid_year_looks_at_the_same_year() -> None:
    w = JAN.windows("annual", date(2026, 6, 30))
    assert w.closed == w.forward == JAN.parse("FY2026")
    assert w.remaining == Window(date(2026, 7, 1), date(2026, 12, 31))
    assert w.to_date == Window(date(2026, 1, 1), date(2026, 6, 30))
    assert w.months_remaining == 6.0


def test_unknown_cadence_suggests_the_closest() -> None:
    with pytest.raises(PeriodError, match="did you mean 'monthly'.*allowed: weekly, monthly, quarterly, annual"):
        JAN.windows("montly", date(2026, 1, 1))


def test_bad_as_of_text_says_the_format() -> None:
    with pytest.raises(PeriodError, match="YYYY-MM-DD"):
        JAN.windows("monthly", "30/09/2026")
    assert JAN.windows("monthly", "2026-09-30").moved_on
