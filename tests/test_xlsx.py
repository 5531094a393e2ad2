"""`spm kpis --format xlsx`: the report's tables as one workbook, a sheet each, opened back with openpyxl; no text
cell runs as a formula; deal ids link to the CRM when config/crm.yml sets deal_url."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from openpyxl import load_workbook

from spm_lib.engine.cube import compute_cube
from spm_lib.store.report_tables import report_tables
from spm_lib.util.spreadsheet import to_safe_xlsx
from tests.test_cube import AS_OF, _cfg, company

SPM = str(Path(sys.executable).parent / "spm")
EVIL = '=HYPERLINK("http://evil","x")'


def _rows(ws) -> list[list[object]]:  # noqa: ANN001 - an openpyxl worksheet
    return [[c.value for c in row] for row in ws.iter_rows()]


# ---------------------------------------------------------------- the writer
def test_a_workbook_keeps_numbers_dates_and_formula_like_text_as_text(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "opportunity_id": ["o1", "o/2", None],
        "name": [EVIL, "-2+3", "bell\x07 ok"],  # \x07 cannot be held by XML: dropped, not a crash
        "amount": [-1200.5, 300.0, None],
        "close_date": pd.to_datetime(["2026-11-20", None, "2027-01-15"]),
        "stage": pd.array(["@SUM(A1)", "Won", pd.NA], dtype="string")})
    path = tmp_path / "t.xlsx"
    sheets = to_safe_xlsx({"Deals": df, "Empty: [none]": df.iloc[0:0]}, path,
                          links={"opportunity_id": lambda v: f"https://crm.example.com/opp/{v}"},
                          number_formats={"amount": "#,##0.00"})
    assert sheets == ["Deals", "Empty   none"]  # ':', '[' and ']' are not allowed in a sheet's name
    wb = load_workbook(path)
    ws = wb["Deals"]
    assert _rows(ws) == [["opportunity_id", "name", "amount", "close_date", "stage"],
                         ["o1", EVIL, -1200.5, datetime(2026, 11, 20), "@SUM(A1)"],
                         ["o/2", "-2+3", 300, None, "Won"],
                         [None, "bell ok", None, datetime(2027, 1, 15), None]]
    # formula-like text is a text cell marked with the quote prefix; the number is a number
    for ref in ("B2", "B3", "E2"):
        assert ws[ref].data_type == "s" and ws[ref].quotePrefix, ref
    assert ws["C2"].data_type == "n" and not ws["C2"].quotePrefix
    with zipfile.ZipFile(path) as z:
        xml = z.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml and f"<t>{EVIL}</t>" in xml  # stored as text, never as a formula
    assert ws["D2"].number_format == "yyyy-mm-dd" and ws["C2"].number_format == "#,##0.00"
    assert all(c.font.b for c in ws[1]) and ws.freeze_panes == "A2" and ws.auto_filter.ref == "A1:E4"
    # widths: the longest text (the 29-character formula) + 2; the header when it is longer
    assert ws.column_dimensions["B"].width == len(EVIL) + 2 and ws.column_dimensions["A"].width == 16
    assert ws["A2"].hyperlink.target == "https://crm.example.com/opp/o1" and ws["A4"].hyperlink is None
    assert _rows(wb["Empty   none"]) == [["opportunity_id", "name", "amount", "close_date", "stage"]]


def test_without_links_no_cell_is_a_hyperlink(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    to_safe_xlsx({"A": pd.DataFrame({"opportunity_id": ["o1"]}), "A ": pd.DataFrame({"x": [1]})}, path)
    wb = load_workbook(path)
    assert wb.sheetnames == ["A", "A 2"]  # names are unique
    assert wb["A"]["A2"].hyperlink is None and wb["A"]["A2"].value == "o1"


# ---------------------------------------------------------------- the report's tables, by hand
@pytest.fixture(scope="module")
def stale_cube():
    """test_cube's company with o6 (R1, Proposal 400, closing Nov 20) not updated since Aug 1: stale, failing."""
    data = company()
    opps = data.tables["opportunities"]
    opps.loc[opps["opportunity_id"] == "o6", "last_modified_date"] = pd.Timestamp("2026-08-01")
    return compute_cube(_cfg(), data, "monthly", AS_OF)


def test_a_managers_tables(stale_cube) -> None:  # noqa: ANN001
    t = report_tables(stale_cube, owner="M")
    assert list(t) == ["KPIs", "Trust checks", "Deals to fix", "Direct reports", "Open pipeline"]
    k = t["KPIs"].set_index(["kpi", "period"])
    # M's October bookings: o1 (R1, 120 at the as-of date) + o3 (R2, 200) + o4 (M, 300) = 620 against 500
    assert k.loc[("bookings", "2026-10"), "value"] == 620 and k.loc[("bookings", "2026-10"), "target"] == 500
    checks = t["Trust checks"].set_index("check")
    assert len(checks) == 9 and checks.loc["opps_stale_60d", "status"] == "fail"
    assert checks.loc["opps_stale_60d", "count"] == 1 and checks.loc["opps_stale_60d", "amount"] == 400
    deals = t["Deals to fix"]
    assert deals[["check", "opportunity_id", "owner_id", "amount"]].values.tolist() == [
        ["opps_stale_60d", "o6", "R1", 400.0]]
    assert deals["detail"].tolist() == ["no update for 91 days"]  # Aug 1 to Oct 31
    team = t["Direct reports"]
    # R2: o3 200 of a 150 target; R1: o1 120 of 200, and its scope fails the stale check
    assert team[["owner_id", "name", "bookings", "target", "status", "trust"]].values.tolist() == [
        ["R2", "Rob", 200.0, 150.0, "green", "pass"], ["R1", "Rita", 120.0, 200.0, "red", "fail"]]
    assert team["attainment"].round(4).tolist() == [1.3333, 0.6]
    assert t["Open pipeline"][["opportunity_id", "amount"]].values.tolist() == [
        ["o6", 400.0], ["o7", 100.0], ["o9", 70.0], ["o8", 60.0]]


def test_without_offenders_or_reports_the_sheets_keep_their_headers() -> None:
    cube = compute_cube(_cfg(), company(), "monthly", AS_OF)  # every check of M's scope passes
    m = report_tables(cube, owner="M")
    assert m["Deals to fix"].empty and list(m["Deals to fix"].columns) == [
        "check", "opportunity_id", "name", "owner_id", "stage", "amount", "close_date", "detail"]
    assert list(report_tables(cube, owner="R1")) == ["KPIs", "Trust checks", "Deals to fix", "Open pipeline"]
    everyone = report_tables(cube)
    assert list(everyone) == ["KPIs", "Trust checks", "Deals to fix"] and everyone["Deals to fix"].empty
    assert set(everyone["Trust checks"]["owner_id"]) == {"E", "M", "R1", "R2"}
    assert set(report_tables(cube, level="rep")["Trust checks"]["owner_id"]) == {"R1", "R2"}


# ---------------------------------------------------------------- the command
def _spm(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPM_PROJECT_DIR": str(project)}
    return subprocess.run([SPM, *args], env=env, capture_output=True, text=True, timeout=600)


def test_spm_kpis_xlsx_for_an_owner(small_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(small_project, project, ignore=shutil.ignore_patterns("runs", "state"))
    (project / "config" / "crm.yml").write_text('deal_url: "https://crm.example.com/opp/{opportunity_id}"\n')
    with duckdb.connect(str(project / "data" / "demo.duckdb")) as con:
        # the largest open deal past its close date, named like a formula; its owner's manager exports
        oid, owner = con.execute("SELECT opportunity_id, owner_id FROM opportunities WHERE NOT is_closed AND "
                                 "close_date < DATE '2026-10-01' ORDER BY amount DESC LIMIT 1").fetchone()
        manager = con.execute("SELECT manager_id FROM owners WHERE owner_id = ?", [owner]).fetchone()[0]
        con.execute("UPDATE opportunities SET name = ? WHERE opportunity_id = ?", [EVIL, oid])
    out = tmp_path / "m.xlsx"
    done = _spm(project, "kpis", "--as-of", "2026-10-31", "--owner", manager, "--format", "xlsx", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"5 sheets written to {out}" in done.stderr
    wb = load_workbook(out)
    assert wb.sheetnames == ["KPIs", "Trust checks", "Deals to fix", "Direct reports", "Open pipeline"]
    # the KPI sheet holds what `spm kpis --format csv` prints for the owner, numbers as numbers
    csv = _spm(project, "kpis", "--as-of", "2026-10-31", "--owner", manager, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    expected = pd.read_csv(io.StringIO(csv.stdout))
    got = pd.DataFrame(_rows(wb["KPIs"])[1:], columns=_rows(wb["KPIs"])[0])
    assert len(got) == len(expected) and got["owner_id"].eq(manager).all()
    pd.testing.assert_series_equal(got["value"].astype(float), expected["value"].astype(float), check_names=False)
    # the hostile name: a text cell, never a formula; the deal's id links to its CRM page
    for sheet in ("Deals to fix", "Open pipeline"):
        ws = wb[sheet]
        head = [c.value for c in ws[1]]
        row = next(r for r in ws.iter_rows(min_row=2) if r[head.index("opportunity_id")].value == oid)
        name = row[head.index("name")]
        assert name.value == EVIL and name.data_type == "s" and name.quotePrefix, sheet
        assert row[head.index("opportunity_id")].hyperlink.target == f"https://crm.example.com/opp/{oid}"
    team = [r[0] for r in _rows(wb["Direct reports"])[1:]]
    head = _rows(wb["Direct reports"])[0]
    assert wb["Direct reports"].cell(2, head.index("attainment") + 1).number_format == "0%"  # 1.24 shows 124%
    with duckdb.connect(str(project / "data" / "demo.duckdb"), read_only=True) as con:
        reports = {r[0] for r in con.execute("SELECT owner_id FROM owners WHERE manager_id = ?", [manager]).fetchall()}
    assert set(team) == reports
    refused = _spm(project, "kpis", "--as-of", "2026-10-31", "--format", "xlsx")
    assert refused.returncode == 2 and "--format xlsx writes a workbook: add --output FILE.xlsx" in refused.stderr
