"""The action register: recording, follow-up, export, the report section, and many processes writing at once."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa

from spm_lib.config import CompanyConfig, Config, SourceConfig, StateConfig
from spm_lib.errors import ConfigError
from spm_lib.report.actions_view import actions_html
from spm_lib.state import actions
from spm_lib.state import db as state
from spm_lib.state.actions import ActionError


def make_cfg(root: Path, url: str = "sqlite:///state/spm.sqlite", timezone_: str = "UTC") -> Config:
    """A project config whose state database lives under `root`."""
    return Config(root=root, source=SourceConfig(kind="folder", path="x"), state=StateConfig(url=url),
                  company=CompanyConfig(timezone=timezone_))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_cfg(tmp_path)


def rec(cfg: Config, key: str, **over: object) -> actions.Action:
    """Record an action of rep R1's monthly session on 2026-10 with sensible defaults."""
    args: dict[str, object] = {"owner_id": "R1", "text": f"action {key}", "due_date": date(2026, 10, 15),
                               "cadence": "monthly", "period": "2026-10", "recorded_by": "M1",
                               "at": datetime(2026, 10, 1, 9, 0)}
    args.update(over)
    return actions.record(cfg, form_key=key, **args)  # type: ignore[arg-type]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# ---------------------------------------------------------------- the state database
def test_sqlite_file_lives_under_the_project_root_in_wal_mode(cfg: Config, tmp_path: Path) -> None:
    rec(cfg, "k1")
    db = tmp_path / "state" / "spm.sqlite"
    assert state.engine(cfg).url.database == str(db)
    assert state.engine(cfg) is state.engine(cfg)
    with sqlite3.connect(db) as raw:  # WAL is a property of the file: a plain connection sees it too
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with state.engine(cfg).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_state_url_takes_variables_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPM_TEST_STATE_DIR", str(tmp_path / "elsewhere"))
    cfg = make_cfg(tmp_path, url="sqlite:///${SPM_TEST_STATE_DIR}/s.sqlite")
    assert state.state_url(cfg).database == str(tmp_path / "elsewhere" / "s.sqlite")
    monkeypatch.delenv("SPM_TEST_STATE_DIR")
    with pytest.raises(ConfigError, match=r"SPM_TEST_STATE_DIR.*not set"):
        state.state_url(cfg)


# ---------------------------------------------------------------- recording and listing
def test_record_then_list_open_actions_by_due_date(cfg: Config) -> None:
    late = rec(cfg, "a", text="  Call the 3 stalled Proposal deals \n", due_date="2026-10-20", kpi="bookings",
               support_asked="Join the call with ACME")
    early = rec(cfg, "b", due_date=date(2026, 10, 5))
    rec(cfg, "c", owner_id="R2")  # another owner
    rec(cfg, "d", cadence="weekly", period="2026-W40")  # another cadence
    assert late.text == "Call the 3 stalled Proposal deals"
    assert (late.status, late.kpi, late.support_asked, late.closed_at) == ("open", "bookings",
                                                                          "Join the call with ACME", None)
    df = actions.open_actions(cfg, "R1", "monthly")
    assert df["action_id"].tolist() == [early.action_id, late.action_id]
    assert df["due_date"].tolist() == [pd.Timestamp("2026-10-05"), pd.Timestamp("2026-10-20")]
    assert df["support_asked"].isna().tolist() == [True, False]
    assert actions.open_actions(cfg, "R1", "weekly")["form_key"].tolist() == ["d"]


def test_the_same_form_key_records_one_action(cfg: Config) -> None:
    first = rec(cfg, "form-42", text="Book the QBR")
    again = rec(cfg, "form-42", text="Book the QBR (clicked twice)")
    assert again.action_id == first.action_id
    assert again.text == "Book the QBR"
    assert len(actions.open_actions(cfg, "R1", "monthly")) == 1


def test_long_text_is_capped(cfg: Config) -> None:
    assert len(rec(cfg, "long", text="x" * 2500).text) == 2000


@pytest.mark.parametrize(("over", "message"), [
    ({"text": "   "}, "text is empty: write what will be done"),
    ({"kpi": "bookngs"}, "unknown KPI 'bookngs' (did you mean 'bookings'?)"),
    ({"cadence": "montly"}, "unknown cadence 'montly' (did you mean 'monthly'?)"),
    ({"period": "FY2026-Q4"}, "is a quarter, but a monthly session reviews a month"),
    ({"period": "October"}, "period label 'October' is not valid"),
    ({"due_date": "31/10/2026"}, "write it as YYYY-MM-DD"),
    ({"recorded_by": ""}, "recorded_by is empty"),
])
def test_record_says_what_to_fill_in(cfg: Config, over: dict[str, object], message: str) -> None:
    with pytest.raises(ActionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        rec(cfg, "bad", **over)


def test_a_rejected_action_leaves_no_row(cfg: Config) -> None:
    with pytest.raises(ActionError):
        rec(cfg, "bad", text="")
    assert actions.export(cfg, fmt="json") == "[]\n"


def test_set_status_rejects_unknown_status_and_id(cfg: Config) -> None:
    a = rec(cfg, "a")
    with pytest.raises(ActionError, match=r"unknown action status 'closed'.*allowed: open, done, dropped"):
        actions.set_status(cfg, a.action_id, "closed", "R1")
    with pytest.raises(ActionError, match="there is no action 999"):
        actions.set_status(cfg, 999, "done", "R1")


def test_closing_stamps_closed_at_and_closed_since_filters_on_it(cfg: Config) -> None:
    a, b, c = rec(cfg, "a"), rec(cfg, "b"), rec(cfg, "c")
    done = actions.set_status(cfg, a.action_id, "done", "R1", at=utc(2026, 10, 3, 10))
    actions.set_status(cfg, b.action_id, "dropped", "M1", at=utc(2026, 9, 25, 8))
    assert (done.status, done.closed_at, done.updated_by) == ("done", datetime(2026, 10, 3, 10), "R1")
    since = actions.closed_since(cfg, "R1", "monthly", utc(2026, 10, 1))
    assert since["action_id"].tolist() == [a.action_id]
    everything = actions.closed_since(cfg, "R1", "monthly", utc(2026, 9, 1))
    assert everything["action_id"].tolist() == [b.action_id, a.action_id]  # oldest closure first
    assert actions.open_actions(cfg, "R1", "monthly")["action_id"].tolist() == [c.action_id]
    reopened = actions.set_status(cfg, a.action_id, "open", "R1", at=utc(2026, 10, 4))
    assert reopened.closed_at is None
    assert actions.closed_since(cfg, "R1", "monthly", utc(2026, 9, 1))["action_id"].tolist() == [b.action_id]


# ---------------------------------------------------------------- the report's view
def test_last_session_is_the_start_of_the_closed_period_in_company_time(tmp_path: Path) -> None:
    paris = make_cfg(tmp_path, timezone_="Europe/Paris")
    # monthly run as of 2026-10-31: closed period 2026-10 began at 00:00 Paris time (UTC+2 in summer time)
    assert actions.last_session_start(paris, "monthly", date(2026, 10, 31)) == datetime(2026, 9, 30, 22, 0)
    # quarterly run, fiscal year starting in January: FY2026-Q4 began on 1 October
    assert actions.last_session_start(make_cfg(tmp_path), "quarterly", "2026-11-15") == datetime(2026, 10, 1)


def test_for_report_shows_open_ones_and_those_closed_since_the_last_session(cfg: Config) -> None:
    overdue = rec(cfg, "overdue", due_date=date(2026, 10, 15))
    due_today = rec(cfg, "today", due_date=date(2026, 10, 31))
    later = rec(cfg, "later", due_date=date(2026, 11, 15))
    done_now = rec(cfg, "done-now", due_date=date(2026, 10, 10))
    done_before = rec(cfg, "done-before", due_date=date(2026, 9, 20), period="2026-09")
    dropped_now = rec(cfg, "dropped-now", due_date=date(2026, 10, 1))
    actions.set_status(cfg, done_now.action_id, "done", "R1", at=utc(2026, 10, 2, 12))
    actions.set_status(cfg, done_before.action_id, "done", "R1", at=utc(2026, 9, 30, 23, 59))  # before 1 Oct
    actions.set_status(cfg, dropped_now.action_id, "dropped", "R1", at=utc(2026, 10, 20))
    rec(cfg, "someone-else", owner_id="R2", due_date=date(2026, 10, 1))

    df = actions.for_report(cfg, "R1", "monthly", date(2026, 10, 31))
    shown = dict(zip(df["form_key"], df["overdue"]))
    assert shown == {"overdue": True, "today": False, "later": False, "done-now": False, "dropped-now": False}
    assert df["action_id"].tolist()[:3] == [overdue.action_id, due_today.action_id, later.action_id]
    assert df["status"].tolist()[3:] == ["done", "dropped"]


def html_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A project folder with a config/ that load_config() finds through SPM_PROJECT_DIR."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "source.yml").write_text("kind: folder\npath: data\n")
    monkeypatch.setenv("SPM_PROJECT_DIR", str(tmp_path))
    return make_cfg(tmp_path)


def test_actions_html_escapes_text_and_marks_overdue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = html_project(tmp_path, monkeypatch)
    rec(cfg, "x", text="<script>alert('pwned')</script> & follow up", due_date=date(2026, 10, 15),
        kpi="bookings")
    rec(cfg, "y", text="Plan Q4 pipeline review", due_date=date(2026, 11, 30))
    gone = rec(cfg, "z", text="Update close dates")
    actions.set_status(cfg, gone.action_id, "done", "R1", at=utc(2026, 10, 20))
    rpt = SimpleNamespace(owner_id="R1", cadence="monthly", as_of="2026-10-31", closed="2026-10")

    page = actions_html(rpt)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; follow up" in page
    assert "Open actions (2, 1 overdue)" in page
    assert page.count('<span class="spm-badge spm-badge-red">overdue</span>') == 1
    assert '<span class="spm-badge spm-badge-green">done</span>' in page
    assert "Update close dates" in page
    assert "recorded in the live report" in page


def test_actions_html_without_actions_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    html_project(tmp_path, monkeypatch)
    page = actions_html(SimpleNamespace(owner_id="R9", cadence="weekly", as_of="2026-10-31",
                                                closed="2026-W44"))
    assert "No open actions." in page and "No action closed since the last session." in page


# ---------------------------------------------------------------- export
def test_list_actions_filters_by_owner_cadence_and_status(cfg: Config) -> None:
    a = rec(cfg, "a")
    rec(cfg, "b", cadence="weekly", period="2026-W40")
    rec(cfg, "c", owner_id="R2")
    actions.set_status(cfg, a.action_id, "dropped", "R1", at=utc(2026, 10, 2))
    assert actions.list_actions(cfg)["form_key"].tolist() == ["a", "b", "c"]
    assert actions.list_actions(cfg, "R1")["form_key"].tolist() == ["a", "b"]
    assert actions.list_actions(cfg, "R1", cadence="weekly")["form_key"].tolist() == ["b"]
    assert actions.list_actions(cfg, status="dropped")["form_key"].tolist() == ["a"]


def test_export_csv_and_json(cfg: Config) -> None:
    a = rec(cfg, "a", text="=HYPERLINK(\"http://evil\")", support_asked="Budget, 2 days", kpi="bookings")
    actions.set_status(cfg, a.action_id, "done", "R1", at=utc(2026, 10, 3, 10, 30))
    rec(cfg, "b", owner_id="R2", text="Coach on discovery")

    rows = list(csv.DictReader(io.StringIO(actions.export(cfg, owner_id="R1", fmt="csv"))))
    assert len(rows) == 1
    assert rows[0]["text"] == "'=HYPERLINK(\"http://evil\")"  # a spreadsheet shows it, never runs it
    assert (rows[0]["support_asked"], rows[0]["due_date"], rows[0]["status"]) == ("Budget, 2 days", "2026-10-15",
                                                                                  "done")
    assert (rows[0]["recorded_at"], rows[0]["closed_at"]) == ("2026-10-01T09:00:00Z", "2026-10-03T10:30:00Z")

    everyone = json.loads(actions.export(cfg, fmt="json"))
    assert [r["owner_id"] for r in everyone] == ["R1", "R2"]
    assert everyone[1] == {"action_id": 2, "form_key": "b", "owner_id": "R2", "text": "Coach on discovery",
                           "support_asked": None, "due_date": "2026-10-15", "kpi": None, "status": "open",
                           "cadence": "monthly", "period": "2026-10", "recorded_by": "M1",
                           "recorded_at": "2026-10-01T09:00:00Z", "updated_by": "M1",
                           "updated_at": "2026-10-01T09:00:00Z", "closed_at": None}
    with pytest.raises(ActionError, match=r"unknown export format 'xlsx'.*allowed: csv, json"):
        actions.export(cfg, fmt="xlsx")


# ---------------------------------------------------------------- many processes at once
def _record_many(root: str, worker: int, count: int, barrier: object, shared_key: str | None) -> None:
    """Spawned worker: wait for the others, then record `count` actions (or the same form `count` times)."""
    cfg = make_cfg(Path(root))
    barrier.wait()  # type: ignore[attr-defined]
    for i in range(count):
        rec(cfg, shared_key or f"w{worker}-{i}", owner_id=f"R{worker}", text=f"action {i} of worker {worker}")


def _run_workers(root: Path, shared_key: str | None = None, workers: int = 8, count: int = 50) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_record_many, args=(str(root), w, count, barrier, shared_key))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * workers


def test_eight_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    _run_workers(tmp_path)
    with state.engine(cfg).connect() as conn:
        keys = conn.execute(sa.select(actions.ACTIONS.c.form_key)).scalars().all()
        ids = conn.execute(sa.select(actions.ACTIONS.c.action_id)).scalars().all()
    assert len(keys) == 400
    assert set(keys) == {f"w{w}-{i}" for w in range(8) for i in range(50)}
    assert len(set(ids)) == 400


def test_eight_processes_submitting_the_same_form_record_it_once(tmp_path: Path) -> None:
    _run_workers(tmp_path, shared_key="the-one-form", workers=4, count=3)
    assert len(json.loads(actions.export(make_cfg(tmp_path), fmt="json"))) == 1


# ---------------------------------------------------------------- PostgreSQL
def test_the_register_works_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    cfg = make_cfg(tmp_path, url=postgres_url)
    a = rec(cfg, "pg-a", owner_id="PG1", due_date=date(2026, 10, 15))
    assert rec(cfg, "pg-a", owner_id="PG1", text="twice").action_id == a.action_id
    b = rec(cfg, "pg-b", owner_id="PG1", due_date=date(2026, 11, 15))
    actions.set_status(cfg, b.action_id, "done", "PG1", at=utc(2026, 10, 5))
    df = actions.for_report(cfg, "PG1", "monthly", date(2026, 10, 31))
    assert dict(zip(df["form_key"], df["overdue"])) == {"pg-a": True, "pg-b": False}
    assert df["status"].tolist() == ["open", "done"]
