"""The `spm` command: one entry point with subcommands; exit 0 when all is well, non-zero with a summary."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from spm_lib.errors import SpmError


def _config(project: str | None):  # type: ignore[no-untyped-def]
    from spm_lib.config import load_config

    return load_config(Path(project) if project else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", envvar="SPM_PROJECT_DIR", type=click.Path(file_okay=False),
              help="Project root (the folder holding config/); default: $SPM_PROJECT_DIR.")
@click.pass_context
def cli(ctx: click.Context, project: str | None) -> None:
    """SPM reporting framework: trusted KPIs and per-owner session reports."""
    ctx.obj = {"project": project}


@cli.command("demo-data")
@click.option("--seed", default=42, show_default=True, help="Random seed; same seed and end give identical data.")
@click.option("--scale", default=1.0, show_default=True, help="Company size multiplier (benchmarks use ~30).")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Last day of data (default: end of the last closed month).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="DuckDB file to write (default: data/demo.duckdb under the project).")
@click.pass_context
def demo_data(ctx: click.Context, seed: int, scale: float, end: object, out: str | None) -> None:
    """Generate the seeded demo company into a DuckDB file."""
    from spm_lib.demo import default_end, generate
    from spm_lib.project import project_dir

    root = Path(ctx.obj["project"]) if ctx.obj["project"] else project_dir()
    target = Path(out) if out else root / "data" / "demo.duckdb"
    end_date = end.date() if end is not None else default_end(date.today())  # type: ignore[attr-defined]
    counts = generate(target, seed=seed, scale=scale, end=end_date)
    click.echo(f"Demo company written to {target} (data up to {end_date}):")
    for table, n in counts.items():
        click.echo(f"  {table:<22}{n:>10,} rows")


@cli.group()
def data() -> None:
    """Inspect and validate the configured data source."""


@data.command("check")
@click.pass_context
def data_check(ctx: click.Context) -> None:
    """Validate the source against the data contract and print every problem found."""
    from spm_lib.validate import check_report

    cfg = _config(ctx.obj["project"])
    text, ok = check_report(cfg)
    click.echo(text)
    if not ok:
        sys.exit(1)


def main() -> None:
    """Run the CLI, turning SpmError into a readable message and exit code 2."""
    try:
        cli(standalone_mode=True)
    except SpmError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
