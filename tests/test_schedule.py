"""The schedule: business days, firings per cadence and fiscal calendar, as-of per firing, catch-up, the job lock.

Calendar facts used below (2026): Jan 1 Thu, Feb 1 Sun, May 1 Fri, Jun 1 Mon, Jul 1 Wed, Aug 1 Sat, Oct 1 Thu,
Nov 1 Sun, Dec 1 Tue; 2027: Jan 1 Fri, Feb 1 Mon. Paris is UTC+1 in winter, UTC+2 from 29 March to 25 October.
"""

from __future__ import annotations

import logging
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spm_lib.config import CompanyConfig, Config, ScheduleConfig, SourceConfig, load_config
from spm_lib.deliver.schedule import (
    CRON_HEADER,
    as_of_for,
    build_scheduler,
    business_day,
    cron_lines,
    due,
    fire,
    firings,
    next_firings,
)
from spm_lib.errors import ConfigError

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")
ROOT = Path(__file__).resolve().parents[1]


def make_cfg(root: Path, jobs: dict[str, dict[str, Any]], *, start_month: int = 1,
             holidays: tuple[date, ...] = ()) -> Config:
    """A config with the given schedule jobs, company in Paris, fiscal year starting in `start_month`."""
    return Config(root=root, source=SourceConfig(kind="duckdb", path="data/x.duckdb"),
                  company=CompanyConfig(timezone="Europe/Paris", fiscal_year_start_month=start_month),
                  schedule=ScheduleConfig.model_validate({"jobs": jobs, "holidays": list(holidays)}))


def at(y: int, m: int, d: int, h: int = 7, mi: int = 0, tz: ZoneInfo = PARIS) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=tz)


# ---------------------------------------------------------------- business days
def test_business_day_skips_weekends_and_holidays() -> None:
    assert business_day(2026, 6, 1, []) == date(2026, 6, 1)  # Monday
    assert business_day(2026, 6, 2, []) == date(2026, 6, 2)
    assert business_day(2026, 6, 2, [date(2026, 6, 1)]) == date(2026, 6, 3)
    assert business_day(2026, 8, 1, []) == date(2026, 8, 3)  # Aug 1-2 is a weekend
    assert business_day(2026, 8, 2, [date(2026, 8, 3)]) == date(2026, 8, 5)
    assert business_day(2026, 5, 2, [date(2026, 5, 1)]) == date(2026, 5, 5)  # Fri holiday, weekend, Mon = 1st
    assert business_day(2026, 5, 5, [date(2026, 5, 1), date(2026, 5, 8)]) == date(2026, 5, 11)


def test_business_day_beyond_the_month_is_a_config_error() -> None:
    assert business_day(2026, 2, 20, []) == date(2026, 2, 27)  # February 2026 has exactly 20 working days
    with pytest.raises(ConfigError, match="fewer than 21 working days"):
        business_day(2026, 2, 21, [])


# ---------------------------------------------------------------- firings
def test_monthly_fires_every_month_across_the_year_end(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"m": {"cadence": "monthly", "business_day": 2, "hour": 7}},
                   holidays=(date(2027, 1, 1),))
    got = firings(cfg, "m", at(2026, 11, 15, 0), at(2027, 2, 15, 0))
    assert got == [at(2026, 12, 2), at(2027, 1, 5), at(2027, 2, 2)]  # Jan: Fri 1 holiday, Mon 4, Tue 5
    assert [t.utcoffset() for t in got] == [timedelta(hours=1)] * 3
    assert [as_of_for(cfg, "m", t) for t in got] == [date(2026, 11, 30), date(2026, 12, 31), date(2027, 1, 31)]


def test_quarterly_fires_after_each_fiscal_quarter_end_fy_starting_in_january(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"q": {"cadence": "quarterly", "business_day": 3, "hour": 7}})
    got = firings(cfg, "q", at(2026, 1, 1, 0), at(2026, 12, 31, 23))
    assert got == [at(2026, 1, 5), at(2026, 4, 3), at(2026, 7, 3), at(2026, 10, 5)]
    assert got[2].utcoffset() == timedelta(hours=2)  # summer time
    assert [as_of_for(cfg, "q", t) for t in got] == [date(2025, 12, 31), date(2026, 3, 31), date(2026, 6, 30),
                                                    date(2026, 9, 30)]


def test_quarterly_and_annual_with_a_fiscal_year_starting_in_february(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"q": {"cadence": "quarterly", "business_day": 3, "hour": 7},
                              "y": {"cadence": "annual", "business_day": 5, "hour": 8, "minute": 15}}, start_month=2)
    quarters = firings(cfg, "q", at(2026, 1, 1, 0), at(2026, 12, 31, 23))
    assert quarters == [at(2026, 2, 4), at(2026, 5, 5), at(2026, 8, 5), at(2026, 11, 4)]
    assert [as_of_for(cfg, "q", t) for t in quarters] == [date(2026, 1, 31), date(2026, 4, 30), date(2026, 7, 31),
                                                         date(2026, 10, 31)]
    years = firings(cfg, "y", at(2026, 1, 1, 0), at(2027, 12, 31, 23))
    assert years == [at(2026, 2, 6, 8, 15), at(2027, 2, 5, 8, 15)]  # Feb 2027: Mon 1 .. Fri 5
    assert [as_of_for(cfg, "y", t) for t in years] == [date(2026, 1, 31), date(2027, 1, 31)]


def test_annual_with_a_fiscal_year_starting_in_january(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"y": {"cadence": "annual", "business_day": 5}}, holidays=(date(2027, 1, 1),))
    got = firings(cfg, "y", at(2026, 2, 1), at(2027, 12, 1))
    assert got == [at(2027, 1, 8)]  # Fri 1 holiday; Mon 4 .. Fri 8
    assert as_of_for(cfg, "y", got[0]) == date(2026, 12, 31)


def test_cron_day_of_week_zero_is_monday(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"w": {"cadence": "weekly", "cron": {"day_of_week": 0, "hour": 6, "minute": 30}},
                              "w2": {"cadence": "weekly", "cron": {"day_of_week": "mon", "hour": 6, "minute": 30}}})
    got = firings(cfg, "w", at(2026, 6, 1, 0), at(2026, 6, 21, 0))
    assert got == [at(2026, 6, 1, 6, 30), at(2026, 6, 8, 6, 30), at(2026, 6, 15, 6, 30)]
    assert firings(cfg, "w2", at(2026, 6, 1, 0), at(2026, 6, 21, 0)) == got
    assert [as_of_for(cfg, "w", t) for t in got] == [date(2026, 5, 31), date(2026, 6, 7), date(2026, 6, 14)]


def test_cron_day_with_day_of_week_means_both(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"m": {"cadence": "monthly", "cron": {"day": "1-7", "day_of_week": "mon", "hour": 6}}})
    got = firings(cfg, "m", at(2026, 6, 1, 0), at(2026, 8, 31, 0))
    assert got == [at(2026, 6, 1, 6), at(2026, 7, 6, 6), at(2026, 8, 3, 6)]  # the first Monday of each month


def test_as_of_uses_the_company_day_of_the_firing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"m": {"cadence": "monthly", "cron": {"day": 1, "hour": 0, "minute": 30}}})
    fired = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)  # = 1 March 00:30 in Paris
    assert as_of_for(cfg, "m", fired) == date(2026, 2, 28)
    assert as_of_for(cfg, "m", datetime(2026, 1, 2, 7, 0)) == date(2025, 12, 31)  # naive = company time


def test_next_firings_lists_each_job_in_time_order(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"monthly": {"cadence": "monthly", "business_day": 2},
                              "weekly": {"cadence": "weekly", "cron": {"day_of_week": "mon", "hour": 6}}})
    got = next_firings(cfg, at(2026, 6, 1, 0), n=2)
    assert [(f.job, f.fired_at, f.as_of) for f in got] == [
        ("weekly", at(2026, 6, 1, 6), date(2026, 5, 31)),
        ("monthly", at(2026, 6, 2, 7), date(2026, 5, 31)),
        ("weekly", at(2026, 6, 8, 6), date(2026, 6, 7)),
        ("monthly", at(2026, 7, 2, 7), date(2026, 6, 30)),
    ]


def test_the_default_schedule_loads_and_fires(tmp_path: Path) -> None:
    cfg = load_config(ROOT)
    assert {f.job for f in next_firings(cfg, at(2026, 6, 1, 0), n=1)} == set(cfg.schedule.jobs)


@pytest.mark.parametrize("job,message", [
    ({"cadence": "monthly"}, "either `business_day: N` or `cron"),
    ({"cadence": "monthly", "business_day": 2, "cron": {"day": 2}}, "not both"),
    ({"cadence": "weekly", "business_day": 2}, "a weekly job needs `cron`"),
    ({"cadence": "weekly", "hour": 6, "cron": {"day_of_week": "mon"}}, "put hour and minute inside cron"),
    ({"cadence": "weekly", "cron": {"day_of_wek": "mon"}}, "key `cron`"),
])
def test_badly_declared_jobs_are_config_errors(tmp_path: Path, job: dict[str, Any], message: str) -> None:
    cfg = make_cfg(tmp_path, {"j": job})
    with pytest.raises(ConfigError, match=message):
        firings(cfg, "j", at(2026, 1, 1), at(2026, 2, 1))


def test_unknown_job_suggests_the_closest(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"monthly": {"cadence": "monthly", "business_day": 2}})
    with pytest.raises(ConfigError, match="did you mean 'monthly'"):
        as_of_for(cfg, "montly", at(2026, 1, 5))


# ---------------------------------------------------------------- due: catch-up and coalescing
MONTHLY = {"m": {"cadence": "monthly", "business_day": 2, "hour": 7, "misfire_grace_s": 6 * 3600}}


def never(cadence: str, as_of: date) -> bool:
    return False


def test_due_at_the_firing_and_after_downtime_within_the_grace(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)
    assert due(cfg, "m", at(2026, 6, 2, 7, 0), never) == date(2026, 5, 31)
    assert due(cfg, "m", at(2026, 6, 2, 12, 0), never) == date(2026, 5, 31)  # machine was down at 07:00
    assert due(cfg, "m", at(2026, 6, 2, 13, 0), never) == date(2026, 5, 31)  # exactly 6 h later


def test_not_due_once_done(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)
    done = {("monthly", date(2026, 5, 31))}
    assert due(cfg, "m", at(2026, 6, 2, 8, 0), lambda c, a: (c, a) in done) is None


def test_a_missed_firing_outside_the_grace_is_not_run_and_is_logged(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)
    with caplog.at_level(logging.WARNING, logger="spm_lib.deliver.schedule"):
        assert due(cfg, "m", at(2026, 6, 2, 13, 1), never) is None
    assert "spm run --cadence monthly --as-of 2026-05-31" in caplog.text


def test_before_the_firing_the_previous_one_counts(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY, holidays=(date(2026, 5, 1),))
    may_done = {("monthly", date(2026, 4, 30))}  # fired on 5 May
    assert due(cfg, "m", at(2026, 6, 2, 6, 59), lambda c, a: (c, a) in may_done) is None


def test_several_missed_firings_coalesce_into_the_latest(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"m": {"cadence": "monthly", "business_day": 2, "misfire_grace_s": 90 * 86400}})
    done: set[tuple[str, date]] = set()
    # Jun 2, Jul 2 and Aug 4 were all missed (all within 90 days): only the latest runs
    assert due(cfg, "m", at(2026, 8, 4, 8), lambda c, a: (c, a) in done) == date(2026, 7, 31)
    done.add(("monthly", date(2026, 7, 31)))
    assert due(cfg, "m", at(2026, 8, 4, 9), lambda c, a: (c, a) in done) is None


# ---------------------------------------------------------------- fire and its lock
class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, date]] = []

    def run(self, cadence: str, as_of: date) -> None:
        self.calls.append(("run", cadence, as_of))

    def send(self, cadence: str, as_of: date) -> None:
        self.calls.append(("send", cadence, as_of))


def test_fire_runs_then_sends(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)
    rec = Recorder()
    result = fire(cfg, "m", at(2026, 6, 2, 7, 5), rec.run, rec.send, never)
    assert (result.status, result.as_of) == ("ran and sent", date(2026, 5, 31))
    assert rec.calls == [("run", "monthly", date(2026, 5, 31)), ("send", "monthly", date(2026, 5, 31))]
    assert (tmp_path / "state" / "schedule-m.lock").is_file()


def test_fire_without_send_only_runs_and_not_due_does_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"m": {"cadence": "monthly", "business_day": 2, "send": False}})
    rec = Recorder()
    assert fire(cfg, "m", at(2026, 6, 2, 8), rec.run, rec.send, never).status == "ran"
    assert rec.calls == [("run", "monthly", date(2026, 5, 31))]
    rec.calls.clear()
    assert fire(cfg, "m", at(2026, 6, 2, 8), rec.run, rec.send, lambda c, a: True).status == "not due"
    assert rec.calls == []


def test_two_overlapping_fires_of_one_job_never_run_at_once(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)
    started, release = threading.Event(), threading.Event()
    runs: list[date] = []

    def slow_run(cadence: str, as_of: date) -> None:
        runs.append(as_of)
        started.set()
        assert release.wait(timeout=30)

    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(
        fire(cfg, "m", at(2026, 6, 2, 8), slow_run, lambda c, a: None, never)))
    first.start()
    assert started.wait(timeout=30)
    second = fire(cfg, "m", at(2026, 6, 2, 8), slow_run, lambda c, a: None, never)
    release.set()
    first.join(timeout=30)
    assert second.status == "already running"
    assert results[0].status == "ran and sent"
    assert runs == [date(2026, 5, 31)]
    # the lock is released afterwards
    assert fire(cfg, "m", at(2026, 6, 2, 8), slow_run, lambda c, a: None, lambda c, a: True).status == "not due"


def test_a_failing_run_releases_the_lock(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, MONTHLY)

    def boom(cadence: str, as_of: date) -> None:
        raise RuntimeError("run failed")

    with pytest.raises(RuntimeError):
        fire(cfg, "m", at(2026, 6, 2, 8), boom, boom, never)
    assert fire(cfg, "m", at(2026, 6, 2, 8), Recorder().run, Recorder().send, never).status == "ran and sent"


# ---------------------------------------------------------------- cron lines and the scheduler
def test_cron_lines_run_daily_at_the_local_time_never_before_the_firing(tmp_path: Path) -> None:
    root = tmp_path / "my project"
    cfg = make_cfg(root, {"monthly": {"cadence": "monthly", "business_day": 2, "hour": 7},
                          "weekly": {"cadence": "weekly", "cron": {"day_of_week": "mon", "hour": 6, "minute": 30}},
                          "often": {"cadence": "weekly", "cron": {"minute": "*/10"}}})
    quoted = f"'{root}'"
    assert cron_lines(cfg, "/opt/spm/bin/spm", local_tz=PARIS, year=2026) == [
        f"0 7 * * * cd {quoted} && SPM_PROJECT_DIR={quoted} /opt/spm/bin/spm schedule --fire monthly",
        f"30 6 * * * cd {quoted} && SPM_PROJECT_DIR={quoted} /opt/spm/bin/spm schedule --fire weekly",
        f"*/15 * * * * cd {quoted} && SPM_PROJECT_DIR={quoted} /opt/spm/bin/spm schedule --fire often",
    ]
    # on a UTC machine, 07:00 Paris is 06:00 UTC in winter and 05:00 in summer: the line runs at 06:00
    utc = cron_lines(cfg, "spm", local_tz=UTC, year=2026)
    assert utc[0].startswith("0 6 * * * ") and utc[1].startswith("30 5 * * * ")
    # New York: 07:00 Paris is 01:00 most of the year, 02:00 while only the US is on summer time (8-28 March)
    assert cron_lines(cfg, "spm", local_tz=ZoneInfo("America/New_York"), year=2026)[0].startswith("0 2 * * * ")
    assert "DAILY" in CRON_HEADER and "--fire" in CRON_HEADER


def test_the_scheduler_has_one_coalescing_job_per_configured_job(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"monthly": {"cadence": "monthly", "business_day": 2, "misfire_grace_s": 3600},
                              "weekly": {"cadence": "weekly", "cron": {"day_of_week": "mon", "hour": 6}}})
    scheduler = build_scheduler(cfg, Recorder().run, Recorder().send, never)
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == {"monthly", "weekly"}
    assert jobs["monthly"].coalesce and jobs["monthly"].misfire_grace_time == 3600
    assert jobs["monthly"].trigger.get_next_fire_time(None, at(2026, 5, 20)) == at(2026, 6, 2, 7)
    assert jobs["weekly"].trigger.get_next_fire_time(None, at(2026, 6, 2)) == at(2026, 6, 8, 6)
