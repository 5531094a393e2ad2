"""The stage rule: which stage names are open (in funnel order), won or lost. The one home of "closed / won from the
stage": the as-of snapshot, the cube's closed deals and the trust checks ask `Stages` rather than comparing names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

__all__ = ["Stages", "StageNames"]


class StageNames(Protocol):
    """What the rule reads from the stages configuration (config.StagesConfig)."""

    @property
    def open_names(self) -> list[str]: ...

    @property
    def won(self) -> list[str]: ...

    @property
    def lost(self) -> list[str]: ...


@dataclass(frozen=True)
class Stages:
    """Open stages in funnel order, and the won and lost stage names (a closed deal is won or lost)."""

    open: tuple[str, ...]
    won: tuple[str, ...]
    lost: tuple[str, ...]

    @classmethod
    def of(cls, cfg: StageNames) -> Stages:
        """The rule of a stages configuration (config/stages.yml)."""
        return cls(tuple(cfg.open_names), tuple(cfg.won), tuple(cfg.lost))

    def is_won(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a won stage? (a missing name: False)"""
        return _isin(stages, self.won)

    def is_closed(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a won or lost stage? (a missing name: False)"""
        return _isin(stages, (*self.won, *self.lost))

    def is_known(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a configured stage, open, won or lost? (a missing name: False)"""
        return _isin(stages, (*self.open, *self.won, *self.lost))


def _isin(values: pd.Series | pd.Index | Sequence[object], names: Iterable[str]) -> np.ndarray:
    hit = pd.Series(values, copy=False).isin(list(names))
    return np.asarray(hit.fillna(False) if hit.dtype != bool else hit, dtype=bool)
