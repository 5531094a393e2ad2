"""The seeded demo company: a realistic CRM (org, deals with full history, activities, leads, targets,
forecasts, costs, surveys) written into a DuckDB file under the contract table and column names.

Everything is vectorised numpy driven by one `np.random.default_rng(seed)`, so the same seed and end date
give identical data. Fiscal years are calendar years (the default config: January start, named by end).
Times are "day numbers" (days since 1970-01-01) as floats; the fraction of a day maps onto 08:00-19:00.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spm_lib.domain.contract import CONTRACT
from spm_lib.errors import ConfigError

EPOCH = date(1970, 1, 1)
OPEN_STAGES = ("Prospecting", "Qualification", "Needs analysis", "Proposal", "Negotiation")
STAGES = (*OPEN_STAGES, "Closed Won", "Closed Lost")
WON, LOST = 5, 6
LEVELS = ("executive", "director", "manager", "rep")
EMAIL_DOMAIN = "acme-demo.example"

# (name, list price EUR, gross margin share)
PRODUCTS = (("Core Platform", 24_000, 0.78), ("Analytics", 15_000, 0.82), ("Integrations", 9_000, 0.70),
            ("Enterprise Suite", 60_000, 0.74), ("Support Plus", 6_000, 0.60), ("Training", 4_000, 0.45))
# (name, share of accounts, deal size factor, win factor, discount beta a, product mix)
SEGMENTS = (("SMB", 0.60, 0.5, 1.10, 1.2, (0.30, 0.15, 0.15, 0.02, 0.23, 0.15)),
            ("Mid-Market", 0.30, 1.0, 1.00, 1.6, (0.30, 0.22, 0.18, 0.10, 0.12, 0.08)),
            ("Enterprise", 0.10, 2.4, 0.80, 2.5, (0.20, 0.20, 0.15, 0.30, 0.10, 0.05)))
# (channel, lead -> opportunity conversion rate, share of lead-sourced deals, share of rep-sourced deals)
CHANNELS = (("paid", 0.10, 0.20, 0.00), ("outbound", 0.06, 0.20, 0.55), ("referral", 0.40, 0.20, 0.20),
            ("inbound", 0.20, 0.25, 0.15), ("events", 0.12, 0.15, 0.10))
ACTIVITY_TYPES = (("call", 0.35, 0.0), ("email", 0.35, 0.0), ("meeting", 0.18, 0.4), ("demo", 0.12, 0.25))
FORECAST_CATEGORIES = ("pipeline", "best case", "commit", "closed", "omitted")
NEXT_STEPS = ("Book discovery call", "Qualify budget and timing", "Run the demo", "Send proposal",
              "Follow up on proposal", "Negotiate terms with procurement", "Get signature")

CLOSE_SEASON = (7, 7, 9, 7, 8, 9, 5, 4, 9, 9, 11, 15)   # close-date weight per calendar month
PHASING = (6, 7, 9, 7, 8, 10, 6, 5, 9, 9, 10, 14)       # target phasing per fiscal month
TARGET_GROWTH = (1.00, 1.08, 1.15)                      # rep bookings target vs average, per fiscal year
LOST_REACH = (0.30, 0.25, 0.20, 0.15, 0.10)             # last open stage reached by lost deals
OPPS_PER_YEAR = 180
ACCOUNTS_PER_SELLER = 40
HORIZON_DAYS = 180                                      # natural close dates run this far past `end`
RATES = {"stale": 0.055, "past_close": 0.045, "early_closing": 0.05, "pushed": 0.05, "missing": 0.015}
HYGIENE_LOGIT = (0.6, 0.8, 1.3)   # a seller's CRM hygiene: logistic of a + b x (1 - mess) + normal noise (sd c)
FORECAST_HYGIENE = 0.7            # of an owner who sells nothing (a manager): a good forecaster
SLOPPY_SLOPE = 8.0                # a deal's odds of a data problem: exp(-slope x its seller's hygiene)
SQL_TYPES = {"str": "VARCHAR", "float": "DOUBLE", "int": "BIGINT", "date": "DATE", "datetime": "TIMESTAMP",
             "bool": "BOOLEAN"}

FIRST_NAMES = (
    "Alice", "Thomas", "Camille", "Lucas", "Emma", "Hugo", "Chloe", "Louis", "Lea", "Nathan", "Manon", "Jules",
    "Sarah", "Adam", "Ines", "Paul", "Julie", "Victor", "Laura", "Arthur", "Clara", "Gabriel", "Anna", "Leo",
    "Marie", "Antoine", "Eva", "Maxime", "Zoe", "Martin", "Lina", "Hector", "Nora", "Simon", "Elise", "Oscar",
    "Jade", "Samuel", "Alix", "Felix", "Rose", "Noah", "Maya", "Theo", "Sofia", "David", "Helene", "Marc",
    "Claire", "Pierre", "Ana", "Jonas", "Lucie", "Romain", "Irene", "Bruno", "Agathe", "Daniel", "Eloise",
    "Fabien", "Greta", "Ivan", "Johanna", "Karim")
LAST_NAMES = (
    "Martin", "Bernard", "Dubois", "Durand", "Leroy", "Moreau", "Laurent", "Simon", "Michel", "Lefebvre",
    "Garcia", "Roux", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent",
    "Muller", "Schmidt", "Weber", "Fischer", "Meyer", "Wagner", "Becker", "Hoffmann", "Rossi", "Russo",
    "Ferrari", "Bianchi", "Romano", "Costa", "Silva", "Santos", "Pereira", "Lopez", "Martinez", "Sanchez",
    "Smith", "Jones", "Taylor", "Brown", "Wilson", "Evans", "Walker", "Wright", "Jansen", "De Vries",
    "Peeters", "Janssens", "Nowak", "Kowalski", "Novak", "Horvat", "Nielsen", "Hansen", "Larsen", "Berg",
    "Lindqvist", "Virtanen", "Murphy", "Kelly")
ACCOUNT_WORDS = (
    ("Blue", "North", "Silver", "Green", "Bright", "Red", "Golden", "Swift", "Clear", "Iron", "Oak", "Pine",
     "Stone", "River", "Summit", "Harbor", "Alpine", "Coastal", "Urban", "Royal", "Grand", "Prime", "Nova",
     "Atlas", "Polar", "Solar", "Lunar", "Eastern", "Western", "Central", "Pacific", "Atlantic", "Nordic",
     "Sunny", "Crystal", "Maple", "Cedar", "Falcon", "Eagle", "Orion"),
    ("Bridge", "Field", "Gate", "Path", "Point", "Ridge", "Wave", "Peak", "Valley", "Forge", "Line", "Port",
     "Works", "Crest", "Light", "Stream", "Wind", "Rock", "Lake", "Hill", "Bay", "Star", "Leaf", "Tree",
     "Spring", "Vista", "Ward", "Well", "Wood", "Yard", "Mill", "Dale", "Brook", "Cross", "Haven", "Mark",
     "Side", "Field Co", "Shore", "Land"),
    ("Logistics", "Foods", "Pharma", "Energy", "Retail", "Media", "Software", "Systems", "Finance", "Insurance",
     "Telecom", "Textiles", "Chemicals", "Motors", "Hotels", "Health", "Labs", "Robotics", "Construction",
     "Packaging", "Travel", "Consulting", "Semiconductors", "Beverages", "Furniture", "Aerospace",
     "Agritech", "Security", "Education", "Utilities"),
    ("SA", "SAS", "GmbH", "Ltd", "Inc", "BV"))


def default_end(today: date) -> date:
    """The last day of the last closed calendar month before `today`."""
    return today.replace(day=1) - timedelta(days=1)


def generate(path: Path, *, seed: int = 42, scale: float = 1.0, end: date) -> dict[str, int]:
    """Write the demo company up to `end` into the DuckDB file `path` (atomically); return rows per table."""
    if not scale > 0:
        raise ConfigError(f"demo scale must be a positive number (got {scale}); use e.g. --scale 1")
    rng = np.random.default_rng(seed)
    end_day = (end - EPOCH).days
    start_day = (date(end.year - 2, 1, 1) - EPOCH).days
    org = _org(rng, scale)
    sellers = _sellers(rng, org)
    n_accounts = len(sellers.owner) * ACCOUNTS_PER_SELLER
    acc_segment = rng.choice(len(SEGMENTS), n_accounts, p=[s[1] for s in SEGMENTS])
    plan = _plan(rng, sellers, acc_segment, start_day, end_day)
    mess = _mess(rng, plan, sellers, end_day)
    _serial_pushes(rng, plan, mess.serial, end_day)
    ev = _events(plan, mess, end_day)
    final = _final_state(rng, plan, mess, ev, end_day)
    months = _months(start_day, end_day)
    targets, target_grid = _targets(rng, org, sellers, plan, end.year)
    accounts = _accounts_table(rng, plan, final, acc_segment, start_day, end_day)
    tables = {
        "owners": _owners_table(rng, org, start_day),
        "opportunities": _opportunities_table(rng, plan, final, org, sellers, acc_segment),
        "opportunity_history": _history_table(ev),
        "activities": _activities_table(rng, plan, mess, final, org, sellers, start_day, end_day),
        "leads": _leads_table(rng, plan, org, sellers, end_day),
        "accounts": accounts,
        "targets": targets,
        "forecasts": _forecasts_table(rng, org, sellers, plan, months, target_grid, end.year),
        "surveys": _surveys_table(rng, accounts, start_day, end_day),
        "costs": _costs_table(rng, org, sellers, plan, final, months),
    }
    return _write(Path(path), tables)


# ---------------------------------------------------------------- organisation
@dataclass(frozen=True)
class _Org:
    """Owners in id order: executive, directors, managers, reps; `parent` is -1 at the top."""

    ids: list[str]
    level: np.ndarray
    parent: np.ndarray
    first: np.ndarray
    last: np.ndarray
    dup: np.ndarray


@dataclass(frozen=True)
class _Sellers:
    """The owners of deals (reps and player-coach managers) and what makes them different."""

    owner: np.ndarray
    win: np.ndarray
    activity: np.ndarray
    size: np.ndarray
    mess: np.ndarray            # how often a seller's deals get pushed (and, with hygiene, go wrong)
    hygiene: np.ndarray         # 0-1: how well a seller keeps the CRM and their forecast up to date


def _org(rng: np.random.Generator, scale: float) -> _Org:
    """One executive, directors, managers (3 per director) and reps (6-8 per manager)."""
    n_dir = max(1, round(3 * scale))
    n_mgr = max(n_dir, round(9 * scale))
    team = rng.integers(6, 9, n_mgr)
    n_rep = int(team.sum())
    ids = (["exec-01"] + _ids("dir-", n_dir, 2) + _ids("mgr-", n_mgr, 2) + _ids("rep-", n_rep, 3))
    level = np.concatenate([[0], np.full(n_dir, 1), np.full(n_mgr, 2), np.full(n_rep, 3)])
    mgr_parent = 1 + (np.arange(n_mgr) * n_dir) // n_mgr
    rep_parent = 1 + n_dir + np.repeat(np.arange(n_mgr), team)
    parent = np.concatenate([[-1], np.zeros(n_dir, int), mgr_parent, rep_parent])
    n = len(ids)
    pairs = len(FIRST_NAMES) * len(LAST_NAMES)
    combo = np.resize(rng.permutation(pairs), n)
    return _Org(ids=ids, level=level, parent=parent, first=combo % len(FIRST_NAMES),
                last=combo // len(FIRST_NAMES), dup=np.arange(n) // pairs)


def _ids(prefix: str, n: int, width: int) -> list[str]:
    width = max(width, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _sellers(rng: np.random.Generator, org: _Org) -> _Sellers:
    """Reps plus every third manager (player-coaches), with skill from 15 % to 45 % win rate."""
    managers = np.flatnonzero(org.level == 2)
    coaches = managers[::3]
    owner = np.concatenate([coaches, np.flatnonzero(org.level == 3)])
    n = len(owner)
    win = 0.15 + 0.30 * (rng.permutation(n) + rng.random(n)) / n
    activity = np.exp(rng.normal(0, 0.2, n))
    activity[: len(coaches)] = 0.15
    size = np.exp(rng.normal(0, 0.25, n))
    mess = np.clip(1.7 - 2.2 * (win - 0.15) / 0.30 + rng.normal(0, 0.3, n), 0.15, None)
    # CRM hygiene is a habit: spread widely across sellers, a little better among the stronger ones
    hygiene = 1 / (1 + np.exp(-(HYGIENE_LOGIT[0] + HYGIENE_LOGIT[1] * (1 - mess) + rng.normal(0, HYGIENE_LOGIT[2], n))))
    return _Sellers(owner=owner, win=win, activity=activity, size=size, mess=mess, hygiene=hygiene)


def _sloppiness(s: _Sellers) -> np.ndarray:
    """Per seller, how likely each deal of theirs is to carry a data problem: falls steeply with hygiene."""
    return np.exp(-SLOPPY_SLOPE * s.hygiene)


# ---------------------------------------------------------------- deals: the natural plan
@dataclass
class _Plan:
    """Every deal as it would naturally unfold (before the mess of the open pipeline at `end`)."""

    seller: np.ndarray
    account: np.ndarray
    product: np.ndarray
    channel: np.ndarray
    from_lead: np.ndarray
    amount: np.ndarray          # final amount
    amount0: np.ndarray         # amount at creation (differs when amount_changed)
    amount_changed: np.ndarray
    t_amount: np.ndarray
    discount: np.ndarray
    margin_share: np.ndarray
    t_created: np.ndarray
    life: np.ndarray            # days from creation to the natural close
    close_day: np.ndarray       # natural close date
    t_close: np.ndarray
    won: np.ndarray
    max_stage: np.ndarray
    t_stage: np.ndarray         # (n, 4): entry time into stages 1..4
    close_steps: np.ndarray     # (n, 6): close date after 0..5 pushes
    t_push: np.ndarray          # (n, 5): when each push happened, inf when it did not

    @property
    def created_day(self) -> np.ndarray:
        """Creation date of each deal."""
        return np.floor(self.t_created).astype(np.int64)


def _plan(rng: np.random.Generator, s: _Sellers, acc_segment: np.ndarray, start_day: int,
          end_day: int) -> _Plan:
    """Draw every deal: owner, account, product, amount, cycle, natural outcome, stage path and pushes."""
    days = np.arange(start_day, end_day + HORIZON_DAYS + 1)
    years = len(days) / 365.25
    counts = rng.poisson(OPPS_PER_YEAR * s.activity * years)
    seller = np.repeat(np.arange(len(s.owner)), counts)
    n = len(seller)
    close_day = days[rng.choice(len(days), n, p=_close_weights(days))]
    account = seller + len(s.owner) * np.floor(ACCOUNTS_PER_SELLER * rng.random(n) ** 1.6).astype(np.int64)
    segment = acc_segment[account]
    product = _choice_rows(rng, np.array([seg[5] for seg in SEGMENTS])[segment])
    price = np.array([p[1] for p in PRODUCTS], float)[product]
    seg_size = np.array([seg[2] for seg in SEGMENTS])[segment]
    list_value = price * seg_size * s.size[seller] * np.exp(rng.normal(0, 0.45, n))
    discount = 0.25 * rng.beta(np.array([seg[4] for seg in SEGMENTS])[segment], 4.0)
    amount = np.maximum(np.round(list_value * (1 - discount), -1), 10.0)
    z = (np.log(amount) - np.log(amount).mean()) / np.log(amount).std()
    cycle = np.clip(80 + 28 * z + rng.normal(0, 12, n), 30, 150)
    t_close = close_day + rng.uniform(0.35, 0.97, n)
    p_win = np.clip(s.win[seller] * np.array([seg[3] for seg in SEGMENTS])[segment], 0.03, 0.8)
    won = rng.random(n) < p_win
    max_stage = np.where(won, 4, rng.choice(5, n, p=LOST_REACH))
    frac = np.clip(np.array([0.10, 0.28, 0.50, 0.72]) + rng.normal(0, 0.04, (n, 4)), 0.03, 0.93)
    frac = np.maximum.accumulate(frac, axis=1) + np.arange(4) * 1e-3
    # a lost deal dies soon after its last stage instead of sitting there until the end of the cycle
    next_frac = np.concatenate([frac, np.ones((n, 1))], axis=1)[np.arange(n), max_stage]
    life = cycle * np.where(won, 1.0, np.minimum(1.0, next_frac + rng.uniform(0.05, 0.2, n)))
    t_created = t_close - life
    t_stage = t_created[:, None] + frac * cycle[:, None]
    keep = np.floor(t_created) <= end_day
    order = np.argsort(t_created[keep], kind="stable")

    def k(a: np.ndarray) -> np.ndarray:
        return a[keep][order]

    seller, account, product, amount, discount = k(seller), k(account), k(product), k(amount), k(discount)
    segment, life, close_day, t_close, t_created = k(segment), k(life), k(close_day), k(t_close), k(t_created)
    won, max_stage, t_stage = k(won), k(max_stage), k(t_stage)
    n = len(seller)
    changed = rng.random(n) < 0.15
    factor = np.where(rng.random(n) < 1 / 3, rng.uniform(0.6, 0.9, n), rng.uniform(1.1, 1.5, n))
    amount0 = np.where(changed, np.maximum(np.round(amount / factor, -1), 10.0), amount)
    planned = np.where(won, close_day, np.floor(t_created + k(cycle)))   # lost deals die before their plan
    pushes = np.minimum(rng.poisson(0.45 * s.mess[seller] * k(cycle) / 80), 5)
    steps, t_push = _push_schedule(rng, pushes, _first_close(t_created, planned), planned - 1, planned,
                                   t_created, t_close)
    from_lead = rng.random(n) < 0.35
    lead_mix = rng.choice(len(CHANNELS), n, p=[c[2] for c in CHANNELS])
    rep_mix = rng.choice(len(CHANNELS), n, p=[c[3] for c in CHANNELS])
    return _Plan(
        seller=seller, account=account, product=product, channel=np.where(from_lead, lead_mix, rep_mix),
        from_lead=from_lead, amount=amount, amount0=amount0, amount_changed=changed,
        t_amount=t_created + rng.uniform(0.15, 0.85, n) * life, discount=discount,
        margin_share=np.array([p[2] for p in PRODUCTS])[product] * rng.uniform(0.9, 1.05, n),
        t_created=t_created, life=life, close_day=close_day, t_close=t_close, won=won, max_stage=max_stage,
        t_stage=t_stage, close_steps=steps, t_push=t_push)


def _close_weights(days: np.ndarray) -> np.ndarray:
    """Probability of each day as a close date: seasonal months, quiet weekends, busy quarter ends."""
    month = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
    w = np.array(CLOSE_SEASON, float)[month]
    w[(days + 3) % 7 >= 5] *= 0.15
    next_week_month = (days + 7).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
    w[(month % 3 == 2) & (next_week_month != month)] *= 1.6
    return w / w.sum()


def _choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of a (n, k) probability matrix."""
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return np.minimum((rng.random(len(probs))[:, None] >= cum).sum(axis=1), probs.shape[1] - 1)


def _push_schedule(rng: np.random.Generator, count: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   final: np.ndarray, t_created: np.ndarray,
                   t_close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close dates before and after each of `count` pushes (steps between `lower` and `upper`, ending at
    `final`) and when each push happened: just before the date it replaced (inf: never, the deal closed
    first)."""
    n = len(count)
    count = np.where(upper - lower >= 10, count, 0)
    span = np.maximum(upper - lower - 5, 0)
    draws = np.where(np.arange(5) < count[:, None], lower[:, None] + rng.random((n, 5)) * span[:, None], np.inf)
    draws = np.floor(np.sort(draws, axis=1)) + np.arange(5)
    steps = np.concatenate([np.where(np.isinf(draws), final[:, None], draws), final[:, None]], axis=1)
    t_push = steps[:, :5] - rng.uniform(0, 5, (n, 5)) + rng.uniform(0.3, 0.95, (n, 5))
    t_push = np.maximum.accumulate(np.maximum(t_push, (t_created + 0.5)[:, None]), axis=1)
    happened = (np.arange(5) < count[:, None]) & (t_push < (t_close - 0.2)[:, None])
    return steps, np.where(happened, t_push, np.inf)


# ---------------------------------------------------------------- the mess of the open pipeline
@dataclass
class _Mess:
    """Which deals carry which data problem at `end`; weaker reps are picked more often."""

    stale: np.ndarray
    cutoff: np.ndarray          # stale deals: nothing happened after this time
    forgotten: np.ndarray       # should have closed, still open with a past close date
    hold_stage: np.ndarray      # last stage a deal may reach (early stage but closing soon)
    serial: np.ndarray          # pushed 3 to 5 times before `end`
    no_amount: np.ndarray
    no_close: np.ndarray


def _mess(rng: np.random.Generator, p: _Plan, s: _Sellers, end_day: int) -> _Mess:
    """Pick stale, forgotten, early-stage-closing-soon, serially pushed and incomplete deals so that the open
    pipeline at `end` shows each problem at about its RATES (natural cases count towards the rate)."""
    n = len(p.seller)
    w = _sloppiness(s)[p.seller]
    future = p.close_day > end_day
    n_future = int(future.sum())
    r = RATES["past_close"]
    # stale: open deals gone quiet, and deals lost in fact but never closed in the CRM (abandoned)
    hi = np.minimum(end_day - 62.0, p.t_close - 1)
    cutoff = p.t_created + 5 + rng.random(n) * (hi - p.t_created - 5)
    stage, shown, _ = _state_at(p, cutoff)
    abandoned = ~p.won & ~future & (p.close_day >= end_day - 300)
    quiet = ((future | abandoned) & (hi - p.t_created >= 10) & ((stage > 1) | (shown > end_day + 30)))
    # most quiet deals show a past close date; prefer the others so past-close deals stay near their rate
    stale = _pick(rng, quiet, w * np.where(shown < end_day, 0.2, 1.0),
                  round(RATES["stale"] * n_future / (1 - r - RATES["stale"] / 2)))
    cutoff = np.where(stale, cutoff, np.inf)
    stage, shown, pushes = _state_at(p, np.minimum(cutoff, end_day + 1.0))
    stale_past = int((stale & (shown < end_day)).sum())
    still_open = n_future + int((stale & ~future).sum())
    _, shown_at_close, _ = _state_at(p, p.t_close)
    forgotten = _pick(rng, ~future & ~stale & (p.close_day >= end_day - 240) & (shown_at_close < end_day), w,
                      round((r * still_open - stale_past) / (1 - r)))
    n_open = still_open + int(forgotten.sum())
    soon = (future | stale) & (shown >= end_day) & (shown <= end_day + 30)
    natural_early = int((soon & (stage <= 1)).sum())
    hold = _pick(rng, soon & ~stale & (stage > 1), w, round(RATES["early_closing"] * n_open) - natural_early)
    natural_pushed = int(((future | stale) & (pushes >= 3)).sum())
    serial = _pick(rng, future & ~stale & ~hold & ~soon & (p.created_day <= end_day - 45), w,
                   round(RATES["pushed"] * n_open) - natural_pushed)
    missing = _pick(rng, future & ~stale & ~hold & ~serial, w, round(RATES["missing"] * n_open))
    half = rng.random(n) < 0.5
    won_closed = p.won & ~future & ~forgotten
    no_amount_won = _pick(rng, won_closed, np.ones(n), max(3, round(0.001 * int(won_closed.sum()))))
    return _Mess(stale=stale, cutoff=cutoff, forgotten=forgotten,
                 hold_stage=np.where(hold, rng.integers(0, 2, n), 4), serial=serial,
                 no_amount=(missing & half) | no_amount_won, no_close=missing & ~half)


def _first_close(t_created: np.ndarray, final: np.ndarray) -> np.ndarray:
    """The earliest first close date of a deal that will be pushed: 40 % of the way to its final one."""
    return np.floor(t_created + 0.4 * (final - t_created))


def _state_at(p: _Plan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each deal's open stage, close date and number of pushes just before time `t` (no closing, no mess)."""
    stage = ((p.t_stage < t[:, None]) & (np.arange(1, 5) <= p.max_stage[:, None])).sum(axis=1)
    pushes = (p.t_push < t[:, None]).sum(axis=1)
    return stage, p.close_steps[np.arange(len(t)), pushes], pushes


def _serial_pushes(rng: np.random.Generator, p: _Plan, serial: np.ndarray, end_day: int) -> None:
    """Rewrite the push schedule of the `serial` deals: 3 to 5 pushes, all before `end`, to a final close
    date 10 to 60 days after `end` (they are open at `end`, so nothing else changes)."""
    i = np.flatnonzero(serial)
    final = end_day + rng.integers(10, 61, len(i)).astype(float)
    p.close_steps[i], p.t_push[i] = _push_schedule(rng, rng.integers(3, 6, len(i)), np.floor(p.t_created[i]) + 10,
                                                   np.full(len(i), float(end_day)), final, p.t_created[i],
                                                   np.full(len(i), np.inf))


def _pick(rng: np.random.Generator, eligible: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """A weighted sample without replacement of `k` eligible rows, as a mask (Efraimidis-Spirakis keys)."""
    key = np.where(eligible, np.log(rng.random(len(eligible))) / weight, -np.inf)
    k = max(0, min(k, int(eligible.sum())))
    out = np.zeros(len(eligible), bool)
    if k > 0:
        out[np.argpartition(-key, k - 1)[:k]] = True
    return out


# ---------------------------------------------------------------- history and final state
@dataclass(frozen=True)
class _Events:
    """Opportunity history rows sorted by deal and time, each with the full state after the change."""

    opp: np.ndarray
    t: np.ndarray
    stage: np.ndarray
    amount: np.ndarray
    close: np.ndarray
    last: np.ndarray            # index of the last row of each deal


def _events(p: _Plan, m: _Mess, end_day: int) -> _Events:
    """Creation, stage moves, amount changes, pushes and closing, up to `end` (or a stale deal's cutoff)."""
    n = len(p.seller)
    idx = np.arange(n)
    nan = np.full(n, np.nan)
    limit = np.minimum(m.cutoff, end_day + 1.0)
    parts = [(idx, p.t_created, 0, np.zeros(n), np.where(m.no_amount, -1.0, p.amount0),
              np.where(m.no_close, -1.0, p.close_steps[:, 0]))]
    for k in range(1, 5):
        t = p.t_stage[:, k - 1]
        ok = (k <= p.max_stage) & (k <= m.hold_stage) & (t < limit)
        parts.append((idx[ok], t[ok], k, np.full(n, float(k))[ok], nan[ok], nan[ok]))
    ok = p.amount_changed & ~m.no_amount & (p.t_amount < limit)
    parts.append((idx[ok], p.t_amount[ok], 5, nan[ok], p.amount[ok], nan[ok]))
    for j in range(1, 6):
        t = p.t_push[:, j - 1]
        ok = ~m.no_close & (t < limit)
        parts.append((idx[ok], t[ok], 5 + j, nan[ok], nan[ok], p.close_steps[ok, j]))
    ok = (p.t_close < limit) & ~m.forgotten
    parts.append((idx[ok], p.t_close[ok], 11, np.where(p.won, WON, LOST)[ok].astype(float), nan[ok],
                  p.close_day[ok].astype(float)))
    opp = np.concatenate([x[0] for x in parts])
    t = np.concatenate([x[1] for x in parts])
    kind = np.concatenate([np.full(len(x[0]), x[2]) for x in parts])
    order = np.lexsort((kind, t, opp))
    cols = [_ffill(np.concatenate([x[i] for x in parts])[order]) for i in (3, 4, 5)]
    amount, close = (np.where(c == -1.0, np.nan, c) for c in cols[1:])
    opp = opp[order]
    last = np.r_[np.flatnonzero(np.diff(opp)), len(opp) - 1]
    return _Events(opp=opp, t=t[order], stage=cols[0].astype(np.int8), amount=amount, close=close, last=last)


def _ffill(a: np.ndarray) -> np.ndarray:
    """Carry the last non-NaN value forward."""
    pos = np.where(np.isnan(a), 0, np.arange(len(a)))
    return a[np.maximum.accumulate(pos)]


@dataclass(frozen=True)
class _Final:
    """Each deal's state at `end`: the last history row plus when it was last touched."""

    stage: np.ndarray
    amount: np.ndarray
    close: np.ndarray
    last_modified: np.ndarray
    touched: np.ndarray         # open, not stale: touched recently (an update without a history row)

    @property
    def is_closed(self) -> np.ndarray:
        """True for Closed Won and Closed Lost."""
        return self.stage >= WON


def _final_state(rng: np.random.Generator, p: _Plan, m: _Mess, ev: _Events, end_day: int) -> _Final:
    """The opportunities' current values, equal to their last history row."""
    stage, t_last = ev.stage[ev.last], ev.t[ev.last]
    touched = (stage < WON) & ~m.stale
    touch = end_day + 1 - rng.uniform(0.05, 40, len(stage))
    last_modified = np.where(touched, np.maximum(t_last, touch), t_last)
    return _Final(stage=stage, amount=ev.amount[ev.last], close=ev.close[ev.last], last_modified=last_modified,
                  touched=touched)


# ---------------------------------------------------------------- tables
def _owners_table(rng: np.random.Generator, org: _Org, start_day: int) -> dict[str, pa.Array]:
    """owners: ids, manager, name, email, level, valid from the hire date."""
    first = [FIRST_NAMES[i] for i in org.first]
    last = [LAST_NAMES[i] for i in org.last]
    names = [f"{f} {la}" for f, la in zip(first, last, strict=True)]
    emails = [f"{f}.{la.replace(' ', '')}{d + 1 if d else ''}@{EMAIL_DOMAIN}".lower()
              for f, la, d in zip(first, last, org.dup, strict=True)]
    n = len(org.ids)
    hired = start_day - rng.integers(30, 6 * 365, n)
    for depth in range(1, int(org.level.max()) + 1):    # nobody joins before their manager
        kids = np.flatnonzero(org.level == depth)
        hired[kids] = np.maximum(hired[kids], hired[org.parent[kids]])
    return {"owner_id": pa.array(org.ids),
            "manager_id": pa.array([org.ids[i] if i >= 0 else None for i in org.parent]),
            "name": pa.array(names), "email": pa.array(emails),
            "level": pc.take(pa.array(LEVELS), pa.array(org.level)),
            "valid_from": _dates(hired), "valid_to": _dates(np.zeros(n), np.ones(n, bool)),
            "active": pa.array(np.ones(n, bool))}


def _opportunities_table(rng: np.random.Generator, p: _Plan, f: _Final, org: _Org, s: _Sellers,
                         acc_segment: np.ndarray) -> dict[str, pa.Array]:
    """opportunities: the final state of every deal."""
    n = len(p.seller)
    products = pa.array([x[0] for x in PRODUCTS])
    number = _cumcount(p.account * len(PRODUCTS) + p.product) + 1
    name = pc.binary_join_element_wise(_account_names(len(acc_segment)).take(pa.array(p.account)), " – ",
                                       products.take(pa.array(p.product)), " ",
                                       pc.cast(pa.array(number), pa.string()), "")
    is_open = ~f.is_closed
    noise = rng.random(n) < 0.15
    base = np.array([0, 0, 0, 1, 2, 3, 4])[f.stage]
    shifted = np.array([4, 4, 0, 0, 1, 3, 4])[f.stage]
    category = np.where(noise & is_open, shifted, base)
    step = np.minimum(f.stage.astype(np.int64) + rng.integers(0, 2, n), len(NEXT_STEPS) - 1)
    amount = f.amount
    list_amount = np.ceil(amount / (1 - p.discount) / 10) * 10
    margin = np.round(amount * p.margin_share, 2)
    return {"opportunity_id": _id_array("opp-", np.arange(1, n + 1), 7),
            "owner_id": _owner_ids(org, s.owner[p.seller]),
            "account_id": _id_array("acc-", p.account + 1, 5), "name": name,
            "stage": pc.take(pa.array(STAGES), pa.array(f.stage.astype(np.int64))),
            "amount": _floats(amount), "created_date": _dates(p.created_day),
            "close_date": _dates(f.close, np.isnan(f.close)),
            "is_closed": pa.array(f.is_closed), "is_won": pa.array(f.stage == WON),
            "last_modified_date": _times(f.last_modified),
            "product": products.take(pa.array(p.product)),
            "lead_source": pa.array([c[0] for c in CHANNELS]).take(pa.array(p.channel)),
            "margin": _floats(margin), "cost": _floats(np.round(amount - margin, 2)),
            "list_amount": _floats(list_amount),
            "forecast_category": pa.array(FORECAST_CATEGORIES).take(pa.array(category)),
            "next_step": pa.array(NEXT_STEPS).take(pa.array(step, mask=~is_open | (rng.random(n) < 0.55)))}


def _history_table(ev: _Events) -> dict[str, pa.Array]:
    """opportunity_history: one row per change with the stage, amount and close date after it."""
    return {"opportunity_id": _id_array("opp-", ev.opp + 1, 7), "changed_at": _times(ev.t),
            "stage": pa.array(STAGES).take(pa.array(ev.stage.astype(np.int64))),
            "amount": _floats(ev.amount), "close_date": _dates(ev.close, np.isnan(ev.close))}


def _activities_table(rng: np.random.Generator, p: _Plan, m: _Mess, f: _Final, org: _Org, s: _Sellers,
                      start_day: int, end_day: int) -> dict[str, pa.Array]:
    """activities: calls, emails, meetings and demos on deals, plus prospecting on accounts."""
    first = p.created_day
    last = np.where(m.stale, np.floor(np.minimum(m.cutoff, end_day)),
                    np.minimum(p.close_day, end_day)).astype(np.int64)
    last = np.maximum(last, first)
    act = s.activity[p.seller] ** 1.3
    count = rng.poisson(act * (1.5 + (last - first) / 20))
    deal = np.repeat(np.arange(len(first)), count)
    day = first[deal] + np.floor(rng.random(len(deal)) * (last - first + 1)[deal]).astype(np.int64)
    touch = f.touched & (rng.random(len(first)) < 0.85)
    deal = np.concatenate([deal, np.flatnonzero(touch)])
    day = np.concatenate([day, np.floor(f.last_modified[touch]).astype(np.int64)])
    day = np.maximum(_weekday(day), first[deal])
    n_solo = rng.poisson(200 * s.activity * (end_day - start_day + 1) / 365.25)
    solo_seller = np.repeat(np.arange(len(s.owner)), n_solo)
    solo_day = _weekday(rng.integers(start_day, end_day + 1, len(solo_seller)))
    solo_account = solo_seller + len(s.owner) * rng.integers(0, ACCOUNTS_PER_SELLER, len(solo_seller))
    seller = np.concatenate([p.seller[deal], solo_seller])
    day = np.concatenate([day, solo_day])
    opp = np.concatenate([deal, np.full(len(solo_seller), -1)])
    account = np.concatenate([p.account[deal], solo_account])
    n = len(day)
    kind = rng.choice(len(ACTIVITY_TYPES), n, p=[a[1] for a in ACTIVITY_TYPES])
    kind = np.where(opp < 0, kind % 2, kind)
    in_person = rng.random(n) < np.array([a[2] for a in ACTIVITY_TYPES])[kind]
    order = np.lexsort((seller, day))
    return {"activity_id": _id_array("act-", np.arange(1, n + 1), 8),
            "owner_id": _owner_ids(org, s.owner[seller[order]]), "date": _dates(day[order]),
            "type": pa.array([a[0] for a in ACTIVITY_TYPES]).take(pa.array(kind[order])),
            "opportunity_id": _id_array("opp-", opp[order] + 1, 7, opp[order] < 0),
            "account_id": _id_array("acc-", account[order] + 1, 5),
            "mode": pa.array(["remote", "in_person"]).take(pa.array(in_person[order].astype(np.int64)))}


def _weekday(day: np.ndarray) -> np.ndarray:
    """Move Saturdays and Sundays back to the Friday before."""
    dow = (day + 3) % 7
    return day - np.maximum(dow - 4, 0)


def _leads_table(rng: np.random.Generator, p: _Plan, org: _Org, s: _Sellers, end_day: int) -> dict[str, pa.Array]:
    """leads: the converted leads behind lead-sourced deals plus the unconverted ones of each channel."""
    conv = np.flatnonzero(p.from_lead)
    conv_day = p.created_day[conv] - rng.integers(0, 22, len(conv))
    rate = np.array([c[1] for c in CHANNELS])
    per_channel = np.bincount(p.channel[conv], minlength=len(CHANNELS))
    n_lost = rng.poisson(per_channel * (1 - rate) / rate)
    lost_channel = np.repeat(np.arange(len(CHANNELS)), n_lost)
    lost_day = rng.integers(int(conv_day.min()), end_day + 1, len(lost_channel))
    lost_seller = rng.integers(0, len(s.owner), len(lost_channel))
    unassigned = np.concatenate([np.zeros(len(conv), bool), rng.random(len(lost_channel)) < 0.1])
    recent = lost_day > end_day - 30
    lost_status = np.where(recent & (rng.random(len(lost_day)) < 0.7), 1,
                           np.where(rng.random(len(lost_day)) < 0.7, 2, 3))
    day = np.concatenate([conv_day, lost_day])
    channel = np.concatenate([p.channel[conv], lost_channel])
    seller = np.concatenate([p.seller[conv], lost_seller])
    opp = np.concatenate([conv, np.full(len(lost_channel), -1)])
    status = np.concatenate([np.zeros(len(conv), np.int64), lost_status])
    order = np.lexsort((opp, day))
    n = len(day)
    return {"lead_id": _id_array("lead-", np.arange(1, n + 1), 7), "created_date": _dates(day[order]),
            "channel": pa.array([c[0] for c in CHANNELS]).take(pa.array(channel[order])),
            "owner_id": _owner_ids(org, s.owner[seller[order]], unassigned[order]),
            "converted_opportunity_id": _id_array("opp-", opp[order] + 1, 7, opp[order] < 0),
            "status": pa.array(["converted", "open", "disqualified", "nurture"]).take(pa.array(status[order]))}


def _accounts_table(rng: np.random.Generator, p: _Plan, f: _Final, acc_segment: np.ndarray, start_day: int,
                    end_day: int) -> dict[str, pa.Array]:
    """accounts: segment, customer since the first win (or before the data starts), some churned."""
    n = len(acc_segment)
    won = f.stage == WON
    first_win = np.full(n, np.inf)
    np.minimum.at(first_win, p.account[won], p.close_day[won].astype(float))
    last_win = np.full(n, -np.inf)
    np.maximum.at(last_win, p.account[won], p.close_day[won].astype(float))
    older = rng.random(n) < 0.3
    since = np.where(older, start_day - rng.integers(30, 6 * 365, n), first_win)
    is_customer = np.isfinite(since)
    last_sale = np.maximum(last_win, np.where(is_customer, since, -np.inf))
    room = np.where(is_customer, end_day - last_sale - 120, 0)
    churn = (room > 30) & (rng.random(n) < 0.12)
    churned_on = np.where(churn, np.where(is_customer, last_sale, 0) + 120 + np.floor(rng.random(n) * room), np.nan)
    return {"account_id": _id_array("acc-", np.arange(1, n + 1), 5), "name": _account_names(n),
            "segment": pa.array([s[0] for s in SEGMENTS]).take(pa.array(acc_segment)),
            "customer_since": _dates(since, ~is_customer), "churned_on": _dates(churned_on, ~churn)}


def _account_names(n: int) -> pa.Array:
    """`n` distinct company names, the same for every call with the same `n`."""
    sizes = [len(w) for w in ACCOUNT_WORDS]
    total = int(np.prod(sizes))
    code = np.random.default_rng(n).permutation(total)[np.arange(n) % total]
    parts = []
    for words, size in zip(ACCOUNT_WORDS, sizes, strict=True):
        parts.append(pa.array(words).take(pa.array(code % size)))
        code = code // size
    name = pc.binary_join_element_wise(*parts, " ")
    if n > total:
        name = pc.binary_join_element_wise(name, pc.cast(pa.array(np.arange(n) // total + 1), pa.string()), " ")
    return name


def _surveys_table(rng: np.random.Generator, accounts: dict[str, pa.Array], start_day: int,
                   end_day: int) -> dict[str, pa.Array]:
    """surveys: 0-10 scores from customers while they are customers, lower before a churn."""
    since = _days_of(accounts["customer_since"])
    churned = _days_of(accounts["churned_on"])
    lo = np.maximum(since, start_day)
    hi = np.fmin(churned, end_day)
    ok = np.isfinite(since) & (hi > lo)
    span = np.where(ok, hi - lo, 0)
    count = rng.poisson(1.2 * span / 365.25)
    acc = np.repeat(np.arange(len(since)), count)
    day = lo[acc] + np.floor(rng.random(len(acc)) * span[acc])
    mood = np.where(np.isfinite(churned), rng.normal(5.0, 1.5, len(since)), rng.normal(7.8, 1.2, len(since)))
    score = np.clip(np.round(mood[acc] + rng.normal(0, 1.3, len(acc))), 0, 10)
    order = np.lexsort((acc, day))
    return {"account_id": _id_array("acc-", acc[order] + 1, 5), "date": _dates(day[order]),
            "score": _floats(score[order])}


def _months(start_day: int, end_day: int) -> np.ndarray:
    """Month numbers (months since 1970-01) from the data start to the month of `end`."""
    first, last = (np.datetime64(d, "D").astype("datetime64[M]").astype(np.int64) for d in (start_day, end_day))
    return np.arange(first, last + 1)


def _month_of(day: np.ndarray) -> np.ndarray:
    return np.floor(day).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def _month_labels(months: np.ndarray) -> list[str]:
    return [str(m) for m in months.astype("datetime64[M]")]


def _costs_table(rng: np.random.Generator, org: _Org, s: _Sellers, p: _Plan, f: _Final,
                 months: np.ndarray) -> dict[str, pa.Array]:
    """costs: monthly pay per owner (base by level) plus 6 % commission on the month's bookings."""
    n = len(org.ids)
    base = np.array([25_000, 16_000, 11_500, 7_000], float)[org.level] * np.exp(rng.normal(0, 0.08, n))
    cost = base[:, None] * (1 + rng.normal(0, 0.02, (n, len(months))))
    won = (f.stage == WON) & ~np.isnan(f.amount)
    col = _month_of(f.close[won]) - months[0]
    np.add.at(cost, (s.owner[p.seller[won]], col), 0.06 * f.amount[won])
    return _grid_rows(org, _month_labels(months), np.round(cost, 2), amount_name="amount")


def _grid_rows(org: _Org, labels: list[str], values: np.ndarray, *, amount_name: str) -> dict[str, pa.Array]:
    """Rows (owner_id, period, value) of an owners x periods grid."""
    n, k = values.shape
    return {"owner_id": _owner_ids(org, np.repeat(np.arange(n), k)),
            "period": pa.array(labels).take(pa.array(np.tile(np.arange(k), n))),
            amount_name: _floats(values.ravel())}


def _targets(rng: np.random.Generator, org: _Org, s: _Sellers, p: _Plan,
             end_year: int) -> tuple[dict[str, pa.Array], np.ndarray]:
    """targets for bookings, opps_created and activities at month, quarter and year grain (and the bookings
    month grid), rolled up the hierarchy: a manager's target is the sum of the team's, a bit above it."""
    n = len(org.ids)
    years = np.arange(end_year - 2, end_year + 1)
    natural = np.zeros((len(s.owner), 3))
    year_of = p.close_day.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    in_range = p.won & (year_of >= years[0]) & (year_of < end_year)
    np.add.at(natural, (p.seller[in_range], year_of[in_range] - years[0]), p.amount[in_range])
    per_year = natural[:, :2].mean(axis=1)
    is_rep = org.level[s.owner] == 3
    yearly = np.zeros((n, 3))
    yearly[s.owner] = np.where(is_rep, per_year[is_rep].mean(), per_year)[:, None] * np.array(TARGET_GROWTH)
    yearly *= rng.uniform(0.92, 1.12, (n, 3))
    phasing = np.array(PHASING, float) / sum(PHASING)
    month_labels = [f"{y}-{m:02d}" for y in years for m in range(1, 13)]
    labels = month_labels + [f"FY{y}-Q{q}" for y in years for q in range(1, 5)] + [f"FY{y}" for y in years]
    out, bookings = [], np.zeros((n, 36))
    for metric, leaf, uplift, unit in (
            ("bookings", (yearly[:, :, None] * phasing).reshape(n, 36), 0.04, -2),
            ("opps_created", np.full((n, 36), OPPS_PER_YEAR / 12) * _deal_share(org, s)[:, None], 0.0, 0),
            ("activities", np.full((n, 36), 110.0) * _deal_share(org, s)[:, None], 0.0, -1)):
        months = _rollup(org, np.round(leaf, unit), rng.uniform(1.0, 1.0 + uplift, (n, 36)), unit)
        if metric == "bookings":
            bookings = months
        quarters = months.reshape(n, 3, 4, 3).sum(axis=3).reshape(n, 12)
        grid = np.concatenate([months, quarters, quarters.reshape(n, 3, 4).sum(axis=2)], axis=1)
        rows = _grid_rows(org, labels, grid, amount_name="value")
        rows["metric"] = pa.array(np.full(len(rows["value"]), metric))
        out.append(rows)
    return {c: pa.concat_arrays([r[c] for r in out]) for c in ("owner_id", "period", "metric", "value")}, bookings


def _deal_share(org: _Org, s: _Sellers) -> np.ndarray:
    """Activity-target factor per owner: 1 for reps, 0.2 for player-coaches, 0 for everyone else."""
    out = np.zeros(len(org.ids))
    out[s.owner] = np.where(org.level[s.owner] == 3, 1.0, 0.2)
    return out


def _rollup(org: _Org, values: np.ndarray, uplift: np.ndarray, unit: int) -> np.ndarray:
    """Add every owner's values into their manager's, bottom up, raising each manager's total by `uplift`."""
    out = values.copy()
    for depth in range(int(org.level.max()), 0, -1):
        kids = np.flatnonzero(org.level == depth)
        np.add.at(out, org.parent[kids], out[kids])
        parents = np.flatnonzero(org.level == depth - 1)
        out[parents] = np.round(out[parents] * uplift[parents], unit)
    return out


def _forecasts_table(rng: np.random.Generator, org: _Org, s: _Sellers, p: _Plan, months: np.ndarray,
                     target: np.ndarray, end_year: int) -> dict[str, pa.Array]:
    """forecasts: each owner's bookings forecast for the month, submitted on its first day at 09:00: what they
    will book (their commit), blurred and pulled toward their target the more, the worse their CRM hygiene."""
    n = len(org.ids)
    actual = np.zeros((n, len(months)))
    col = _month_of(p.close_day) - months[0]
    ok = p.won & (col >= 0) & (col < len(months))
    np.add.at(actual, (s.owner[p.seller[ok]], col[ok]), p.amount[ok])
    actual = _rollup(org, actual, np.ones_like(actual), 2)
    first_target = (months[0] - (np.datetime64(f"{end_year - 2}-01", "M").astype(np.int64)))
    tgt = target[:, first_target:first_target + len(months)]
    hygiene = np.full(n, FORECAST_HYGIENE)  # the sellers' own
    hygiene[s.owner] = s.hygiene
    bias = np.exp(rng.normal(0, 1, n) * (0.02 + 0.1 * (1 - hygiene)))[:, None]
    weight = (1 - 0.3 * (1 - hygiene) ** 2)[:, None]
    noise = np.exp(rng.normal(0, 1, actual.shape) * (0.05 + 0.35 * (1 - hygiene) ** 2)[:, None])
    amount = np.round((weight * actual + (1 - weight) * tgt) * bias * noise, -2)
    first_day = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    rows = _grid_rows(org, _month_labels(months), amount, amount_name="amount")
    rows["submitted_at"] = _times(np.tile(first_day + 1 / 11, n))
    return rows


# ---------------------------------------------------------------- arrays and writing
def _cumcount(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group of equal keys, in the current row order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    run = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    out = np.empty(len(keys), np.int64)
    out[order] = run
    return out


def _id_array(prefix: str, numbers: np.ndarray, width: int, missing: np.ndarray | None = None) -> pa.Array:
    """Ids like `opp-0000042`: zero-padded to `width` digits (more when needed); null where `missing`."""
    text = pc.utf8_lpad(pc.cast(pa.array(np.asarray(numbers, np.int64), mask=missing), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, text, "")


def _owner_ids(org: _Org, codes: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    return pa.array(org.ids).take(pa.array(np.asarray(codes, np.int64), mask=missing))


def _floats(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, float)
    return pa.array(values, mask=np.isnan(values))


def _dates(days: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    days = np.nan_to_num(np.asarray(days, float), nan=0, posinf=0, neginf=0)
    return pa.array(np.floor(days).astype(np.int32), type=pa.date32(), mask=missing)


def _days_of(dates: pa.Array) -> np.ndarray:
    """Day numbers of a date32 array, NaN for nulls."""
    out: np.ndarray = pc.cast(dates, pa.int32()).to_numpy(zero_copy_only=False).astype(float)
    return out


def _times(t: np.ndarray) -> pa.Array:
    """Day-number floats as timestamps: the day's fraction spread over 08:00-19:00."""
    day = np.floor(t)
    seconds = day * 86400 + 8 * 3600 + (t - day) * 11 * 3600
    return pa.array(seconds.astype(np.int64), type=pa.timestamp("s"))


def _write(path: Path, tables: dict[str, dict[str, pa.Array]]) -> dict[str, int]:
    """Write every table with the contract columns and types to a temp file, then move it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    try:
        con = duckdb.connect(str(tmp))
        try:
            for name, table in CONTRACT.items():
                data = pa.table({c: tables[name][c] for c in table.column_names})
                select = ", ".join(f'CAST("{c.name}" AS {SQL_TYPES[c.dtype]}) AS "{c.name}"' for c in table.columns)
                con.register("demo_src", data)
                con.execute(f'CREATE TABLE "{name}" AS SELECT {select} FROM demo_src')
                con.unregister("demo_src")
                counts[name] = data.num_rows
        finally:
            con.close()
        Path(f"{path}.wal").unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return counts
