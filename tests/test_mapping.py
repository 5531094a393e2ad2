"""The declarative mapping, one feature at a time, on small hand-written raw tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from spm_lib.config import Config, NumberFormat, OwnersFromHierarchy, SourceConfig, StagesConfig, TableMapping
from spm_lib.data.mapping import map_table, owners_from_hierarchy, parse_dates, parse_numbers
from spm_lib.data.quality import Findings
from spm_lib.errors import MappingError


def make_cfg(**stages: Any) -> Config:
    """A config with a folder source; only stages and time zone matter to the mapping."""
    return Config(root=Path("/nowhere"), source=SourceConfig(kind="folder", path="."),
                  stages=StagesConfig(**stages) if stages else StagesConfig())


def raw_table(**columns: list[Any]) -> pd.DataFrame:
    """A raw export as read from CSV: text cells, rows numbered from 1."""
    df = pd.DataFrame(columns, dtype="str")
    return df.set_axis(pd.RangeIndex(1, len(df) + 1), axis=0)


def run(table: str, raw: pd.DataFrame, mapping: dict[str, Any], others: dict[str, pd.DataFrame] | None = None,
        cfg: Config | None = None) -> tuple[pd.DataFrame, Findings]:
    findings = Findings()
    out = map_table(table, raw, TableMapping.model_validate(mapping), cfg or make_cfg(), findings,
                    lambda name, key: (others or {})[name], "export.csv")
    return out, findings


def test_rename_copies_mapped_columns_keeps_same_named_ones_and_drops_the_rest() -> None:
    raw = raw_table(Account=["Acme", "Globex"], segment=["SMB", "Enterprise"], Extra=["x", "y"])
    out, _ = run("accounts", raw, {"columns": {"account_id": "Account", "name": "Account"}})
    assert list(out.columns) == ["account_id", "name", "segment"]
    assert out["account_id"].tolist() == ["Acme", "Globex"]
    assert out["name"].tolist() == ["Acme", "Globex"]
    assert out["segment"].tolist() == ["SMB", "Enterprise"]
    assert str(out["account_id"].dtype) == "string"


def test_value_map_replaces_listed_labels_and_keeps_others() -> None:
    raw = raw_table(opportunity_id=["1", "2", "3"], stage=["Won", "Lost", "Engaging"])
    out, _ = run("opportunities", raw, {"values": {"stage": {"Won": "Closed Won", "Lost": "Closed Lost"}}})
    assert out["stage"].tolist() == ["Closed Won", "Closed Lost", "Engaging"]


def test_value_map_keys_yaml_read_as_booleans_still_match_yes_and_no() -> None:
    mapping = yaml.safe_load("values: {is_won: {Yes: true, No: false}}")  # YAML 1.1: Yes -> True
    raw = raw_table(opportunity_id=["1", "2", "3"], stage=["Closed", "Closed", "Open"], is_won=["Yes", "No", ""])
    out, findings = run("opportunities", raw, mapping)
    assert out["is_won"].tolist() == [True, False, pd.NA]
    assert len(findings) == 0


def test_numbers_with_currency_thousands_and_parentheses() -> None:
    values, bad = parse_numbers(pd.Series(["$1,234.00", "(12.50)", "-$5", "USD 2,000", "", "12%"]))
    assert values.tolist()[:4] == [1234.0, -12.5, -5.0, 2000.0]
    assert pd.isna(values.iloc[4]) and values.iloc[5] == 12.0
    assert not bad.any()


def test_numbers_in_european_format() -> None:
    fmt = NumberFormat(decimal=",", thousands=".")
    values, bad = parse_numbers(pd.Series(["1.234,00 €", "(12,50)", "0,5", "1 234 567,8"]), fmt)
    assert values.tolist() == [1234.0, -12.5, 0.5, 1234567.8]
    assert not bad.any()


def test_european_number_read_with_default_format_is_bad_not_silently_wrong() -> None:
    values, bad = parse_numbers(pd.Series(["1.234,00", "abc", "12,5", "1,234.5"]))
    assert bad.tolist() == [True, True, True, False]
    assert values.isna().tolist() == [True, True, True, False]
    assert values.iloc[3] == 1234.5


def test_amount_mapped_from_dollar_strings() -> None:
    raw = raw_table(**{"Opp": ["A", "B"], "Amount (converted)": ["$12,500.00", "$7,250.50"]})
    out, findings = run("opportunities", raw, {"columns": {"opportunity_id": "Opp", "amount": "Amount (converted)"}})
    assert out["amount"].tolist() == [12500.0, 7250.5]
    assert str(out["amount"].dtype) == "float64"
    assert len(findings) == 0


def test_dates_month_day_year_and_per_column_format() -> None:
    raw = raw_table(opportunity_id=["A", "B"], close_date=["3/5/2025", "12/31/2024"],
                    last_modified_date=["3/5/2025 2:15 PM", "1/2/2025 9:00 AM"])
    out, findings = run("opportunities", raw, {"date_format": "%m/%d/%Y",
                                                "formats": {"last_modified_date": "%m/%d/%Y %I:%M %p"}})
    assert out["close_date"].tolist() == [pd.Timestamp("2025-03-05"), pd.Timestamp("2024-12-31")]
    assert out["last_modified_date"].tolist() == [pd.Timestamp("2025-03-05 14:15"), pd.Timestamp("2025-01-02 09:00")]
    assert str(out["close_date"].dtype) == "datetime64[ns]"
    assert len(findings) == 0


def test_default_date_format_is_iso_and_aware_times_move_to_the_company_zone() -> None:
    values, bad = parse_dates(pd.Series(["2025-03-05", "2025-03-05T23:30:00+00:00"]), None, "Europe/Paris")
    # 23:30 UTC is 00:30 the next day in Paris (UTC+1 in March before the switch)
    assert values.tolist() == [pd.Timestamp("2025-03-05"), pd.Timestamp("2025-03-06 00:30")]
    assert not bad.any()


def test_unparseable_values_become_missing_and_are_reported_with_ids() -> None:
    raw = raw_table(opportunity_id=["A", "B", "C"], close_date=["3/5/2025", "31/12/2025", "soon"],
                    amount=["10", "n/a", "30"])
    out, findings = run("opportunities", raw, {"date_format": "%m/%d/%Y"})
    assert out["close_date"].isna().tolist() == [False, True, True]
    assert out["amount"].isna().tolist() == [False, True, False]
    by_column = {f.column: f for f in findings.items}
    assert by_column["close_date"].ids == ("B", "C") and by_column["close_date"].severity == "warning"
    assert "'31/12/2025'" in by_column["close_date"].message
    assert "date_format" in by_column["close_date"].fix
    assert "config/source.yml tables.opportunities" in by_column["close_date"].fix
    assert by_column["amount"].ids == ("B",)


def test_unparseable_cells_of_a_table_without_key_are_named_by_row_number() -> None:
    raw = raw_table(owner_id=["u1", "u2", "u3"], period=["2025-01", "2025-02", "2025-03"],
                    metric=["bookings"] * 3, value=["100", "lots", "300"])
    out, findings = run("targets", raw, {})
    assert out["value"].tolist()[0] == 100.0 and pd.isna(out["value"].iloc[1])
    assert findings.items[0].ids == ("row 2",)


def test_constants_set_a_column_for_every_row() -> None:
    raw = raw_table(lead_id=["L1", "L2"], created_date=["2025-01-02", "2025-01-03"])
    out, _ = run("leads", raw, {"constants": {"channel": "Web", "status": "open"}})
    assert out["channel"].tolist() == ["Web", "Web"]
    assert out["status"].tolist() == ["open", "open"]


def test_defaults_fill_only_empty_cells_with_the_typed_value() -> None:
    raw = raw_table(lead_id=["L1", "L2", "L3"], channel=["Web", "", "Event"], created_date=["2025-01-02", "", ""])
    out, _ = run("leads", raw, {"defaults": {"channel": "Unknown", "created_date": "2025-01-01"}})
    assert out["channel"].tolist() == ["Web", "Unknown", "Event"]
    assert out["created_date"].tolist() == [pd.Timestamp("2025-01-02"), pd.Timestamp("2025-01-01"),
                                            pd.Timestamp("2025-01-01")]


def test_derive_flags_from_another_column_with_negate() -> None:
    raw = raw_table(opportunity_id=["1", "2", "3", "4"], stage=["Won", "Lost", "Open", ""],
                    Status=["Closed", "Closed", "Open", ""])
    out, _ = run("opportunities", raw, {"derive": {
        "is_won": {"column": "stage", "in": ["Won"]},
        "is_closed": {"column": "Status", "in": ["Open"], "negate": True}}})
    assert out["is_won"].tolist() == [True, False, False, pd.NA]
    assert out["is_closed"].tolist() == [True, True, False, pd.NA]


def test_closed_and_won_flags_come_from_the_configured_stages_when_not_mapped() -> None:
    cfg = make_cfg(stages=[{"name": "Open", "probability": 0.3}], won=["Won", "Signed"], lost=["Lost"])
    raw = raw_table(opportunity_id=["1", "2", "3", "4", "5"], stage=["Won", "Signed", "Lost", "Open", ""])
    out, _ = run("opportunities", raw, {}, cfg=cfg)
    assert out["is_won"].tolist() == [True, True, False, False, pd.NA]
    assert out["is_closed"].tolist() == [True, True, True, False, pd.NA]


def test_mapped_flags_are_kept_over_stage_derived_ones() -> None:
    raw = raw_table(opportunity_id=["1", "2"], stage=["Closed Won", "Closed Won"], is_won=["yes", "no"])
    out, _ = run("opportunities", raw, {})
    assert out["is_won"].tolist() == [True, False]
    assert out["is_closed"].tolist() == [True, True]


def test_lookup_copies_a_value_from_another_table_and_reports_misses_with_ids() -> None:
    products = raw_table(product=["GTX Pro", "MG Special"], sales_price=["4821", "55"])
    raw = raw_table(opportunity_id=["o1", "o2", "o3", "o4"], product=["GTX Pro", "GTXPro", "MG Special", "GTXPro"])
    out, findings = run("opportunities", raw,
                        {"lookups": {"list_amount": {"table": "products", "key": "product", "on": "product",
                                                     "value": "sales_price"}}}, others={"products": products})
    assert out["list_amount"].tolist()[0] == 4821.0 and out["list_amount"].tolist()[2] == 55.0
    assert out["list_amount"].isna().tolist() == [False, True, False, True]
    (miss,) = findings.items
    assert (miss.table, miss.column, miss.severity) == ("opportunities", "list_amount", "warning")
    assert miss.ids == ("o2", "o4")
    assert "unknown product names" in miss.message and "GTXPro" in miss.message
    assert "'GTX Pro'" in miss.fix  # did-you-mean from the price list


def test_lookup_naming_a_missing_column_of_the_other_table_is_a_mapping_error() -> None:
    products = raw_table(product=["GTX Pro"], sales_price=["4821"])
    raw = raw_table(opportunity_id=["o1"], product=["GTX Pro"])
    with pytest.raises(MappingError, match=r"lookups\.list_amount\.value.*'price'.*did you mean 'sales_price'"):
        run("opportunities", raw, {"lookups": {"list_amount": {"table": "products", "key": "product",
                                                               "on": "product", "value": "price"}}},
            others={"products": products})


def test_missing_source_column_is_a_mapping_error_naming_table_key_and_column() -> None:
    raw = raw_table(**{"Opportunity ID": ["1"], "Amount (converted)": ["$5.00"]})
    with pytest.raises(MappingError) as err:
        run("opportunities", raw, {"columns": {"opportunity_id": "Opportunity ID", "amount": "Amount"}})
    msg = str(err.value)
    assert "config/source.yml tables.opportunities.columns.amount" in msg
    assert "'Amount'" in msg and "export.csv" in msg
    assert "did you mean 'Amount (converted)'" in msg


def test_mapping_a_column_the_contract_does_not_have_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match=r"tables\.opportunities\.columns\.amout.*did you mean 'amount'"):
        run("opportunities", raw_table(opportunity_id=["1"]), {"columns": {"amout": "Amount"}})


def test_owner_name_defaults_to_owner_id() -> None:
    raw = raw_table(owner_id=["ann", "bob"], manager_id=["", "ann"], name=["Ann A.", ""])
    out, _ = run("owners", raw, {})
    assert out["name"].tolist() == ["Ann A.", "bob"]
    assert out["manager_id"].isna().tolist() == [True, False]


def test_owners_from_hierarchy_columns_with_a_synthetic_top() -> None:
    teams = raw_table(sales_agent=["Anna", "Cecily", "Boris"], manager=["Dustin", "Dustin", "Rocco"],
                      regional_office=["Central", "Central", "East"])
    spec = OwnersFromHierarchy.model_validate({
        "source": "sales_teams.csv", "top": {"owner_id": "CEO", "name": "Chief Executive"},
        "levels": [{"column": "regional_office", "level": "director"}, {"column": "manager", "level": "manager"},
                   {"column": "sales_agent", "level": "rep"}]})
    findings = Findings()
    out = owners_from_hierarchy(teams, spec, make_cfg(), findings)
    expected = pd.DataFrame({
        "owner_id": ["CEO", "Central", "East", "Dustin", "Rocco", "Anna", "Cecily", "Boris"],
        "manager_id": [pd.NA, "CEO", "CEO", "Central", "East", "Dustin", "Dustin", "Rocco"],
        "name": ["Chief Executive", "Central", "East", "Dustin", "Rocco", "Anna", "Cecily", "Boris"],
        "level": ["executive", "director", "director", "manager", "manager", "rep", "rep", "rep"],
    }).astype("string")
    pd.testing.assert_frame_equal(out[["owner_id", "manager_id", "name", "level"]], expected)
    assert len(findings) == 0


def test_owners_from_hierarchy_warns_about_an_agent_under_two_managers() -> None:
    teams = raw_table(agent=["Anna", "Anna", "Boris"], manager=["Dustin", "Rocco", "Rocco"])
    spec = OwnersFromHierarchy.model_validate({
        "source": "teams", "levels": [{"column": "manager", "level": "manager"}, {"column": "agent", "level": "rep"}]})
    findings = Findings()
    out = owners_from_hierarchy(teams, spec, make_cfg(), findings)
    assert out["owner_id"].tolist() == ["Dustin", "Rocco", "Anna", "Boris"]
    assert out["manager_id"].tolist()[2] == "Dustin"  # the first row wins
    assert pd.isna(out["manager_id"].iloc[0])  # no synthetic top: managers are the top
    (warn,) = findings.items
    assert warn.severity == "warning" and warn.ids == ("Anna",)
    assert "Dustin, Rocco" in warn.message


def test_owners_from_hierarchy_missing_column_is_a_mapping_error() -> None:
    spec = OwnersFromHierarchy.model_validate({"source": "teams", "levels": [{"column": "manger", "level": "manager"}]})
    with pytest.raises(MappingError, match=r"owners_from_hierarchy\.levels\.0\.column.*did you mean 'manager'"):
        owners_from_hierarchy(raw_table(manager=["x"]), spec, make_cfg(), Findings())
