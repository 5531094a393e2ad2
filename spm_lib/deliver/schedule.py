"""When each cadence runs (config/schedule.yml), which as-of a firing runs, and firing it exactly once.

A job fires in the company time zone either on the Nth working day of the months that follow the close of its
cadence's period (`business_day`, a trigger cron cannot express) or on APScheduler 3 cron fields (`cron`;
day_of_week 0 is Monday, `day` with `day_of_week` means both). A firing runs the period just closed before it.
Whether a firing is still to do comes from an injected `done(cadence, as_of)` (the run folder and the send
ledger), never from a scheduler's job store, so `spm schedule --fire` from cron, the in-process scheduler and a
restart after downtime all agree; several missed firings coalesce into the latest one. A `kind: alerts` job (cron
only, typically daily) runs `spm alerts` as of the day before its firing instead; its `done` is the alert ledger's
record of that evaluation.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import islice, takewhile
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from spm_lib.config import Config, ScheduleJob
from spm_lib.domain.periods import FiscalCalendar
from spm_lib.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

Done = Callable[[str, date], bool]  # (cadence, as_of) -> the run is complete and sent
Action = Callable[[str, date], Any]  # run_fn / send_fn: (cadence, as_of)
CRON_HEADER = ("# spm schedule: each line runs DAILY, in this machine's local time; `spm schedule --fire JOB` "
               "decides whether that day is due (and catches up a firing missed within its misfire_grace_s).")
_LONGEST_GAP = timedelta(days=800)  # no job of a known cadence is silent for longer than this


class Firing(NamedTuple):
    """One firing of a job and the as-of it runs."""

    job: str
    fired_at: datetime
    as_of: date


@dataclass(frozen=True)
class Fired:
    """What `fire` did for one job."""

    job: str
    status: Literal["already running", "not due", "ran", "ran and sent", "ran alerts"]
    cadence: str
    as_of: date | None = None

    def __str__(self) -> str:
        what = f" {self.cadence} as of {self.as_of}" if self.as_of else ""
        return f"schedule job {self.job!r}: {self.status}{what}"


# ---------------------------------------------------------------- days and triggers
def business_day(year: int, month: int, n: int, holidays: list[date]) -> date:
    """The Nth working day (Monday to Friday, not a holiday) of the month."""
    first = np.datetime64(date(year, month, 1), "D")
    day = np.busday_offset(first, max(n, 1) - 1, roll="forward", holidays=np.array(holidays, dtype="datetime64[D]"))
    found: date = day.astype(object)
    if n < 1 or (found.year, found.month) != (year, month):
        raise ConfigError(f"config/schedule.yml: {year}-{month:02d} has fewer than {n} working days "
                          "(weekends and holidays skipped); lower `business_day`")
    return found


class BusinessDayTrigger(BaseTrigger):
    """APScheduler trigger: hour:minute on the Nth working day of the given months, in time zone `tz`."""

    def __init__(self, n: int, hour: int, minute: int, months: frozenset[int], holidays: list[date],
                 tz: ZoneInfo) -> None:
        self.n, self.hour, self.minute, self.months, self.holidays, self.tz = n, hour, minute, months, holidays, tz

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first firing at or after `now`, or right after `previous_fire_time` when given."""
        start = now if previous_fire_time is None else previous_fire_time + timedelta(microseconds=1)
        start = start.astimezone(self.tz)
        k0 = start.year * 12 + start.month - 1
        for k in range(k0, k0 + 13):
            year, month = divmod(k, 12)
            if month + 1 not in self.months:
                continue
            day = business_day(year, month + 1, self.n, self.holidays)
            at = datetime.combine(day, time(self.hour, self.minute), self.tz).astimezone(UTC).astimezone(self.tz)
            if at >= start:
                return at
        return None

    def __str__(self) -> str:
        months = ",".join(str(m) for m in sorted(self.months))
        return f"business_day[{self.n}, months={months}, {self.hour:02d}:{self.minute:02d} {self.tz.key}]"


def _tz(cfg: Config) -> ZoneInfo:
    return ZoneInfo(cfg.company.timezone)


def _aware(cfg: Config, t: datetime) -> datetime:
    """`t` in the company time zone; a naive datetime is read as company time."""
    return t.replace(tzinfo=_tz(cfg)) if t.tzinfo is None else t.astimezone(_tz(cfg))


def _job(cfg: Config, name: str) -> ScheduleJob:
    """The job called `name`, checked to have exactly one of business_day and cron."""
    jobs = cfg.schedule.jobs
    if name not in jobs:
        raise ConfigError(f"unknown schedule job {name!r}{did_you_mean(name, jobs)}; "
                          f"config/schedule.yml has: {', '.join(jobs) or '(no jobs)'}")
    job = jobs[name]
    where = f"config/schedule.yml: job `{name}`"
    if (job.business_day is None) == (job.cron is None):
        raise ConfigError(f"{where}: give either `business_day: N` or `cron: {{...}}`, not "
                          f"{'both' if job.cron else 'neither'}")
    if job.cron is not None and {"hour", "minute"} & job.model_fields_set:
        raise ConfigError(f"{where}: with `cron`, put hour and minute inside cron (e.g. cron: {{day_of_week: mon, "
                          "hour: 6, minute: 30}})")
    if job.kind == "alerts" and job.business_day is not None:
        raise ConfigError(f"{where}: an alerts job needs `cron` (e.g. daily: cron: {{hour: 7, minute: 30}}); "
                          "`business_day` fires once a month")
    if job.business_day is not None and job.cadence == "weekly":
        raise ConfigError(f"{where}: a weekly job needs `cron` (e.g. cron: {{day_of_week: mon, hour: 6}}); "
                          "`business_day` fires once a month")
    return job


def _closing_months(cfg: Config, cadence: str) -> frozenset[int]:
    """Calendar months whose start follows the close of a `cadence` period (fiscal calendar of cfg)."""
    start = FiscalCalendar.from_config(cfg).start_month
    step = {"monthly": 1, "quarterly": 3, "annual": 12}[cadence]
    return frozenset((start - 1 + k) % 12 + 1 for k in range(0, 12, step))


def trigger(cfg: Config, job_name: str) -> BaseTrigger:
    """The APScheduler trigger of a job, in the company time zone."""
    job = _job(cfg, job_name)
    if job.cron is not None:
        try:
            return CronTrigger(**job.cron, timezone=_tz(cfg))  # cron fields: text, checked here
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config/schedule.yml: job `{job_name}`, key `cron`: {e} (APScheduler 3 CronTrigger "
                              "fields: year, month, day, week, day_of_week, hour, minute, second)") from None
    assert job.business_day is not None
    return BusinessDayTrigger(job.business_day, job.hour, job.minute, _closing_months(cfg, job.cadence),
                              list(cfg.schedule.holidays), _tz(cfg))


def _iter_firings(trig: BaseTrigger, start: datetime) -> Iterator[datetime]:
    """The trigger's firings at or after `start`, in order (endless unless the trigger stops)."""
    at = trig.get_next_fire_time(None, start)
    while at is not None:
        yield at
        at = trig.get_next_fire_time(at, at)


# ---------------------------------------------------------------- when, and for which as-of
def firings(cfg: Config, job_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Every firing of the job from `start` to `end` (both included), in the company time zone."""
    stop = _aware(cfg, end)
    return list(takewhile(lambda t: t <= stop, _iter_firings(trigger(cfg, job_name), _aware(cfg, start))))


def as_of_for(cfg: Config, job_name: str, fired_at: datetime) -> date:
    """The as-of a firing runs: the last day of the cadence's period closed before the firing day (an alerts job:
    the day before the firing day)."""
    job = _job(cfg, job_name)
    day = _aware(cfg, fired_at).date()
    if job.kind == "alerts":
        return day - timedelta(days=1)
    return FiscalCalendar.from_config(cfg).last_closed_end(job.cadence, day)


def next_firings(cfg: Config, now: datetime, n: int = 5) -> list[Firing]:
    """The next `n` firings of every job from `now` on, in time order, each with its as-of."""
    out = [Firing(name, t, as_of_for(cfg, name, t))
           for name in cfg.schedule.jobs
           for t in islice(_iter_firings(trigger(cfg, name), _aware(cfg, now)), n)]
    return sorted(out, key=lambda f: (f.fired_at, f.job))


def _last_firing(cfg: Config, job_name: str, now: datetime) -> datetime | None:
    """The latest firing at or before `now` (None when the job never fired in the last two years)."""
    span = timedelta(days=1)
    while span <= _LONGEST_GAP:
        past = firings(cfg, job_name, now - span, now)
        if past:
            return past[-1]
        span *= 2
    return None


def due(cfg: Config, job_name: str, now: datetime, done: Done) -> date | None:
    """The as-of to run now: the latest firing at or before `now`, when not done and within misfire_grace_s."""
    job = _job(cfg, job_name)
    now = _aware(cfg, now)
    last = _last_firing(cfg, job_name, now)
    if last is None:
        return None
    as_of = as_of_for(cfg, job_name, last)
    if done(job.cadence, as_of):
        return None
    if now - last > timedelta(seconds=job.misfire_grace_s):
        log.warning("schedule job %r: the firing of %s (%s as of %s) was missed and is older than "
                    "misfire_grace_s=%ss; run it by hand: spm run --cadence %s --as-of %s", job_name,
                    last.isoformat(), job.cadence, as_of, job.misfire_grace_s, job.cadence, as_of)
        return None
    return as_of


# ---------------------------------------------------------------- firing once
def _lock_path(cfg: Config, job_name: str) -> Path:
    return cfg.root / "state" / f"schedule-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_name)}.lock"


@contextmanager
def _job_lock(cfg: Config, job_name: str) -> Iterator[bool]:
    """Hold the job's exclusive file lock; yields False (without waiting) when another firing holds it."""
    path = _lock_path(cfg, job_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def fire(cfg: Config, job_name: str, now: datetime, run_fn: Action, send_fn: Action, done: Done, *,
         alerts: tuple[Action, Done] | None = None) -> Fired:
    """Run (and send, when the job sends) the as-of due now, unless nothing is due or the job is running.

    `alerts`: (alerts_fn, alerts_done), what an alerts job runs and its `done`.
    """
    job = _job(cfg, job_name)
    if job.kind == "alerts":
        if alerts is None:
            raise ConfigError(f"config/schedule.yml: job `{job_name}` is an alerts job, but this scheduler was "
                              "started without the alerts action")
        run_fn, done = alerts
    with _job_lock(cfg, job_name) as mine:
        if not mine:
            return Fired(job_name, "already running", job.cadence)
        as_of = due(cfg, job_name, now, done)
        if as_of is None:
            return Fired(job_name, "not due", job.cadence)
        try:
            run_fn(job.cadence, as_of)
            if job.kind == "alerts":
                return Fired(job_name, "ran alerts", job.cadence, as_of)
            if not job.send:
                return Fired(job_name, "ran", job.cadence, as_of)
            send_fn(job.cadence, as_of)
        except Exception as e:
            _alert_operator(cfg, job_name, job.cadence, as_of, e)
            raise
        return Fired(job_name, "ran and sent", job.cadence, as_of)


def _alert_operator(cfg: Config, job_name: str, cadence: str, as_of: date, error: Exception) -> None:
    """Mail a failed firing to delivery.operator_email (nobody watches a scheduled job), unless the send already did."""
    from spm_lib.deliver.alerts import AlertsUnsent  # here: it imports compose, as below
    from spm_lib.deliver.compose import Unsent, notify_operator  # here: compose loads the report (~2 s, measured)

    if isinstance(error, Unsent | AlertsUnsent):  # the send's own summary, failures listed, went to the operator
        return
    note = notify_operator(cfg, f"SPM schedule {job_name}: {cadence} as of {as_of} FAILED",
                           f"The scheduled job {job_name!r} ({cadence} as of {as_of}) failed:\n\n"
                           f"{type(error).__name__}: {error}\n\nFix the cause; the next firing within "
                           f"misfire_grace_s catches up, or run `spm run --cadence {cadence} --as-of {as_of} "
                           f"--resume` and `spm send --cadence {cadence} --as-of {as_of}` by hand.")
    if note:
        log.error("schedule job %r: %s", job_name, note)


# ---------------------------------------------------------------- cron and the in-process scheduler
def _time_of_day(cfg: Config, job_name: str) -> tuple[int, int] | None:
    """(hour, minute) when the job fires at one fixed time of day, else None."""
    job = _job(cfg, job_name)
    if job.cron is None:
        return job.hour, job.minute
    fields = {f.name: str(f) for f in trigger(cfg, job_name).fields}  # a cron job's trigger: a CronTrigger
    if all(fields[k].isdigit() for k in ("hour", "minute", "second")):
        return int(fields["hour"]), int(fields["minute"])
    return None


def _local_minutes(company: ZoneInfo, local: tzinfo, year: int, hour: int, minute: int) -> int:
    """Local minute of the day at or after the company's hour:minute on every day of `year` (DST both sides)."""
    first = datetime(year, 1, 1, hour, minute)
    walls = [first + timedelta(days=k) for k in range(366)]
    shift = max((w.replace(tzinfo=company).astimezone(local).replace(tzinfo=None) - w) for w in walls)
    return (hour * 60 + minute + shift // timedelta(minutes=1)) % (24 * 60)


def cron_lines(cfg: Config, spm_path: str, *, local_tz: tzinfo | None = None, year: int | None = None) -> list[str]:
    """One crontab line per job, running `spm schedule --fire JOB` daily at the job's time in local time.

    The line runs every day (every 15 minutes for a cron job without one fixed time of day); `--fire` decides
    whether a firing is due. The company time is converted to the machine's local time (`local_tz`, default the
    machine's) at the latest local time it falls on over the year, so a DST difference between the two zones
    delays the line by up to an hour (within misfire_grace_s) and never runs it before the firing.
    """
    local = local_tz or datetime.now().astimezone().tzinfo
    assert local is not None
    root = shlex.quote(str(cfg.root))
    lines = []
    for name in cfg.schedule.jobs:
        at = _time_of_day(cfg, name)
        if at is None:
            when = "*/15 * * * *"
        else:
            minutes = _local_minutes(_tz(cfg), local, year or date.today().year, *at)
            when = f"{minutes % 60} {minutes // 60} * * *"
        lines.append(f"{when} cd {root} && SPM_PROJECT_DIR={root} {shlex.quote(spm_path)} schedule "
                     f"--fire {shlex.quote(name)}")
    return lines


def _fire_now(cfg: Config, job_name: str, run_fn: Action, send_fn: Action, done: Done,
              alerts: tuple[Action, Done] | None = None) -> None:
    """Fire one job at the current time, logging the outcome or the failure (the scheduler keeps going)."""
    try:
        log.info("%s", fire(cfg, job_name, datetime.now(_tz(cfg)), run_fn, send_fn, done, alerts=alerts))
    except Exception:
        log.exception("schedule job %r failed", job_name)


def build_scheduler(cfg: Config, run_fn: Action, send_fn: Action, done: Done, *,
                    alerts: tuple[Action, Done] | None = None) -> Any:
    """An APScheduler 3 BlockingScheduler with one job per configured job, each firing `fire`."""
    scheduler = BlockingScheduler(timezone=_tz(cfg))
    for name, job in cfg.schedule.jobs.items():
        scheduler.add_job(_fire_now, trigger=trigger(cfg, name), args=[cfg, name, run_fn, send_fn, done, alerts],
                          id=name,
                          name=f"spm {job.cadence} ({name})", coalesce=True, max_instances=1,
                          misfire_grace_time=max(job.misfire_grace_s, 1))
    return scheduler


def serve(cfg: Config, run_fn: Action, send_fn: Action, done: Done, *,
          alerts: tuple[Action, Done] | None = None) -> None:
    """Catch up every job now, then fire each job on its schedule until interrupted."""
    if not cfg.schedule.jobs:
        raise ConfigError("config/schedule.yml has no jobs: add one per cadence to run (see the comments there)")
    scheduler = build_scheduler(cfg, run_fn, send_fn, done, alerts=alerts)
    for name in cfg.schedule.jobs:
        _fire_now(cfg, name, run_fn, send_fn, done, alerts)
    scheduler.start()
