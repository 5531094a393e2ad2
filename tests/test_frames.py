"""Frame helpers (spm_lib.frames) on small explicit frames."""

import numpy as np
import pandas as pd

from spm_lib.frames import distinct_text_order, nat_last_key


def test_nat_last_key_sorts_like_sort_values_with_missing_dates_last() -> None:
    df = pd.DataFrame({"won": [True, False, False, True, False],
                       "close": pd.to_datetime(["2026-01-02", None, "2026-01-01", "2026-01-02", None]),
                       "created": pd.to_datetime(["2026-01-01", "2026-01-03", None, None, "2026-01-01"])})
    order = np.lexsort((nat_last_key(df["created"]), nat_last_key(df["close"]), df["won"].to_numpy()))
    # lost first; among them 2026-01-01 (row 2), then no close date: created 01-01 (row 4) before 01-03 (row 1);
    # won: same close date, created 01-01 (row 0) before no created date (row 3)
    assert order.tolist() == [2, 4, 1, 0, 3]
    assert order.tolist() == df.sort_values(["won", "close", "created"]).index.tolist()


def test_nat_last_key_is_the_nanosecond_count_of_each_date() -> None:
    key = nat_last_key(pd.Series(pd.to_datetime(["1970-01-02", None])))
    assert key.tolist() == [86_400_000_000_000, np.iinfo(np.int64).max]


def test_distinct_text_order_sorts_by_each_column_in_turn_missing_first() -> None:
    df = pd.DataFrame({"owner": pd.array(["b", "a", None, "a", "b"], dtype="string"),
                       "deal": pd.array(["x", "y", "z", None, "é"], dtype="string")})
    # owner missing (row 2), then a: deal missing (3) before y (1), then b: x (0) before é (4, code point order)
    assert distinct_text_order(df, ["owner", "deal"]).tolist() == [2, 3, 1, 0, 4]
    assert distinct_text_order(df.astype(object), ["owner", "deal"]).tolist() == [2, 3, 1, 0, 4]  # fallback
