"""domain.stages.Stages: the one rule of closed / won from the stage name."""

from __future__ import annotations

import pandas as pd

from spm_lib.config import StagesConfig
from spm_lib.domain.stages import Stages


def test_won_and_closed_follow_the_configured_names() -> None:
    rule = Stages(open=("Qualify", "Propose"), won=("Closed Won",), lost=("Closed Lost", "Disqualified"))
    names = pd.Series(["Qualify", "Closed Won", "Disqualified", None, "Typo"], dtype="string")
    assert rule.is_won(names).tolist() == [False, True, False, False, False]
    assert rule.is_closed(names).tolist() == [False, True, True, False, False]
    assert rule.is_known(names).tolist() == [True, True, True, False, False]  # a missing name is no stage
    assert rule.is_closed(pd.Index(["Closed Lost", "Propose"])).tolist() == [True, False]


def test_the_rule_of_the_default_stages_configuration() -> None:
    rule = Stages.of(StagesConfig())
    assert rule.won == ("Closed Won",) and rule.lost == ("Closed Lost",)
    assert rule.is_closed(["Closed Won", "Closed Lost", rule.open[0]]).tolist() == [True, True, False]


def test_the_generic_closed_stages_open_lost_kind_and_funnel_index() -> None:
    rule = Stages(open=("Qualify", "Propose"), won=("Closed Won",), lost=("Closed Lost",), generic=("Closed",))
    names = pd.Series(["Qualify", "Closed Won", "Closed Lost", "Closed", None], dtype="string")
    assert rule.is_closed(names).tolist() == [False, True, True, False, False]  # generic: only when asked
    assert rule.is_closed(names, generic=True).tolist() == [False, True, True, True, False]
    assert rule.is_generic(names).tolist() == [False, False, False, True, False]
    assert rule.is_open(names).tolist() == [True, False, False, False, False]
    assert rule.is_lost(names).tolist() == [False, False, True, False, False]
    assert [rule.kind(n) for n in ("Propose", "Closed Won", "Closed Lost", "Closed")] == ["open", "won", "lost",
                                                                                          "closed"]
    assert rule.funnel_index() == {"Qualify": 0, "Propose": 1, "Closed Won": 1}
    assert Stages.of(StagesConfig()).generic == ("Closed",)
