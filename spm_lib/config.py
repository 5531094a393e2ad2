"""The project's config: YAML files under config/, each validated once into a typed section.

Every file `config/<section>.yml` maps to one field of `Config`; `config/local/<section>.yml`
(git-ignored) is merged over it for machine-specific values. A wrong key, type or value fails
with the file, the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spm_lib.domain.crm import check_deal_url
from spm_lib.errors import ConfigError, did_you_mean
from spm_lib.project import project_dir

LEVELS_DEFAULT = ["rep", "manager", "director", "executive"]
CADENCES = ["weekly", "monthly", "quarterly", "annual"]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- company.yml
class CompanyConfig(Strict):
    """Company-wide settings: currency, time zone, fiscal calendar, levels."""

    name: str = "Company"
    currency: str = "EUR"
    timezone: str = "UTC"
    fiscal_year_start_month: int = Field(1, ge=1, le=12)
    fiscal_year_named_by: Literal["end", "start"] = "end"
    levels: list[str] = Field(default_factory=lambda: list(LEVELS_DEFAULT))

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, available_timezones

        try:
            ZoneInfo(v)
        except Exception:
            raise ValueError(f"unknown time zone {v!r}{did_you_mean(v, available_timezones())}") from None
        return v


# ---------------------------------------------------------------- source.yml
class NumberFormat(Strict):
    """How the export writes numbers: `1.234,00` is decimal ',' thousands '.'."""

    decimal: str = "."
    thousands: str = ","


class Derive(Strict):
    """A flag derived from another column: true when `column` is (not) one of `in`."""

    column: str
    in_: list[Any] = Field(alias="in")
    negate: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Lookup(Strict):
    """Look a value up in another table of the source (e.g. a list price by product name)."""

    table: str
    key: str  # contract column of this table holding the lookup key
    on: str  # column of the lookup table matched against key
    value: str  # column of the lookup table to copy

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key as true; take it back as `on`."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class TableMapping(Strict):
    """How one contract table is read from the source and mapped onto the contract."""

    source: str | None = None  # file name (folder), table name (duckdb/sql); default: contract table name
    query: str | None = None  # a SQL query instead of a table (duckdb/sql sources)
    sheet: str | int | None = None  # XLSX sheet
    encoding: str = "utf-8-sig"
    delimiter: str = ","
    skip_rows: int = Field(0, ge=0)  # lines above the header (report titles)
    drop_rows_matching: list[str] = Field(default_factory=list)  # regex on a row's first cell: footers
    columns: dict[str, str] = Field(default_factory=dict)  # contract column -> source column
    # contract column -> {raw: mapped}; bool keys: YAML reads unquoted Yes/No as true/false
    values: dict[str, dict[str | bool | int | float, Any]] = Field(default_factory=dict)
    date_format: str | None = None  # strptime format of every date column, e.g. "%m/%d/%Y"
    number_format: NumberFormat = Field(default_factory=NumberFormat)
    formats: dict[str, str] = Field(default_factory=dict)  # per-column date format override
    constants: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)  # fill empty cells
    derive: dict[str, Derive] = Field(default_factory=dict)
    lookups: dict[str, Lookup] = Field(default_factory=dict)


class HierarchyLevel(Strict):
    """One column of a flat export that names owners of one level (top level first)."""

    column: str
    level: str
    email_column: str | None = None


class SyntheticTop(Strict):
    """An owner added above the top hierarchy column (e.g. the whole company)."""

    owner_id: str
    name: str | None = None
    level: str = "executive"
    email: str | None = None


class OwnersFromHierarchy(Strict):
    """Build `owners` from the distinct values of hierarchy columns of a flat export."""

    source: str  # file/table holding the hierarchy columns
    levels: list[HierarchyLevel]
    top: SyntheticTop | None = None


class DataChecks(Strict):
    """Thresholds of `spm data check` beyond the contract itself."""

    amount_ceiling: float | None = Field(None, gt=0)  # amounts above it are implausible (a warning with the ids)
    amount_ceiling_factor: float = Field(1000, gt=1)  # without amount_ceiling: this × the 99th percentile of amounts


class SourceConfig(Strict):
    """Where the CRM data lives and how each table maps onto the data contract."""

    kind: Literal["duckdb", "folder", "sql"] = "duckdb"
    path: str | None = None  # duckdb file or folder, relative to the project root; ${VAR} is expanded
    url: str | None = None  # SQLAlchemy URL; ${VAR} is expanded from the environment
    tables: dict[str, TableMapping] = Field(default_factory=dict)
    owners_from_hierarchy: OwnersFromHierarchy | None = None
    checks: DataChecks = Field(default_factory=DataChecks)

    @model_validator(mode="after")
    def _location(self) -> SourceConfig:
        if self.kind == "sql" and not self.url:
            raise ValueError("kind 'sql' needs `url` (a SQLAlchemy URL, e.g. postgresql+psycopg://…)")
        if self.kind in ("duckdb", "folder") and not self.path:
            raise ValueError(f"kind {self.kind!r} needs `path` (relative to the project root)")
        from spm_lib.domain.contract import CONTRACT

        for name in self.tables:
            if name not in CONTRACT:
                raise ValueError(f"unknown contract table {name!r}{did_you_mean(name, CONTRACT)}; "
                                 f"allowed: {', '.join(CONTRACT)}")
        return self

    def resolved_url(self) -> str:
        """Return the SQLAlchemy URL with ${VAR} taken from the environment."""
        assert self.url is not None
        return expand_env(self.url, "config/source.yml: url")

    def resolved_path(self) -> str:
        """Return `path` with ${VAR} (and ~) taken from the environment."""
        assert self.path is not None
        return expand_env(self.path, "config/source.yml: path")


def expand_env(text: str, where: str) -> str:
    """`text` with every ${VAR} taken from the environment (ConfigError naming `where` when one is not set)."""

    def env(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{where} uses ${{{m.group(1)}}} but the environment variable {m.group(1)} is not set: "
                              f"set it (export {m.group(1)}=…) or write the value into the config")
        return os.environ[m.group(1)]

    return re.sub(r"\$\{(\w+)\}", env, text)


# ---------------------------------------------------------------- stages.yml
class Stage(Strict):
    """One open stage of the sales process, in order, with its default win probability."""

    name: str
    probability: float = Field(ge=0, le=1)


class StagesConfig(Strict):
    """Ordered open stages plus the labels of the closed stages."""

    stages: list[Stage] = Field(
        default_factory=lambda: [
            Stage(name="Prospecting", probability=0.05),
            Stage(name="Qualification", probability=0.10),
            Stage(name="Needs analysis", probability=0.20),
            Stage(name="Proposal", probability=0.40),
            Stage(name="Negotiation", probability=0.60),
        ]
    )
    won: list[str] = Field(default_factory=lambda: ["Closed Won"])
    lost: list[str] = Field(default_factory=lambda: ["Closed Lost"])
    # closed stages whose outcome is the deal's is_won flag (the contract's canonical `Closed`)
    closed: list[str] = Field(default_factory=lambda: ["Closed"])

    @model_validator(mode="after")
    def _unique(self) -> StagesConfig:
        names = [s.name for s in self.stages] + self.won + self.lost + self.closed
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dup)}")
        if not self.stages:
            raise ValueError("at least one open stage is needed")
        if self.closed and not (self.won and self.lost):
            raise ValueError("`closed` stages need a `won` and a `lost` label (their deals are shown under them)")
        return self

    @property
    def closed_names(self) -> list[str]:
        """The labels of closed deals: won, lost and the generic closed stages."""
        return self.won + self.lost + self.closed

    @property
    def all_names(self) -> list[str]:
        """Every configured stage label: open in process order, then the closed ones."""
        return self.open_names + self.closed_names

    @property
    def open_names(self) -> list[str]:
        """Open stage names in process order."""
        return [s.name for s in self.stages]


# ---------------------------------------------------------------- trust.yml
class Threshold(Strict):
    """Warn/fail limits of one trust check; `unit` says what they compare: a count of deals, a share of the open
    pipeline value (`rate`), a percentage deviation (`pct`), or (`material`) the flagged value as a share of the
    scope's pipeline closing in the rest of the forward period: what the session decides on. `fail_amount`: the
    check also fails when the flagged value reaches this absolute amount."""

    warn: float | None = None
    fail: float | None = None
    unit: Literal["count", "rate", "pct", "material"] = "count"
    fail_amount: float | None = Field(None, ge=0)


class TrustConfig(Strict):
    """Trust-check thresholds per level (`default` applies where a level has none)."""

    thresholds: dict[str, dict[str, Threshold]] = Field(default_factory=dict)
    stale_days: int = 60
    closing_soon_days: int = 30
    early_stages: int = 2
    pushed_min_moves: int = 3
    no_activity_days: int = 30
    stalled_factor: float = 1.5  # stalled when time in stage > factor × the historical median
    top_offenders: int = 20


# ---------------------------------------------------------------- kpis.yml
class StatusBands(Strict):
    """Attainment bands for status colours: green at or above `green`, amber at or above `amber`."""

    green: float = 1.0
    amber: float = 0.9


class CustomKpi(Strict):
    """A company-specific KPI declared in config: a measure with filters, or a ratio of KPIs."""

    label: str
    unit: Literal["currency", "count", "pct", "days", "ratio", "score"] = "count"
    direction: Literal["higher", "lower"] = "higher"
    kind: Literal["leading", "lagging"] = "lagging"
    definition: str = ""
    # measure form
    table: str | None = None
    agg: Literal["sum", "count", "mean", "count_distinct"] | None = None
    column: str | None = None
    date_column: str | None = None
    filter: str | None = None  # a DuckDB SQL boolean expression over the table's contract columns
    # ratio form
    numerator: str | None = None
    denominator: str | None = None

    @model_validator(mode="after")
    def _form(self) -> CustomKpi:
        measure = self.table is not None and self.agg is not None
        ratio = self.numerator is not None and self.denominator is not None
        if measure == ratio:
            raise ValueError("declare either a measure (table, agg, column, date_column) "
                             "or a ratio (numerator, denominator)")
        return self


class WeakStageRule(Strict):
    """When a stage's conversion is a finding: materially below the benchmark (the rest of the team) and credibly
    so (enough deals, a one-sided two-proportion test)."""

    margin_points: float = Field(10.0, ge=0)  # at least this many percentage points below the benchmark
    min_deals: int = Field(8, ge=1)  # deals of the owner that left the stage in the trend window
    alpha: float = Field(0.1, gt=0, lt=1)  # significance of "below": one-sided two-proportion z-test


class KpisConfig(Strict):
    """Which KPIs stand above the line per level × cadence, status bands, custom KPIs, the weak-stage rule."""

    above_the_line: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    status: StatusBands = Field(default_factory=StatusBands)
    weak_stage: WeakStageRule = Field(default_factory=WeakStageRule)
    custom: dict[str, CustomKpi] = Field(default_factory=dict)
    python_files: list[str] = Field(default_factory=list)  # config/*.py files registering KPIs


# ---------------------------------------------------------------- findings.yml
FindingRule = Literal["standing", "people", "deals", "stage", "dimensions", "stale"]
FINDING_LEVELS: dict[str, list[FindingRule]] = {  # the rules each level runs unless findings.yml says otherwise
    "rep": ["standing", "deals", "stage", "stale"],
    "manager": ["standing", "people", "deals", "stage"],
    "director": ["standing", "people", "stage", "dimensions"],
    "executive": ["standing", "people", "dimensions"]}


class PeopleFindings(Strict):
    """The `people` rule: direct reports short of their bookings target (closed period) or expected short of the
    forward period's target, by the money missing."""

    below_pct: float = Field(100.0, gt=0)  # a direct report is named when at less than this % of the target
    max: int = Field(3, ge=0)  # at most this many people named
    deeper: list[str] = Field(default_factory=lambda: ["executive"])  # these levels also name the teams below


class DealFindings(Strict):
    """The `deals` rule: the largest open deals closing by the end of the forward period that have a reason to act."""

    max: int = Field(3, ge=0)  # at most this many deals named
    checks: list[str] = Field(default_factory=lambda: [  # trust checks whose flag is a reason to act
        "opps_past_close_date", "opps_stale_60d", "opps_pushed", "deals_no_activity", "deals_stalled_in_stage",
        "deals_amount_decreased", "opps_early_stage_closing_30d"])
    no_next_step: bool = True  # an empty next step is a reason (only where the CRM fills next steps at all)


class DimensionFindings(Strict):
    """The `dimensions` rule: breakdowns (segment, product, lead source) whose bookings fell below their
    trailing-year average per period."""

    dims: list[str] = Field(default_factory=lambda: ["segment", "product", "lead_source"])
    drop_pct: float = Field(25.0, ge=0, le=100)  # named when this % or more below the trailing-year average
    min_amount: float = Field(0.0, ge=0)  # and the drop is at least this amount
    max: int = Field(2, ge=0)  # at most this many breakdown values named


class FindingsConfig(Strict):
    """Which finding rules each level's report runs (engine.findings) and their thresholds."""

    levels: dict[str, list[FindingRule]] = Field(default_factory=dict)  # level (or default) -> its rules
    people: PeopleFindings = Field(default_factory=PeopleFindings)
    deals: DealFindings = Field(default_factory=DealFindings)
    dimensions: DimensionFindings = Field(default_factory=DimensionFindings)
    shown: int = Field(8, ge=1)  # findings listed in "Where to focus" (at a glance shows the 3 largest)

    def rules_for(self, level: str) -> list[FindingRule]:
        """The rules a level's report runs: its own list, else `default`, else the built-in list of the level
        (a manager's for a level the built-in lists do not name)."""
        for key in (level, "default"):
            if key in self.levels:
                return self.levels[key]
        return FINDING_LEVELS.get(level, FINDING_LEVELS["manager"])


# ---------------------------------------------------------------- targets.yml
class TargetsConfig(Strict):
    """How annual targets are phased into quarters and months."""

    phasing: Literal["flat"] | str = "flat"
    profiles: dict[str, list[float]] = Field(default_factory=dict)  # 12 fiscal-month weights

    @model_validator(mode="after")
    def _profile(self) -> TargetsConfig:
        for name, weights in self.profiles.items():
            if len(weights) != 12 or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"profile {name!r} needs 12 non-negative fiscal-month weights, not all 0")
        if self.phasing != "flat" and self.phasing not in self.profiles:
            raise ValueError(f"phasing {self.phasing!r} is neither 'flat' nor a profile"
                             f"{did_you_mean(self.phasing, self.profiles)}")
        return self


# ---------------------------------------------------------------- state.yml
class StateConfig(Strict):
    """Where state that must outlive runs lives (actions, the send ledger, schedule state)."""

    url: str = "sqlite:///state/spm.sqlite"  # relative sqlite paths are under the project root; ${VAR} expanded


# ---------------------------------------------------------------- live.yml
class LiveConfig(Strict):
    """The live (Voila) server: the address links carry, kernels, culling."""

    public_url: str = "http://127.0.0.1:8866"  # what signed links carry (behind a TLS proxy: its https URL)
    base_url: str = "/"
    host: str = "127.0.0.1"
    port: int = Field(8866, ge=1, le=65535)
    pool_size: int = Field(1, ge=0, le=32)  # preheated kernels per template (each holds the run in memory)
    pools: dict[str, int] = Field(default_factory=dict)  # per template (e.g. rep_monthly: 3), overrides pool_size
    cull_idle_s: int = Field(600, ge=0)  # idle kernels (abandoned or idle open tabs) are culled (0 = never)
    link_days: int = Field(7, ge=1)  # default validity of a signed link
    max_kernels: int | None = Field(None, ge=1, le=1024)  # kernels alive at once, preheated ones included
    kernel_mb: int = Field(400, ge=50)  # memory one kernel holds (sizes max_kernels when it is not set)
    memory_share: float = Field(0.6, gt=0, le=1)  # share of the machine's memory live kernels may take
    opens_per_minute: int = Field(20, ge=1)  # report opens one link may make in a minute
    busy_retry_s: int = Field(15, ge=1)  # Retry-After when every kernel is taken
    trusted_proxies: list[str] = Field(default_factory=list)  # IPs/CIDRs whose X-Forwarded-Proto is believed

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") \
                    from None
        return value


# ---------------------------------------------------------------- delivery.yml
class SmtpConfig(Strict):
    """SMTP server; the password only from the environment (SPM_SMTP_PASSWORD)."""

    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    user: str | None = None
    timeout_s: float = 30.0


class DeliveryConfig(Strict):
    """Who receives which email, and how it is sent."""

    from_address: str = "SPM reports <spm-reports@localhost>"
    cc_leader: bool = False
    attach_report: bool = True
    exclude: list[str] = Field(default_factory=list)  # owner ids never emailed
    redirect_to: str | None = None  # send every email to this address instead (staging, first run)
    operator_email: str | None = None  # receives each run's summary and every failure
    rate_per_minute: int = Field(600, ge=1)
    max_attempts: int = Field(4, ge=1, le=20)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)


# ---------------------------------------------------------------- schedule.yml
class ScheduleJob(Strict):
    """When one cadence runs (company time zone): APScheduler 3 cron fields, or a business day of the month."""

    cadence: Literal["weekly", "monthly", "quarterly", "annual"]
    hour: int = Field(7, ge=0, le=23)
    minute: int = Field(0, ge=0, le=59)
    business_day: int | None = Field(None, ge=1, le=23)  # Nth working day of the month (after the period closed)
    cron: dict[str, str | int] | None = None  # APScheduler CronTrigger fields (day_of_week 0 = Monday!)
    send: bool = True
    misfire_grace_s: int = Field(6 * 3600, ge=0)
    # report: render (and send) the period just closed; alerts: `spm alerts` as of the day before the firing
    kind: Literal["report", "alerts"] = "report"


class ScheduleConfig(Strict):
    """The jobs of `spm schedule` and the holidays business days skip."""

    jobs: dict[str, ScheduleJob] = Field(default_factory=dict)
    holidays: list[date] = Field(default_factory=list)


# ---------------------------------------------------------------- alerts.yml
ALERT_TYPES = ("kpi", "trust", "forecast_gap", "deal")
_ALERT_KEYS = {  # the condition keys each rule type takes (the others are refused, naming the key)
    "kpi": {"kpi", "period", "below", "above", "days_left_below"},
    "trust": {"check", "status"},
    "forecast_gap": {"gap_share_above", "gap_above", "days_left_below"},
    "deal": {"amount_above", "pushes_at_least"},
}


class AlertRule(Strict):
    """One rule of config/alerts.yml: what it watches (`type` and its condition), for which levels, who is mailed."""

    type: Literal["kpi", "trust", "forecast_gap", "deal"]
    description: str = ""
    levels: list[str] | None = None  # None: every level
    copy_leader: bool = False  # Cc the owner's manager
    # kpi: a KPI of the forward (or closed) period below / above a threshold
    kpi: str | None = None
    period: Literal["forward", "closed"] = "forward"
    below: float | None = None
    above: float | None = None
    days_left_below: int | None = Field(None, ge=1)  # kpi, forecast_gap: only with fewer days left in Q
    # trust: a trust check of the owner's scope at this status or worse
    check: str | None = None  # a check id, or "any"
    status: Literal["fail", "warn"] = "fail"
    # forecast_gap: target(Q) - forecast_expected above a share of the target and/or an amount
    gap_share_above: float | None = Field(None, ge=0)
    gap_above: float | None = None
    # deal: an open deal of the owner's scope over an amount, pushed (close date moved later) N times or more
    amount_above: float | None = Field(None, ge=0)
    pushes_at_least: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _condition(self) -> AlertRule:
        given = {k for k in self.model_fields_set if k in set().union(*_ALERT_KEYS.values())}
        for key in sorted(given - _ALERT_KEYS[self.type]):
            kinds = [t for t, keys in _ALERT_KEYS.items() if key in keys]
            raise ValueError(f"`{key}` is a condition of type {' or '.join(map(repr, kinds))} rules, not of "
                             f"type {self.type!r}; this type takes: {', '.join(sorted(_ALERT_KEYS[self.type]))}")
        need = {"kpi": (["kpi"], ["below", "above"]), "trust": (["check"], []),
                "forecast_gap": ([], ["gap_share_above", "gap_above"]),
                "deal": ([], ["amount_above", "pushes_at_least"])}
        required, one_of = need[self.type]
        for key in required:
            if getattr(self, key) is None:
                raise ValueError(f"a type {self.type!r} rule needs `{key}`")
        if one_of and all(getattr(self, k) is None for k in one_of):
            raise ValueError(f"a type {self.type!r} rule needs {' or '.join(f'`{k}`' for k in one_of)}")
        if self.type == "kpi" and self.below is not None and self.above is not None:
            raise ValueError("give `below` or `above`, not both (declare two rules for a band)")
        return self


class AlertsConfig(Strict):
    """The rules `spm alerts` evaluates between sessions, by rule id."""

    rules: dict[str, AlertRule] = Field(default_factory=dict)

    @field_validator("rules")
    @classmethod
    def _ids(cls, rules: dict[str, AlertRule]) -> dict[str, AlertRule]:
        for rule_id in rules:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", rule_id):
                raise ValueError(f"rule id {rule_id!r}: use 1 to 60 letters, digits, '_', '-' or '.'")
        return rules


# ---------------------------------------------------------------- crm.yml
class CrmConfig(Strict):
    """Links out to the CRM: `deal_url` makes every deal id of the report, the email and the live page a link."""

    deal_url: str | None = None  # e.g. https://crm.example.com/opp/{opportunity_id} (domain.crm checks it)

    @field_validator("deal_url")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else check_deal_url(v)


# ---------------------------------------------------------------- runs.yml
class RunsConfig(Strict):
    """Run folders: how many to keep per cadence (older ones are pruned; state is never touched)."""

    keep: int = Field(24, ge=1)


# ---------------------------------------------------------------- runner.yml
class RunnerConfig(Strict):
    """Where `spm run` renders: the local worker pool (default) or a Dask cluster (`--executor`, `--scheduler`)."""

    executor: Literal["local", "dask"] = "local"
    scheduler: str | None = None  # the Dask scheduler's address, e.g. tcp://10.0.0.5:8786 (executor dask)
    connect_timeout_s: int = Field(20, ge=1, le=600)  # how long to try reaching the scheduler before giving up

    @field_validator("scheduler")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else scheduler_address(v)


def scheduler_address(address: str) -> str:
    """`address` when it is a Dask scheduler's (tcp://HOST:PORT, tls://…); ValueError saying what is expected."""
    if not re.fullmatch(r"(tcp|tls|ws|wss|ucx)://[^\s/:]+(:\d+)?/?", address):
        raise ValueError(f"{address!r} is not a Dask scheduler address: use tcp://HOST:PORT (or tls://HOST:PORT)")
    return address


# ---------------------------------------------------------------- the whole config
SECTIONS: dict[str, type[Strict]] = {
    "company": CompanyConfig,
    "source": SourceConfig,
    "stages": StagesConfig,
    "trust": TrustConfig,
    "kpis": KpisConfig,
    "targets": TargetsConfig,
    "state": StateConfig,
    "live": LiveConfig,
    "delivery": DeliveryConfig,
    "schedule": ScheduleConfig,
    "runs": RunsConfig,
    "alerts": AlertsConfig,
    "runner": RunnerConfig,
    "findings": FindingsConfig,
    "crm": CrmConfig,
}


class Config(BaseModel):
    """Every config section of a project, validated; `root` is the project folder."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    root: Path
    company: CompanyConfig = Field(default_factory=CompanyConfig)
    source: SourceConfig
    stages: StagesConfig = Field(default_factory=StagesConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    kpis: KpisConfig = Field(default_factory=KpisConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    findings: FindingsConfig = Field(default_factory=FindingsConfig)
    crm: CrmConfig = Field(default_factory=CrmConfig)

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from config against the project root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _explain(path: Path, err: ValidationError, model: type[BaseModel]) -> str:
    lines = [f"{path}: invalid config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = list(model.model_fields)
            msg = f"unknown key{did_you_mean(str(e['loc'][-1]), allowed)}; allowed here: {', '.join(allowed)}"
            if len(e["loc"]) > 1:
                msg = f"unknown key{did_you_mean(str(e['loc'][-1]), _allowed_at(model, e['loc']))}"
        lines.append(f"  key `{key}`: {msg}")
    return "\n".join(lines)


def _allowed_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Best-effort list of keys allowed at a nested location (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            ann = current.model_fields[part].annotation
            args = getattr(ann, "__args__", ())
            nested = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
            current = nested[0] if nested else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def load_config(root: Path | None = None) -> Config:
    """Load and validate every config section of the project at `root`."""
    root = (root or project_dir()).resolve()
    folder = root / "config"
    if not folder.is_dir():
        raise ConfigError(f"{root} has no config/ folder, so it is not an SPM project: create one with "
                          f"`spm init {root}`, or pass --project the folder that holds config/")
    for f in sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml")):
        if f.stem not in SECTIONS and f.stem not in EXTRA_SECTIONS:
            raise ConfigError(f"{f}: unknown config file{did_you_mean(f.stem, SECTIONS)}; "
                              f"allowed: {', '.join(f'{s}.yml' for s in SECTIONS)}")
    values: dict[str, Any] = {"root": root}
    for name, model in SECTIONS.items():
        base = folder / f"{name}.yml"
        local = folder / "local" / f"{name}.yml"
        raw: dict[str, Any] = _read_yaml(base) if base.is_file() else {}
        if local.is_file():
            raw = _merge(raw, _read_yaml(local))
        if not base.is_file() and not local.is_file():
            if name == "source":
                raise ConfigError(f"{base} is missing: it says where the CRM data is (README, 'Map your CRM'); "
                                  f"`spm init DIR` writes a commented one into a new folder")
            continue
        try:
            values[name] = model.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(_explain(local if local.is_file() else base, e, model)) from None
    cfg = Config(**values)
    _cross_check(cfg)
    return cfg


EXTRA_SECTIONS: set[str] = set()  # sections added by later features (live, delivery, schedule, state)


def _cross_check(cfg: Config) -> None:
    """Checks that span sections (e.g. thresholds naming a level that does not exist)."""
    levels = set(cfg.company.levels) | {"default"}
    for level in cfg.trust.thresholds:
        if level not in levels:
            raise ConfigError(f"config/trust.yml: key `thresholds.{level}`: unknown level"
                              f"{did_you_mean(level, levels)}; allowed: {', '.join(sorted(levels))}")
    for level, by_cadence in cfg.kpis.above_the_line.items():
        if level not in levels:
            raise ConfigError(f"config/kpis.yml: key `above_the_line.{level}`: unknown level"
                              f"{did_you_mean(level, levels)}; allowed: {', '.join(sorted(levels))}")
        for cadence in by_cadence:
            if cadence not in CADENCES:
                raise ConfigError(f"config/kpis.yml: key `above_the_line.{level}.{cadence}`: unknown cadence"
                                  f"{did_you_mean(cadence, CADENCES)}; allowed: {', '.join(CADENCES)}")
    _known_levels("config/findings.yml: key `levels`", cfg.findings.levels, levels)
    _known_levels("config/findings.yml: key `people.deeper`", cfg.findings.people.deeper, levels)
    for rule_id, rule in cfg.alerts.rules.items():
        for level in rule.levels or []:
            if level not in cfg.company.levels:
                raise ConfigError(f"config/alerts.yml: key `rules.{rule_id}.levels`: unknown level {level!r}"
                                  f"{did_you_mean(level, cfg.company.levels)}; allowed: "
                                  f"{', '.join(cfg.company.levels)}")


def _known_levels(where: str, named: Iterable[str], levels: set[str]) -> None:
    """Refuse a level name that is not one of `levels`, saying `where` it was found."""
    for level in named:
        if level not in levels:
            raise ConfigError(f"{where}: unknown level {level!r}{did_you_mean(level, levels)}; "
                              f"allowed: {', '.join(sorted(levels))}")


_CACHED: dict[Path, tuple[tuple[float, ...], Config]] = {}


def cached_config(root: Path | None = None) -> Config:
    """load_config, read once per process and again only when a file under config/ changed (long-lived kernels)."""
    root = (root or project_dir()).resolve()
    stamp = tuple(sorted(p.stat().st_mtime for p in (root / "config").rglob("*.yml")))
    hit = _CACHED.get(root)
    if hit and hit[0] == stamp:
        return hit[1]
    cfg = load_config(root)
    _CACHED[root] = (stamp, cfg)
    return cfg
