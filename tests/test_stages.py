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
