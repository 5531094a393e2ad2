"""engine.findings on a hand-built cube: each rule's finding (money and words) worked out by hand, the wording per
level, the ranking by money, and a cube without targets, history, breakdowns or trust rows."""

from __future__ import annotations

import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spm_lib.config import FindingsConfig, load_config
from spm_lib.engine.cube import Cube
from spm_lib.engine.findings import (
    Scope,
    deals,
    dimensions,
    findings,
    findings_config,
    people,
    stage,
    stale,
    standing,
)
from spm_lib.errors import ConfigError
from spm_lib.report import markup
from spm_lib.report.core import Report

ROOT = Path(__file__).resolve().parents[1]
money = partial(markup.fmt_value, unit="currency", currency="EUR")
META = {"as_of": "2026-10-31", "closed_period": "2026-10", "forward_period": "FY2026-Q4",
        "forward_end": "2026-12-31", "cadence": "monthly", "currency": "EUR"}
# exec X <- director D <- manager M <- reps A (Sofia Santos), B (Adam Costa)
OWNERS = pd.DataFrame({
    "owner_id": ["X", "D", "M", "A", "B"], "manager_id": [None, "X", "D", "M", "M"],
    "name": ["Daniel Janssens", "Leo Pereira", "Eloise Vincent", "Sofia Santos", "Adam Costa"],
    "level": ["executive", "director", "manager", "rep", "rep"], "scope": ["org", "unit", "team", "own", "own"]})
SCOPES = {"A": ["A", "M", "D", "X"], "B": ["B", "M", "D", "X"]}


def _kpi(owner: str, kpi: str, period: str, value: float, target: float = np.nan, dim: str | None = None,
         dim_value: str | None = None) -> dict[str, object]:
    return {"owner_id": owner, "kpi": kpi, "period": period, "dim": dim, "dim_value": dim_value, "value": value,
            "target": target, "attainment": value / target, "status": "none", "available": True, "na_reason": None}


def _deal(oid: str, owner: str, name: str, stage_: str, amount: float, close: str, *, closed: bool = False,
          next_step: str | None = "Call") -> dict[str, object]:
    return {"opportunity_id": oid, "owner_id": owner, "name": name, "stage": stage_, "amount": amount,
            "close_date": pd.Timestamp(close), "is_closed": closed, "is_won": False, "next_step": next_step,
            "scope_ids": SCOPES[owner]}


def _flag(check: str, oid: str, amount: float, stage_: str, detail: str) -> dict[str, object]:
    return {"check": check, "opportunity_id": oid, "amount": amount, "stage": stage_, "detail": detail}


KPIS = [
    # the team M: October 80k of 100k (20k short); FY2026-Q4 expected 250k of 200k (50k ahead), coverage 1.5x
    _kpi("M", "bookings", "2026-10", 80_000, 100_000), _kpi("M", "forecast_expected", "FY2026-Q4", 250_000, 200_000),
    _kpi("M", "pipeline_coverage", "FY2026-Q4", 1.5),
    # Sofia: October 0 of 101k (101k short); Adam: October 95k of 90k (ahead) but expected 150k of 200k (50k short)
    _kpi("A", "bookings", "2026-10", 0, 101_000), _kpi("A", "forecast_expected", "FY2026-Q4", 100_000, 90_000),
    _kpi("B", "bookings", "2026-10", 95_000, 90_000), _kpi("B", "forecast_expected", "FY2026-Q4", 150_000, 200_000),
    # the director's unit and the company, and the unit against its trailing year by segment and product
    _kpi("D", "bookings", "2026-10", 80_000, 100_000), _kpi("X", "bookings", "2026-10", 300_000, 280_000),
    _kpi("D", "bookings", "2026-10", 40_000, dim="segment", dim_value="Enterprise"),
    _kpi("D", "bookings", "TTM", 1_200_000, dim="segment", dim_value="Enterprise"),  # 100k a month: 60k below
    _kpi("D", "bookings", "2026-10", 45_000, dim="segment", dim_value="SMB"),
    _kpi("D", "bookings", "TTM", 600_000, dim="segment", dim_value="SMB"),  # 50k a month: 10 % below, not named
    _kpi("D", "bookings", "TTM", 240_000, dim="product", dim_value="Analytics"),  # 20k a month, none in October
]
DEALS = [
    _deal("d1", "A", "Big Co – Platform", "Proposal", 120_000, "2026-11-20"),  # pushed: named
    _deal("d2", "B", "Huge Co – Suite", "Negotiation", 200_000, "2026-12-15"),  # no reason: not named
    _deal("d3", "B", "Mid Co – Support", "Negotiation", 60_000, "2026-11-05", next_step=None),  # no next step
    _deal("d4", "A", "Won Co – Suite", "Closed Won", 500_000, "2026-10-10", closed=True),  # closed
    _deal("d5", "A", "Later Co – Suite", "Proposal", 300_000, "2027-02-01"),  # closes after FY2026-Q4
    _deal("d6", "B", "Old Co – Training", "Proposal", 30_000, "2026-09-30"),  # past its close date
    _deal("d7", "A", "Tiny Co – Training", "Prospecting", 10_000, "2026-11-03"),  # early stage, closing soon
]
FLAGS = [
    _flag("opps_pushed", "d1", 120_000, "Proposal", "pushed 4 times"),
    _flag("opps_pushed", "d5", 300_000, "Proposal", "pushed 3 times"),
    _flag("opps_past_close_date", "d6", 30_000, "Proposal", "close date 2026-09-30 is 31 days in the past"),
    _flag("opps_early_stage_closing_30d", "d7", 10_000, "Prospecting",
          "closes 2026-11-03 (in 3 days) but is still in Prospecting"),
]
TRUST = pd.DataFrame({"owner_id": ["A"], "check": ["opps_stale_60d"], "count": [2], "amount": [54_200.0],
                      "label": ["Stale opportunities"], "status": ["warn"]})
WEAK = {"stage": "Proposal", "next": "Negotiation", "rate": 31.0, "benchmark_rate": 48.0,
        "benchmark": "the rest of the team", "deals": 12, "cost": 120_000.0}


def _cube(kpis: list[dict[str, object]] = KPIS, deals_: list[dict[str, object]] = DEALS,
          flags: list[dict[str, object]] = FLAGS, trust: pd.DataFrame = TRUST, **meta: object) -> Cube:
    empty = pd.DataFrame()
    return Cube(kpis=pd.DataFrame(kpis), trust=trust, trust_rows=pd.DataFrame(flags), decomposition=empty,
                facts=pd.DataFrame(deals_), probabilities=empty, owners=OWNERS, quality=empty, meta={**META, **meta})


def _scope(cube: Cube, owner: str, weak: dict[str, object] | None = None) -> Scope:
    facts = cube.facts
    mine = facts[facts["scope_ids"].map(lambda ids: owner in ids)] if not facts.empty else facts
    return Scope(cube, owner, mine, money, weak)


CFG = FindingsConfig()


def test_standing_says_short_or_ahead_never_a_signed_gap() -> None:
    [f] = standing(_scope(_cube(), "M"), CFG)
    assert f.text == ("The team booked 80k € of a 100k € target for 2026-10 (80 %, 20k € short); FY2026-Q4 is expected "
                      "at 250k € against a 200k € target: 50k € ahead, with open pipeline covering 1.5× of what is "
                      "left.")
    assert f.value == 20_000  # at stake: October's shortfall; the quarter is ahead
    assert not re.search(r"[-−]\s?\d", f.text.replace("2026-10", "").replace("FY2026-Q4", ""))  # no signed amount


def test_people_names_direct_reports_by_the_money_missing() -> None:
    out = people(_scope(_cube(), "M"), CFG)
    assert [(f.subject, f.value) for f in out] == [("A", 101_000), ("B", 50_000)]
    assert out[0].text == "Sofia Santos booked 0 € of a 101k € target for 2026-10 (101k € short)."
    assert out[1].text == "Adam Costa is expected 50k € short of the FY2026-Q4 target (150k € of 200k €)."
    # Adam's quarter at 75 % of target: not named when only people below 70 % are
    strict = FindingsConfig(people={"below_pct": 70})
    assert [f.subject for f in people(_scope(_cube(), "M"), strict)] == ["A"]


def test_deals_with_a_reason_closing_in_the_period_largest_first() -> None:
    cfg = FindingsConfig(deals={"max": 4})
    out = deals(_scope(_cube(), "M"), cfg)
    # d2 (200k) has no reason, d4 is closed, d5 closes after the quarter: the rest, largest first
    assert [(f.subject, f.value) for f in out] == [("d1", 120_000), ("d3", 60_000), ("d6", 30_000), ("d7", 10_000)]
    assert out[0].text == ("Big Co – Platform (Sofia Santos, 120k €, Proposal) closes in 20 days (2026-11-20) of the "
                           "61 left in FY2026-Q4: pushed 4 times.")
    assert out[1].text == ("Mid Co – Support (Adam Costa, 60k €, Negotiation) closes in 5 days (2026-11-05) of the "
                           "61 left in FY2026-Q4: no next step.")
    assert out[2].text == "Old Co – Training (Adam Costa, 30k €, Proposal) was due on 2026-09-30, 31 days ago."
    assert out[3].text.endswith("closes in 3 days (2026-11-03) of the 61 left in FY2026-Q4: Prospecting: an early "
                                "stage so close to its date.")
    assert [f.subject for f in deals(_scope(_cube(), "M"), CFG)] == ["d1", "d3", "d6"]  # max 3 by default
    [tomorrow] = deals(_scope(_cube(deals_=[_deal("d1", "A", "Big Co – Platform", "Proposal", 120_000,
                                                  "2026-11-01")]), "A"), cfg)
    assert tomorrow.text == ("Big Co – Platform (120k €, Proposal) closes in 1 day (2026-11-01) of the 61 left in "
                             "FY2026-Q4: pushed 4 times.")  # a rep's own deal: no owner named
    # without next steps in the CRM, an empty one is no reason
    bare = [{k: v for k, v in d.items() if k != "next_step"} for d in DEALS]
    assert [f.subject for f in deals(_scope(_cube(deals_=bare), "M"), cfg)] == ["d1", "d6", "d7"]


def test_stage_costs_the_bookings_its_missing_conversions_are_worth() -> None:
    [f] = stage(_scope(_cube(), "A", WEAK), CFG)
    assert (f.value, f.subject) == (120_000, "Proposal")
    assert f.text == ("Proposal → Negotiation converts at 31 % against 48 % for the rest of the team: 12 deals, "
                      "≈ 120k € of bookings lost.")
    for unknown in (None, float("nan")):  # no deal size to price the stage with
        [unpriced] = stage(_scope(_cube(), "A", {**WEAK, "cost": unknown}), CFG)
        assert unpriced.value == 0 and unpriced.text.endswith(": 12 deals.")


def test_dimensions_below_their_trailing_year_average() -> None:
    out = dimensions(_scope(_cube(), "D"), CFG)
    assert [(f.subject, f.value) for f in out] == [("segment=Enterprise", 60_000), ("product=Analytics", 20_000)]
    assert out[0].text == ("Segment Enterprise booked 40k € in 2026-10, 60k € below its trailing-year average of "
                           "100k € a month (−60 %).")
    assert out[1].text == ("Product Analytics booked 0 € in 2026-10, 20k € below its trailing-year average of 20k € "
                           "a month (−100 %).")
    assert dimensions(_scope(_cube(cadence="annual"), "D"), CFG) == []  # the annual period is its trailing year
    assert [f.subject for f in dimensions(_scope(_cube(), "D"), FindingsConfig(dimensions={"drop_pct": 70}))] == [
        "product=Analytics"]


def test_stale_counts_the_deals_without_an_update() -> None:
    [f] = stale(_scope(_cube(), "A"), CFG)
    assert f.value == 54_200
    assert f.text == ("2 open deals worth 54.2k € had no update for too long (stale opportunities): update or close "
                      "them before counting on them.")


def test_wording_follows_the_level() -> None:
    cube = _cube()
    # a rep's report speaks of their deals, without naming them as owner
    rep = findings(_scope(cube, "A", WEAK))
    assert {f.kind for f in rep} <= {"standing", "deals", "stage", "stale"}
    assert "Big Co – Platform (120k €, Proposal) closes in 20 days" in " ".join(f.text for f in rep)
    # ties keep the level's rule order (findings.yml): deals before stage
    assert [(f.kind, f.value) for f in rep] == [("deals", 120_000), ("stage", 120_000), ("standing", 101_000),
                                                ("stale", 54_200), ("deals", 10_000)]
    assert rep[2].text.startswith("Sofia Santos booked 0 € of a 101k € target")
    # a manager's of reps and their deals, a director's of teams, an executive's of units
    assert {f.kind for f in findings(_scope(cube, "M"))} == {"standing", "people", "deals"}
    [team] = people(_scope(cube, "D"), CFG)
    assert team.text == "Eloise Vincent's team booked 80k € of a 100k € target for 2026-10 (20k € short)."
    unit, team = people(_scope(cube, "X"), CFG)  # an executive's: the units, and the teams in them (`deeper`)
    assert unit.text == "Leo Pereira's unit booked 80k € of a 100k € target for 2026-10 (20k € short)."
    assert team.text == ("Eloise Vincent's team (Leo Pereira's unit) booked 80k € of a 100k € target for 2026-10 "
                         "(20k € short).")
    assert [f.subject for f in people(_scope(cube, "X"), FindingsConfig(people={"deeper": []}))] == ["D"]
    assert {f.kind for f in findings(_scope(cube, "D"))} == {"standing", "people", "dimensions"}
    assert {f.kind for f in findings(_scope(cube, "X"))} == {"standing", "people"}
    # findings.yml chooses the rules per level; `default` serves the levels it does not name
    only = FindingsConfig(levels={"default": ["deals"]})
    assert [f.kind for f in findings(_scope(cube, "D"), only)] == ["deals"] * 3
    assert [f.kind for f in findings(_scope(cube, "D"), FindingsConfig(levels={"director": []}))] == []


def test_findings_rank_by_money_and_the_glance_shows_the_three_largest(tmp_path: Path) -> None:
    cube = _cube()
    out = findings(_scope(cube, "M"))
    # Sofia 101k, d1 120k, d3 60k, Adam 50k, d6 30k, the team 20k short
    assert [(f.kind, f.value) for f in out] == [("deals", 120_000), ("people", 101_000), ("deals", 60_000),
                                                ("people", 50_000), ("deals", 30_000), ("standing", 20_000)]
    rpt = Report(cube, "M", tmp_path)
    rpt.__dict__["_weak_stage"] = None  # the hand-built cube has no stage rows
    assert rpt.findings() == [f.text for f in out]
    glance = rpt.at_a_glance()
    assert glance.count("<li>") == 3
    assert "Big Co – Platform" in glance and "Sofia Santos booked 0 €" in glance and "Mid Co – Support" in glance
    assert "Old Co" not in glance and "Adam Costa is expected" not in glance
    assert rpt.findings()[:1] == [out[0].text]
    # the section lists `shown` findings
    short = _cube(findings={"shown": 2})
    r2 = Report(short, "M", tmp_path)
    r2.__dict__["_weak_stage"] = None
    assert len(r2.findings()) == 2


def test_without_targets_history_breakdowns_or_trust_rows_no_rule_finds_or_fails() -> None:
    bare_kpis = [_kpi("M", "bookings", "2026-10", 80_000), _kpi("A", "bookings", "2026-10", 0),
                 _kpi("D", "bookings", "2026-10", 80_000)]  # no target, no TTM, no forecast
    bare_deals = [{k: v for k, v in d.items() if k != "next_step"} for d in DEALS]
    no_flags = pd.DataFrame(columns=["check", "opportunity_id", "amount", "stage", "detail"])
    no_trust = pd.DataFrame(columns=TRUST.columns)
    cube = Cube(kpis=pd.DataFrame(bare_kpis), trust=no_trust, trust_rows=no_flags, decomposition=pd.DataFrame(),
                facts=pd.DataFrame(bare_deals), probabilities=pd.DataFrame(), owners=OWNERS, quality=pd.DataFrame(),
                meta=META)
    for owner in ("X", "D", "M", "A", "B"):
        assert findings(_scope(cube, owner)) == []
    # and with no deals at all
    empty = Cube(kpis=pd.DataFrame(bare_kpis), trust=no_trust, trust_rows=no_flags, decomposition=pd.DataFrame(),
                 facts=pd.DataFrame(columns=["opportunity_id", "scope_ids"]), probabilities=pd.DataFrame(),
                 owners=OWNERS, quality=pd.DataFrame(), meta=META)
    assert findings(_scope(empty, "M")) == []


@pytest.mark.parametrize(("text", "said"), [
    ("levels:\n  rep: [gossip]\n", "key `levels.rep.0`: Input should be 'standing'"),
    ("people: {below: 3}\n", "key `people.below`: unknown key (did you mean 'below_pct'?)"),
    ("levels:\n  boss: [standing]\n", "config/findings.yml: key `levels`: unknown level 'boss'"),
    ("people: {deeper: [boss]}\n", "config/findings.yml: key `people.deeper`: unknown level 'boss'"),
])
def test_a_wrong_key_rule_or_level_names_the_file_and_key(tmp_path: Path, text: str, said: str) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("local", "examples"))
    (tmp_path / "config" / "findings.yml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert said in str(e.value)


def test_without_findings_yml_the_defaults_apply(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("local", "examples"))
    (tmp_path / "config" / "findings.yml").unlink()
    cfg = load_config(tmp_path).findings
    shipped = load_config(ROOT).findings  # the shipped file spells out the defaults
    assert cfg.model_dump(exclude={"levels"}) == shipped.model_dump(exclude={"levels"})
    assert all(cfg.rules_for(level) == shipped.rules_for(level) for level in OWNERS["level"])
    assert cfg.rules_for("manager") == ["standing", "people", "deals", "stage"]
    assert findings_config({}) == cfg  # a cube made before findings.yml existed
