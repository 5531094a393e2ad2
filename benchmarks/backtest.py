"""Forecast accuracy benchmark: `spm backtest --cadence quarterly` on the seeded demo company (seeds 42 and 7,
scale 1, data up to 2026-10-31), against the goal of issue 14 at mid-quarter, manager level and up: MdAPE <= 10 %,
|bias| <= 5 %, and a lower MdAPE than both baselines measured in the same run (stage weighting, naive run-rate).
It also records the share of booked results inside the forecast's P10-P90 range (about 80 % when it is right).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.main import demo_company

SEEDS = (42, 7)
CADENCE = "quarterly"
LEVELS = ("executive", "director", "manager")
GOAL_MDAPE, GOAL_BIAS = 10.0, 5.0


def goal_met(summary: pd.DataFrame) -> bool:
    """At mid-period, for each level of LEVELS: MdAPE and |bias| within the goal and MdAPE below both baselines."""
    mid = summary[(summary["point"] == "middle") & summary["level"].isin(LEVELS)]
    if len(mid) < len(LEVELS):
        return False
    return bool(((mid["forecast_mdape"] <= GOAL_MDAPE) & (mid["forecast_bias"].abs() <= GOAL_BIAS)
                 & (mid["forecast_mdape"] < mid["stage_mdape"])
                 & (mid["forecast_mdape"] < mid["run_rate_mdape"].fillna(float("inf")))).all())


def run(root: Path) -> dict[str, Any]:
    """Backtest each seed's demo company; return the figures for runs/bench/latest.json."""
    from spm_lib.config import SourceConfig, load_config
    from spm_lib.data.load import load_dataset
    from spm_lib.domain.contract import CONTRACT
    from spm_lib.engine.backtest import format_summary, run_backtest

    base = load_config(root)
    figures: dict[str, Any] = {}
    met = True
    for seed in SEEDS:
        db = demo_company(root, 1.0, seed)
        source = SourceConfig.model_validate({"kind": "duckdb", "path": str(db), "tables": {t: {} for t in CONTRACT}})
        cfg = base.model_copy(update={"source": source})
        t0 = time.perf_counter()
        bt = run_backtest(cfg, load_dataset(cfg), CADENCE)
        seconds = time.perf_counter() - t0
        print(f"backtest, seed {seed}, {CADENCE}, periods {', '.join(bt.rows['period'].unique())} "
              f"({seconds:.1f} s):\n{format_summary(bt)}")
        ok = goal_met(bt.summary)
        met &= ok
        figures[f"backtest_seed{seed}_s"] = round(seconds, 2)
        figures[f"backtest_seed{seed}_goal_met"] = ok
        for r in bt.summary[bt.summary["level"].isin(LEVELS)].itertuples():
            for m in ("forecast", "stage", "run_rate"):
                for stat in ("mdape", "bias"):
                    value = getattr(r, f"{m}_{stat}")
                    figures[f"backtest_seed{seed}_{r.point}_{r.level}_{m}_{stat}_pct"] = (
                        None if pd.isna(value) else round(float(value), 2))
            figures[f"backtest_seed{seed}_{r.point}_{r.level}_in_p10_p90_pct"] = round(float(r.in_range_pct), 2)
    figures["backtest_goal_met"] = met
    print(f"goal (mid-quarter, manager and up: MdAPE <= {GOAL_MDAPE:g} %, |bias| <= {GOAL_BIAS:g} %, better than "
          f"both baselines) {'met' if met else 'NOT met'} on seeds {', '.join(map(str, SEEDS))}")
    return figures
