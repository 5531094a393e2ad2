"""Load the configured source into a validated `Dataset`: read, map onto the contract, validate."""

from __future__ import annotations

from spm_lib.config import Config
from spm_lib.data.quality import Findings
from spm_lib.domain.contract import Dataset
from spm_lib.util.tasks import in_background


def load_dataset(cfg: Config, *, strict: bool = True) -> Dataset:
    """Read, map and validate the configured source; raise DataError on fatal findings when strict."""
    from spm_lib.data.sources import read_contract_tables

    findings = Findings()
    warm_up = in_background(_warm_up_validation, name="spm-warm-up")  # imports pandera while the source is read
    tables = read_contract_tables(cfg, findings)
    warm_up.result()
    from spm_lib.data.validate import validate

    tables = validate(tables, cfg, findings)
    if strict:
        findings.raise_if_fatal()
    notes = [] if "opportunity_history" in tables else [
        "No opportunity_history: numbers use the current stage, amount and close date of each deal."]
    return Dataset(tables=tables, findings=findings.to_frame(), notes=notes)


def _warm_up_validation() -> None:
    """Import the validation (and pandera) and work out its dtype coercions."""
    from spm_lib.data.validate import warm_up

    warm_up()
