"""The calibrated forecast (SPEC §5 `forecast_expected`): the probability that an open deal is won within the rest
of a period, learnt from the company's own history, plus the bookings of deals not yet created.

How it learns: at training points t' (the day before each past period starts, then every `step_days`), the deals
open as they stood at t' (as-of reconstruction) are labelled won when, as known at the cut-off, they were won with a
close date in (t', end of that period]. Their win rate is estimated per cell of a feature hierarchy (stage, then
where the close date falls, days left, activity recency, times pushed, age in stage, amount band), each cell's
rate shrunk toward its parent's with `prior` pseudo-deals (empirical Bayes: a cell with few deals keeps about
its parent's rate, one with many its own). A feature whose column is absent is left out. Deals not yet created:
per deal owner, the bookings of deals created after t' and won by the period end, per band of days left, shrunk
toward the company's per-seller rate. Without enough history (fewer than `min_periods` past periods or
`min_won` won outcomes) the forecast is today's stage weighting, and `Calibration.method` says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.data.asof import snapshot
from spm_lib.data.replay import Replay
from spm_lib.domain.contract import Dataset
from spm_lib.engine.context import CubeContext

CALIBRATED, STAGE = "calibrated", "stage weighting"
FEATURES = ("stage", "close", "horizon", "recency", "pushes", "age", "size")
Z90 = 1.2815515655446004  # the standard normal's 90th percentile: P10/P90 = mean -/+ Z90 sigma
HORIZON_EDGES = (30, 60, 100, 190)      # days left in the period
RECENCY_EDGES = (14, 45, 90)            # days since the deal's last activity or change
AGE_EDGES = (30, 90)                    # days in the current stage
PUSH_EDGES = (0, 1, 2)                  # times the close date moved later
NEW_EDGES = (15, 45, 75, 105, 135, 195, 255, 315)  # days left, for deals not yet created
NEXT_DAYS = 90                          # a close date up to this many days after the period end is "next"
ACTIVE_DAYS = 180                       # a seller is active at t' with a deal created in the days before


@dataclass(frozen=True)
class Settings:
    """How much history calibration needs and how strongly it shrinks (defaults suit a few years of CRM data)."""

    prior: float = 20.0        # pseudo-deals a cell's rate borrows from its parent cell
    new_prior: float = 2.0     # pseudo-points a seller's new-deal rate borrows from the company's per-seller rate
    min_periods: int = 4       # past periods (ended by the cut-off) needed
    min_won: int = 30          # won outcomes among the training deals needed
    step_days: int = 30        # a training point every this many days inside each past period
    features: tuple[str, ...] = FEATURES  # the hierarchy, in order (those the data cannot feed are left out)
    sample: int | None = 8000  # win rates are learnt on at most this many deals (every k-th deal)


DEFAULTS = Settings()


# ---------------------------------------------------------------- the data, as it stood on any day
class DealHistory:
    """Opportunities, their history and activities, with the as-of snapshot of any day (each day built once)."""

    def __init__(self, opportunities: pd.DataFrame, history: pd.DataFrame | None,
                 activities: pd.DataFrame | None, stages: StagesConfig) -> None:
        needed = ["opportunity_id", "owner_id", "stage", "amount", "created_date", "close_date", "is_closed", "is_won"]
        self.opportunities = opportunities[[c for c in needed if c in opportunities.columns]]  # no text it won't read
        self.history = history if history is not None and not history.empty else None
        self.stages = stages
        self.ids = pd.Index(opportunities["opportunity_id"].astype("string").unique())
        self.activities = activities[[c for c in ("opportunity_id", "date") if c in activities.columns]] \
            if activities is not None else None
        self._touch_days: tuple[np.ndarray, np.ndarray] | None = None  # built on first use (_touch)
        self._snapshots: dict[date, pd.DataFrame] = {}
        self._samples: dict[int, DealHistory] = {}
        self._replay: Replay | None = None  # the history sorted once for every day's snapshot
        self._owners: tuple[np.ndarray, np.ndarray] | None = None  # owner and creation of each deal (arrays)
        self._features: dict[tuple[date, date, tuple[str, ...]], pd.DataFrame] = {}
        closed = opportunities["is_closed"].astype("boolean").fillna(False).astype(bool) \
            if "is_closed" in opportunities else pd.Series(False, index=opportunities.index)
        close = pd.to_datetime(opportunities["close_date"]) if "close_date" in opportunities \
            else pd.Series(pd.NaT, index=opportunities.index)
        first = close[closed].min()
        self.first_close: date | None = None if pd.isna(first) else first.date()

    @classmethod
    def from_dataset(cls, data: Dataset, stages: StagesConfig) -> DealHistory:
        """The deal history of a loaded dataset."""
        return cls(data.table("opportunities"), data.tables.get("opportunity_history"),
                   data.tables.get("activities"), stages)

    def sample(self, n: int | None) -> DealHistory:
        """The history of at most `n` deals, the same ones on every call (every k-th deal in the table's order:
        spread over time and owners alike); all deals when `n` is None or there are no more than `n`."""
        if n is None or len(self.ids) <= n:
            return self
        if n not in self._samples:
            keep = self.ids[::-(-len(self.ids) // n)]

            def rows(df: pd.DataFrame | None) -> pd.DataFrame | None:
                return None if df is None else df[df["opportunity_id"].astype("string").isin(keep).to_numpy()]

            opps = rows(self.opportunities)
            assert opps is not None
            self._samples[n] = DealHistory(opps, rows(self.history), rows(self.activities), self.stages)
        return self._samples[n]

    def active_sellers(self, day: date) -> np.ndarray:
        """The owners with a deal created in the ACTIVE_DAYS up to the end of `day` (without created_date: every
        owner of a deal)."""
        if self._owners is None:
            o = self.opportunities
            self._owners = (o["owner_id"].astype(str).to_numpy(), pd.to_datetime(o["created_date"]).to_numpy(
                dtype="datetime64[ns]") if "created_date" in o else np.full(len(o), np.datetime64("NaT", "ns")))
        owner, created = self._owners
        end = np.datetime64(day + timedelta(days=1))
        recent = (created > end - np.timedelta64(ACTIVE_DAYS + 1, "D")) & (created < end)
        if "created_date" not in self.opportunities:
            recent = np.ones(len(owner), dtype=bool)
        return pd.unique(owner[recent])

    def use_snapshot(self, day: date, snap: pd.DataFrame) -> None:
        """Take `snap` (asof.snapshot of these deals at `day`, e.g. the cube's) as the snapshot of `day`; its
        `last_touch` column, when it has one, is taken as it is."""
        snap = snap.copy(deep=False)
        self._snapshots[day] = snap if "last_touch" in snap else self._with_touch(snap, day)

    @property
    def available(self) -> set[str]:
        """The features the data can feed (FEATURES minus those whose columns are absent)."""
        o = self.opportunities
        out = {"horizon"}
        if "stage" in o or (self.history is not None and "stage" in self.history):
            out.add("stage")
        if "close_date" in o:
            out.add("close")
        if self.history is not None or (self.activities is not None and "date" in self.activities):
            out.add("recency")
        if self.history is not None and "close_date" in self.history:
            out.add("pushes")
        if self.history is not None or "created_date" in o:
            out.add("age")
        if "amount" in o:
            out.add("size")
        return out

    @property
    def _touch(self) -> tuple[np.ndarray, np.ndarray]:
        """(deal code, day number) of every logged activity on a deal and every history change, by day."""
        if self._touch_days is None:
            self._touch_days = self._touches(self.activities)
        return self._touch_days

    def _touches(self, activities: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
        """(deal code, day number) of every logged activity on a deal and every history change, by day."""
        codes, days = [], []
        if activities is not None and {"opportunity_id", "date"} <= set(activities.columns):
            codes.append(self.ids.get_indexer(activities["opportunity_id"].astype("string")))
            days.append(pd.to_datetime(activities["date"]).to_numpy(dtype="datetime64[ns]"))
        if self.history is not None and "changed_at" in self.history:
            codes.append(self.ids.get_indexer(self.history["opportunity_id"].astype("string")))
            days.append(pd.to_datetime(self.history["changed_at"]).to_numpy(dtype="datetime64[ns]"))
        if not codes:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        code, day = np.concatenate(codes), np.concatenate(days).astype("datetime64[D]").view("int64")
        keep = (code >= 0) & (day != np.iinfo(np.int64).min)
        order = np.argsort(day[keep], kind="stable")
        return code[keep][order], day[keep][order]

    def features(self, day: date, end: date, use: list[str]) -> pd.DataFrame:
        """`open_deal_features` of the deals open at the end of `day` for the period ending `end` (built once;
        the size band is left to the caller, who knows the edges)."""
        key = (day, end, tuple(use))
        if key not in self._features:
            self._features[key] = open_deal_features(self.snapshot(day), day, end, use)
        return self._features[key]

    def snapshot(self, day: date) -> pd.DataFrame:
        """The deals as they stood at the end of `day` (replay.COLUMNS with history, asof.snapshot's without),
        with `last_touch` (the day of the last activity or change)."""
        if day not in self._snapshots:
            if self.history is None:
                snap = snapshot(self.opportunities, None, day, self.stages)
            else:
                if self._replay is None:
                    self._replay = Replay(self.opportunities, self.history, self.stages)
                snap = self._replay.snapshot(day)
            self._snapshots[day] = self._with_touch(snap, day)
        return self._snapshots[day]

    def _with_touch(self, snap: pd.DataFrame, day: date) -> pd.DataFrame:
        """`snap` with column last_touch: the day of each deal's last activity or change up to `day` (NaT: none)."""
        code, touched = self._touch
        n = int(np.searchsorted(touched, (day - date(1970, 1, 1)).days, side="right"))
        last = np.full(len(self.ids), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, code[:n], touched[:n])
        at = self.ids.get_indexer(pd.Index(snap["opportunity_id"].astype("string")))
        days = np.where(at >= 0, last[np.maximum(at, 0)], np.iinfo(np.int64).min)
        snap["last_touch"] = pd.Series(days.astype("datetime64[D]"), index=snap.index).astype("datetime64[ns]")
        return snap


# ---------------------------------------------------------------- features
def _band(values: pd.Series, edges: tuple[float, ...], missing: str = "none") -> pd.Series:
    """The band label of each value: "<=e" for the first edge e it does not exceed, ">last" above all."""
    labels = [f"<={e:g}" for e in edges] + [f">{edges[-1]:g}"]
    v = values.astype("float64").to_numpy()
    at = np.searchsorted(np.asarray(edges, dtype="float64"), v, side="left")
    out = np.asarray(labels, dtype=object)[np.minimum(at, len(edges))]
    return pd.Series(np.where(np.isnan(v), missing, out), index=values.index, dtype=object)


def open_deal_features(snap: pd.DataFrame, day: date, end: date, use: list[str],
                       amount_edges: tuple[float, ...] = ()) -> pd.DataFrame:
    """Per deal open at the end of `day`: its feature bands (columns `use`), owner_id, opportunity_id, amount."""
    is_open = ~snap["is_closed"].astype("boolean").fillna(False).astype(bool)
    o = snap[is_open]
    t, e = pd.Timestamp(day), pd.Timestamp(end)
    out = pd.DataFrame({"opportunity_id": o["opportunity_id"].astype("string"),
                        "owner_id": o["owner_id"].astype("string"),
                        "amount": o["amount"].astype("float64") if "amount" in o else np.nan}, index=o.index)
    close = pd.to_datetime(o["close_date"]) if "close_date" in o else pd.Series(pd.NaT, index=o.index)
    for f in use:
        if f == "stage":
            out[f] = o["stage"].astype("string").fillna("none").astype(object) if "stage" in o else "all"
        elif f == "close":
            out[f] = np.select([close.isna(), close <= t, close <= e, close <= e + pd.Timedelta(days=NEXT_DAYS)],
                               ["none", "past", "in", "next"], "later")
        elif f == "horizon":
            out[f] = _band(pd.Series(float((end - day).days), index=o.index), HORIZON_EDGES)
        elif f == "recency":
            out[f] = _band((t - o["last_touch"]).dt.days, RECENCY_EDGES, "never")
        elif f == "pushes":
            out[f] = _band(o["pushes"].astype("Float64").fillna(np.nan), PUSH_EDGES)
        elif f == "age":
            age = o["days_in_stage"].astype("Float64").astype("float64")
            if age.isna().all() and "created_date" in o:  # no history: days since the deal was created
                age = (t - pd.to_datetime(o["created_date"])).dt.days.astype("float64")
            out[f] = _band(age, AGE_EDGES)
        elif f == "size":
            out[f] = _band(out["amount"], amount_edges) if amount_edges else "all"
    return out


# ---------------------------------------------------------------- the models
@dataclass(frozen=True)
class WinModel:
    """Win rates per cell of the feature hierarchy `features` (level i keys on the first i features), shrunk.

    `values[f]` lists the values feature f had in training; `cells[i]` maps the integer key of a level-(i+1) cell
    (the value codes of its first i+1 features, mixed-radix) to its rate."""

    features: list[str]
    values: dict[str, list[Any]]
    base: float
    cells: list[dict[int, float]]
    amount_edges: tuple[float, ...]
    drift: float  # booked amount / amount at the training point, over the deals won in their window

    def codes(self, feats: pd.DataFrame) -> list[np.ndarray]:
        """Per feature, the code of each row's value among the training values (-1: unseen)."""
        return [pd.Index(self.values[f]).get_indexer(feats[f].astype(object)) for f in self.features]

    def predict(self, feats: pd.DataFrame) -> np.ndarray:
        """The win probability of each row of `open_deal_features`: the rate of its deepest known cell."""
        p = np.full(len(feats), self.base)
        key = np.zeros(len(feats), dtype=np.int64)
        alive = np.ones(len(feats), dtype=bool)
        for f, code, table in zip(self.features, self.codes(feats), self.cells, strict=True):
            key = key * (len(self.values[f]) + 1) + code
            alive &= code >= 0
            found = pd.Series(key).map(table).to_numpy(dtype="float64", na_value=np.nan)
            alive &= ~np.isnan(found)
            p = np.where(alive, found, p)
        return p


def fit_win_model(rows: pd.DataFrame, features: list[str], prior: float, amount_edges: tuple[float, ...],
                  drift: float = 1.0) -> WinModel:
    """Win rates per cell from labelled rows (feature columns and `won`), each shrunk toward its parent cell:
    rate = (won + prior x parent rate) / (deals + prior)."""
    won = rows["won"].to_numpy(dtype="float64")
    base = float(won.mean()) if len(rows) else 0.0
    values = {f: sorted(pd.unique(rows[f].astype(object)).tolist(), key=str) for f in features}
    model = WinModel(features=features, values=values, base=base, cells=[], amount_edges=amount_edges, drift=drift)
    parent = np.full(len(rows), base)
    key = np.zeros(len(rows), dtype=np.int64)
    for f, code in zip(features, model.codes(rows), strict=True):
        key = key * (len(values[f]) + 1) + code
        cell, at = np.unique(key, return_inverse=True)
        n = np.bincount(at, minlength=len(cell)).astype("float64")
        w = np.bincount(at, weights=won, minlength=len(cell))
        first = np.zeros(len(cell), dtype=np.int64)
        first[at[::-1]] = np.arange(len(at))[::-1]  # one row of each cell: its parent rate
        rate = (w + prior * parent[first]) / (n + prior)
        model.cells.append(dict(zip(cell.tolist(), rate.tolist(), strict=True)))
        parent = rate[at]
    return model


@dataclass(frozen=True)
class NewDealModel:
    """Expected bookings of deals not yet created, per seller and band of days left (NEW_EDGES)."""

    per_seller: dict[tuple[str, str], float]   # (owner_id, band) -> expected bookings
    company: dict[str, float]                 # band -> per active seller
    size_ratio: float                         # E[a^2] / E[a] of new deals' booked amounts (for the variance)

    def expected(self, owners: pd.Series, days_left: int) -> pd.Series:
        """Per seller in `owners`, the expected bookings of deals created after the day and won by the end."""
        band = str(_band(pd.Series([float(days_left)]), NEW_EDGES).iloc[0])
        fallback = self.company.get(band, 0.0)
        return pd.Series([self.per_seller.get((str(o), band), fallback) for o in owners], index=owners.index,
                         dtype="float64")


@dataclass(frozen=True)
class Calibration:
    """What the forecast at one cut-off learnt: the method used, why, and the models (None under stage weighting)."""

    method: str
    reason: str
    grain: str
    cutoff: date
    periods: int
    won: int
    win: WinModel | None = None
    new: NewDealModel | None = None
    stage_probabilities: dict[str, float] = field(default_factory=dict)
    model_error: float = 0.0  # relative error all deals share (out of period, beyond the deals' own variance)


def first_whole_period(calendar: Any, grain: str, first: date) -> Any:
    """The first `grain` period that starts on or after day `first`."""
    period = calendar.period(grain, first)
    return calendar.shift(period, 1) if period.start < first else period


def training_points(calendar: Any, grain: str, first: date, cutoff: date, step_days: int) -> list[tuple[date, date]]:
    """(t', period end) pairs: the day before each `grain` period that starts on or after `first` and ends by
    `cutoff`, then every `step_days` inside it."""
    out: list[tuple[date, date]] = []
    period = first_whole_period(calendar, grain, first)
    while period.end <= cutoff:
        day = period.start - timedelta(days=1)
        while day < period.end:
            out.append((day, period.end))
            day += timedelta(days=step_days)
        period = calendar.shift(period, 1)
    return out


@dataclass(frozen=True)
class Outcomes:
    """The won deals as known at a cut-off: id, owner, created day, close day and booked amount (arrays)."""

    ids: pd.Index
    owner: np.ndarray
    created: np.ndarray
    close: np.ndarray
    amount: np.ndarray

    @classmethod
    def of(cls, known: pd.DataFrame) -> Outcomes:
        """The won deals of the snapshot `known`."""
        w = known[known["is_won"].astype("boolean").fillna(False).astype(bool)]
        created = (pd.to_datetime(w["created_date"]) if "created_date" in w
                   else pd.Series(pd.NaT, index=w.index, dtype="datetime64[ns]"))
        return cls(ids=pd.Index(w["opportunity_id"].astype("string")), owner=w["owner_id"].astype(str).to_numpy(),
                   created=created.to_numpy(dtype="datetime64[ns]"),
                   close=_column(w, "close_date").to_numpy(dtype="datetime64[ns]"),
                   amount=_column(w, "amount").fillna(0.0).to_numpy())

    def won_in(self, ids: pd.Series, start: date, end: date) -> tuple[np.ndarray, np.ndarray]:
        """For deals `ids`: won with a close date in (start, end], and their booked amount (0 if not)."""
        at = self.ids.get_indexer(pd.Index(ids.astype("string")))
        close = np.where(at >= 0, self.close[np.maximum(at, 0)], np.datetime64("NaT"))
        hit = (at >= 0) & (close > np.datetime64(start)) & (close <= np.datetime64(end))
        return hit, np.where(hit, self.amount[np.maximum(at, 0)], 0.0)

    def new_deal_rows(self, active: np.ndarray, day: date, end: date) -> pd.DataFrame:
        """Per seller in `active` (and any seller who booked): bookings of deals created after `day` and won with a
        close date up to `end`, with the band of days left."""
        hit = (self.created >= np.datetime64(day + timedelta(days=1))) & (self.close <= np.datetime64(end))
        booked = pd.Series(self.amount[hit]).groupby(self.owner[hit]).sum()
        values = booked.reindex(pd.Index(active).union(booked.index), fill_value=0.0)
        band = str(_band(pd.Series([float((end - day).days)]), NEW_EDGES).iloc[0])
        return pd.DataFrame({"owner_id": values.index.astype(str), "band": band,
                             "booked": values.to_numpy(dtype="float64")})


def calibrate(deals: DealHistory, calendar: Any, grain: str, cutoff: date, stage_probabilities: dict[str, float],
              settings: Settings = DEFAULTS) -> Calibration:
    """Learn the win model and the new-deal model from the data known at the end of `cutoff`, for periods of
    `grain`; stage weighting (with the reason) when the history is too short."""
    def stage_only(reason: str, periods: int = 0, won: int = 0) -> Calibration:
        return Calibration(method=STAGE, reason=reason, grain=grain, cutoff=cutoff, periods=periods, won=won,
                           stage_probabilities=stage_probabilities)

    if deals.history is None:
        return stage_only("no opportunity history: stage probabilities only")
    if deals.first_close is None:
        return stage_only("no closed deal yet: stage probabilities only")
    points = training_points(calendar, grain, deals.first_close, cutoff, settings.step_days)
    n_periods = len({end for _, end in points})
    known = Outcomes.of(deals.snapshot(cutoff))
    use = [f for f in settings.features if f in deals.available]
    learn = deals.sample(settings.sample)
    rows, new_rows = [], []
    for i, (day, end) in enumerate(points):
        feats = learn.features(day, end, use)
        won, booked = known.won_in(feats["opportunity_id"], day, end)
        rows.append(feats.assign(won=won, booked=booked, point=i, period=end))
        new_rows.append(known.new_deal_rows(deals.active_sellers(day), day, end).assign(point=i))
    train = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    n_won = int(train["won"].sum()) if len(train) else 0
    if n_periods < settings.min_periods or n_won < settings.min_won:
        reason = (f"{n_periods} past periods and {n_won} won deals in the history up to {cutoff}; calibration "
                  f"needs {settings.min_periods} periods and {settings.min_won} won deals: stage probabilities only")
        return stage_only(reason, n_periods, n_won)
    amounts = train["amount"].dropna()
    edges = tuple(float(x) for x in np.unique(np.quantile(amounts, [1 / 3, 2 / 3]))) if len(amounts) else ()
    if "size" in use:  # the bands need the edges, known only now
        train["size"] = _band(train["amount"], edges) if edges else "all"
    won_rows = train[train["won"]]
    at_point = won_rows["amount"].sum()
    drift = float(won_rows["booked"].sum() / at_point) if at_point > 0 else 1.0
    win = fit_win_model(train, use, settings.prior, edges, drift)
    new_train = pd.concat(new_rows, ignore_index=True)
    new = _fit_new_deals(new_train, settings.new_prior)
    p = out_of_period(train, lambda rows: fit_win_model(rows, use, settings.prior, edges, drift))
    error = shared_error(train, p, drift)
    reason = (f"calibrated on {n_periods} past {grain}s up to {cutoff} ({len(train):,} open-deal snapshots, "
              f"{n_won:,} won in their period); features: {', '.join(use)}")
    return Calibration(method=CALIBRATED, reason=reason, grain=grain, cutoff=cutoff, periods=n_periods, won=n_won,
                       win=win, new=new, stage_probabilities=stage_probabilities, model_error=error)


def shared_error(train: pd.DataFrame, p: np.ndarray, drift: float = 1.0) -> float:
    """The relative error every deal shares (seasons, a market, the model's own drift), which the per-deal variance
    leaves out: over the training points t, e² = Σ [(booked_t − expected_t)² − Σ per-deal variance_t] / Σ
    expected_t² (method of moments, 0 when the deals' own variance explains the spread), with expected_t = Σ amount
    × `drift` × p. `p`: each row's win probability learnt without its own period (`out_of_period`): rates fitted
    on a period itself follow its luck and understate the error a forecast meets. Only the excess over the deals'
    own variance is shared: the raw spread would count that variance twice, and would weigh a point with little
    left to book as much as a point at the period's start."""
    value = train["amount"].fillna(0.0).to_numpy() * drift
    point = train["point"].to_numpy()
    expected = pd.Series(value * p).groupby(point).sum()
    variance = pd.Series(value ** 2 * p * (1 - p)).groupby(point).sum()
    booked = train.groupby("point")["booked"].sum()
    scale = float((expected ** 2).sum())
    if scale <= 0:
        return 0.0
    excess = float((((booked - expected) ** 2) - variance).sum())
    return math.sqrt(max(excess, 0.0) / scale)


def out_of_period(train: pd.DataFrame, fit: Callable[[pd.DataFrame], WinModel]) -> np.ndarray:
    """Each training row's win probability from the model `fit` on the rows of the other periods (column `period`);
    in-sample when the rows hold one period only (or no `period` column)."""
    periods = train["period"].to_numpy() if "period" in train else np.zeros(len(train))
    names = pd.unique(periods)
    if len(names) < 2:
        return fit(train).predict(train)
    p = np.empty(len(train))
    for name in names:
        held = periods == name
        p[held] = fit(train[~held]).predict(train[held])
    return p


def _fit_new_deals(rows: pd.DataFrame, prior: float) -> NewDealModel:
    """Per seller and band, mean bookings of new deals, shrunk toward the company's per-seller mean."""
    company = rows.groupby("band")["booked"].mean()
    g = rows.groupby(["owner_id", "band"])["booked"].agg(["sum", "size"])
    comp = company.reindex(g.index.get_level_values("band")).to_numpy()
    rate = (g["sum"] + prior * comp) / (g["size"] + prior)
    b = rows["booked"]
    ratio = float((b ** 2).sum() / b.sum()) if b.sum() > 0 else 0.0
    return NewDealModel(per_seller={(str(k[0]), str(k[1])): float(v) for k, v in zip(rate.index, rate, strict=True)},
                        company={str(k): float(v) for k, v in company.items()}, size_ratio=ratio)


# ---------------------------------------------------------------- forecasting
def deal_forecast(cal: Calibration, deals: DealHistory, day: date, end: date) -> pd.DataFrame:
    """Per deal open at the end of `day`: owner_id, opportunity_id, amount, probability of being won by `end`,
    expected bookings and their variance. Stage weighting counts only deals dated in (day, end]."""
    snap = deals.snapshot(day)
    if cal.win is not None:
        feats = open_deal_features(snap, day, end, cal.win.features, cal.win.amount_edges)
        p = cal.win.predict(feats)
        scale = cal.win.drift
    else:
        feats = open_deal_features(snap, day, end, ["stage", "close"])
        p = feats["stage"].map(cal.stage_probabilities).astype("float64").fillna(0.0).to_numpy()
        p = np.where(feats["close"].to_numpy() == "in", p, 0.0)
        scale = 1.0
    amount = feats["amount"].fillna(0.0).to_numpy()
    return pd.DataFrame({"owner_id": feats["owner_id"].to_numpy(), "opportunity_id": feats["opportunity_id"]
                         .to_numpy(), "amount": amount, "probability": p, "expected": amount * p * scale,
                         "variance": (amount * scale) ** 2 * p * (1 - p)})


def booked_between(snap: pd.DataFrame, start: date, end: date) -> pd.Series:
    """Bookings per deal owner (index owner_id) of deals won in `snap` with a close date in [start, end]."""
    won = snap["is_won"].astype("boolean").fillna(False).astype(bool)
    close = _column(snap, "close_date")
    keep = (won & (close >= pd.Timestamp(start)) & (close <= pd.Timestamp(end))).to_numpy(dtype=bool)
    return _column(snap, "amount")[keep].groupby(snap["owner_id"][keep].astype("string")).sum().astype("float64")


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A date (close_date) or number (amount) column of a snapshot as datetime64 / float64; all missing when the
    data has no such column."""
    if name == "close_date":
        return (pd.to_datetime(df[name]).astype("datetime64[ns]") if name in df
                else pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]"))
    return df[name].astype("float64") if name in df else pd.Series(np.nan, index=df.index, dtype="float64")


def per_scope(values: pd.DataFrame, ancestors: pd.DataFrame) -> pd.DataFrame:
    """Sum the columns of `values` (indexed by deal owner id) into every scope each owner counts in (index:
    scope owner id); `ancestors` holds the (owner_id, scope_id) pairs valid on the day."""
    a = ancestors[["owner_id", "scope_id"]].astype(str)
    v = values.copy()
    v.index = v.index.astype(str)
    joined = a.merge(v, left_on="owner_id", right_index=True, how="inner")
    out = joined.drop(columns="owner_id").groupby("scope_id").sum()
    return out.reindex(pd.Index(a["scope_id"].unique(), name="owner_id"), fill_value=0.0)


def scope_forecast(cal: Calibration, deals: DealHistory, day: date, period_start: date, end: date,
                   ancestors: pd.DataFrame) -> pd.DataFrame:
    """Per scope (index owner_id): to_date (booked from `period_start` to `day`), open_expected, new_expected,
    expected, p10, p90 and method, for the period ending `end` forecast at the end of `day`."""
    per_deal = deal_forecast(cal, deals, day, end)
    by_owner = per_deal.groupby("owner_id")[["expected", "variance"]].sum()
    to_date = booked_between(deals.snapshot(day), period_start, day) if day >= period_start else pd.Series(
        dtype="float64")
    sellers = pd.Index(by_owner.index.union(to_date.index).astype(str))
    if cal.new is not None:
        sellers = sellers.union(pd.Index(deals.active_sellers(day)))
        new = cal.new.expected(pd.Series(sellers, index=sellers), (end - day).days)
        new_var = new * cal.new.size_ratio
    else:
        new = new_var = pd.Series(0.0, index=sellers)
    leaf = pd.DataFrame({"to_date": to_date.reindex(sellers, fill_value=0.0),
                         "open_expected": by_owner["expected"].reindex(sellers, fill_value=0.0),
                         "new_expected": new.reindex(sellers, fill_value=0.0),
                         "variance": by_owner["variance"].reindex(sellers, fill_value=0.0)
                         + new_var.reindex(sellers, fill_value=0.0)}, index=sellers)
    out = per_scope(leaf, ancestors)
    out["expected"] = out["to_date"] + out["open_expected"] + out["new_expected"]
    shared = cal.model_error * (out["open_expected"] + out["new_expected"])
    sigma = np.sqrt(out.pop("variance") + shared ** 2)
    out["p10"] = np.maximum(out["expected"] - Z90 * sigma, out["to_date"])
    out["p90"] = out["expected"] + Z90 * sigma
    out["method"] = cal.method
    return out


# ---------------------------------------------------------------- the cube's forward period
def cube_forecast(ctx: CubeContext, probabilities: pd.DataFrame, last_touch: np.ndarray,
                  settings: Settings = DEFAULTS) -> tuple[pd.DataFrame, Calibration]:
    """The forecast of the run's forward period for every scope (index owner_id: rest = expected bookings after
    as_of, p10_rest, p90_rest), learnt from the run's data up to as_of; and the calibration (method, reason).
    `last_touch`: per deal of the run's snapshot, the day of its last activity or history change."""
    q = ctx.windows.forward
    deals = DealHistory.from_dataset(ctx.data, ctx.cfg.stages)
    deals.use_snapshot(ctx.as_of, ctx.snapshot.assign(last_touch=pd.Series(last_touch, index=ctx.snapshot.index)))
    stage_p = dict(zip(probabilities["stage"].astype(str), probabilities["probability"].astype(float), strict=True))
    cal = calibrate(deals, ctx.calendar, str(q.grain), ctx.as_of, stage_p, settings)
    day = pd.Timestamp(ctx.as_of)
    a = ctx.ancestors
    valid = (a["valid_from"].isna() | (a["valid_from"] <= day)) & (a["valid_to"].isna() | (a["valid_to"] >= day))
    fc = scope_forecast(cal, deals, ctx.as_of, q.start, q.end, a[valid.to_numpy(dtype=bool)])
    rest = pd.DataFrame({"rest": fc["expected"] - fc["to_date"], "p10_rest": fc["p10"] - fc["to_date"],
                         "p90_rest": fc["p90"] - fc["to_date"]}, index=fc.index)
    return rest, cal
