"""Validation of contract tables: every problem is a finding naming table, column, ids and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from spm_lib.config import Config, SourceConfig
from spm_lib.data.quality import Finding, Findings
from spm_lib.data.validate import check_report, render_report, validate
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES


def table(name: str, /, **columns: list[Any]) -> pd.DataFrame:
    """A contract table with the given columns in contract dtypes, rows numbered 1..n like a source."""
    df = pd.DataFrame({c: pd.Series(v, dtype=PANDAS_DTYPES[CONTRACT[name].column(c).dtype])
                       for c, v in columns.items()})
    return df.set_axis(pd.RangeIndex(1, len(df) + 1), axis=0)


def owners(**over: list[Any]) -> pd.DataFrame:
    """CEO > M1 > (R1, R2)."""
    cols: dict[str, list[Any]] = {"owner_id": ["CEO", "M1", "R1", "R2"], "manager_id": [None, "CEO", "M1", "M1"],
                                  "name": ["Ceo", "Mia", "Rob", "Ria"],
                                  "level": ["executive", "manager", "rep", "rep"]}
    return table("owners", **(cols | over))


def opps(**over: list[Any]) -> pd.DataFrame:
    """O1 open (R1), O2 won (R2), O3 lost (R1)."""
    cols: dict[str, list[Any]] = {
        "opportunity_id": ["O1", "O2", "O3"], "owner_id": ["R1", "R2", "R1"], "account_id": ["A1", "A2", "A1"],
        "stage": ["Proposal", "Closed Won", "Closed Lost"], "amount": [100.0, 200.0, 50.0],
        "created_date": ["2026-01-05", "2026-01-10", "2026-01-15"],
        "close_date": ["2026-03-31", "2026-02-20", "2026-02-25"],
        "is_closed": [False, True, True], "is_won": [False, True, False],
        "last_modified_date": ["2026-02-01", "2026-02-20", "2026-02-25"]}
    return table("opportunities", **(cols | over))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(root=tmp_path, source=SourceConfig(kind="folder", path="x"))


def run(cfg: Config, **tables: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], Findings]:
    findings = Findings()
    return validate(dict(tables), cfg, findings), findings


def only(findings: Findings, check: str, table: str | None = None) -> Finding:
    """The one finding of `check` (in `table`)."""
    hits = [f for f in findings.items if f.check == check and (table is None or f.table == table)]
    assert len(hits) == 1, [f.describe() for f in findings.items]
    return hits[0]


def checks(findings: Findings) -> set[str]:
    return {f.check for f in findings.items}


# ---------------------------------------------------------------- a clean dataset
def test_clean_dataset_has_no_warning_or_fatal(cfg: Config) -> None:
    out, findings = run(cfg, owners=owners(), opportunities=opps())
    assert [f.describe() for f in findings.items if f.severity != "info"] == []
    assert len(out["opportunities"]) == 3 and len(out["owners"]) == 4


# ---------------------------------------------------------------- fatal
def test_missing_required_table_is_fatal(cfg: Config) -> None:
    _, findings = run(cfg, opportunities=opps())
    f = only(findings, "table_missing")
    assert (f.severity, f.table, f.column) == ("fatal", "owners", None)
    assert "tables.owners" in f.fix


def test_missing_required_column_is_fatal_and_named(cfg: Config) -> None:
    _, findings = run(cfg, owners=owners(), opportunities=opps().drop(columns=["amount", "close_date"]))
    missing = sorted((f.column, f.severity) for f in findings.items if f.check == "column_missing")
    assert missing == [("amount", "fatal"), ("close_date", "fatal")]
    f = next(f for f in findings.items if f.column == "amount" and f.check == "column_missing")
    assert "tables.opportunities.columns.amount" in f.fix


def test_stage_may_be_replaced_by_closed_and_won_flags(cfg: Config) -> None:
    _, findings = run(cfg, owners=owners(), opportunities=opps().drop(columns=["stage"]))
    assert findings.fatal() == []
    f = next(f for f in findings.items if f.check == "column_absent" and f.column == "stage")
    assert f.severity == "info" and "weighted_pipeline" in f.message


def test_stage_without_flags_is_a_missing_column(cfg: Config) -> None:
    _, findings = run(cfg, owners=owners(), opportunities=opps().drop(columns=["stage", "is_closed", "is_won"]))
    f = only(findings, "column_missing")
    assert (f.severity, f.table, f.column) == ("fatal", "opportunities", "stage")
    assert "is_closed" in f.message


def test_duplicate_owner_ids_are_fatal(cfg: Config) -> None:
    o = owners(owner_id=["CEO", "M1", "R1", "R1"])
    _, findings = run(cfg, owners=o, opportunities=opps())
    f = only(findings, "duplicate_id", "owners")
    assert (f.severity, f.column, f.ids) == ("fatal", "owner_id", ("R1",))


def test_owner_rows_with_non_overlapping_validity_are_a_team_move(cfg: Config) -> None:
    o = table("owners", owner_id=["CEO", "M1", "M2", "R1", "R1"], manager_id=[None, "CEO", "CEO", "M1", "M2"],
              valid_from=[None, None, None, None, "2026-02-01"], valid_to=[None, None, None, "2026-01-31", None])
    _, findings = run(cfg, owners=o, opportunities=opps(owner_id=["R1", "R1", "R1"]))
    assert findings.fatal() == []
    overlapping = o.assign(valid_to=pd.Series([None, None, None, "2026-02-01", None], index=o.index,
                                              dtype="datetime64[ns]"))  # both R1 rows hold on 2026-02-01
    _, findings = run(cfg, owners=overlapping, opportunities=opps(owner_id=["R1", "R1", "R1"]))
    assert only(findings, "duplicate_id", "owners").ids == ("R1",)


def test_unknown_manager_is_fatal_with_a_suggestion(cfg: Config) -> None:
    o = owners(manager_id=[None, "CEO", "M1", "M11"])
    _, findings = run(cfg, owners=o, opportunities=opps())
    f = only(findings, "unknown_manager")
    assert (f.severity, f.table, f.column, f.ids) == ("fatal", "owners", "manager_id", ("R2",))
    assert "M11" in f.message and "did you mean 'M1'" in f.message


def test_cycle_is_fatal_and_shown(cfg: Config) -> None:
    o = table("owners", owner_id=["CEO", "A", "B", "C"], manager_id=[None, "B", "C", "A"])
    _, findings = run(cfg, owners=o, opportunities=opps(owner_id=["A", "B", "C"]))
    f = only(findings, "cycle")
    assert (f.severity, f.column, sorted(f.ids)) == ("fatal", "manager_id", ["A", "B", "C"])
    assert "A -> B -> C -> A" in f.message
    assert "no_top_owner" not in checks(findings)  # CEO is the top


def test_no_top_owner_is_fatal(cfg: Config) -> None:
    o = table("owners", owner_id=["A", "B"], manager_id=["B", "A"])
    _, findings = run(cfg, owners=o, opportunities=opps(owner_id=["A", "B", "A"]))
    f = only(findings, "no_top_owner")
    assert (f.severity, f.table, f.column, f.n) == ("fatal", "owners", "manager_id", 2)
    assert "cycle" in checks(findings)


def test_unknown_stage_is_fatal_with_the_nearest_stage(cfg: Config) -> None:
    o = opps(stage=["Proposal", "Closed-Won", "Lost it"])
    _, findings = run(cfg, owners=owners(), opportunities=o)
    bad = sorted((f.ids, f.severity) for f in findings.items if f.check == "unknown_stage")
    assert bad == [(("O2",), "fatal"), (("O3",), "fatal")]
    f = next(f for f in findings.items if f.ids == ("O2",) and f.check == "unknown_stage")
    assert "'Closed-Won'" in f.message and "did you mean 'Closed Won'" in f.message
    assert "values.stage" in f.fix


# ---------------------------------------------------------------- warnings: dropped rows
def test_duplicate_opportunity_is_fatal_and_the_checks_see_the_latest_modified_row(cfg: Config) -> None:
    o = opps(opportunity_id=["O1", "O1", "O1"], last_modified_date=["2026-02-10", "2026-01-01", None])
    out, findings = run(cfg, owners=owners(), opportunities=o)
    f = only(findings, "duplicate_id", "opportunities")
    assert (f.severity, f.column, f.ids, f.n) == ("fatal", "opportunity_id", ("O1",), 2)
    assert out["opportunities"]["amount"].tolist() == [100.0]  # the row modified on 2026-02-10


def test_duplicate_opportunity_without_modified_date_keeps_the_last_row(cfg: Config) -> None:
    o = opps(opportunity_id=["O1", "O2", "O1"]).drop(columns=["last_modified_date"])
    out, findings = run(cfg, owners=owners(), opportunities=o)
    assert only(findings, "duplicate_id", "opportunities").n == 1
    assert out["opportunities"]["opportunity_id"].tolist() == ["O2", "O1"]
    assert out["opportunities"]["amount"].tolist() == [200.0, 50.0]


def test_opportunities_of_unknown_owners_are_dropped_and_counted(cfg: Config) -> None:
    out, findings = run(cfg, owners=owners(), opportunities=opps(owner_id=["R1", "R9", None]))
    f = only(findings, "unknown_owner", "opportunities")
    assert (f.severity, f.column, f.ids) == ("warning", "owner_id", ("O2", "O3"))
    assert "R9" in f.message and "dropped" in f.message
    assert out["opportunities"]["opportunity_id"].tolist() == ["O1"]


@pytest.mark.parametrize("name,rows", [
    ("activities", {"activity_id": ["X1", "X2"], "owner_id": ["R1", "R9"], "date": ["2026-01-02"] * 2,
                    "type": ["call", "call"]}),
    ("leads", {"lead_id": ["L1", "L2"], "owner_id": ["R9", "R1"], "created_date": ["2026-01-02"] * 2,
               "channel": ["web", "web"]}),
    ("targets", {"owner_id": ["R1", "R9"], "period": ["FY2026", "FY2026"], "metric": ["bookings"] * 2,
                 "value": [1.0, 2.0]}),
    ("forecasts", {"owner_id": ["R1", "R9"], "period": ["2026-03", "2026-03"],
                   "submitted_at": ["2026-03-01"] * 2, "amount": [1.0, 2.0]}),
    ("costs", {"owner_id": ["R9", "R1"], "period": ["FY2026-Q1", "FY2026-Q1"], "amount": [1.0, 2.0]}),
])
def test_rows_of_unknown_owners_are_dropped_and_counted(cfg: Config, name: str, rows: dict[str, list[Any]]) -> None:
    df = table(name, **rows)
    out, findings = run(cfg, owners=owners(), opportunities=opps(), **{name: df})
    f = only(findings, "unknown_owner", name)
    bad_row = rows["owner_id"].index("R9") + 1
    expected = {"activities": "X2", "leads": "L1"}.get(name, f"row {bad_row}")
    assert (f.severity, f.column, f.ids) == ("warning", "owner_id", (expected,))
    assert len(out[name]) == 1 and "R9" not in set(out[name]["owner_id"])


def test_leads_without_owner_are_kept(cfg: Config) -> None:
    leads = table("leads", lead_id=["L1"], owner_id=[None], created_date=["2026-01-02"], channel=["web"])
    out, findings = run(cfg, owners=owners(), opportunities=opps(), leads=leads)
    assert "unknown_owner" not in checks(findings) and len(out["leads"]) == 1


def test_history_of_unknown_opportunities_is_dropped(cfg: Config) -> None:
    h = table("opportunity_history", opportunity_id=["O1", "O7", "O2"],
              changed_at=["2026-01-05", "2026-01-06", "2026-01-07"])
    out, findings = run(cfg, owners=owners(), opportunities=opps(), opportunity_history=h)
    f = only(findings, "unknown_opportunity")
    assert (f.severity, f.table, f.column, f.ids) == ("warning", "opportunity_history", "opportunity_id", ("row 2",))
    assert "O7" in f.message
    assert out["opportunity_history"]["opportunity_id"].tolist() == ["O1", "O2"]


def test_survey_scores_outside_0_10_are_dropped(cfg: Config) -> None:
    s = table("surveys", account_id=["A1", "A2", "A1", "A2"], date=["2026-01-01"] * 4, score=[10.0, 11.0, 0.0, -1.0])
    out, findings = run(cfg, owners=owners(), opportunities=opps(), surveys=s)
    f = only(findings, "score_out_of_range")
    assert (f.severity, f.table, f.column, f.ids) == ("warning", "surveys", "score", ("row 2", "row 4"))
    assert out["surveys"]["score"].tolist() == [10.0, 0.0]


def test_target_rows_with_unparseable_periods_are_dropped(cfg: Config) -> None:
    labels = ["2026-10", "FY2026-Q3", "FY2026", "2026-W07", "Q3 2026", "2026-13", None]
    t = table("targets", owner_id=["R1"] * 7, period=labels, metric=["bookings"] * 7, value=[1.0] * 7)
    out, findings = run(cfg, owners=owners(), opportunities=opps(), targets=t)
    f = only(findings, "bad_period")
    assert (f.severity, f.table, f.column, f.ids) == ("warning", "targets", "period", ("row 5", "row 6", "row 7"))
    assert "'Q3 2026'" not in f.message and "Q3 2026" in f.message
    assert out["targets"]["period"].tolist() == labels[:4]


# ---------------------------------------------------------------- warnings: rows kept
def test_amount_and_date_problems_are_warnings_and_rows_are_kept(cfg: Config) -> None:
    o = opps(opportunity_id=["O1", "O2", "O3", "O4"], owner_id=["R1", "R2", "R1", "R2"],
             account_id=["A1", "A2", "A1", "A1"], stage=["Proposal", "Closed Won", "Closed Lost", "Closed Won"],
             amount=[-5.0, None, 50.0, 10.0], created_date=["2026-01-05", "2026-01-10", "2026-03-01", "2026-01-01"],
             close_date=["2026-03-31", "2026-02-20", "2026-02-25", None], is_closed=[False, True, True, True],
             is_won=[False, True, False, True], last_modified_date=["2026-02-01"] * 4)
    out, findings = run(cfg, owners=owners(), opportunities=o)
    got = {f.check: (f.severity, f.column, f.ids) for f in findings.items if f.table == "opportunities"}
    assert got["negative_amount"] == ("warning", "amount", ("O1",))
    assert got["won_without_amount"] == ("warning", "amount", ("O2",))
    assert got["close_before_created"] == ("warning", "close_date", ("O3",))
    assert got["closed_without_close_date"] == ("warning", "close_date", ("O4",))
    assert len(out["opportunities"]) == 4


def test_open_deals_without_amount_or_close_date_are_info(cfg: Config) -> None:
    o = opps(opportunity_id=["O1", "O2", "O3"], stage=["Proposal", "Negotiation", "Closed Lost"],
             is_closed=[False, False, True], is_won=[False, False, False], amount=[None, 5.0, None],
             close_date=["2026-03-31", None, "2026-02-25"])
    _, findings = run(cfg, owners=owners(), opportunities=o)
    f = only(findings, "open_missing_fields")
    assert (f.severity, f.ids) == ("info", ("O1", "O2"))


# ---------------------------------------------------------------- info
def test_info_missing_account_and_agents_without_deals(cfg: Config) -> None:
    o = opps(account_id=["A1", None, "A1"], owner_id=["R1", "R1", "R1"])
    _, findings = run(cfg, owners=owners(), opportunities=o)
    f = only(findings, "missing_account")
    assert (f.severity, f.column, f.ids) == ("info", "account_id", ("O2",))
    f = only(findings, "agent_without_deals")
    assert (f.severity, f.table, f.ids) == ("info", "owners", ("R2",))
    assert "agents without deals" in f.message


def test_absent_optional_table_and_column_say_what_they_enable(cfg: Config) -> None:
    _, findings = run(cfg, owners=owners(), opportunities=opps().drop(columns=["last_modified_date"]))
    history = only(findings, "table_absent", "opportunity_history")
    assert history.severity == "info"
    for needed in ("as-of reconstruction", "stage_conversion", "opps_pushed"):
        assert needed in history.message
    col = next(f for f in findings.items if f.check == "column_absent" and f.column == "last_modified_date")
    assert col.severity == "info" and "opps_stale_60d" in col.message


def test_table_absent_already_reported_by_the_source_is_not_repeated(cfg: Config) -> None:
    findings = Findings()
    findings.add("costs", None, "table_absent", "info", [], "costs.csv is not in x", "add it", count=1)
    validate({"owners": owners(), "opportunities": opps()}, cfg, findings)
    assert len([f for f in findings.items if f.check == "table_absent" and f.table == "costs"]) == 1


def test_values_that_cannot_be_typed_are_fatal(cfg: Config) -> None:
    o = opps().astype({"amount": "object"})
    o.loc[2, "amount"] = "lots"
    _, findings = run(cfg, owners=owners(), opportunities=o)
    f = only(findings, "wrong_type")
    assert (f.severity, f.column, f.ids) == ("fatal", "amount", ("O2",))
    assert "'lots'" in f.message


def test_every_problem_is_reported_at_once_and_every_dropped_row_is_counted(cfg: Config) -> None:
    o = opps(opportunity_id=["O1", "O1", "O3"], owner_id=["R1", "R1", "R9"], stage=["Proposal", "Won", "Proposal"])
    ow = owners(manager_id=[None, "CEO", "M1", "X"])
    acts = table("activities", activity_id=["X1", "X2"], owner_id=["R9", "R1"], date=["2026-01-02"] * 2,
                 type=["call"] * 2)
    tables = {"owners": ow, "opportunities": o, "activities": acts}
    out, findings = run(cfg, **tables)
    assert {"duplicate_id", "unknown_owner", "unknown_stage", "unknown_manager"} <= checks(findings)
    for name, df in tables.items():
        dropped = sum(f.n for f in findings.items if f.table == name and "dropped" in f.message)
        assert len(df) - len(out[name]) == dropped
    assert len(out["opportunities"]) == 1 and len(out["activities"]) == 1


# ---------------------------------------------------------------- the report
def test_report_groups_findings_and_names_table_column_ids_and_fix() -> None:
    findings = Findings()
    findings.add("opportunities", "owner_id", "unknown_owner", "warning", [f"O{i}" for i in range(1, 23)],
                 "owner_id not in owners; these rows are dropped", "add the owners")
    findings.add("owners", "manager_id", "cycle", "fatal", ["A", "B"], "the hierarchy has a cycle: A -> B -> A",
                 "break it")
    text, ok = render_report("folder /p/data", {"owners": 2, "opportunities": 30}, {"owners": 2, "opportunities": 8},
                             findings)
    assert not ok
    assert text.splitlines()[0] == "Data check of folder /p/data"
    assert "opportunities" in text and "22" in text  # dropped 30 - 8
    assert text.index("FATAL") < text.index("WARNING")
    assert "owners.manager_id: the hierarchy has a cycle: A -> B -> A (2 rows) — ids: A, B. Fix: break it" in text
    assert "… and 12 more" in text
    assert text.splitlines()[-1] == "FAILED: 1 fatal problem; fix them and run `spm data check` again"
    assert max(len(line) for line in text.splitlines()) <= 100


def test_report_ok_without_fatal_findings() -> None:
    text, ok = render_report("duckdb /p/demo.duckdb", {"owners": 1}, {"owners": 1}, Findings())
    assert ok and text.splitlines()[-1] == "OK: the data can be used"


def test_check_report_on_a_csv_folder(tmp_path: Path) -> None:
    from spm_lib.config import load_config

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "company.yml").write_text("name: Tiny\n")
    (tmp_path / "config" / "source.yml").write_text(
        "kind: folder\npath: data\ntables:\n  owners: {}\n  opportunities: {}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "owners.csv").write_text(
        "owner_id,manager_id,name\nCEO,,Boss\nA,B,Ann\nB,A,Bob\nR1,CEO,Rita\n")
    (tmp_path / "data" / "opportunities.csv").write_text(
        "opportunity_id,owner_id,stage,amount,close_date\n"
        "O1,R1,Closed Won,100,2026-01-31\nO2,R7,Proposal,50,2026-03-31\n")
    text, ok = check_report(load_config(tmp_path))
    assert not ok
    assert "owners.manager_id: the hierarchy has a cycle: A -> B -> A" in text
    assert "opportunities.owner_id: owner_id not in owners (R7)" in text and "ids: O2" in text
    assert str(tmp_path / "data") in text.splitlines()[0]
    assert text.splitlines()[-1] == "FAILED: 1 fatal problem; fix them and run `spm data check` again"
