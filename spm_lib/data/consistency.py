"""Checks of values that parse but cannot be right: infinite numbers, implausible amounts, is_won / is_closed
flags that contradict the stage, deals on the contract's generic `Closed` stage, invalid email addresses, several
top owners. Each records findings (file, column, ids, fix); the stage flags are settled by one rule (below)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spm_lib.config import Config, StagesConfig
from spm_lib.data.mapping import row_ids
from spm_lib.data.quality import Findings
from spm_lib.domain.stages import Stages
from spm_lib.errors import format_ids

STAGES_FIX = "config/stages.yml"
SOURCE_FIX = "config/source.yml"
EMAIL = r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;.]+"  # name@domain.tld, nothing around it


# ---------------------------------------------------------------- numbers
def check_finite(name: str, df: pd.DataFrame, findings: Findings) -> None:
    """Fatal for every number column holding an infinite value (a source number beyond float range, e.g. 1e309)."""
    for column in df.columns:
        if not pd.api.types.is_float_dtype(df[column]):
            continue
        values = df[column].to_numpy(dtype="float64", na_value=np.nan)
        inf = np.isinf(values)
        if inf.any():
            findings.add(name, str(column), "non_finite", "fatal", row_ids(df, name)[inf],
                         f"{int(inf.sum())} values are infinite: the source holds a number too large to be real "
                         f"(e.g. 1e309), which would make every total infinite",
                         f"correct {column} of these rows in the source")


def amount_ceiling(amount: pd.Series, cfg: Config) -> tuple[float | None, str]:
    """(the plausibility ceiling of deal amounts, how it was set): checks.amount_ceiling, else factor × the 99th
    percentile of the positive amounts (the lower value, so one outlier among few deals does not raise it)."""
    checks = cfg.source.checks
    if checks.amount_ceiling is not None:
        return checks.amount_ceiling, f"checks.amount_ceiling in {SOURCE_FIX}"
    positive = amount[np.isfinite(amount.to_numpy(dtype="float64", na_value=np.nan)) & (amount > 0).fillna(False)]
    if positive.empty:
        return None, ""
    p99 = float(positive.quantile(0.99, interpolation="lower"))
    return checks.amount_ceiling_factor * p99, (f"{checks.amount_ceiling_factor:g} × the 99th percentile of "
                                                f"amounts, {p99:,.2f}")


def check_plausible_amounts(opps: pd.DataFrame, ids: pd.Series, cfg: Config, findings: Findings) -> None:
    """Warning for deal amounts above the plausibility ceiling (kept: they count as they are)."""
    if "amount" not in opps.columns:
        return
    amount = opps["amount"]
    ceiling, how = amount_ceiling(amount, cfg)
    if ceiling is None:
        return
    values = amount.to_numpy(dtype="float64", na_value=np.nan)
    high = np.isfinite(values) & (np.abs(values) > ceiling)
    if high.any():
        examples = ", ".join(f"{v:,.0f}" for v in np.sort(values[high])[::-1][:3])
        findings.add("opportunities", "amount", "implausible_amount", "warning", ids[high],
                     f"amount above the plausibility ceiling {ceiling:,.0f} ({how}), e.g. {examples} (kept as it "
                     f"is: it counts in bookings and pipeline)",
                     f"correct the amount in the CRM (cents instead of units? a misplaced decimal?); if such "
                     f"amounts are real, set checks.amount_ceiling in {SOURCE_FIX}")


# ---------------------------------------------------------------- the stage decides the flags
def settle_stage_flags(opps: pd.DataFrame, ids: pd.Series, stages: StagesConfig, findings: Findings) -> pd.DataFrame:
    """The rule: a deal's stage decides is_closed / is_won (open: neither; won: both; lost: closed, not won), except
    the generic closed stages (`closed`, the contract's `Closed`), where is_won decides, shown under the first won or
    lost label. Flags that contradict the stage are a warning naming the deals; the table is changed only then."""
    stage, rule = opps["stage"], Stages.of(stages)
    open_, won, lost, generic = rule.is_open(stage), rule.is_won(stage), rule.is_lost(stage), rule.is_generic(stage)
    flag_won, flag_closed = (_flag(opps, col) for col in ("is_won", "is_closed"))
    want_won = np.where(open_ | lost, 0, np.where(won, 1, -1))  # -1: the stage does not decide
    want_closed = np.where(open_, 0, np.where(won | lost | generic, 1, -1))
    won_clash = (want_won >= 0) & (flag_won >= 0) & (flag_won != want_won)
    closed_clash = (want_closed >= 0) & (flag_closed >= 0) & (flag_closed != want_closed)
    clash = won_clash | closed_clash
    for value in sorted(stage[clash].astype(str).unique()):
        rows = clash & (stage == value).fillna(False).to_numpy(dtype=bool)
        kind = rule.kind(value)
        said = _flags_said(np.where(won_clash, flag_won, -1)[rows], np.where(closed_clash, flag_closed, -1)[rows])
        outcome = {"open": " (not won)", "lost": " (not won)", "won": "", "closed": " (won or lost as is_won says)"}
        findings.add("opportunities", "is_won", "flags_contradict_stage", "warning", ids[rows],
                     f"stage {value!r} is {'an' if kind == 'open' else 'a'} {kind} stage in {STAGES_FIX}, but "
                     f"{said}: the stage decides, so these deals count as {kind}{outcome[kind]}",
                     f"correct the stage or the flags in the CRM; if {value!r} means another outcome in your "
                     f"process, list it under another key (stages, won, lost, closed) in {STAGES_FIX}, or map the "
                     f"label in {SOURCE_FIX} tables.opportunities.values.stage")
    unknown = generic & (flag_won < 0)
    findings.add("opportunities", "is_won", "closed_without_outcome", "warning", ids[unknown],
                 f"closed deal on a generic closed stage ({', '.join(stages.closed)}) without is_won: counted as "
                 f"lost", f"map is_won in {SOURCE_FIX} tables.opportunities.columns (or derive it), or map the "
                 f"stage to a won / lost label with values.stage")
    if not (clash.any() or generic.any()):
        return opps  # the usual case: the flags agree with the stage already
    out = opps.copy()
    is_won = np.where(want_won >= 0, want_won, np.where(generic, flag_won == 1, flag_won)).astype(np.int8)
    is_closed = np.where(want_closed >= 0, want_closed, flag_closed).astype(np.int8)
    out["is_won"], out["is_closed"] = (pd.Series(flag == 1, index=opps.index, dtype="boolean").mask(flag < 0)
                                       for flag in (is_won, is_closed))
    if generic.any():
        out["stage"] = relabel_generic(stage, pd.Series(is_won == 1, index=opps.index), stages)
        findings.add("opportunities", "stage", "generic_closed_stage", "info", ids[generic],
                     f"deals on the generic closed stage ({', '.join(stages.closed)}): won or lost as is_won says, "
                     f"shown as {stages.won[0]!r} ({int((generic & (is_won == 1)).sum())}) or {stages.lost[0]!r} "
                     f"({int((generic & (is_won != 1)).sum())})", "nothing to do")
    return out


def relabel_generic(stage: pd.Series, won: pd.Series, stages: StagesConfig) -> pd.Series:
    """`stage` with each generic closed stage replaced by the first won label where `won`, else the first lost one."""
    generic = Stages.of(stages).is_generic(stage)
    if not generic.any():
        return stage
    label = pd.Series(np.where(won.fillna(False).astype(bool), stages.won[0], stages.lost[0]), index=stage.index)
    return stage.mask(generic, label).astype(stage.dtype)


def relabel_history(history: pd.DataFrame, opps: pd.DataFrame, stages: StagesConfig) -> pd.DataFrame:
    """History rows on a generic closed stage shown under the won / lost label of their deal's outcome."""
    if "stage" not in history.columns or not Stages.of(stages).is_generic(history["stage"]).any() \
            or "opportunity_id" not in history.columns or "is_won" not in opps.columns:
        return history
    won = opps.drop_duplicates("opportunity_id").set_index("opportunity_id")["is_won"]
    out = history.copy()
    out["stage"] = relabel_generic(history["stage"], history["opportunity_id"].map(won), stages)
    return out


def _flag(df: pd.DataFrame, column: str) -> np.ndarray:
    """A flag column as 1 (true), 0 (false), -1 (missing or no such column)."""
    if column not in df.columns:
        return np.full(len(df), -1, dtype=np.int8)
    values = df[column].astype("boolean")
    return np.where(values.isna(), -1, values.fillna(False).astype(bool)).astype(np.int8)


def _flags_said(won: np.ndarray, closed: np.ndarray) -> str:
    """What the contradicting flags say (-1: that flag agrees), e.g. 'is_won true (2), is_closed true (3)'."""
    parts = [f"{name} {'true' if value else 'false'} ({int((flag == value).sum())})"
             for name, flag in (("is_won", won), ("is_closed", closed)) for value in (1, 0)
             if (flag == value).any()]
    return ", ".join(parts)


# ---------------------------------------------------------------- owners
def check_emails(owners: pd.DataFrame, findings: Findings) -> None:
    """Warning for owners whose email is not an address (their report cannot be emailed)."""
    if "email" not in owners.columns or "owner_id" not in owners.columns:
        return
    email = owners["email"].astype("string").str.strip()
    bad = (email.notna() & ~email.str.fullmatch(EMAIL).fillna(False)).to_numpy(dtype=bool)
    if bad.any():
        shown = format_ids([repr(e) for e in email[bad].head(3)], 3)
        findings.add("owners", "email", "invalid_email", "warning", owners.loc[bad, "owner_id"],
                     f"not an email address, e.g. {shown}: no report can be emailed to these owners",
                     "correct owners.email in the source (name@domain.tld)")


def check_single_top(current: pd.DataFrame, findings: Findings) -> None:
    """Warning when several owners of the current hierarchy have no manager: no one sees the whole company."""
    tops = sorted(current.loc[current["manager_id"].isna(), "owner_id"].astype(str))
    if len(tops) > 1:
        findings.add("owners", "manager_id", "several_top_owners", "warning", tops,
                     f"{len(tops)} owners have no manager ({format_ids(tops, 5)}): each heads a separate tree and no "
                     f"report covers the whole company",
                     "give all but one of them a manager_id (the owner above them), or add a top owner "
                     "(owners_from_hierarchy.top for a flat export)")
