"""The report's charts: finance-bundle trace types only, status colours, units in hover, empty inputs, order."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from spm_lib.report import charts, markup
from spm_lib.report.markup import RenderError

# What the vendored plotly.js finance bundle can draw (its README): nothing else may appear.
FINANCE_TRACES = {"bar", "scatter", "pie", "funnel", "funnelarea", "histogram", "indicator", "waterfall",
                  "candlestick", "ohlc"}
GREEN, AMBER, RED, GREY = "#1a9850", "#f5a623", "#d73027", "#9e9e9e"
DEF = "Won value of deals closed in the period."


def bullets_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "label": ["Bookings", "Win rate", "Cycle time"],
        "value": [1_200_000.0, 31.0, 45.0],
        "target": [1_500_000.0, 30.0, 40.0],
        "attainment": [0.8, 31 / 30, 40 / 45],
        "status": ["red", "green", "amber"],
        "unit": ["currency", "pct", "days"],
        "definition": [DEF, "Won deals / closed deals.", "Days from creation to close of won deals."],
    })


def stages() -> pd.DataFrame:
    return pd.DataFrame({"stage": ["Qualify", "Proposal", "Negotiation"], "value": [800_000.0, 420_000.0, 90_000.0],
                         "count": [24, 9, 2]})


def months() -> pd.DataFrame:
    return pd.DataFrame({"month": pd.period_range("2026-03", periods=3, freq="M"), "value": [300e3, 500e3, 90e3]})


def conversion() -> pd.DataFrame:
    return pd.DataFrame({"stage": ["Qualify", "Proposal", "Negotiation"], "rate": [62.0, 31.0, 70.0],
                         "benchmark_rate": [60.0, 48.0, 68.0]})


def periods() -> pd.DataFrame:
    return pd.DataFrame({"period": ["2026-01", "2026-02", "2026-03"], "value": [1.1e6, 0.9e6, 1.3e6],
                         "target": [1.2e6, 1.2e6, 1.2e6]})


def team() -> pd.DataFrame:
    return pd.DataFrame({"name": ["Bob", "Ann", "Cy", "Di"], "value": [300e3, 400e3, 520e3, 50e3],
                         "target": [400e3, 400e3, 500e3, np.nan], "attainment": [0.75, 1.0, 1.04, np.nan],
                         "status": ["red", "green", "green", "none"]})


def tree() -> pd.DataFrame:
    return pd.DataFrame({
        "node": ["bookings", "win", "pipeline", "created"],
        "parent": [None, "bookings", "bookings", "pipeline"],
        "label": ["Bookings", "Win rate", "Pipeline", "Pipeline created"],
        "unit": ["currency", "pct", "currency", "currency"],
        "required": [1.5e6, 33.0, 4.5e6, 1.2e6],
        "actual": [1.2e6, 31.0, 3.9e6, 0.9e6],
        "status": ["red", "amber", "amber", "red"],
    })


def leads() -> pd.DataFrame:
    return pd.DataFrame({"channel": ["Events", "Web", "Partners"], "leads": [40, 120, 35],
                         "conversion_rate": [22.0, 8.0, np.nan]})


# Every chart with a small valid input, and with an empty one.
CHARTS: dict[str, tuple[Callable[[], go.Figure], Callable[[], go.Figure]]] = {
    "attainment_bullets": (lambda: charts.attainment_bullets(bullets_rows(), "EUR"),
                           lambda: charts.attainment_bullets(bullets_rows().iloc[:0], "EUR")),
    "forecast_vs_target": (lambda: charts.forecast_vs_target(1.0e6, 230e3, 1.5e6, "Bookings", "EUR"),
                           lambda: charts.forecast_vs_target(np.nan, np.nan, 1.5e6, "Bookings", "EUR")),
    "pipeline_by_stage": (lambda: charts.pipeline_by_stage(stages(), "EUR"),
                          lambda: charts.pipeline_by_stage(stages().iloc[:0], "EUR")),
    "pipeline_by_close_month": (lambda: charts.pipeline_by_close_month(months(), "EUR"),
                                lambda: charts.pipeline_by_close_month(pd.DataFrame(), "EUR")),
    "funnel": (lambda: charts.funnel(conversion(), "Proposal"), lambda: charts.funnel(pd.DataFrame(), None)),
    "trend": (lambda: charts.trend(periods(), "Bookings", "currency", "EUR", definition=DEF),
              lambda: charts.trend(periods().iloc[:0], "Bookings", "currency", "EUR")),
    "ranked_team": (lambda: charts.ranked_team(team(), "Bookings", "currency", "EUR", definition=DEF),
                    lambda: charts.ranked_team(team().iloc[:0], "Bookings", "currency", "EUR")),
    "driver_tree": (lambda: charts.driver_tree(tree(), "EUR"), lambda: charts.driver_tree(tree().iloc[:0], "EUR")),
    "leads_by_channel": (lambda: charts.leads_by_channel(leads()),
                         lambda: charts.leads_by_channel(leads().iloc[:0])),
}


def hover_texts(trace: go.BaseTraceType) -> list[str]:
    """What a reader sees on hover: the template with each point's customdata filled in."""
    out = []
    for row in trace.customdata:
        text = trace.hovertemplate
        for i, value in enumerate(row):
            text = text.replace(f"%{{customdata[{i}]}}", str(value))
        out.append(text)
    return out


@pytest.mark.parametrize("name", CHARTS)
def test_every_chart_uses_only_finance_bundle_traces_and_a_compact_layout(name: str) -> None:
    fig = CHARTS[name][0]()
    assert fig.data, name
    assert {t.type for t in fig.data} <= FINANCE_TRACES
    assert fig.layout.height is not None and 260 <= fig.layout.height <= 340
    assert fig.layout.template.layout.font.size in (12, 13)
    assert fig.layout.margin.l <= 20 and fig.layout.margin.r <= 20


@pytest.mark.parametrize("name", CHARTS)
def test_every_trace_has_a_hover_template_fed_by_its_points(name: str) -> None:
    for trace in CHARTS[name][0]().data:
        assert trace.hovertemplate and "%{customdata[0]}" in trace.hovertemplate
        assert trace.customdata is not None and len(trace.customdata) > 0


@pytest.mark.parametrize("name", CHARTS)
def test_empty_input_gives_a_small_no_data_figure(name: str) -> None:
    fig = CHARTS[name][1]()
    assert len(fig.data) == 0
    assert [a.text for a in fig.layout.annotations] == ["No data for this period"]
    assert (fig.layout.annotations[0].x, fig.layout.annotations[0].y) == (0.5, 0.5)


def test_attainment_bullets_bars_are_percent_of_target_coloured_by_status_with_value_over_target() -> None:
    fig = charts.attainment_bullets(bullets_rows(), "EUR")
    (bar,) = fig.data
    assert bar.orientation == "h"
    assert list(bar.y) == ["Bookings", "Win rate", "Cycle time"]
    np.testing.assert_allclose(bar.x, [80.0, 103.333333, 88.888889], rtol=1e-6)
    assert list(bar.marker.color) == [RED, GREEN, AMBER]
    assert list(bar.text) == ["1.2M € / 1.5M €", "31 % / 30 %", "45 days / 40 days"]
    hover = hover_texts(bar)
    assert "Attainment: 80 %" in hover[0] and "1.2M €" in hover[0] and DEF in hover[0]
    assert "Won deals / closed deals." in hover[1]
    # the target line at 100 %
    assert [(s.x0, s.x1) for s in fig.layout.shapes] == [(100.0, 100.0)]


def test_status_colours_live_in_one_place() -> None:
    assert markup.STATUS_COLOURS == {"green": GREEN, "amber": AMBER, "red": RED, "none": GREY}


def test_forecast_waterfall_goes_booked_plus_weighted_to_expected_and_annotates_the_gap() -> None:
    # booked 1.0M + weighted 230k = expected 1.23M; target 1.5M: gap 270k, 82 % of target
    fig = charts.forecast_vs_target(1.0e6, 230e3, 1.5e6, "Bookings", "EUR")
    waterfall, target = fig.data
    assert waterfall.type == "waterfall"
    assert list(waterfall.measure) == ["absolute", "relative", "total"]
    assert list(waterfall.x) == ["Booked", "+ Weighted pipeline", "Expected"]
    assert list(waterfall.text) == ["1M €", "+230k €", "1.2M €"]
    assert list(target.y) == [1.5e6] * 3 and target.line.dash == "dash"
    notes = [a.text for a in fig.layout.annotations]
    assert "Gap to target: 270k € (expected at 82 % of target)" in notes
    assert "target 1.5M €" in notes


def test_forecast_above_target_and_without_target() -> None:
    ahead = charts.forecast_vs_target(1.4e6, 200e3, 1.5e6, "Bookings", "USD")
    assert "Expected above target by $100k" in [a.text for a in ahead.layout.annotations]
    untargeted = charts.forecast_vs_target(1.0e6, 0.0, None, "Bookings", "EUR")
    assert [t.type for t in untargeted.data] == ["waterfall"]
    assert [a.text for a in untargeted.layout.annotations] == ["No target set"]


def test_pipeline_by_stage_keeps_the_stage_order_given_and_shows_deal_counts() -> None:
    df = stages().iloc[[2, 0, 1]]  # the report decides the order
    (bar,) = charts.pipeline_by_stage(df, "EUR").data
    assert list(bar.x) == ["Negotiation", "Qualify", "Proposal"]
    assert list(bar.text) == ["90k €", "800k €", "420k €"]
    assert "2 deals" in hover_texts(bar)[0]


def test_pipeline_by_close_month_labels_months() -> None:
    (bar,) = charts.pipeline_by_close_month(months(), "EUR").data
    assert list(bar.x) == ["Mar 2026", "Apr 2026", "May 2026"]
    assert list(bar.y) == [300e3, 500e3, 90e3]


def test_funnel_marks_the_weak_stage_in_colour_and_words() -> None:
    fig = charts.funnel(conversion(), "Proposal")
    bars, bench = fig.data
    assert list(bars.marker.color) == [charts.NEUTRAL, RED, charts.NEUTRAL]
    assert list(bench.x) == [60.0, 48.0, 68.0]
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["<b>weak stage: Proposal converts at 31 % vs 48 % for the team</b>"]
    assert all(c == charts.NEUTRAL for c in charts.funnel(conversion(), None).data[0].marker.color)


def test_trend_draws_the_target_dashed_and_skips_it_when_there_is_none() -> None:
    fig = charts.trend(periods(), "Bookings", "currency", "EUR", definition=DEF)
    actual, target = fig.data
    assert list(actual.x) == ["2026-01", "2026-02", "2026-03"]
    assert target.line.dash == "dash"
    assert "Bookings: 900k €" in hover_texts(actual)[1] and DEF in hover_texts(actual)[1]
    no_target = charts.trend(periods().assign(target=np.nan), "Win rate", "pct", "EUR")
    assert [t.name for t in no_target.data] == ["Actual"]
    assert no_target.layout.yaxis.ticksuffix == " %"


def test_ranked_team_sorts_by_attainment_with_missing_last() -> None:
    (bar,) = charts.ranked_team(team(), "Bookings", "currency", "EUR").data
    assert list(bar.y) == ["Cy", "Ann", "Bob", "Di"]
    np.testing.assert_allclose(bar.x, [104.0, 100.0, 75.0, 0.0])
    assert list(bar.marker.color) == [GREEN, GREEN, RED, GREY]
    assert list(bar.text)[:3] == ["520k € / 500k €", "400k € / 400k €", "300k € / 400k €"]
    assert list(bar.text)[3] == "50k € / —"


def test_ranked_team_without_targets_ranks_by_value() -> None:
    df = team().assign(target=np.nan, attainment=np.nan, status="none")
    fig = charts.ranked_team(df, "Calls", "count", "EUR")
    (bar,) = fig.data
    assert list(bar.y) == ["Cy", "Ann", "Bob", "Di"]
    assert list(bar.x) == [520e3, 400e3, 300e3, 50e3]
    assert fig.layout.shapes == ()  # no target line


def test_driver_tree_is_an_indented_tree_of_markers_text_and_lines() -> None:
    fig = charts.driver_tree(tree(), "EUR")
    (points,) = fig.data
    assert points.type == "scatter" and points.mode == "markers+text"
    # depth-first rows: Bookings, Win rate, Pipeline, Pipeline created; x is the depth
    assert list(points.x) == [0, 1, 1, 2]
    assert list(points.y) == [0, -1, -2, -3]
    assert points.text[0] == "<b>Bookings</b>  need 1.5M € · have 1.2M €"
    assert points.text[1] == "<b>Win rate</b>  need 33 % · have 31 %"
    assert list(points.marker.color) == [RED, AMBER, AMBER, RED]
    assert len(fig.layout.shapes) == 3  # one connector per child


def test_driver_tree_survives_unknown_parents_and_cycles() -> None:
    nodes = tree().assign(parent=["created", "bookings", "bookings", "pipeline"])  # a cycle through the goal
    (points,) = charts.driver_tree(nodes, "EUR").data
    assert len(points.x) == 4
    orphan = tree().assign(parent=[None, "nowhere", "bookings", "pipeline"])
    (points,) = charts.driver_tree(orphan, "EUR").data
    assert sorted(points.x) == [0, 0, 1, 2]


def test_leads_by_channel_sorts_by_leads_and_puts_conversion_on_a_second_axis() -> None:
    fig = charts.leads_by_channel(leads())
    bars, rate = fig.data
    assert list(bars.x) == ["Web", "Events", "Partners"]
    assert list(bars.y) == [120, 40, 35]
    assert rate.yaxis == "y2" and fig.layout.yaxis2.ticksuffix == " %"
    assert "Conversion 8 %" in hover_texts(bars)[0]
    assert "Conversion —" in hover_texts(bars)[2]


def test_crm_text_is_escaped_in_chart_labels_and_json() -> None:
    df = team().assign(name=["<script>alert(1)</script>", "Ann", "Cy", "Di"])
    fig = charts.ranked_team(df, "Bookings", "currency", "EUR")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in list(fig.data[0].y)
    assert "<script>" not in json.dumps(fig.to_plotly_json(), default=str)


def test_missing_columns_name_the_chart_and_the_column() -> None:
    with pytest.raises(RenderError, match=r"Open pipeline by stage needs the column\(s\) count"):
        charts.pipeline_by_stage(stages().drop(columns="count"), "EUR")


def test_driver_tree_leaves_room_for_the_deepest_longest_row() -> None:
    # a chain 5 levels deep whose last label is long: indenting 90 px per level would push it off the chart
    label = "Days left to create opportunities that close in Q"
    nodes = pd.DataFrame({"node": list("abcdef"), "parent": [None, *"abcde"],
                          "label": ["Goal", "B", "C", "D", "E", label], "unit": "count",
                          "required": [1.0] * 6, "actual": [1.0] * 6, "status": "green"})
    fig = charts.driver_tree(nodes, "EUR")
    text = f"{label}  need 1 · have 1"  # 71 characters at about 7 px in a plot about 880 px wide
    px_per_level = 880 / (fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0])
    assert 24 <= px_per_level < 90
    assert 5 * px_per_level + 24 + len(text) * 7 <= 880 + 1e-6
