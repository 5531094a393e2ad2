"""spm alerts: rules of config/alerts.yml evaluated on small hand-made cubes, mailed once through a real SMTP server on
loopback (aiosmtpd), cleared once; config errors name the key; a rule without its data is skipped with the reason."""

from __future__ import annotations

import email
import shutil
from datetime import date, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from spm_lib.cli import cli
from spm_lib.config import AlertsConfig, Config, StateConfig, load_config
from spm_lib.deliver import schedule
from spm_lib.deliver.alerts import run_alerts
from spm_lib.engine.alerts import NEEDS_HISTORY, evaluate
from spm_lib.engine.cube import Cube, write_cube
from spm_lib.errors import ConfigError
from spm_lib.state import alerts as alert_ledger
from tests.test_deliver import Mailbox

ROOT = Path(__file__).resolve().parents[1]
DAY1, DAY2 = date(2026, 12, 5), date(2026, 12, 6)  # 26 and 25 days left in FY2026-Q4
ADDR = {"exec-1": "eve@acme.example", "mgr-1": "max@acme.example", "rep-1": "rita@acme.example",
        "rep-2": "raul@acme.example"}
RULES = {
    "low_coverage": {"type": "kpi", "description": "Coverage below 2 with fewer than 30 days left",
                     "kpi": "pipeline_coverage", "below": 2, "days_left_below": 30, "levels": ["rep", "manager"]},
    "past_close": {"type": "trust", "check": "opps_past_close_date", "status": "fail"},
    "short": {"type": "forecast_gap", "gap_share_above": 0.10},
    "big_pushed": {"type": "deal", "description": "A deal over 100k pushed a third time", "amount_above": 100000,
                   "pushes_at_least": 3, "levels": ["rep"], "copy_leader": True},
}


# ---------------------------------------------------------------- a hand-made cube
def owners() -> pd.DataFrame:
    """exec-1 leads mgr-1, who leads rep-1 and rep-2."""
    return pd.DataFrame({"owner_id": ["exec-1", "mgr-1", "rep-1", "rep-2"],
                         "manager_id": [None, "exec-1", "mgr-1", "mgr-1"],
                         "name": ["Eve Exec", "Max Manager", "Rita Rep", "Raul Rep"],
                         "email": [ADDR[o] for o in ("exec-1", "mgr-1", "rep-1", "rep-2")],
                         "level": ["executive", "manager", "rep", "rep"],
                         "active": pd.array([True] * 4, dtype="boolean")})


LEVEL = dict(zip(owners()["owner_id"], owners()["level"], strict=True))


def kpi_rows(coverage: dict[str, float], gap: dict[str, float], target: dict[str, float]) -> pd.DataFrame:
    """KPI rows of FY2026-Q4: pipeline_coverage, gap_to_target and forecast_expected (carrying target(Q))."""
    rows = [(o, "pipeline_coverage", v, float("nan")) for o, v in coverage.items()]
    rows += [(o, "gap_to_target", v, float("nan")) for o, v in gap.items()]
    rows += [(o, "forecast_expected", target[o] - v, target[o]) for o, v in gap.items()]
    df = pd.DataFrame(rows, columns=["owner_id", "kpi", "value", "target"])
    return df.assign(level=df["owner_id"].map(LEVEL), period="FY2026-Q4", dim=None, dim_value=None,
                     available=df["value"].notna(), na_reason=None)


def trust_rows(statuses: dict[str, tuple[str, int, float]]) -> pd.DataFrame:
    """opps_past_close_date per owner: (status, count of deals, their amount)."""
    df = pd.DataFrame([(o, s, n, a) for o, (s, n, a) in statuses.items()],
                      columns=["owner_id", "status", "count", "amount"])
    return df.assign(level=df["owner_id"].map(LEVEL), check="opps_past_close_date", value=df["count"].astype(float),
                     warn=float("nan"), fail=0.0, unit="count", available=True, na_reason=None,
                     label="Close date in the past")


def facts(pushes: list[Any]) -> pd.DataFrame:
    """Four deals: opp-1 rep-1 150k open, opp-2 rep-2 150k open, opp-3 rep-2 90k open, opp-4 rep-1 200k won."""
    scope = {"rep-1": ["rep-1", "mgr-1", "exec-1"], "rep-2": ["rep-2", "mgr-1", "exec-1"]}
    own = ["rep-1", "rep-2", "rep-2", "rep-1"]
    return pd.DataFrame({"opportunity_id": ["opp-1", "opp-2", "opp-3", "opp-4"], "owner_id": own,
                         "name": ["Alpha", "Beta", "Gamma", "Delta"], "amount": [150000.0, 150000.0, 90000.0, 200000.0],
                         "close_date": pd.to_datetime(["2026-12-20", "2026-12-21", "2026-12-22", "2026-11-02"]),
                         "is_closed": pd.array([False, False, False, True], dtype="boolean"),
                         "pushes": pd.array(pushes, dtype="Int64"), "scope_ids": [scope[o] for o in own]})


def cube(as_of: date, kpis: pd.DataFrame, trust: pd.DataFrame, deals: pd.DataFrame) -> Cube:
    empty = pd.DataFrame({"x": pd.Series([], dtype="float64")})
    return Cube(kpis=kpis, trust=trust, trust_rows=empty, decomposition=empty, facts=deals, probabilities=empty,
                owners=owners(), quality=empty,
                meta={"as_of": as_of.isoformat(), "cadence": "monthly", "closed_period": f"2026-{as_of.month:02d}",
                      "forward_period": "FY2026-Q4", "forward_start": "2026-10-01", "forward_end": "2026-12-31",
                      "currency": "EUR", "run_id": f"hand-{as_of}"})


def day1() -> Cube:
    """Coverage rep-1 1.5, mgr-1 1.9, rep-2 2.5; mgr-1 25 % short, exec-1 5 %; rep-1 fails; opp-1 pushed 3×."""
    return cube(DAY1, kpi_rows({"rep-1": 1.5, "rep-2": 2.5, "mgr-1": 1.9, "exec-1": 2.4},
                               {"mgr-1": 250000.0, "exec-1": 100000.0}, {"mgr-1": 1e6, "exec-1": 2e6}),
                trust_rows({"rep-1": ("fail", 2, 150000.0), "rep-2": ("pass", 0, 0.0), "mgr-1": ("warn", 2, 150000.0)}),
                facts([3, 2, 4, 5]))


def day2() -> Cube:
    """rep-1 recovers to 2.2 (cleared), rep-2 drops to 1.0 (new); the rest as on day 1."""
    c = day1()
    k = c.kpis.copy()
    k.loc[(k["kpi"] == "pipeline_coverage") & (k["owner_id"] == "rep-1"), "value"] = 2.2
    k.loc[(k["kpi"] == "pipeline_coverage") & (k["owner_id"] == "rep-2"), "value"] = 1.0
    return Cube(**{**c.__dict__, "kpis": k, "meta": {**c.meta, "as_of": DAY2.isoformat()}})


def rules(**override: dict[str, Any]) -> AlertsConfig:
    return AlertsConfig.model_validate({"rules": {**RULES, **override}})


def found(c: Cube, rule_id: str, **override: dict[str, Any]) -> list[tuple[str, str, float]]:
    a = evaluate(rules(**override), c).alerts
    a = a[a["rule_id"] == rule_id]
    return list(zip(a["owner_id"], a["subject"], a["value"].round(4), strict=True))


# ---------------------------------------------------------------- each rule type, by hand
def test_kpi_rule_below_threshold_with_few_days_left() -> None:
    # 2026-12-31 - 2026-12-05 = 26 days left < 30; rep and manager levels: rep-1 1.5 and mgr-1 1.9 are below 2
    assert found(day1(), "low_coverage") == [("mgr-1", "", 1.9), ("rep-1", "", 1.5)]
    assert evaluate(rules(), day1()).days_left == 26
    # 26 days is not fewer than 20: nobody
    assert found(day1(), "low_coverage", low_coverage={**RULES["low_coverage"], "days_left_below": 20}) == []
    # every level, above 2.45: only rep-2 (2.5); exec-1's 2.4 is not above
    above = {"type": "kpi", "kpi": "pipeline_coverage", "above": 2.45}
    assert found(day1(), "low_coverage", low_coverage=above) == [("rep-2", "", 2.5)]


def test_trust_rule_fail_or_warn_for_the_owners_scope() -> None:
    assert found(day1(), "past_close") == [("rep-1", "opps_past_close_date", 2.0)]
    warn = {"type": "trust", "check": "opps_past_close_date", "status": "warn", "levels": ["manager"]}
    assert found(day1(), "past_close", past_close=warn) == [("mgr-1", "opps_past_close_date", 2.0)]


def test_forecast_gap_rule_share_of_target() -> None:
    # mgr-1: 250k of 1M = 25 % > 10 %; exec-1: 100k of 2M = 5 %
    assert found(day1(), "short") == [("mgr-1", "", 250000.0)]
    assert found(day1(), "short", short={"type": "forecast_gap", "gap_above": 50000}) == [
        ("exec-1", "", 100000.0), ("mgr-1", "", 250000.0)]


def test_deal_rule_open_deals_over_amount_pushed_three_times() -> None:
    # opp-1 (150k, 3 pushes, open) only: opp-2 pushed twice, opp-3 under 100k, opp-4 closed
    assert found(day1(), "big_pushed") == [("rep-1", "opp-1", 3.0)]
    # at the manager and executive levels too: the deal is in their scopes
    wider = {**RULES["big_pushed"], "levels": ["rep", "manager", "executive"]}
    assert found(day1(), "big_pushed", big_pushed=wider) == [("exec-1", "opp-1", 3.0), ("mgr-1", "opp-1", 3.0),
                                                             ("rep-1", "opp-1", 3.0)]


def test_rule_without_its_data_is_skipped_with_the_reason() -> None:
    c = day1()
    no_history = Cube(**{**c.__dict__, "facts": facts([None, None, None, None])})
    ev = evaluate(rules(), no_history)
    assert ev.notes == {"big_pushed": NEEDS_HISTORY}
    assert NEEDS_HISTORY == "not available — needs opportunity_history"
    assert set(ev.alerts["rule_id"]) == {"low_coverage", "past_close", "short"}
    k = c.kpis.copy()
    gap = k["kpi"] == "gap_to_target"
    k.loc[gap, "value"], k.loc[gap, "available"], k.loc[gap, "na_reason"] = float("nan"), False, \
        "not available — needs targets"
    assert evaluate(rules(), Cube(**{**c.__dict__, "kpis": k})).notes == {"short": "not available — needs targets"}


# ---------------------------------------------------------------- config errors name the key
def _project_with(tmp_path: Path, alerts: dict[str, Any]) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("local", "examples"))
    (tmp_path / "config" / "alerts.yml").write_text(yaml.safe_dump(alerts))
    return tmp_path


@pytest.mark.parametrize(("rule", "words"), [
    ({"type": "kpi", "kpi": "win_rate", "below": 0.2, "treshold": 1}, ["key `rules.r.treshold`", "unknown key"]),
    ({"type": "trust", "check": "opps_pushed", "below": 2},
     ["key `rules.r`", "`below` is a condition of type 'kpi' rules, not of type 'trust'"]),
    ({"type": "kpi", "kpi": "win_rate"}, ["key `rules.r`", "a type 'kpi' rule needs `below` or `above`"]),
    ({"type": "deal"}, ["key `rules.r`", "needs `amount_above` or `pushes_at_least`"]),
    ({"type": "alarm", "kpi": "win_rate"}, ["key `rules.r.type`", "'kpi', 'trust', 'forecast_gap' or 'deal'"]),
    ({"type": "trust", "check": "any", "levels": ["manger"]},
     ["config/alerts.yml: key `rules.r.levels`: unknown level 'manger'", "did you mean 'manager'"]),
])
def test_config_errors_name_the_key(tmp_path: Path, rule: dict[str, Any], words: list[str]) -> None:
    root = _project_with(tmp_path, {"rules": {"r": rule}})
    with pytest.raises(ConfigError) as e:
        load_config(root)
    for w in words:
        assert w in str(e.value)


def test_unknown_kpi_or_check_is_named_when_evaluated() -> None:
    with pytest.raises(ConfigError, match=r"config/alerts.yml: key `rules.low_coverage.kpi`: unknown KPI "
                                          r"'pipline_coverage'.*did you mean 'pipeline_coverage'"):
        evaluate(rules(low_coverage={**RULES["low_coverage"], "kpi": "pipline_coverage"}), day1())
    with pytest.raises(ConfigError, match=r"key `rules.past_close.check`: unknown trust check 'opps_past'"):
        evaluate(rules(past_close={"type": "trust", "check": "opps_past"}), day1())


def test_the_shipped_alerts_file_is_valid() -> None:
    cfg = load_config(ROOT)
    assert set(cfg.alerts.rules) == {"low_coverage", "past_close_date", "forecast_short", "big_deal_pushed"}
    assert cfg.alerts.rules["big_deal_pushed"].pushes_at_least == 3


# ---------------------------------------------------------------- mailed once, cleared once, on a real SMTP server
@pytest.fixture
def project(tmp_path: Path, smtp: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch) -> Config:
    """A project whose monthly runs of DAY1 and DAY2 hold the hand-made cubes; its own state database."""
    monkeypatch.setenv("SPM_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SPM_SMTP_PORT", str(smtp[1]))
    monkeypatch.setenv("SPM_LINK_SECRET", "a-test-secret-of-enough-length")
    smtp[0].messages.clear()
    root = _project_with(tmp_path / "p", {"rules": RULES})
    for c in (day1(), day2()):
        write_cube(c, root / "runs" / "monthly" / c.meta["as_of"])
    cfg = load_config(root)
    return cfg.model_copy(update={"state": StateConfig(url=f"sqlite:///{tmp_path / 'state.sqlite'}")})


def _mails(box: Mailbox) -> list[tuple[list[str], EmailMessage]]:
    out = [(sorted(r), email.message_from_bytes(raw, policy=policy.default)) for r, raw in box.messages]
    box.messages.clear()
    return sorted(out, key=lambda m: str(m[1]["X-SPM-Alert"]))


def _text(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_each_alert_is_mailed_once_and_cleared_once(project: Config, smtp: tuple[Mailbox, int]) -> None:
    box = smtp[0]
    first = run_alerts(project, "monthly", DAY1)
    assert first.ok and first.notes == {}
    assert sorted(first.opened) == ["big_pushed rep-1 opp-1", "low_coverage mgr-1", "low_coverage rep-1",
                                    "past_close rep-1 opps_past_close_date", "short mgr-1"]
    mails = _mails(box)
    assert [(m["X-SPM-Alert"], rcpts) for rcpts, m in mails] == [
        ("opened big_pushed rep-1 opp-1", [ADDR["mgr-1"], ADDR["rep-1"]]),  # the leader copied
        ("opened low_coverage mgr-1", [ADDR["mgr-1"]]),
        ("opened low_coverage rep-1", [ADDR["rep-1"]]),
        ("opened past_close rep-1 opps_past_close_date", [ADDR["rep-1"]]),
        ("opened short mgr-1", [ADDR["mgr-1"]])]
    deal, coverage = mails[0][1], mails[2][1]
    assert deal["Cc"] == "Max Manager <max@acme.example>"
    assert "Deal Alpha (opp-1, 150k €), pushed 3 times; it now closes on 2026-12-20" in _text(deal)
    assert "Pipeline coverage of FY2026-Q4 is 1.5×, below 2× with 26 days left" in _text(coverage)
    assert "Your live report: http://127.0.0.1:8866/?t=" in _text(coverage)
    assert "The forecast of FY2026-Q4 is 250k € short of its target of 1M € (25 % of target)" in _text(mails[4][1])

    again = run_alerts(project, "monthly", DAY1)  # the same day again: nothing new, nothing cleared
    assert (again.opened, again.cleared, again.still_open, _mails(box)) == ([], [], 5, [])

    second = run_alerts(project, "monthly", DAY2)  # rep-1 recovered to 2.2, rep-2 fell to 1.0
    assert (second.opened, second.cleared, second.still_open) == (["low_coverage rep-2"], ["low_coverage rep-1"], 4)
    mails = _mails(box)
    assert [(m["X-SPM-Alert"], rcpts) for rcpts, m in mails] == [
        ("cleared low_coverage rep-1", [ADDR["rep-1"]]), ("opened low_coverage rep-2", [ADDR["rep-2"]])]
    cleared = _text(mails[0][1])
    assert "Cleared as of 2026-12-06 (opened as of 2026-12-05)" in cleared
    assert "Pipeline coverage of FY2026-Q4 is 1.5×, below 2× with 26 days left" in cleared

    third = run_alerts(project, "monthly", DAY2)
    assert (third.opened, third.cleared, _mails(box)) == ([], [], [])
    led = alert_ledger.rows(project, "monthly").set_index(["rule_id", "owner_id"])
    assert led.loc[("low_coverage", "rep-1"), ["state", "mail"]].tolist() == ["cleared", "sent"]
    assert led.loc[("low_coverage", "rep-2"), ["state", "mail", "attempts"]].tolist() == ["open", "sent", 1]
    assert alert_ledger.evaluated(project, "monthly", DAY2)


def test_a_dry_run_writes_eml_files_and_leaves_the_ledger(project: Config, smtp: tuple[Mailbox, int]) -> None:
    dry = run_alerts(project, "monthly", DAY1, dry_run=True)
    assert len(dry.opened) == 5 and len(dry.written) == 5 and smtp[0].messages == []
    eml = project.root / "runs/monthly/2026-12-05/alerts/rep-1.big_pushed.opp-1.opened.eml"
    assert str(eml) in dry.written and "X-SPM-Alert: opened big_pushed rep-1 opp-1" in eml.read_text()
    assert alert_ledger.rows(project, "monthly").empty and not alert_ledger.evaluated(project, "monthly", DAY1)
    assert len(run_alerts(project, "monthly", DAY1).opened) == 5  # the real run still mails everything
    assert len(_mails(smtp[0])) == 5


def test_an_excluded_owner_is_skipped_and_a_failed_mail_is_tried_again(project: Config,
                                                                       smtp: tuple[Mailbox, int]) -> None:
    box = smtp[0]
    cfg = project.model_copy(update={"delivery": project.delivery.model_copy(update={"exclude": ["mgr-1"]})})
    box.reject = {ADDR["rep-1"]}
    try:
        first = run_alerts(cfg, "monthly", DAY1)
    finally:
        box.reject = set()
    assert first.skipped == {"low_coverage mgr-1": "excluded (delivery.exclude)",
                             "short mgr-1": "excluded (delivery.exclude)"}
    assert sorted(first.failed) == ["low_coverage rep-1", "past_close rep-1 opps_past_close_date"]
    # the deal alert reached the leader it copies: sent, rep-1's refusal noted in the ledger
    assert first.opened == ["big_pushed rep-1 opp-1"] and not first.ok
    assert [(m["X-SPM-Alert"], rcpts) for rcpts, m in _mails(box)] == [("opened big_pushed rep-1 opp-1",
                                                                        [ADDR["mgr-1"]])]
    led = alert_ledger.rows(cfg, "monthly").set_index(["rule_id", "owner_id"])
    assert led.loc[("big_pushed", "rep-1"), ["mail", "error"]].tolist() == [
        "sent", "refused: rita@acme.example"]
    assert led.loc[("low_coverage", "rep-1"), ["mail", "attempts"]].tolist() == ["failed", 1]
    assert led.loc[("short", "mgr-1"), ["state", "mail"]].tolist() == ["open", "skipped"]
    second = run_alerts(cfg, "monthly", DAY1)  # the server takes rep-1 now; the excluded stay skipped, unmailed
    assert sorted(second.opened) == sorted(first.failed) and second.skipped == {} and second.still_open == 3
    assert [rcpts for rcpts, _ in _mails(box)] == [[ADDR["rep-1"]], [ADDR["rep-1"]]]


# ---------------------------------------------------------------- the daily job
def test_an_alerts_job_runs_as_of_the_day_before_and_once(tmp_path: Path) -> None:
    cfg = load_config(_project_with(tmp_path, {"rules": RULES}))
    jobs = {"alerts": {"cadence": "monthly", "kind": "alerts", "cron": {"hour": 7, "minute": 30}}}
    cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_validate({"jobs": jobs})})
    at = datetime(2026, 12, 6, 7, 45, tzinfo=ZoneInfo(cfg.company.timezone))
    calls: list[tuple[str, date]] = []
    done: set[tuple[str, date]] = set()

    def alerts_fn(cadence: str, as_of: date) -> None:
        calls.append((cadence, as_of))
        done.add((cadence, as_of))

    fired = schedule.fire(cfg, "alerts", at, None, None, None,  # type: ignore[arg-type] # a report job's, unused
                          alerts=(alerts_fn, lambda c, a: (c, a) in done))
    assert (fired.status, fired.as_of, calls) == ("ran alerts", date(2026, 12, 5), [("monthly", date(2026, 12, 5))])
    again = schedule.fire(cfg, "alerts", at, None, None, None,  # type: ignore[arg-type]
                          alerts=(alerts_fn, lambda c, a: (c, a) in done))
    assert again.status == "not due" and len(calls) == 1
    bad = cfg.model_copy(update={"schedule": cfg.schedule.model_validate(
        {"jobs": {"alerts": {"cadence": "monthly", "kind": "alerts", "business_day": 2}}})})
    with pytest.raises(ConfigError, match="job `alerts`: an alerts job needs `cron`"):
        schedule.fire(bad, "alerts", at, None, None, None, alerts=(alerts_fn, lambda c, a: False))  # type: ignore[arg-type]


def test_the_command_prints_the_summary_and_writes_the_dry_run(project: Config) -> None:
    result = CliRunner().invoke(cli, ["--project", str(project.root), "alerts", "--as-of", "2026-12-05", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("alerts monthly as of 2026-12-05: 5 new and 0 cleared written as .eml (dry run)")
    assert f"Emails written to {project.root / 'runs/monthly/2026-12-05/alerts'}" in result.output
