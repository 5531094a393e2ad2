"""The live report's panels on a real run: drill-down, the deals behind a number, what-if and the action form.

The widgets are driven in-process (set `.value`, `button.click()`); every number is checked against pandas on the
run's facts or against the maths written out here, never against the code under test.
"""

from __future__ import annotations

import math
import re
import shutil
from datetime import date
from pathlib import Path

import ipywidgets as w
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from markupsafe import Markup

from spm_lib.config import cached_config, load_config
from spm_lib.errors import KpiError
from spm_lib.live import widgets
from spm_lib.live.report import LiveReport
from spm_lib.report import markup
from spm_lib.report.core import Html, Report, load_cube
from spm_lib.state import actions
from spm_lib.store.runfolder import ensure_cube

AS_OF = date(2026, 10, 31)
MANAGER, REP, PEER = "mgr-01", "rep-003", "rep-002"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small demo project with its monthly cube as of 2026-10-31."""
    root = tmp_path_factory.mktemp("widgets") / "p"
    shutil.copytree(small_project, root)
    ensure_cube(load_config(root), "monthly", AS_OF)
    return root


@pytest.fixture
def run(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The run folder, with the project found through SPM_PROJECT_DIR and a fresh action register per test."""
    (project / "config" / "state.yml").write_text("url: sqlite:///${SPM_TEST_WIDGETS_STATE}\n")
    monkeypatch.setenv("SPM_PROJECT_DIR", str(project))
    monkeypatch.setenv("SPM_TEST_WIDGETS_STATE", str(tmp_path / "state.sqlite"))
    return project / "runs" / "monthly" / AS_OF.isoformat()


def live(run: Path, owner: str, viewer: str | None = None) -> Report:
    """The live report of `owner` as seen by `viewer` (default: the owner)."""
    return LiveReport(load_cube(run), owner, run, viewer_id=viewer or owner)


def facts(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "facts" / "opportunities.parquet")


def team(run: Path, manager: str) -> list[str]:
    """The manager and their direct reports (the small project has no deeper level below a manager)."""
    owners = pd.read_parquet(run / "owners.parquet")
    return [manager, *owners.loc[owners["manager_id"] == manager, "owner_id"]]


def in_month(dates: pd.Series, month: str) -> pd.Series:
    return dates.dt.strftime("%Y-%m") == month


def ids_in(table: str) -> list[str]:
    """The opportunity ids of a deals table, in the order shown (first cell of each body row)."""
    return re.findall(r'<tr><td class="short">([^<]+)</td>', table.split("<tbody>", 1)[1])


def money(value: float) -> str:
    return markup.fmt_value(value, "currency", "EUR")


# ---------------------------------------------------------------- batch stays static
def test_batch_sections_are_static_html_and_live_adds_a_widget_after_the_same_html(run: Path) -> None:
    cube = load_cube(run)
    batch = Report(cube, MANAGER, run)
    now = live(run, MANAGER)
    InteractiveShell.instance()
    for section in ("focus", "forward_look", "below_the_line", "actions"):
        static = getattr(batch, section)()
        assert type(static) is Html, section  # no widget in batch or authoring
        assert "widget" not in static.body, section
        shown = getattr(now, section)()
        assert isinstance(shown, widgets.Live), section
        assert isinstance(shown.widget, w.Widget), section
        with capture_output() as cap:
            shown._ipython_display_()
        kinds = [WIDGET_VIEW if WIDGET_VIEW in o.data else "text/html" for o in cap.outputs]
        if section == "actions":  # the form shows the register itself, so that it can refresh it
            assert kinds == [WIDGET_VIEW] and shown.widget.register.value == static.body
        else:
            assert kinds == ["text/html", WIDGET_VIEW], section
            assert cap.outputs[0].data["text/html"] == static.body, section  # the static part is unchanged


# ---------------------------------------------------------------- drill-down
def test_drilling_into_a_direct_report_shows_their_kpis_and_trust(run: Path) -> None:
    panel = widgets.drill_down(live(run, MANAGER))
    assert [v for _, v in panel.picker.options] == [widgets.NOTHING, *sorted(team(run, MANAGER)[1:])]
    assert panel.picker.label == "Pick a direct report…" and panel.out.value == ""
    panel.picker.value = REP
    f = facts(run)
    won = f[(f["owner_id"] == REP) & f["is_won"].fillna(False) & in_month(f["close_date"], "2026-10")]
    shown = panel.out.value
    name = pd.read_parquet(run / "owners.parquet").set_index("owner_id").loc[REP, "name"]
    assert f"<h4>{name}: the KPIs of a rep monthly session</h4>" in shown
    assert f">{money(won['amount'].sum())}</td>" in shown  # October bookings of that rep alone
    trust = pd.read_parquet(run / "trust.parquet")
    mine = trust[trust["owner_id"] == REP]
    worst = "fail" if (mine["status"] == "fail").any() else "warn" if (mine["status"] == "warn").any() else "pass"
    assert f">{worst}</span></h4>" in shown
    for label in mine.loc[mine["status"].isin(["warn", "fail"]), "label"]:
        assert f">{label}</td>" in shown


def test_drilling_outside_the_viewers_subtree_is_refused(run: Path) -> None:
    # a rep who somehow sees their manager's page cannot open a peer
    panel = widgets.drill_down(live(run, MANAGER, viewer=REP))
    panel.picker.value = PEER
    assert widgets.REFUSED in panel.out.value
    assert "<table" not in panel.out.value and PEER not in panel.out.value
    # a manager cannot open their own manager, but can open their reps
    rpt = live(run, MANAGER)
    assert widgets.REFUSED in widgets.drill_html(rpt, "dir-01")
    assert widgets.REFUSED in widgets.drill_html(rpt, "nobody")
    assert widgets.REFUSED not in widgets.drill_html(rpt, PEER)


# ---------------------------------------------------------------- the deals behind a number
def test_the_deals_behind_each_months_bookings_add_up_to_the_cube(run: Path) -> None:
    rpt = live(run, MANAGER)
    f = facts(run)
    mine = f[f["owner_id"].isin(team(run, MANAGER))]
    kpis = pd.read_parquet(run / "kpis.parquet")
    booked = kpis[(kpis["owner_id"] == MANAGER) & (kpis["kpi"] == "bookings") & kpis["dim"].isna()]
    months = [p for p in booked["period"] if re.fullmatch(r"\d{4}-\d{2}", p)]
    assert len(months) == 13  # the 12 months of the trend and the same month last year (the comparisons)
    for month in months:
        deals = widgets.deals_behind(rpt, "bookings", month)
        expected = mine[mine["is_won"].fillna(False) & in_month(mine["close_date"], month)]
        assert sorted(deals["opportunity_id"]) == sorted(expected["opportunity_id"]), month
        cube_value = booked.loc[booked["period"] == month, "value"].iloc[0]
        assert deals["amount"].sum() == pytest.approx(cube_value) == pytest.approx(expected["amount"].sum())


def test_lost_created_and_open_deals_match_their_kpis(run: Path) -> None:
    rpt = live(run, MANAGER)
    f = facts(run)
    mine = f[f["owner_id"].isin(team(run, MANAGER))]
    k = pd.read_parquet(run / "kpis.parquet")
    k = k[k["owner_id"] == MANAGER]

    def kpi(kpi_id: str, period: str, dim: str | None = None, dim_value: str | None = None) -> float:
        rows = k[(k["kpi"] == kpi_id) & (k["period"] == period)]
        rows = rows[rows["dim"].isna()] if dim is None else \
            rows[(rows["dim"] == dim) & (rows["dim_value"] == dim_value)]
        return float(rows["value"].iloc[0])

    lost = mine[mine["is_closed"].fillna(False) & ~mine["is_won"].fillna(False)
                & in_month(mine["close_date"], "2026-09")]
    assert len(widgets.deals_behind(rpt, "deals_lost", "2026-09")) == len(lost) == kpi("deals_lost", "2026-09")
    created = mine[in_month(mine["created_date"], "2026-08")]
    assert len(widgets.deals_behind(rpt, "opps_created", "2026-08")) == len(created) == kpi("opps_created", "2026-08")
    # open deals closing in the rest of the quarter (Nov and Dec), by close month and by stage
    open_ = mine[~mine["is_closed"].fillna(False)]
    rest = open_[(open_["close_date"] >= "2026-11-01") & (open_["close_date"] < "2027-01-01")]
    everything = widgets.deals_behind(rpt, "pipeline_open_value", widgets.ALL)
    assert sorted(everything["opportunity_id"]) == sorted(rest["opportunity_id"])
    assert everything["amount"].sum() == pytest.approx(kpi("pipeline_open_value", "FY2026-Q4"))
    for month in ("2026-11", "2026-12"):
        got = widgets.deals_behind(rpt, "pipeline_open_value", month)["amount"].sum()
        assert got == pytest.approx(rest.loc[in_month(rest["close_date"], month), "amount"].sum())
        assert got == pytest.approx(kpi("pipeline_open_value", "FY2026-Q4", "close_month", month))
    for stage, group in rest.groupby("stage"):
        got = widgets.deals_behind(rpt, "pipeline_open_value", widgets.ALL, str(stage))
        assert got["amount"].sum() == pytest.approx(group["amount"].sum())
        assert got["amount"].sum() == pytest.approx(kpi("pipeline_open_value", "FY2026-Q4", "stage", str(stage)))


def test_the_deals_panel_renders_the_picked_number_and_sorts_it(run: Path) -> None:
    panel = widgets.deals_behind_panel(live(run, MANAGER))
    assert panel.out.value == ""  # nothing computed before a pick
    panel.kpi.value = "bookings"
    assert panel.period.value == "2026-10"  # the closed period first
    assert [v for _, v in panel.period.options][:2] == ["2026-10", "2026-09"]
    panel.period.value = "2026-09"
    f = facts(run)
    won = f[f["owner_id"].isin(team(run, MANAGER)) & f["is_won"].fillna(False) & in_month(f["close_date"], "2026-09")]
    assert f"<b>{len(won)}</b> deals, total <b>{money(won['amount'].sum())}</b>" in panel.out.value
    largest_first = won.sort_values(["amount", "opportunity_id"], ascending=[False, True])["opportunity_id"]
    assert ids_in(panel.out.value) == largest_first.tolist()[: widgets.ROW_LIMIT]
    panel.sort_by.value = "close_date"
    panel.ascending.value = True
    earliest_first = won.sort_values(["close_date", "opportunity_id"])["opportunity_id"]
    assert ids_in(panel.out.value) == earliest_first.tolist()[: widgets.ROW_LIMIT]
    with pytest.raises(KpiError, match=r"no deals stand behind KPI 'win_rate'.*pick one of bookings"):
        widgets.deals_behind(panel.rpt, "win_rate", "2026-10")
    panel.kpi.value = "pipeline_open_value"
    assert panel.period.value == widgets.ALL and panel.period.options[1:] == (("2026-11", "2026-11"),
                                                                              ("2026-12", "2026-12"))
    panel.stage.value = "Proposal"
    f_open = f[f["owner_id"].isin(team(run, MANAGER)) & ~f["is_closed"].fillna(False) & (f["stage"] == "Proposal")
               & (f["close_date"] >= "2026-11-01") & (f["close_date"] < "2027-01-01")]
    assert sorted(ids_in(panel.out.value)) == sorted(f_open["opportunity_id"])


# ---------------------------------------------------------------- what-if
def test_the_rebuilt_tree_inputs_reproduce_the_runs_driver_tree(run: Path) -> None:
    cube = load_cube(run)
    for owner in cube.owners["owner_id"]:
        rpt = live(run, str(owner))
        again = widgets.what_if(widgets.tree_inputs(rpt)).set_index("node")
        stored = cube.decomposition[cube.decomposition["owner_id"] == owner].set_index("node")
        for node in widgets.WHAT_IF_NODES:
            a, b = again.loc[node, "required"], stored.loc[node, "required"]
            assert (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b), (owner, node)


def test_moving_the_sliders_recomputes_the_tree_and_the_expected_result(run: Path) -> None:
    rpt = live(run, MANAGER)
    panel = widgets.what_if_panel(rpt)
    k = pd.read_parquet(run / "kpis.parquet")
    ttm = k[(k["owner_id"] == MANAGER) & (k["period"] == "TTM") & k["dim"].isna()].set_index("kpi")["value"]
    assert panel.sliders["win_rate"].value == pytest.approx(ttm["win_rate"])  # they start at the actual values
    assert panel.sliders["avg_deal_size"].value == pytest.approx(ttm["avg_deal_size"])
    assert panel.sliders["lead_conversion"].value == pytest.approx(ttm["lead_conversion_rate"])
    assert panel.sliders["sales_cycle_days"].value == round(ttm["sales_cycle_days"])

    q = k[(k["owner_id"] == MANAGER) & (k["kpi"] == "bookings_to_date_q")].iloc[0]
    target, to_date = q["target"], q["value"]
    months = 2.0  # November and December remain after 2026-10-31
    panel.sliders["win_rate"].value = 40.0
    panel.sliders["avg_deal_size"].value = 20000.0
    panel.sliders["lead_conversion"].value = 25.0
    panel.sliders["sales_cycle_days"].value = 45
    deals = math.ceil((target - to_date) / 20000.0)
    opps = deals / months / 0.40
    leads = opps / 0.25
    shown = panel.out.value
    assert f"<td>Deals needed</td><td>{markup.fmt_value(deals, 'count')}</td>" in shown
    assert f"<td>Opportunities needed per month</td><td>{markup.fmt_value(opps, 'count')}</td>" in shown
    assert f"<td>Leads needed per month</td><td>{markup.fmt_value(leads, 'count')}</td>" in shown
    assert "by 2026-11-16 (16 days left)" in shown  # 2026-12-31 − 45 days, counted from 2026-10-31
    expected = to_date + ttm["opps_created"] / 12 * months * 0.40 * 20000.0
    assert f"<b>{money(expected)}</b> against a target of <b>{money(target)}</b>" in shown
    assert f"{money(abs(target - expected))} {'short of' if target > expected else 'ahead of'} target" in shown
    panel.sliders["sales_cycle_days"].value = 80  # 2026-12-31 − 80 days is before the as-of day
    assert "passed on 2026-10-12 (19 days before the as-of day)" in panel.out.value


# ---------------------------------------------------------------- the action form
def fill(form: widgets.ActionForm, text: str, due: date | None = date(2026, 11, 20), kpi: str = "win_rate",
         support: str = "") -> None:
    form.text.value, form.support.value, form.due.value, form.kpi.value = text, support, due, kpi


def test_a_double_click_records_one_action_then_a_new_one_gets_its_own_key(run: Path) -> None:
    form = widgets.action_form(live(run, REP, viewer=MANAGER))  # the leader records it in the rep's session
    assert [v for _, v in form.kpi.options][1:] == live(run, REP).above_the_line_ids()
    fill(form, "Call the 3 stalled Proposal deals", support="Join the ACME call")
    form.button.click()
    form.button.click()
    cfg = cached_config()
    rows = actions.list_actions(cfg, owner_id=REP)
    assert len(rows) == 1
    r = rows.iloc[0]
    assert (r["text"], r["support_asked"], r["kpi"], r["owner_id"], r["recorded_by"], r["cadence"], r["period"]) == (
        "Call the 3 stalled Proposal deals", "Join the ACME call", "win_rate", REP, MANAGER, "monthly", "2026-10")
    assert r["due_date"] == pd.Timestamp("2026-11-20")
    assert f"Recorded action #{r['action_id']}" in form.message.value
    assert form.text.value == "" and form.kpi.label == "—"  # cleared for the next action
    assert "Call the 3 stalled Proposal deals" in form.register.value
    fill(form, "Clean up close dates", kpi=widgets.NOTHING)
    form.button.click()
    assert actions.list_actions(cfg, owner_id=REP)["text"].tolist() == ["Call the 3 stalled Proposal deals",
                                                                          "Clean up close dates"]


def test_form_errors_are_shown_in_the_form_and_nothing_is_recorded(run: Path) -> None:
    form = widgets.action_form(live(run, REP))
    fill(form, "   ")
    form.button.click()
    said = Markup(form.message.value).unescape()
    assert "Not recorded: the action's text is empty: write what will be done" in said and "Traceback" not in said
    fill(form, "Book the QBR", due=None)
    form.button.click()
    assert "the action's due date is empty: say by when" in Markup(form.message.value).unescape()
    assert actions.list_actions(cached_config(), owner_id=REP).empty


def test_changing_a_status_is_persisted_with_who_changed_it(run: Path) -> None:
    form = widgets.action_form(live(run, REP, viewer=MANAGER))
    fill(form, "Qualify the 12 new inbound leads")
    form.button.click()
    (row,) = form.statuses.children
    pick = row.children[0]
    assert pick.value == "open" and list(pick.options) == ["open", "done", "dropped"]
    pick.value = "done"
    (saved,) = actions.list_actions(cached_config(), owner_id=REP).itertuples()
    assert (saved.status, saved.updated_by) == ("done", MANAGER) and pd.notna(saved.closed_at)
    assert "is now done" in form.message.value
    assert "Open actions (0)" in form.register.value
