"""The report's charts: finance-bundle trace types only, status colours, units in hover, empty inputs, order."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from spm_lib.metrics import kpis
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


def value_column(fig: go.Figure) -> list[str]:
    """The texts of horizontal bars, top to bottom: a column right of the plot, where no line can cross them."""
    column = [a for a in fig.layout.annotations if a.yref == "y"]
    assert all(a.xref == "paper" and a.x == 1 and a.xanchor == "left" for a in column)
    return [a.text for a in column]


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
    # horizontal bars keep their values in a column right of the plot (about 7 px a character): nothing wider
    column = max((len(a.text) * 7 + 12 for a in fig.layout.annotations if a.yref == "y"), default=20)
    assert fig.layout.margin.l <= 20 and fig.layout.margin.r <= max(20, column)


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
    assert value_column(fig) == ["1.2M € / 1.5M €", "31 % / 30 %", "45 days / 40 days"]
    assert bar.text is None and fig.layout.xaxis.range[1] == pytest.approx(103.333333 * 1.04)
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
    assert list(waterfall.x) == ["Booked", "+ Weighted<br>pipeline", "Expected"]  # two lines: fits a phone
    assert list(waterfall.text) == ["1M €", "+230k €", "1.2M €"]
    assert list(target.y) == [1.5e6] * 3 and target.line.dash == "dash"
    notes = [a.text for a in fig.layout.annotations]
    # the target is said above the plot, under the title, not on its line (where it met the bars' text)
    assert notes == ["Expected 82 % of the 1.5M € target: 270k € short"]
    assert (fig.layout.annotations[0].x, fig.layout.annotations[0].xanchor) == (0, "left")


def test_forecast_above_target_and_without_target() -> None:
    ahead = charts.forecast_vs_target(1.4e6, 200e3, 1.5e6, "Bookings", "USD")
    assert [a.text for a in ahead.layout.annotations] == ["Expected $100k above the $1.5M target"]
    untargeted = charts.forecast_vs_target(1.0e6, 0.0, None, "Bookings", "EUR")
    assert [t.type for t in untargeted.data] == ["waterfall"]
    assert [a.text for a in untargeted.layout.annotations] == ["No target set"]


def test_pipeline_by_stage_keeps_the_stage_order_given_and_shows_deal_counts() -> None:
    df = stages().iloc[[2, 0, 1]]  # the report decides the order
    fig = charts.pipeline_by_stage(df, "EUR")
    (bar,) = fig.data
    assert bar.orientation == "h"  # stage names on the side: they never collide on a phone
    assert list(bar.y) == ["Negotiation", "Qualify", "Proposal"]
    assert value_column(fig) == ["90k €", "800k €", "420k €"]
    assert "2 deals" in hover_texts(bar)[0]


def test_pipeline_by_close_month_labels_months() -> None:
    (bar,) = charts.pipeline_by_close_month(months(), "EUR").data
    assert list(bar.x) == ["Mar<br>2026", "Apr<br>2026", "May<br>2026"]
    assert list(bar.y) == [300e3, 500e3, 90e3]


def test_close_month_span_covers_the_next_six_months_with_zeros_and_nothing_else() -> None:
    close = pd.Series(pd.to_datetime(["2026-11-03", "2026-11-20", "2027-01-05", "2027-05-01", "2026-10-01", None]))
    amount = pd.Series([10e3, 5e3, 7e3, 100e3, 3e3, 4e3])
    df = charts.close_month_span(close, amount, "2026-10-31")
    # Nov 10k + 5k; Jan 7k; May 2027 is the 7th month and Oct 2026 is past: left out; no close date: left out
    assert [str(m) for m in df["month"]] == ["2026-11", "2026-12", "2027-01", "2027-02", "2027-03", "2027-04"]
    assert df["value"].tolist() == [15e3, 0.0, 7e3, 0.0, 0.0, 0.0]
    # a weekly as-of inside a month starts with that month
    assert str(charts.close_month_span(close, amount, "2026-10-25")["month"].iloc[0]) == "2026-10"


def test_funnel_marks_the_weak_stage_in_colour_and_words() -> None:
    fig = charts.funnel(conversion(), "Proposal")
    bars, bench = fig.data
    assert list(bars.marker.color) == [charts.NEUTRAL, RED, charts.NEUTRAL]
    assert list(bench.x) == [60.0, 48.0, 68.0]
    notes = [a.text for a in fig.layout.annotations]
    # wrapped to fit a phone, the chart grown by the extra line
    assert notes == ["<b>weak stage: Proposal converts at</b><br><b>31 % vs 48 % for the team</b>"]
    assert fig.layout.margin.b == 58 + 16
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


def test_trend_leaves_out_the_periods_before_the_data_starts() -> None:
    # FY2023 has no bookings and no target: the data starts later; a 0 after the start is a real 0
    df = pd.DataFrame({"period": ["FY2023", "FY2024", "FY2025", "FY2026"], "value": [0.0, 5.7e6, 0.0, 6.2e6],
                       "target": [np.nan, 6.3e6, np.nan, 7.0e6]})
    (actual, target) = charts.trend(df, "Bookings", "currency", "EUR").data
    assert list(actual.x) == ["FY2024", "FY2025", "FY2026"]
    assert list(actual.y) == [5.7e6, 0.0, 6.2e6]
    nothing = df.assign(value=0.0, target=np.nan)
    assert [a.text for a in charts.trend(nothing, "Bookings", "currency", "EUR").layout.annotations] == [
        charts.NO_DATA]


def test_nps_is_a_score_in_the_registry_and_reads_as_points() -> None:
    assert kpis.get("nps").unit == "score"
    assert [markup.fmt_value(v, "score") for v in (4.07, -12.0, 0.0, 32.0)] == ["+4.1", "-12", "0", "+32"]
    fig = charts.trend(periods().assign(value=[4.07, 10.0, -3.0], target=np.nan), "NPS", "score", "EUR")
    assert "NPS: +4.1" in hover_texts(fig.data[0])[0] and fig.layout.yaxis.ticksuffix == ""


def test_ranked_team_sorts_by_attainment_with_missing_last() -> None:
    (bar,) = charts.ranked_team(team(), "Bookings", "currency", "EUR").data
    assert list(bar.y) == ["Cy", "Ann", "Bob", "Di"]
    np.testing.assert_allclose(bar.x, [104.0, 100.0, 75.0, 0.0])
    assert list(bar.marker.color) == [GREEN, GREEN, RED, GREY]
    assert value_column(charts.ranked_team(team(), "Bookings", "currency", "EUR")) == [
        "520k € / 500k €", "400k € / 400k €", "300k € / 400k €", "50k € / —"]


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
    assert points.text[0] == "<b>Bookings</b><br>need 1.5M € · have 1.2M €"  # two short lines: fits a phone
    assert points.text[1] == "<b>Win rate</b><br>need 33 % · have 31 %"
    assert list(points.marker.color) == [RED, AMBER, AMBER, RED]
    assert len(fig.layout.shapes) == 3  # one connector per child


def test_driver_tree_survives_unknown_parents_and_cycles() -> None:
    nodes = tree().assign(parent=["created", "bookings", "bookings", "pipeline"])  # a cycle through the goal
    (points,) = charts.driver_tree(nodes, "EUR").data
    assert len(points.x) == 4
    orphan = tree().assign(parent=[None, "nowhere", "bookings", "pipeline"])
    (points,) = charts.driver_tree(orphan, "EUR").data
    assert sorted(points.x) == [0, 0, 1, 2]


def test_leads_by_channel_ranks_channels_with_leads_and_conversion_in_the_value_column() -> None:
    fig = charts.leads_by_channel(leads())
    (bars,) = fig.data
    assert bars.orientation == "h"
    assert list(bars.y) == ["Web", "Events", "Partners"]
    assert list(bars.x) == [120, 40, 35]
    assert value_column(fig) == ["120 leads · 8 % conv.", "40 leads · 22 % conv.", "35 leads · — conv."]
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
    # a chain 5 levels deep whose last label is long: indenting 36 px per level would push it off a phone
    label = "Opportunities to create in Q"
    nodes = pd.DataFrame({"node": list("abcdef"), "parent": [None, *"abcde"],
                          "label": ["Goal", "B", "C", "D", "E", label], "unit": "count",
                          "required": [1.0] * 6, "actual": [1.0] * 6, "status": "green"})
    fig = charts.driver_tree(nodes, "EUR")
    # its longest line (the label, 28 characters at about 7 px) in a plot 340 px wide (a 390 px phone)
    px_per_level = 340 / (fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0])
    assert 16 <= px_per_level < 36
    assert 5 * px_per_level + 24 + len(label) * 7 <= 340 + 1e-6


def movement() -> pd.DataFrame:
    return pd.DataFrame({"step": ["Start", "New deals", "Won", "Lost", "Now"], "value": [900e3, 250e3, -120e3, 0.0,
                                                                                      1030e3],
                         "deals": [30, 8, 3, 0, 35], "definition": ["Open at the start."] * 5})


@pytest.mark.parametrize("name", [*CHARTS, "pipeline_movement"])
def test_charts_drawn_unchecked_are_the_figures_plotly_checks(name: str) -> None:
    """The charts skip plotly's property checks for speed; drawn with them on, every figure is the same."""
    makers = CHARTS.get(name) or (lambda: charts.pipeline_movement(movement(), "EUR"),
                                  lambda: charts.pipeline_movement(movement().iloc[:0], "EUR"))
    for make in makers:
        with charts.checked():
            want = make()
        got = make()
        assert json.loads(got.to_json()) == json.loads(want.to_json())
    assert json.loads(makers[0]().to_json())["data"]  # the figures compared are not empty
