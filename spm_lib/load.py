"""Load the configured source into a validated `Dataset`: read, map onto the contract, validate."""

from __future__ import annotations

from spm_lib.config import Config
from spm_lib.contract import Dataset
from spm_lib.quality import Findings


def load_dataset(cfg: Config, *, strict: bool = True) -> Dataset:
    """Read, map and validate the configured source; raise DataError on fatal findings when strict."""
    from spm_lib.sources import read_contract_tables
    from spm_lib.validate import validate

    findings = Findings()
    tables = read_contract_tables(cfg, findings)
    tables = validate(tables, cfg, findings)
    if strict:
        findings.raise_if_fatal()
    notes = [] if "opportunity_history" in tables else [
        "No opportunity_history: numbers use the current stage, amount and close date of each deal."]
    return Dataset(tables=tables, findings=findings.to_frame(), notes=notes)
