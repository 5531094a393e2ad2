"""The report API on the small explicit company of test_cube: sections, findings in words, analyst figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from spm_lib.engine.cube import compute_cube
from spm_lib.report import markup
from spm_lib.report.core import Report
from tests.test_cube import AS_OF, _cfg, company


@pytest.fixture(scope="module")
def cube():
    c = compute_cube(_cfg(), company(), "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    return c


def test_findings_in_words_come_from_the_cube(cube) -> None:
    rpt = Report(cube, "M", Path("."))
    words = rpt.findings()
    # M's October bookings 620 against a target of 500 (test_cube computes both by hand): 124 %
    assert words[0] == "Bookings at 124 % of target for 2026-10."


def test_an_analysts_figure_lands_in_the_html_with_a_stable_id(cube) -> None:
    rpt = Report(cube, "R1", Path("."))
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    first = str(rpt.show(fig))
    second = str(rpt.show(fig))
    assert "Plotly.newPlot" in first and f'id="{markup.div_id("R1", "custom")}"' in first
    assert f'id="{markup.div_id("R1", "custom-2")}"' in second  # two custom figures never share a div id
    assert set(rpt.figures()) == {"custom", "custom-2"}


def test_the_sections_render_for_a_manager_with_reports(cube) -> None:
    rpt = Report(cube, "M", Path("."))
    ranking = rpt.team_ranking_html()
    assert "Rita" in ranking and "Rob" in ranking  # the direct reports, by name
    assert "can be trusted" in str(rpt.trust()) or "Fix the data first" in str(rpt.trust())


def test_push_list_leaves_out_dead_deals_and_says_so() -> None:
    data = company()
    opps = data.tables["opportunities"]
    stale = opps["opportunity_id"] == "o6"  # R1, Proposal 400, closes Nov 20: no update since Aug 1 (91 days)
    opps.loc[stale, "last_modified_date"] = pd.Timestamp("2026-08-01")
    c = compute_cube(_cfg(), data, "monthly", AS_OF)
    c.meta["currency"] = "EUR"
    html = str(Report(c, "M", Path(".")).deals_to_push())
    # the rest of FY2026-Q4 holds o6 (dead), o7 (R2, Dec 10) and o9 (R1, Nov 15)
    assert "o6" not in html and "Proposal" not in html
    assert "2026-12-10" in html and "2026-11-15" in html
    assert "1 deal closing in FY2026-Q4 (400 €) is left out" in html
    # o6 is 400 of R1's 470 closing in the rest of the quarter (o9 70): the stale check fails, the numbers above
    # the line, the forward look and the findings are marked provisional; R2 has no failing check
    r1 = Report(c, "R1", Path("."))
    assert r1.trust_status() == "fail"
    for section in (r1.above_the_line(), r1.forward_look(), r1.focus()):
        assert "Provisional: these numbers rest on data failing" in str(section)
    assert Report(c, "R2", Path(".")).provisional() == ""
