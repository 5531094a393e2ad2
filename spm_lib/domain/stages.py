"""The stage rule: which stage names are open (in funnel order), won or lost. The one home of "closed / won from the
stage": the mapping's flags, validation, the as-of snapshot and its replay, the cube's closed deals and the trust
checks ask `Stages` rather than comparing names."""

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

    @property
    def closed(self) -> list[str]: ...


@dataclass(frozen=True)
class Stages:
    """Open stages in funnel order, the won and lost stage names (a closed deal is won or lost), and the generic
    closed stages (`closed`: a deal's is_won flag says won or lost; validation relabels them to a won / lost name)."""

    open: tuple[str, ...]
    won: tuple[str, ...]
    lost: tuple[str, ...]
    generic: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: StageNames) -> Stages:
        """The rule of a stages configuration (config/stages.yml)."""
        return cls(tuple(cfg.open_names), tuple(cfg.won), tuple(cfg.lost), tuple(cfg.closed))

    def is_won(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a won stage? (a missing name: False)"""
        return _isin(stages, self.won)

    def is_closed(self, stages: pd.Series | pd.Index | Sequence[object], generic: bool = False) -> np.ndarray:
        """Per stage name: is it a won or lost stage (with `generic`, also a generic closed one)? (missing: False)"""
        return _isin(stages, (*self.won, *self.lost, *(self.generic if generic else ())))

    def is_open(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it an open stage? (a missing name: False)"""
        return _isin(stages, self.open)

    def is_lost(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a lost stage? (a missing name: False)"""
        return _isin(stages, self.lost)

    def is_generic(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a generic closed stage, whose outcome is the deal's is_won? (a missing name: False)"""
        return _isin(stages, self.generic)

    def kind(self, name: str) -> str:
        """"open", "won", "lost" or "closed" (a generic closed stage, or a name of none of them)."""
        return "open" if name in self.open else "won" if name in self.won else "lost" if name in self.lost \
            else "closed"

    def funnel_index(self) -> dict[str, int]:
        """Each open stage's place in the funnel (0 first); a won stage counts as the last open one."""
        return {name: i for i, name in enumerate(self.open)} | {name: len(self.open) - 1 for name in self.won}

    def is_known(self, stages: pd.Series | pd.Index | Sequence[object]) -> np.ndarray:
        """Per stage name: is it a configured stage, open, won or lost? (a missing name: False)"""
        return _isin(stages, (*self.open, *self.won, *self.lost))


def _isin(values: pd.Series | pd.Index | Sequence[object], names: Iterable[str]) -> np.ndarray:
    hit = pd.Series(values, copy=False).isin(list(names))
    return np.asarray(hit.fillna(False) if hit.dtype != bool else hit, dtype=bool)
