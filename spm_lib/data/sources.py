"""Read the configured source (DuckDB file, folder of files, SQL database) into contract tables.

Each source kind is a small reader class in the `SOURCES` registry, keyed by `kind` in
config/source.yml. A reader only returns raw tables; the mapping onto the contract is
spm_lib.data.mapping's job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from spm_lib.config import Config, TableMapping, expand_env
from spm_lib.data.mapping import clean_strings, map_table, owners_from_hierarchy
from spm_lib.data.quality import Findings
from spm_lib.domain.contract import CONTRACT
from spm_lib.errors import ConfigError, SourceError, did_you_mean

FILE_SUFFIXES = (".csv", ".parquet", ".xlsx")

ENABLES: dict[str, str] = {
    "opportunity_history": "as-of reconstruction, stage conversion and push counts",
    "activities": "activity KPIs and the deals_no_activity trust check",
    "leads": "lead and lead-conversion KPIs",
    "accounts": "account names, segments and retention",
    "targets": "quota attainment and pipeline coverage",
    "forecasts": "the forecast-accuracy trust check",
    "surveys": "customer satisfaction / NPS",
    "costs": "cost of sales",
}


class Source(Protocol):
    """A place raw tables are read from."""

    location: str

    def read(self, name: str, options: TableMapping) -> pd.DataFrame | None:
        """The raw table `options.source or name` (or `options.query`), None when it does not exist."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


SOURCES: dict[str, Callable[[Config], Source]] = {}


def register_source(kind: str) -> Callable[[Callable[[Config], Source]], Callable[[Config], Source]]:
    """Register a reader factory under a source `kind`."""

    def deco(factory: Callable[[Config], Source]) -> Callable[[Config], Source]:
        SOURCES[kind] = factory
        return factory

    return deco


_NULLABLE = {pa.bool_(): pd.BooleanDtype(), pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(),
             pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(),
             pa.uint16(): pd.UInt16Dtype(), pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype()}


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as pandas like DuckDB's `.df()` types it (nullable flags and integers, decimals as floats,
    dates as datetimes), without converting text cell by cell."""
    fields = [pa.field(f.name, pa.float64()) if pa.types.is_decimal(f.type) else f for f in table.schema]
    if any(pa.types.is_decimal(f.type) for f in table.schema):
        table = table.cast(pa.schema(fields))
    return table.to_pandas(types_mapper=_NULLABLE.get, date_as_object=False)


def _numbered(df: pd.DataFrame) -> pd.DataFrame:
    """Index rows 1..n so findings can name the source row number."""
    return df.set_axis(pd.RangeIndex(1, len(df) + 1), axis=0)


# ---------------------------------------------------------------- folder of CSV / Parquet / XLSX
@register_source("folder")
class FolderSource:
    """A folder of CSV / Parquet / XLSX files, one file per table."""

    def __init__(self, cfg: Config) -> None:
        assert cfg.source.path is not None
        self.folder = cfg.path(cfg.source.resolved_path())
        self.location = str(self.folder)
        if not self.folder.is_dir():
            raise SourceError(f"config/source.yml: path {cfg.source.path!r} is not a folder ({self.folder}): "
                              f"create it and put the exported files there, or point `path` at the folder "
                              f"that holds them")

    def file(self, name: str) -> Path | None:
        """The file holding table `name` (`name` itself, or `name` + .csv/.parquet/.xlsx)."""
        candidates = [self.folder / name] if Path(name).suffix else []
        candidates += [self.folder / f"{name}{suffix}" for suffix in FILE_SUFFIXES]
        return next((p for p in candidates if p.is_file()), None)

    def read(self, name: str, options: TableMapping) -> pd.DataFrame | None:
        """Read one file as text cells (CSV, XLSX) or typed columns (Parquet)."""
        if options.query:
            raise SourceError(f"config/source.yml tables.{name}.query: a folder source has no SQL; "
                              f"use `source: <file name>` instead")
        path = self.file(options.source or name)
        if path is None:
            return None
        try:
            if path.suffix.lower() == ".parquet":
                df = pd.read_parquet(path)
            elif path.suffix.lower() == ".xlsx":
                df = pd.read_excel(path, sheet_name=options.sheet if options.sheet is not None else 0,
                                   dtype=str, keep_default_na=False, skiprows=options.skip_rows)
            else:
                df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=options.encoding,
                                 sep=options.delimiter, skiprows=options.skip_rows, skip_blank_lines=False)
        except (UnicodeDecodeError, LookupError) as e:
            raise SourceError(f"{path}: cannot decode with encoding {options.encoding!r} ({e}); set `encoding` "
                              f"in config/source.yml tables.{name} (e.g. latin-1, cp1252)") from None
        except (pd.errors.ParserError, ValueError, OSError) as e:
            raise SourceError(f"{path}: cannot be read ({e}); check `delimiter` and `skip_rows` in "
                              f"config/source.yml tables.{name}") from None
        df.columns = [str(c).strip() for c in df.columns]
        return _numbered(df)

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------- DuckDB file
def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@register_source("duckdb")
class DuckDbSource:
    """A DuckDB database file, opened read-only; tables can be read from several threads at once."""

    concurrent_reads = True

    def __init__(self, cfg: Config) -> None:
        import duckdb

        assert cfg.source.path is not None
        path = cfg.path(cfg.source.resolved_path())
        self.location = str(path)
        if not path.is_file():
            raise SourceError(f"config/source.yml: path {cfg.source.path!r} does not exist ({path}); "
                              f"point `path` at the DuckDB file (for the demo run `spm demo-data`)")
        try:
            self.con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as e:
            raise SourceError(f"{path}: cannot be opened as a DuckDB database: {e}") from None
        # text as Arrow large_string: the layout of pandas' text columns, so they are taken over without a copy
        self.con.execute("SET arrow_large_buffer_size = true")
        rows = self.con.execute("select table_schema, table_name from information_schema.tables").fetchall()
        self.tables = {name: (schema, name) for schema, name in rows}
        self.tables.update({f"{schema}.{name}": (schema, name) for schema, name in rows})

    def read(self, name: str, options: TableMapping) -> pd.DataFrame | None:
        """Read a table (or run `options.query`) into a typed frame."""
        import duckdb

        if options.query:
            sql, what = options.query, f"the query of config/source.yml tables.{name}"
        else:
            found = self.tables.get(options.source or name)
            if found is None:
                return None
            sql, what = f"select * from {_quote(found[0])}.{_quote(found[1])}", f"table {options.source or name}"
        cursor = self.con.cursor()  # a connection of its own: reads may run in parallel threads
        try:
            return _numbered(arrow_to_pandas(cursor.sql(sql).to_arrow_table()))
        except duckdb.Error as e:
            raise SourceError(f"{self.location}: cannot read {what}: {e}") from None
        finally:
            cursor.close()

    def close(self) -> None:
        """Close the connection."""
        self.con.close()


# ---------------------------------------------------------------- SQL database through SQLAlchemy
def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ValueError, TypeError, sa_exc.ArgumentError):
        return "<unparseable SQLAlchemy URL>"


@register_source("sql")
class SqlSource:
    """Any database SQLAlchemy can reach (PostgreSQL, SQLite, …)."""

    def __init__(self, cfg: Config) -> None:
        import sqlalchemy as sa

        url = cfg.source.resolved_url()
        self.location = mask_url(url)
        self._password = sa.engine.make_url(url).password if "://" in url else None
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            raise SourceError(f"config/source.yml url {self.location}: not usable: {self._scrub(e)}") from None

    def _scrub(self, e: BaseException) -> str:
        text = str(getattr(e, "orig", None) or e).split("\n(Background on this error")[0]
        return text.replace(str(self._password), "***") if self._password else text

    def read(self, name: str, options: TableMapping) -> pd.DataFrame | None:
        """Read a reflected table (quoted by SQLAlchemy) or run `options.query`."""
        import sqlalchemy as sa

        target = options.source or name
        what = f"the query of config/source.yml tables.{name}" if options.query else f"table {target}"
        try:
            with self.engine.connect() as conn:
                if options.query:
                    return _numbered(pd.read_sql(sa.text(options.query), conn))
                schema, _, table = target.rpartition(".")
                if not sa.inspect(conn).has_table(table, schema=schema or None):
                    return None
                reflected = sa.Table(table, sa.MetaData(), autoload_with=conn, schema=schema or None)
                return _numbered(pd.read_sql(sa.select(reflected), conn))
        except sa.exc.SQLAlchemyError as e:
            raise SourceError(f"{self.location}: cannot read {what}: {self._scrub(e)}") from None

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


# ---------------------------------------------------------------- reading every configured table
def _blank(column: pd.Series) -> pd.Series:
    """True where a cell is missing or only whitespace."""
    if pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column):
        return clean_strings(column.astype("string")).isna().astype(bool)
    return column.isna()


class _Reader:
    """Reads raw tables from one source, drops footers and empty rows (counted), caches by name."""

    def __init__(self, source: Source, cfg: Config, findings: Findings) -> None:
        self.source, self.cfg, self.findings = source, cfg, findings
        self.cache: dict[tuple[str, str | None], pd.DataFrame | None] = {}
        self.pending: dict[tuple[str, str | None], Future[pd.DataFrame | None]] = {}
        # one read at a time unless the source says otherwise: a connection is not shared between threads
        self.workers = 2 if getattr(source, "concurrent_reads", False) else 1
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="spm-read")
        self.lock: AbstractContextManager[object] = threading.Lock() if self.workers == 1 else nullcontext()

    def prefetch(self, name: str, options: TableMapping) -> None:
        """Start reading table `name` in the background, while the table before it is mapped."""
        cache_key = (options.source or name, options.query)
        if cache_key not in self.cache and cache_key not in self.pending:
            self.pending[cache_key] = self.pool.submit(self._read, name, options)

    def _read(self, name: str, options: TableMapping) -> pd.DataFrame | None:
        if options.source and "${" in options.source:
            where = f"config/source.yml tables.{name}.source" if name in self.cfg.source.tables else name
            options = options.model_copy(update={"source": expand_env(options.source, where)})
        with self.lock:
            return self.source.read(name, options)

    def raw(self, name: str, options: TableMapping, label: str) -> pd.DataFrame | None:
        """Raw table `name` read with `options`; findings about dropped rows go under `label`."""
        cache_key = (options.source or name, options.query)
        if cache_key not in self.cache:
            started = self.pending.pop(cache_key, None)
            df = started.result() if started is not None else self._read(name, options)
            self.cache[cache_key] = None if df is None else self._drop_rows(df, options, label)
        return self.cache[cache_key]

    def close(self) -> None:
        """Stop background reads (one already running finishes)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def other(self, name: str, key: str) -> pd.DataFrame:
        """A source table named in config beside `tables` (a lookup table, the hierarchy export)."""
        name = expand_env(name, key)
        label, options = self._options_for(name)
        df = self.raw(name, options, label)
        if df is None:
            raise SourceError(f"{key}: {name!r} is not in {self.source.location}; name an existing table/file")
        return df

    def _options_for(self, name: str) -> tuple[str, TableMapping]:
        """(table, read options) of the configured table whose source is `name`, else (name, defaults)."""
        for table, m in self.cfg.source.tables.items():
            if Path(m.source or table).stem == Path(name).stem and not m.query:
                return table, m
        return name, TableMapping.model_validate({"source": name})

    def _drop_rows(self, df: pd.DataFrame, options: TableMapping, label: str) -> pd.DataFrame:
        rows: np.ndarray | None = None  # the rows blank so far (None: all of them, before the first column)
        for column in df.columns:  # a loop over columns, not rows; only rows blank so far are looked at
            cells = df[column] if rows is None else df[column].iloc[rows]
            blank_cells = _blank(cells).to_numpy(dtype=bool)
            rows = np.flatnonzero(blank_cells) if rows is None else rows[blank_cells]
            if not len(rows):
                break
        still = np.ones(len(df), dtype=bool)
        if rows is not None:
            still[:] = False
            still[rows] = True
        blank = pd.Series(still, index=df.index, dtype=bool)
        self.findings.add(label, None, "empty_rows_dropped", "info", [f"row {i}" for i in df.index[blank]],
                          f"{int(blank.sum())} empty rows dropped from {self._where(options, label)}",
                          "nothing to do")
        if options.drop_rows_matching and len(df.columns):
            first = df.iloc[:, 0].astype("string").str.strip().fillna("")
            footer = ~blank & pd.concat([first.str.match(p) for p in options.drop_rows_matching],
                                        axis=1).any(axis=1)
            examples = ", ".join(repr(v) for v in first[footer].head(3))
            self.findings.add(label, None, "footer_rows_dropped", "info", [f"row {i}" for i in df.index[footer]],
                              f"{int(footer.sum())} report title/footer rows dropped from "
                              f"{self._where(options, label)} (first cell matches drop_rows_matching), "
                              f"e.g. {examples}", "nothing to do: they are not data")
            blank = blank | footer
        return df[~blank]

    def _where(self, options: TableMapping, name: str) -> str:
        return f"{self.source.location} ({options.source or name})"


def read_contract_tables(cfg: Config, findings: Findings) -> dict[str, pd.DataFrame]:
    """Read every table configured in config/source.yml and map it onto the data contract."""
    spec = cfg.source
    if spec.owners_from_hierarchy is not None and "owners" in spec.tables:
        raise ConfigError("config/source.yml: `owners` is configured twice (tables.owners and "
                          "owners_from_hierarchy); keep one of them")
    factory = SOURCES.get(spec.kind)
    if factory is None:
        raise ConfigError(f"config/source.yml: unknown kind {spec.kind!r}{did_you_mean(spec.kind, SOURCES)}")
    source = factory(cfg)
    out: dict[str, pd.DataFrame] = {}
    reader = _Reader(source, cfg, findings)
    try:
        tables = list(spec.tables.items())
        for i, (name, mapping) in enumerate(tables):
            raw = reader.raw(name, mapping, name)
            for ahead in tables[i + 1: i + 1 + reader.workers]:
                reader.prefetch(*ahead)  # read the next tables while this one is mapped
            if raw is None:
                _absent(name, mapping, source.location, findings)
                continue
            hint = layout_hint(raw, mapping)
            if hint is not None:
                findings.add(name, None, "unreadable_layout", "fatal", [],
                             f"{source.location} ({mapping.source or name}) {hint[0]}",
                             f"set {hint[1]} in config/source.yml tables.{name}", count=1)
                continue
            out[name] = map_table(name, raw, mapping, cfg, findings, reader.other,
                                  f"{source.location} ({mapping.source or name})")
        if spec.owners_from_hierarchy is not None:
            hier = spec.owners_from_hierarchy
            raw = reader.other(hier.source, "config/source.yml owners_from_hierarchy.source")
            out["owners"] = owners_from_hierarchy(raw, hier, cfg, findings)
    finally:
        reader.close()
        source.close()
    return {name: out[name] for name in CONTRACT if name in out}


DELIMITERS = (";", "\t", "|", ",")
UNNAMED = "Unnamed: "  # pandas' name of a column whose header cell is empty


def layout_hint(raw: pd.DataFrame, mapping: TableMapping) -> tuple[str, str] | None:
    """(what is wrong, the option to set) when a file was read with the wrong delimiter or a title row as its header:
    one column whose name holds another delimiter, or a header of one name and empty cells."""
    names = [str(c) for c in raw.columns]
    if len(names) == 1:
        other = [d for d in DELIMITERS if d != mapping.delimiter and d in names[0]]
        if other:
            shown = names[0] if len(names[0]) <= 60 else names[0][:57] + "…"
            return (f"was read as one column {shown!r}: its values are separated by {other[0]!r}, "
                    f"not {mapping.delimiter!r}", f"`delimiter: {other[0]!r}`")
    unnamed = sum(n.startswith(UNNAMED) for n in names)
    if names and not names[0].startswith(UNNAMED) and (len(names) == 1 or unnamed * 2 >= len(names)):
        if len(names) == 1:
            return (f"was read as one column {names[0]!r}: a title line above the header?",
                    "`skip_rows:` to the number of lines above the header (or `delimiter:` to the character between "
                    "the values)")
        above = _lines_above_header(raw, mapping.skip_rows)
        lines = "" if above is None else f" (the header looks like line {above + 1})"
        return (f"has a title row as its header: {names[0]!r} and {unnamed} unnamed columns{lines}",
                "`skip_rows:` to the number of lines above the header"
                + ("" if above is None else f" (`skip_rows: {above}`)"))
    return None


def _lines_above_header(raw: pd.DataFrame, skip_rows: int) -> int | None:
    """Lines above the real header: the first of the top rows with as many filled cells as the widest of them (raw
    rows are numbered from 1 below the header that was read)."""
    top = raw.head(20).astype("string").apply(lambda column: column.str.strip())  # 20 rows, column by column
    filled = (top.fillna("") != "").sum(axis=1)
    if filled.empty or filled.max() < 2:
        return None
    return skip_rows + int(filled.idxmax())


def _absent(name: str, mapping: TableMapping, location: str, findings: Findings) -> None:
    """A configured table the source does not have: an error when required, else an info finding."""
    target = mapping.source or name
    if CONTRACT[name].required:
        raise SourceError(f"{location}: required table {name!r} not found (looked for {target!r}); put the export "
                          f"there, or set tables.{name}.source in config/source.yml to the table/file that holds it")
    findings.add(name, None, "table_absent", "info", [], f"table {target!r} is not in {location}; "
                 f"without it there is no {ENABLES.get(name, CONTRACT[name].description)}",
                 f"add {target!r} to the source, or remove tables.{name} from config/source.yml", count=1)

