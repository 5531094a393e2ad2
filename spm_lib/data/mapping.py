"""The declarative mapping of one raw source table onto its contract table (config/source.yml `tables`).

Steps, in order: rename, constants, lookups, value maps, parse numbers / dates / flags, defaults,
derived flags, closed/won flags from the configured stages. Values that cannot be parsed become
missing and are reported as findings with the row ids; a mapping that names a column the source
does not have is a MappingError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from spm_lib.config import Config, NumberFormat, OwnersFromHierarchy, TableMapping
from spm_lib.data.quality import Findings
from spm_lib.domain.contract import CONTRACT, PANDAS_DTYPES
from spm_lib.domain.stages import Stages
from spm_lib.errors import MappingError, did_you_mean, format_ids
from spm_lib.util.frames import day_of, trimmed_already

ReadOther = Callable[[str, str], pd.DataFrame]  # (source table name, config key naming it) -> raw frame

TRUE_WORDS = ["true", "t", "yes", "y", "1", "1.0", "x"]
FALSE_WORDS = ["false", "f", "no", "n", "0", "0.0"]
WHITESPACE = r"[\s\u00a0\u202f]"
YAML_BOOL_WORDS = {True: ["true", "yes", "on"], False: ["false", "no", "off"]}


# ---------------------------------------------------------------- parsers (vectorised, reusable)
def clean_strings(s: pd.Series) -> pd.Series:
    """Return `s` as the contract string dtype: trimmed, empty cells missing, integral floats without '.0'."""
    if pd.api.types.is_float_dtype(s) and bool(((s.dropna() % 1) == 0).all()):
        s = s.astype("Int64")
    out = s.astype("string")
    if trimmed_already(out):  # nothing to strip or blank: skip two passes over every value
        return out
    out = out.str.strip()
    return out.mask(out == "")


def parse_numbers(s: pd.Series, fmt: NumberFormat | None = None) -> tuple[pd.Series, pd.Series]:
    """Parse `$1,234.00`, `1.234,00 €`, `(12.50)` into float64; return (values, mask of unparseable cells)."""
    if pd.api.types.is_bool_dtype(s):
        s = s.astype("Int64")
    if pd.api.types.is_numeric_dtype(s):
        out = s.astype("float64")
        return out, pd.Series(False, index=s.index)
    fmt = fmt or NumberFormat()
    txt = clean_strings(s)
    negative = txt.str.match(r"^\(.*\)$").fillna(False).astype(bool)
    t = txt.str.replace(r"^\((.*)\)$", r"\1", regex=True).str.replace(WHITESPACE, "", regex=True)
    t = t.str.replace(r"^[^\d+\-.,]*([+-]?)[^\d.,]*", r"\1", regex=True)  # leading currency symbol / code
    t = t.str.replace(r"[^\d.,]*$", "", regex=True)  # trailing currency, '%'
    thousands = "" if re.fullmatch(WHITESPACE, fmt.thousands or " ") else fmt.thousands
    d = re.escape(fmt.decimal)
    grouped = rf"|\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+" if thousands else ""
    pattern = rf"^[+-]?(?:(?:\d+{grouped})(?:{d}\d*)?|{d}\d+)(?:[eE][+-]?\d+)?$"
    ok = t.str.match(pattern).fillna(False).astype(bool)
    if thousands:
        t = t.str.replace(thousands, "", regex=False)
    if fmt.decimal != ".":
        t = t.str.replace(fmt.decimal, ".", regex=False)
    out = pd.to_numeric(t.where(ok), errors="coerce").astype("float64")
    out = out.where(~negative, -out)
    return out, txt.notna() & out.isna()


def parse_dates(s: pd.Series, fmt: str | None = None, tz: str = "UTC",
                date_only: bool = False) -> tuple[pd.Series, pd.Series]:
    """Parse dates written with strptime `fmt` (ISO when None or as a fallback); return (values, bad mask).

    Time-zone aware values are converted to `tz` and made naive; `date_only` drops the time of day.
    """
    if pd.api.types.is_datetime64_any_dtype(s):
        out, bad = s, pd.Series(False, index=s.index)
    else:
        txt = clean_strings(s)
        out = _to_datetime(txt, fmt or "ISO8601", tz)
        retry = out.isna() & txt.notna()
        if fmt and bool(retry.any()):
            out = out.mask(retry, _to_datetime(txt.where(retry), "ISO8601", tz))
        bad = txt.notna() & out.isna()
    out = _naive(out, tz).astype("datetime64[ns]")
    return (day_of(out) if date_only else out), bad


def _to_datetime(txt: pd.Series, fmt: str, tz: str) -> pd.Series:
    """Parse text into naive datetimes; values with a UTC offset are first converted to `tz`."""
    try:
        return _naive(pd.to_datetime(txt, format=fmt, errors="coerce"), tz).astype("datetime64[ns]")
    except ValueError:  # naive and offset values mixed, or several offsets
        aware = txt.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).fillna(False).astype(bool)
        shifted = _naive(pd.to_datetime(txt.where(aware), format=fmt, errors="coerce", utc=True), tz)
        plain = pd.to_datetime(txt.where(~aware), format=fmt, errors="coerce")
        return plain.astype("datetime64[ns]").mask(aware, shifted.astype("datetime64[ns]"))


def _naive(s: pd.Series, tz: str) -> pd.Series:
    if getattr(s.dt, "tz", None) is not None:
        return s.dt.tz_convert(tz).dt.tz_localize(None)
    return s


def parse_bools(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse true/false, yes/no, 1/0 (any case) into boolean; return (values, bad mask)."""
    if pd.api.types.is_bool_dtype(s):
        out = s.astype("boolean")
        return out, pd.Series(False, index=s.index)
    txt = clean_strings(s).str.lower()
    words = {w: True for w in TRUE_WORDS} | {w: False for w in FALSE_WORDS}
    out = txt.map(words).astype("boolean")
    return out, txt.notna() & out.isna()


# ---------------------------------------------------------------- the mapping of one table
def map_table(table: str, raw: pd.DataFrame, mapping: TableMapping, cfg: Config, findings: Findings,
              read_other: ReadOther, where: str) -> pd.DataFrame:
    """Map one raw source table onto contract table `table`; `where` names the source in messages."""
    _check_keys(table, mapping)
    key = f"config/source.yml tables.{table}"
    df = raw.copy(deep=False)  # copy-on-write: columns are copied only when changed
    df = _rename(df, table, mapping, key, where)
    for col, value in mapping.constants.items():
        df[col] = value
    for col, lk in mapping.lookups.items():
        df[col] = _lookup(df, table, col, lk.table, lk.key, lk.on, lk.value, findings, read_other,
                          f"{key}.lookups.{col}", where)
    for col, value_map in mapping.values.items():
        _need(df, col, f"{key}.values.{col}", where)
        if col == "stage":
            _check_stage_targets(value_map, cfg, f"{key}.values.stage")
        df[col] = _map_values(df[col], value_map)
    df = _parse(df, table, mapping, cfg, findings)
    for col, value in mapping.defaults.items():
        df[col] = _fill(df, table, col, value, cfg)
    for col, d in mapping.derive.items():
        _need(df, d.column, f"{key}.derive.{col}.column", where)
        df[col] = derive_flag(df[d.column], d.in_, d.negate)
    return finish(table, df, cfg)


def finish(table: str, df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Complete contract defaults (flags from stages, owner names) and keep only contract columns."""
    if table == "opportunities" and "stage" in df.columns:
        rule, stage = Stages.of(cfg.stages), clean_strings(df["stage"])
        if "is_won" not in df.columns:  # unknown (missing) on a generic closed stage: its outcome is is_won's
            df["is_won"] = _stage_flag(stage, rule.is_won(stage)).mask(rule.is_generic(stage))
        if "is_closed" not in df.columns:
            df["is_closed"] = _stage_flag(stage, rule.is_closed(stage, generic=True))
    if table == "owners" and "owner_id" in df.columns:
        df["name"] = df["name"].fillna(df["owner_id"]) if "name" in df.columns else df["owner_id"]
    cols = [c.name for c in CONTRACT[table].columns if c.name in df.columns]
    out = df[cols].reset_index(drop=True)
    return out.astype({c.name: PANDAS_DTYPES[c.dtype] for c in CONTRACT[table].columns if c.name in cols})


def _stage_flag(stage: pd.Series, flag: np.ndarray) -> pd.Series:
    """A stage rule's answer as a nullable flag, missing where the (cleaned) stage is missing."""
    return pd.Series(flag, index=stage.index, dtype="boolean").mask(stage.isna())


def derive_flag(values: pd.Series, members: list[Any], negate: bool = False) -> pd.Series:
    """True where `values` is one of `members` (False with `negate`), missing where `values` is missing."""
    txt = clean_strings(values)
    flag = txt.isin([str(m) for m in members])
    flag = ~flag if negate else flag
    return flag.astype("boolean").mask(txt.isna())


def row_ids(df: pd.DataFrame, table: str) -> pd.Series:
    """Ids naming each row in findings: the table's key, else 'row N' (N = 1-based data row of the source)."""
    key = CONTRACT[table].key if table in CONTRACT else None
    if key and key in df.columns:
        ids = clean_strings(df[key])
        missing = ids.isna()
        return ids.mask(missing, _row_numbers(df.index[missing.to_numpy()])) if missing.any() else ids
    return _row_numbers(df.index)


def _row_numbers(index: pd.Index) -> pd.Series:
    """'row N' for each row label N (vectorised)."""
    return pd.Series("row " + index.astype(str), index=index, dtype="string")


def _check_keys(table: str, mapping: TableMapping) -> None:
    allowed = [c.name for c in CONTRACT[table].columns]
    for section in ("columns", "constants", "values", "formats", "defaults", "derive", "lookups"):
        for col in getattr(mapping, section):
            if col not in allowed:
                raise MappingError(f"config/source.yml tables.{table}.{section}.{col}: {col!r} is not a column of "
                                   f"contract table {table}{did_you_mean(col, allowed)}; "
                                   f"allowed: {', '.join(allowed)}")


def _need(df: pd.DataFrame, column: str, key: str, where: str) -> None:
    if column not in df.columns:
        real = [str(c) for c in df.columns]
        raise MappingError(f"{key}: column {column!r} is not in {where}{_suggest(column, real)}; "
                           f"its columns are: {', '.join(real)}")


def _suggest(column: str, real: list[str]) -> str:
    """' (did you mean X?)' by spelling, else by containment ('Amount' -> 'Amount (converted)')."""
    hint = did_you_mean(column, real)
    if hint:
        return hint
    low = column.lower()
    near = [c for c in real if low in c.lower() or (c and c.lower() in low)]
    return f" (did you mean {near[0]!r}?)" if near else ""


def _check_stage_targets(value_map: dict[Any, Any], cfg: Config, key: str) -> None:
    """MappingError naming the config key when a label is mapped to a stage config/stages.yml does not have."""
    allowed = cfg.stages.all_names
    wrong = [(raw, target) for raw, target in value_map.items() if target is not None and str(target) not in allowed]
    if wrong:
        shown = "; ".join(f"{raw!r}: {target!r}{did_you_mean(str(target), allowed)}" for raw, target in wrong)
        raise MappingError(f"{key}: maps labels to stages that config/stages.yml does not have ({shown}); "
                           f"correct the spelling in {key} or add the stage to config/stages.yml; "
                           f"configured stages: {', '.join(allowed)}")


def _rename(df: pd.DataFrame, table: str, mapping: TableMapping, key: str, where: str) -> pd.DataFrame:
    """Copy each mapped source column onto its contract name (source columns stay available)."""
    for col, src in mapping.columns.items():
        _need(df, src, f"{key}.columns.{col}", where)
    renamed = pd.DataFrame({col: df[src] for col, src in mapping.columns.items()}, index=df.index)
    rest = df.drop(columns=[c for c in renamed.columns if c in df.columns])
    return pd.concat([renamed, rest], axis=1)


def _map_values(s: pd.Series, value_map: dict[Any, Any]) -> pd.Series:
    """Replace raw labels listed in `value_map` (compared as text); other values are kept."""
    txt = clean_strings(s)
    table = {str(k): v for k, v in value_map.items()}
    for k, v in value_map.items():  # YAML 1.1 reads unquoted Yes/No/On/Off keys as booleans
        if isinstance(k, bool):
            for word in YAML_BOOL_WORDS[k]:
                table.setdefault(word, v)
                table.setdefault(word.capitalize(), v)
                table.setdefault(word.upper(), v)
    hit = txt.isin(list(table))
    return s.astype(object).where(~hit, txt.map(table))


def _lookup(df: pd.DataFrame, table: str, target: str, other: str, key_col: str, on: str, value: str,
            findings: Findings, read_other: ReadOther, key: str, where: str) -> pd.Series:
    """Values of `other.value` where `other.on` equals this table's `key_col`; misses are reported."""
    _need(df, key_col, f"{key}.key", where)
    ref = read_other(other, f"{key}.table")
    _need(ref, on, f"{key}.on", f"{other}")
    _need(ref, value, f"{key}.value", f"{other}")
    ref_keys = clean_strings(ref[on])
    by_key = pd.Series(ref[value].to_numpy(), index=ref_keys.to_numpy())
    by_key = by_key[pd.notna(by_key.index) & ~by_key.index.duplicated()]
    keys = clean_strings(df[key_col])
    found = keys.map(by_key)
    miss = keys.notna() & ~keys.isin(list(by_key.index))
    if bool(miss.any()):
        unknown = sorted(keys[miss].unique())
        hints = [f"{u!r}{did_you_mean(u, by_key.index)}" for u in unknown[:10] if did_you_mean(u, by_key.index)]
        findings.add(table, target, "lookup_miss", "warning", row_ids(df, table)[miss],
                     f"unknown {key_col} names (not found in {other} column {on!r}): {format_ids(unknown)}; "
                     f"{target} left empty for these rows",
                     f"correct the spelling in the source or add them to {other}"
                     + (f": {'; '.join(hints)}" if hints else ""))
    if target in df.columns:
        return df[target].astype(object).where(df[target].notna(), found.astype(object))
    return found


def _parse(df: pd.DataFrame, table: str, mapping: TableMapping, cfg: Config, findings: Findings) -> pd.DataFrame:
    """Give every contract column its contract dtype; unparseable cells become missing and are reported."""
    fix_key = f"config/source.yml tables.{table}"
    for col in CONTRACT[table].columns:
        if col.name not in df.columns:
            continue
        s = df[col.name]
        if col.dtype in ("float", "int"):
            out, bad = parse_numbers(s, mapping.number_format)
            if col.dtype == "int":
                frac = out.notna() & (out % 1 != 0)
                out, bad = out.mask(frac), bad | frac
            what, fix = "numbers", (f"set number_format (decimal, thousands) in {fix_key}, "
                                    f"or correct these cells in the source")
        elif col.dtype in ("date", "datetime"):
            fmt = mapping.formats.get(col.name) or mapping.date_format
            out, bad = parse_dates(s, fmt, cfg.company.timezone, date_only=col.dtype == "date")
            what = f"dates in format {fmt!r}" if fmt else "ISO dates (YYYY-MM-DD)"
            fix = (f"set date_format (or formats.{col.name}) in {fix_key}, e.g. '%m/%d/%Y', "
                   f"or correct these cells in the source")
        elif col.dtype == "bool":
            out, bad = parse_bools(s)
            what, fix = "true/false flags", f"map the labels with values.{col.name} in {fix_key}"
        else:
            out, bad = clean_strings(s), pd.Series(False, index=s.index)
            what, fix = "text", ""
            if col.name.endswith("_id"):
                _count_trimmed(table, col.name, s, out, findings)
        if bool(bad.any()):
            samples = format_ids(clean_strings(s)[bad].drop_duplicates().head(5).map(repr), limit=5)
            findings.add(table, col.name, "unparseable", "warning", row_ids(df, table)[bad],
                         f"{int(bad.sum())} values are not {what} and were left empty, e.g. {samples}", fix)
        df[col.name] = out.astype(PANDAS_DTYPES[col.dtype])
    return df


def _count_trimmed(table: str, column: str, raw: pd.Series, clean: pd.Series, findings: Findings) -> None:
    """Info: how many ids of `column` had white space around them (trimmed, so ' A1' and 'A1' are one owner)."""
    if not (pd.api.types.is_string_dtype(raw) or pd.api.types.is_object_dtype(raw)):
        return
    text = raw.astype("string")
    if trimmed_already(text):  # the usual case: no cell starts or ends with white space
        return
    trimmed = (text.notna() & clean.notna() & (text != clean)).fillna(False).to_numpy(dtype=bool)
    if trimmed.any():
        examples = format_ids([repr(v) for v in text[trimmed].drop_duplicates().head(3)], 3)
        findings.add(table, column, "ids_trimmed", "info", [], f"{int(trimmed.sum())} ids had white space around "
                     f"them and were trimmed, e.g. {examples}", "nothing to do (clean the export to silence this)",
                     count=int(trimmed.sum()))


def _fill(df: pd.DataFrame, table: str, col: str, value: Any, cfg: Config) -> pd.Series:
    """Column `col` with empty cells set to the default `value`, converted like source data (ISO dates)."""
    dtype = CONTRACT[table].column(col).dtype
    one = pd.Series([value], dtype=object)
    if dtype in ("float", "int"):
        conv, _ = parse_numbers(one)
    elif dtype in ("date", "datetime"):
        conv, _ = parse_dates(one, None, cfg.company.timezone, date_only=dtype == "date")
    elif dtype == "bool":
        conv, _ = parse_bools(one)
    else:
        conv = clean_strings(one)
    fill = conv.iloc[0]
    if pd.isna(fill):
        raise MappingError(f"config/source.yml tables.{table}.defaults.{col}: {value!r} is not a valid "
                           f"{dtype} value")
    current = df[col] if col in df.columns else pd.Series(pd.NA, index=df.index, dtype=PANDAS_DTYPES[dtype])
    return current.fillna(fill)


# ---------------------------------------------------------------- owners from a flat export
def owners_from_hierarchy(raw: pd.DataFrame, spec: OwnersFromHierarchy, cfg: Config,
                          findings: Findings) -> pd.DataFrame:
    """Build the owners table from hierarchy columns (top first); each owner's manager is the column above."""
    key = "config/source.yml owners_from_hierarchy"
    for i, level in enumerate(spec.levels):
        _need(raw, level.column, f"{key}.levels.{i}.column", spec.source)
        if level.email_column:
            _need(raw, level.email_column, f"{key}.levels.{i}.email_column", spec.source)
    names = pd.DataFrame({lv.column: clean_strings(raw[lv.column]) for lv in spec.levels}, index=raw.index)
    top = spec.top.owner_id if spec.top else None
    parts = []
    if spec.top:
        parts.append(pd.DataFrame({"owner_id": [top], "manager_id": [None], "level": [spec.top.level],
                                   "name": [spec.top.name or top], "email": [spec.top.email]}))
    for i, lv in enumerate(spec.levels):
        above = names.iloc[:, :i].ffill(axis=1).iloc[:, -1] if i else pd.Series(pd.NA, index=names.index)
        parts.append(pd.DataFrame({
            "owner_id": names[lv.column], "manager_id": above if top is None else above.fillna(top),
            "level": lv.level,
            "email": clean_strings(raw[lv.email_column]) if lv.email_column else None}))
    long = pd.concat(parts, ignore_index=True)
    self_managed = (long["owner_id"] == long["manager_id"]).fillna(False).astype(bool)
    long = long[long["owner_id"].notna() & ~self_managed]
    pairs = long.drop_duplicates(["owner_id", "manager_id"])
    managers = pairs.groupby("owner_id", sort=True)["manager_id"].agg(
        lambda m: sorted(str(x) for x in m.fillna("(none)")))
    multi = managers[managers.map(len) > 1]
    if len(multi):
        shown = "; ".join(f"{o} under {', '.join(m)}" for o, m in multi.head(10).items())
        findings.add("owners", "manager_id", "several_managers", "warning", multi.index,
                     f"listed under more than one manager in {spec.source}: {shown}; the first one is used",
                     f"give each {spec.levels[-1].column} a single {spec.levels[max(len(spec.levels) - 2, 0)].column}"
                     f" in {spec.source}")
    owners = long.drop_duplicates("owner_id", keep="first")
    return finish("owners", owners.reset_index(drop=True), cfg)
