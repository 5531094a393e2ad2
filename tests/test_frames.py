"""Frame helpers (spm_lib.util.frames) on small explicit frames."""

import numpy as np
import pandas as pd

from spm_lib.util.frames import ascending_text, distinct_text_order, join_positions, nat_last_key


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


def test_join_positions_pairs_rows_like_an_inner_merge() -> None:
    left, right = np.array([2, -1, 0, 2, 5]), np.array([0, 2, -1, 2, 0])
    lpos, rpos = join_positions(left, right)
    merged = (pd.DataFrame({"k": left, "i": range(5)}).query("k >= 0")
              .merge(pd.DataFrame({"k": right, "j": range(5)}).query("k >= 0"), on="k"))
    assert lpos.tolist() == merged["i"].tolist() == [0, 0, 2, 2, 3, 3]
    assert rpos.tolist() == merged["j"].tolist() == [1, 3, 0, 4, 1, 3]
    assert [a.tolist() for a in join_positions(np.array([-1]), np.array([], dtype=np.int64))] == [[], []]


def test_ascending_text_tells_a_column_already_in_sort_order() -> None:
    assert ascending_text(pd.Series(["a", "b", "b", "é"], dtype="string[pyarrow]"))
    assert not ascending_text(pd.Series(["é", "z"], dtype="string[pyarrow]"))  # UTF-8 byte order, like Arrow
    assert not ascending_text(pd.Series(["a", None], dtype="string[pyarrow]"))  # missing values sort first
    assert not ascending_text(pd.Series(["a", "b"], dtype=object))  # not Arrow text: cannot tell
