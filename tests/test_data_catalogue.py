"""The catalogue of bad inputs (issue 13): one small project folder per case, written from a clean base, run through
`spm data check`; each case has its outcome (fatal / warning / info, the exit code) and the words its message must
name (file or key, table.column, ids, the fix). The base itself passes with exit 0."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from spm_lib.cli import main
from spm_lib.config import load_config
from spm_lib.data.load import load_dataset

OWNERS = """owner_id,manager_id,name,email,level
CEO,,Chief,ceo@acme.example,executive
M1,CEO,Mia,mia@acme.example,manager
R1,M1,Rob,rob@acme.example,rep
R2,M1,Ria,ria@acme.example,rep
"""
OPPORTUNITIES = """opportunity_id,owner_id,stage,amount,created_date,close_date
O1,R1,Closed Won,1000,2026-01-05,2026-02-10
O2,R1,Closed Lost,2000,2026-01-06,2026-02-11
O3,R2,Proposal,3000,2026-01-07,2026-03-30
O4,R2,Closed Won,1500,2026-01-08,2026-02-12
"""
SOURCE = {"kind": "folder", "path": "data",
          "tables": {"owners": {"source": "owners.csv"}, "opportunities": {"source": "opportunities.csv"}}}


def write_project(root: Path, files: dict[str, str | bytes], source: dict) -> Path:
    """config/source.yml from `source` and the files under data/."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "source.yml").write_text(yaml.safe_dump(source, sort_keys=False))
    (root / "data").mkdir(exist_ok=True)
    for name, content in files.items():
        path = root / "data" / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def spm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `spm ARGS` in this process: (exit code, stdout and stderr). A traceback fails the test."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def section(text: str, severity: str) -> str:
    """The lines of one severity block of the `spm data check` text (empty when there is none)."""
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith(f"{severity.upper()} (")), None)
    if head is None:
        return ""
    block = []
    for line in lines[head + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return " ".join(block)


def xlsx_with_title() -> bytes:
    """An XLSX report: a title line, a blank line, then the header and the rows."""
    import io

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["Opportunities report"])
    ws.append([])
    for line in OPPORTUNITIES.strip().splitlines():
        ws.append(line.split(","))
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@dataclass
class Case:
    """One bad input: what changes from the base, the outcome and the words its message must hold."""

    name: str
    severity: str  # fatal | warning | info: the block of the `spm data check` text the words are in
    code: int  # exit code of `spm data check`
    words: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # merged over SOURCE (one level deep in tables)


def opps_with(old: str, new: str) -> dict[str, str | bytes]:
    assert old in OPPORTUNITIES
    return {"opportunities.csv": OPPORTUNITIES.replace(old, new)}


def owners_with(old: str, new: str) -> dict[str, str | bytes]:
    assert old in OWNERS
    return {"owners.csv": OWNERS.replace(old, new)}


OPP_TABLE = SOURCE["tables"]["opportunities"]
CASES = [
    Case("non-finite amount", "fatal", 2, ["opportunities.amount", "infinite", "1e309", "O1", "correct amount"],
         opps_with("O1,R1,Closed Won,1000", "O1,R1,Closed Won,1e309")),
    Case("absurd amount", "warning", 0, ["opportunities.amount", "plausibility ceiling 2,000,000",
                                         "1000 × the 99th percentile", "O3", "checks.amount_ceiling"],
         opps_with("O3,R2,Proposal,3000", "O3,R2,Proposal,1e20")),
    Case("amount above the configured ceiling", "warning", 0,
         ["opportunities.amount", "plausibility ceiling 2,500", "checks.amount_ceiling in config/source.yml", "O3"],
         source={"checks": {"amount_ceiling": 2500}}),
    Case("duplicate opportunity id", "fatal", 2, ["opportunities.opportunity_id", "several rows", "O1",
                                                  "remove the duplicates"],
         {"opportunities.csv": OPPORTUNITIES + "O1,R2,Closed Won,900,2026-01-05,2026-02-10\n"}),
    Case("is_won on an open stage", "warning", 0,
         ["opportunities.is_won", "'Proposal' is an open stage", "but is_won true (1):", "count as open (not won)",
          "O3", "config/stages.yml"],
         {"opportunities.csv": OPPORTUNITIES.replace("close_date\n", "close_date,is_won\n", 1)
          .replace("2026-02-10\n", "2026-02-10,true\n").replace("2026-02-11\n", "2026-02-11,false\n")
          .replace("2026-03-30\n", "2026-03-30,true\n").replace("2026-02-12\n", "2026-02-12,true\n")}),
    Case("canonical Closed stage with is_won", "info", 0, ["opportunities.stage", "generic closed stage",
                                                          "'Closed Won' (1)", "'Closed Lost' (1)", "O1", "O2"],
         {"opportunities.csv": OPPORTUNITIES.replace("close_date\n", "close_date,is_won\n", 1)
          .replace("Closed Won,1000,2026-01-05,2026-02-10\n", "Closed,1000,2026-01-05,2026-02-10,true\n")
          .replace("Closed Lost,2000,2026-01-06,2026-02-11\n", "Closed,2000,2026-01-06,2026-02-11,false\n")
          .replace("2026-03-30\n", "2026-03-30,false\n").replace("2026-02-12\n", "2026-02-12,true\n")}),
    Case("canonical Closed stage without is_won", "warning", 0,
         ["opportunities.is_won", "without is_won", "counted as lost", "O2", "tables.opportunities.columns"],
         opps_with("O2,R1,Closed Lost", "O2,R1,Closed")),
    Case("header-only owners", "fatal", 2, ["owners", "required table owners has no rows", "skip_rows"],
         {"owners.csv": OWNERS.splitlines()[0] + "\n"}),
    Case("header-only opportunities", "fatal", 2, ["opportunities", "required table opportunities has no rows"],
         {"opportunities.csv": OPPORTUNITIES.splitlines()[0] + "\n"}),
    Case("semicolon-delimited file", "fatal", 2,
         ["opportunities", "read as one column 'opportunity_id;owner_id;", "separated by ';'",
          "delimiter: ';'", "tables.opportunities"],
         {"opportunities.csv": OPPORTUNITIES.replace(",", ";")}),
    Case("XLSX with a title row", "fatal", 2,
         ["opportunities", "title row as its header: 'Opportunities report'", "skip_rows: 2",
          "tables.opportunities"],
         {"opportunities.xlsx": xlsx_with_title()},
         {"tables": {"opportunities": {"source": "opportunities.xlsx"}}}),
    Case("CSV with a title line", "fatal", 2, ["opportunities.csv", "one column 'Opportunities report'",
                                               "skip_rows", "delimiter", "tables.opportunities"],
         {"opportunities.csv": "Opportunities report\n" + OPPORTUNITIES}),
    Case("unset variable in the folder path", "fatal", 2, ["config/source.yml: path", "${CRM_DIR}", "not set"],
         source={"path": "${CRM_DIR}"}),
    Case("unset variable in a file name", "fatal", 2,
         ["config/source.yml tables.opportunities.source", "${OPP_FILE}", "not set"],
         source={"tables": {"opportunities": {"source": "${OPP_FILE}"}}}),
    Case("misspelt stage label in values", "fatal", 2,
         ["config/source.yml tables.opportunities.values.stage", "'Won': 'Closed Wonn'", "did you mean 'Closed Won'"],
         opps_with("O1,R1,Closed Won", "O1,R1,Won"),
         {"tables": {"opportunities": {"values": {"stage": {"Won": "Closed Wonn"}}}}}),
    Case("unknown stage in the data", "fatal", 2, ["opportunities.stage", "'Verbal'", "O3", "values.stage",
                                                   "config/stages.yml"],
         opps_with("O3,R2,Proposal", "O3,R2,Verbal")),
    Case("missing required column", "fatal", 2, ["opportunities.owner_id", "required column owner_id is missing",
                                                 "tables.opportunities.columns.owner_id"],
         {"opportunities.csv": OPPORTUNITIES.replace("owner_id", "rep", 1)}),
    Case("invalid email address", "warning", 0, ["owners.email", "not an email address", "'ria-at-acme'", "R2"],
         owners_with("ria@acme.example", "ria-at-acme")),
    Case("two top owners", "warning", 0, ["owners.manager_id", "2 owners have no manager", "CEO", "M1",
                                          "give all but one"],
         owners_with("M1,CEO,Mia", "M1,,Mia")),
    Case("white space around ids", "info", 0, ["opportunities.owner_id", "2 ids had white space", "' R1 '"],
         {"opportunities.csv": OPPORTUNITIES.replace("O1,R1,", "O1, R1 ,").replace("O2,R1,", "O2,R1 ,")}),
]


def test_the_base_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_project(tmp_path, {"owners.csv": OWNERS, "opportunities.csv": OPPORTUNITIES}, SOURCE)
    code, text = spm(capsys, "--project", str(root), "data", "check")
    assert code == 0 and "OK: the data can be used" in text, text
    assert section(text, "fatal") == "" and section(text, "warning") == "", text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CRM_DIR", "OPP_FILE"):
        monkeypatch.delenv(var, raising=False)
    source = {**SOURCE, **{k: v for k, v in case.source.items() if k != "tables"},
              "tables": {name: {**SOURCE["tables"].get(name, {}), **case.source.get("tables", {}).get(name, {})}
                         for name in {**SOURCE["tables"], **case.source.get("tables", {})}}}
    root = write_project(tmp_path, {"owners.csv": OWNERS, "opportunities.csv": OPPORTUNITIES} | case.files, source)
    code, text = spm(capsys, "--project", str(root), "data", "check")
    assert code == case.code, text
    block = section(text, case.severity)
    missing = [w for w in case.words if w not in block]
    assert missing == [], f"{missing} not in the {case.severity} block of:\n{text}"
    assert "Traceback" not in text
    if case.code == 2:  # what data check refuses, the cube refuses too (exit 2, the same words), never a traceback
        code, text = spm(capsys, "--project", str(root), "cube", "--as-of", "2026-02-28")
        assert code == 2 and "Traceback" not in text, text


def test_a_set_variable_is_expanded_in_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_project(tmp_path / "p", {}, {**SOURCE, "path": "${CRM_DIR}/export",
                                       "tables": {"owners": {"source": "owners.csv"},
                                                  "opportunities": {"source": "${OPP_FILE}"}}})
    export = tmp_path / "elsewhere" / "export"
    export.mkdir(parents=True)
    (export / "owners.csv").write_text(OWNERS)
    (export / "deals.csv").write_text(OPPORTUNITIES)
    monkeypatch.setenv("CRM_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("OPP_FILE", "deals.csv")
    code, text = spm(capsys, "--project", str(tmp_path / "p"), "data", "check")
    assert code == 0 and f"folder {export}" in text and f"{'opportunities':<22}{4:>10}" in text, text


def test_the_stage_decides_contradicting_flags_and_closed_takes_is_won(tmp_path: Path) -> None:
    """What the product does with the deals the catalogue warns about: the stage decides is_won / is_closed; on the
    generic `Closed` stage is_won decides, and the deal is shown under the first won / lost label."""
    opportunities = """opportunity_id,owner_id,stage,amount,close_date,is_won,is_closed
O1,R1,Proposal,1000,2026-02-10,true,true
O2,R1,Closed,2000,2026-02-11,true,
O3,R2,Closed,3000,2026-02-12,false,true
O4,R2,Closed Won,1500,2026-02-12,false,false
O5,R2,Closed,500,2026-02-13,,
O6,R1,Closed,700,2026-02-14,true,false
"""
    write_project(tmp_path, {"owners.csv": OWNERS, "opportunities.csv": opportunities}, SOURCE)
    data = load_dataset(load_config(tmp_path))
    opps = data.tables["opportunities"].set_index("opportunity_id")
    assert opps["stage"].tolist() == ["Proposal", "Closed Won", "Closed Lost", "Closed Won", "Closed Lost",
                                      "Closed Won"]
    assert opps["is_won"].tolist() == [False, True, False, True, False, True]
    assert opps["is_closed"].tolist() == [False, True, True, True, True, True]
    checks = data.findings.set_index("check")
    assert checks.loc["closed_without_outcome", "ids"] == ["O5"]
    contradictions = data.findings[data.findings["check"] == "flags_contradict_stage"].set_index("message")
    assert sorted(map(tuple, contradictions["ids"])) == [("O1",), ("O4",), ("O6",)]
    said = {ids[0]: message for message, ids in contradictions["ids"].items()}
    assert "'Proposal' is an open stage" in said["O1"] and "is_won true (1), is_closed true (1)" in said["O1"]
    assert "count as open (not won)" in said["O1"]
    assert "'Closed Won' is a won stage" in said["O4"] and "is_won false (1), is_closed false (1)" in said["O4"]
    assert "'Closed' is a closed stage" in said["O6"] and "but is_closed false (1):" in said["O6"]
    assert "(won or lost as is_won says)" in said["O6"]


def test_a_header_only_owners_file_stops_the_cube_with_the_same_reason(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = write_project(tmp_path, {"owners.csv": OWNERS.splitlines()[0] + "\n", "opportunities.csv": OPPORTUNITIES},
                         SOURCE)
    code, text = spm(capsys, "--project", str(root), "cube", "--as-of", "2026-02-28")
    assert code == 2 and "required table owners has no rows" in text, text


def test_plausibility_ceiling_ignores_one_outlier_among_few_deals() -> None:
    from spm_lib.config import Config, SourceConfig
    from spm_lib.data.consistency import amount_ceiling

    cfg = Config(root=Path("."), source=SourceConfig(kind="folder", path="x"))
    amounts = pd.Series([1000.0, 2000.0, 1e20, 1500.0, None, -50.0, float("inf")])
    assert amount_ceiling(amounts, cfg)[0] == 2_000_000.0  # 1000 × 2000: the 99th percentile, lower value
    assert amount_ceiling(pd.Series([None], dtype="float64"), cfg) == (None, "")


def test_history_on_the_closed_stage_follows_its_deal(tmp_path: Path) -> None:
    """A history row on `Closed` is shown under the won / lost label of its deal, so as-of numbers count it right."""
    opportunities = """opportunity_id,owner_id,stage,amount,close_date,is_won
O1,R1,Closed,1000,2026-02-10,true
O2,R2,Closed,2000,2026-02-11,false
"""
    history = """opportunity_id,changed_at,stage
O1,2026-01-05,Prospecting
O1,2026-02-10,Closed
O2,2026-02-11,Closed
"""
    source = {**SOURCE, "tables": {**SOURCE["tables"], "opportunity_history": {"source": "history.csv"}}}
    write_project(tmp_path, {"owners.csv": OWNERS, "opportunities.csv": opportunities, "history.csv": history},
                  source)
    data = load_dataset(load_config(tmp_path))
    assert data.tables["opportunity_history"]["stage"].tolist() == ["Prospecting", "Closed Won", "Closed Lost"]
