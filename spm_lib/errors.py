"""The one exception hierarchy of spm_lib; every message tells the user what to fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpmError(Exception):
    """Root of every error spm_lib raises on purpose."""


class ConfigError(SpmError):
    """A config file is missing, malformed or holds a value that is not allowed."""


class SourceError(SpmError):
    """A data source cannot be opened or read as configured."""


class MappingError(SpmError):
    """A column mapping cannot be applied to the source data."""


class DataError(SpmError):
    """The data breaks the contract in a way that makes it unusable (fatal findings)."""


class PeriodError(SpmError):
    """A period label, cadence or as-of date is invalid."""


class OrgError(SpmError):
    """The owner hierarchy or an owner id is invalid."""


class KpiError(SpmError):
    """A KPI declaration or KPI id is invalid."""


class RunError(SpmError):
    """A run folder is missing, locked or incomplete."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_ids(ids: Iterable[object], limit: int = 10) -> str:
    """Return up to `limit` ids as a readable list, with a count of the rest."""
    items = [str(i) for i in ids]
    shown = ", ".join(items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")
