"""The `spm` command: one entry point with subcommands; exit 0 when all is well, non-zero with a summary."""

from __future__ import annotations

import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from spm_lib.errors import SpmError

if TYPE_CHECKING:
    import pandas as pd

    from spm_lib.config import Config
    from spm_lib.deliver.schedule import Action, Done


def _config(project: str | None) -> Config:
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
def demo_data(ctx: click.Context, seed: int, scale: float, end: datetime | None, out: str | None) -> None:
    """Generate the seeded demo company into a DuckDB file."""
    from spm_lib.data.demo import default_end, generate
    from spm_lib.project import project_dir

    root = Path(ctx.obj["project"]) if ctx.obj["project"] else project_dir()
    target = Path(out) if out else root / "data" / "demo.duckdb"
    end_date = end.date() if end is not None else default_end(date.today())
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
    from spm_lib.data.validate import check_report

    cfg = _config(ctx.obj["project"])
    text, ok = check_report(cfg)
    click.echo(text)
    if not ok:
        sys.exit(2)  # bad input, like every other error in the data or the config


@cli.command("init")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--example", type=click.Choice(["maven_crm", "salesforce"]), default=None,
              help="Start from a shipped CRM mapping (config/examples/) instead of the commented default.")
@click.option("--copy-templates", is_flag=True,
              help="Copy the report templates into FOLDER/templates to customise them (default: the packaged ones "
                   "are used); on an existing project, copy only them.")
def init_cmd(folder: str, example: str | None, copy_templates: bool) -> None:
    """Create a project folder (config/, data/, state/, runs/) ready for `spm data check`."""
    from spm_lib.project import init_project, templates_dir

    root = Path(folder).expanduser().resolve()
    written = init_project(root, example, copy_templates)
    click.echo(f"Project {root}:")
    for path in written:
        click.echo(f"  {path.relative_to(root)}{'/' if path.is_dir() else ''}")
    click.echo(f"Report templates: {templates_dir(root)}"
               + ("" if copy_templates else " (packaged; `spm init DIR --copy-templates` copies them to edit)"))
    if (root / "config" / "source.yml").is_file():
        click.echo(f"Next: put the export files where config/source.yml `path` says, then\n"
                   f"  spm --project {root} data check")


def _as_of(value: datetime | None, cfg: object = None, cadence: str = "monthly") -> date:
    """The --as-of date; default: the last day of the cadence's last closed period (month, quarter, year, week)."""
    if value is not None:
        return value.date()
    from spm_lib.domain.periods import FiscalCalendar

    if cfg is None:
        from spm_lib.data.demo import default_end

        return default_end(date.today())
    return FiscalCalendar.from_config(cfg).last_closed_end(cadence, date.today())


AS_OF = click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="As-of date YYYY-MM-DD (default: the last day of the last closed month, quarter, "
                     "year or week).")
CADENCE = click.option("--cadence", type=click.Choice(["weekly", "monthly", "quarterly", "annual"]),
                       default="monthly", show_default=True)


@cli.command("cube")
@AS_OF
@CADENCE
@click.option("--force", is_flag=True, help="Recompute even if the run folder already holds a cube.")
@click.pass_context
def cube_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, force: bool) -> None:
    """Compute the cube (every KPI and trust check for every owner) into the run folder."""
    import time

    from spm_lib.store.runfolder import ensure_cube

    cfg = _config(ctx.obj["project"])
    t0 = time.perf_counter()
    day = _as_of(as_of, cfg, cadence)
    folder = ensure_cube(cfg, cadence, day, force=force)
    click.echo(f"Cube for {cadence} as of {day} in {folder} ({time.perf_counter() - t0:.1f} s)")
    _warn_data_end(folder)


@cli.command("kpis")
@AS_OF
@CADENCE
@click.option("--owner", default=None, help="Only this owner's scope.")
@click.option("--level", default=None, help="Only owners of this level (rep, manager, director, executive).")
@click.option("--period", "which", type=click.Choice(["closed", "all"]), default="closed", show_default=True,
              help="closed: the period just closed and the forward look; all: every period of the cube.")
@click.option("--dims", is_flag=True, help="Add the breakdowns (rows per stage, channel, product, segment, ...).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet", "xlsx"]), default="table",
              show_default=True, help="xlsx: a workbook of the report's tables, one sheet each (KPIs, trust checks, "
              "deals to fix; with --owner also direct reports and open pipeline).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of printing (needed for --format parquet and xlsx).")
@click.pass_context
def kpis_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, owner: str | None, level: str | None,
             which: str, dims: bool, fmt: str, output: str | None) -> None:
    """Print or export the KPIs of the cube (xlsx: with the report's other tables)."""
    from spm_lib.engine.cube import read_cube
    from spm_lib.store.runfolder import ensure_cube
    from spm_lib.store.views import kpi_listing

    if fmt == "xlsx" and (output is None or not output.lower().endswith(".xlsx")):
        raise click.UsageError("--format xlsx writes a workbook: add --output FILE.xlsx")
    cfg = _config(ctx.obj["project"])
    cube = read_cube(ensure_cube(cfg, cadence, _as_of(as_of, cfg, cadence)))
    if fmt == "xlsx":
        from spm_lib.store.report_tables import report_tables

        assert output is not None
        _write_xlsx(cfg, report_tables(cube, owner=owner, level=level, closed_only=which == "closed", dims=dims),
                    output)
        return
    _emit(kpi_listing(cube, owner=owner, level=level, closed_only=which == "closed", dims=dims), fmt, output)


def _write_xlsx(cfg: Config, tables: dict[str, pd.DataFrame], output: str) -> None:
    """Write `tables` as the sheets of the workbook `output`, deal ids linked to the CRM when crm.deal_url is set."""
    from functools import partial

    from spm_lib.domain.crm import fill_deal_url
    from spm_lib.util.spreadsheet import to_safe_xlsx

    links = {"opportunity_id": partial(fill_deal_url, cfg.crm.deal_url)} if cfg.crm.deal_url else None
    sheets = to_safe_xlsx(tables, output, links, {"attainment": "0%"})  # attainment is a ratio: 1.24 shows 124%
    rows = ", ".join(f"{name} {len(df)}" for name, df in zip(sheets, tables.values(), strict=True))
    click.echo(f"{len(sheets)} sheets written to {output} (rows: {rows})", err=True)


@cli.command("trust")
@AS_OF
@CADENCE
@click.option("--owner", default=None, help="Only this owner's scope (and the deals to fix in it).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.pass_context
def trust_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, owner: str | None, fmt: str) -> None:
    """List the failing trust checks and the opportunities to fix."""
    from spm_lib.engine.cube import read_cube
    from spm_lib.store.runfolder import ensure_cube
    from spm_lib.store.views import trust_listing

    cfg = _config(ctx.obj["project"])
    cube = read_cube(ensure_cube(cfg, cadence, _as_of(as_of, cfg, cadence)))
    checks, deals = trust_listing(cube, owner=owner)
    if fmt == "table":
        click.echo(checks.to_string(index=False) if not checks.empty else "All trust checks pass.")
        if not deals.empty:
            click.echo(f"\nOpportunities to fix ({len(deals)}):")
            click.echo(deals.to_string(index=False, max_rows=200))
    else:
        scope = checks.rename(columns={"owner_id": "scope_owner_id", "amount": "flagged_amount"})
        deal = deals.rename(columns={"owner_id": "deal_owner_id", "amount": "deal_amount"})
        _emit(scope.merge(deal, on="check", how="left") if not deals.empty else scope, fmt)


@cli.command("run")
@AS_OF
@CADENCE
@click.option("--level", default=None, help="Only owners of this level.")
@click.option("--owner", default=None, help="Only this owner.")
@click.option("--workers", type=int, default=None, help="Local executor: parallel workers (default: one per core).")
@click.option("--resume", is_flag=True, help="Re-render only owners that failed or have no report yet.")
@click.option("--recompute", is_flag=True, help="Recompute the cube even if the run folder has one.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
              help="Where reports render: this machine's worker pool (default) or a Dask cluster "
                   "(default: config/runner.yml `executor`).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="The Dask scheduler's address (implies --executor dask; default: config/runner.yml).")
@click.pass_context
def run_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, level: str | None, owner: str | None,
            workers: int | None, resume: bool, recompute: bool, executor: str | None, scheduler: str | None) -> None:
    """Compute the cube once and render every owner's report (notebook + self-contained HTML)."""
    from spm_lib.batch.runner import run

    cfg = _config(ctx.obj["project"])
    day = _as_of(as_of, cfg, cadence)
    manifest = run(cfg, cadence, day, level=level, owner=owner, workers=workers, resume=resume,
                   force_cube=recompute, executor=executor, scheduler=scheduler)
    owners = manifest["owners"]
    ok = sum(1 for o in owners.values() if o["status"] == "ok")
    failed = manifest["failed"]
    folder = cfg.root / "runs" / cadence / day.isoformat()
    click.echo(f"{manifest['rendered']} reports rendered this time; {ok} of {len(owners)} owners have a report "
               f"in {folder} (cube {manifest['cube_s']} s, rendering {manifest['render_s']} s).")
    _warn_data_end(folder)
    trust_fail = sum(1 for o in owners.values() if o.get("trust_status") == "fail")
    if trust_fail:
        click.echo(f"{trust_fail} reports open with 'fix the data first'.")
    if failed:
        click.echo(f"FAILED: {len(failed)} owners: " + ", ".join(failed[:20]), err=True)
        for oid in failed[:5]:
            click.echo(f"  {oid}: {owners[oid]['error']}", err=True)
        click.echo("Fix the cause, then `spm run --resume` re-renders only those.", err=True)
        sys.exit(1)


def _warn_data_end(folder: Path) -> None:
    """Say it when the run's data ends before its closed period (the note the cube recorded)."""
    from spm_lib.engine.cube import read_cube_meta

    notes = read_cube_meta(folder).get("notes", []) if (folder / "cube.json").is_file() else []
    for note in notes:
        if str(note).startswith("The data ends on"):
            click.echo(f"WARNING: {note}", err=True)


@cli.group()
def actions() -> None:
    """The action register: actions agreed in sessions, owned by the owner of the numbers."""


CADENCE_FILTER = click.option("--cadence", type=click.Choice(["weekly", "monthly", "quarterly", "annual"]),
                              default=None, help="Only actions of sessions at this cadence.")
STATUS_FILTER = click.option("--status", type=click.Choice(["open", "done", "dropped"]), default=None,
                             help="Only this status.")


@actions.command("list")
@click.option("--owner", default=None, help="Only this owner's actions.")
@CADENCE_FILTER
@STATUS_FILTER
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.pass_context
def actions_list(ctx: click.Context, owner: str | None, cadence: str | None, status: str | None, fmt: str) -> None:
    """Print the recorded actions (every owner unless --owner)."""
    from spm_lib.state import actions as register

    cfg = _config(ctx.obj["project"])
    if fmt != "table":
        click.echo(register.export(cfg, owner, fmt=fmt, cadence=cadence, status=status), nl=False)
        return
    df = register.list_actions(cfg, owner, cadence=cadence, status=status)
    cols = ["action_id", "owner_id", "cadence", "period", "status", "due_date", "kpi", "text"]
    click.echo(df[cols].to_string(index=False) if not df.empty else "No action matches.")


@actions.command("export")
@click.option("--owner", default=None, help="Only this owner's actions (default: every owner).")
@CADENCE_FILTER
@STATUS_FILTER
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout.")
@click.pass_context
def actions_export(ctx: click.Context, owner: str | None, cadence: str | None, status: str | None, fmt: str,
                   out: str | None) -> None:
    """Export the action register as CSV or JSON."""
    from spm_lib.state import actions as register

    text = register.export(_config(ctx.obj["project"]), owner, fmt=fmt, cadence=cadence, status=status)
    if out is None:
        click.echo(text, nl=False)
    else:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"Actions written to {out}")


@cli.command("send")
@AS_OF
@CADENCE
@click.option("--level", default=None, help="Only owners of this level.")
@click.option("--owner", default=None, help="Only this owner.")
@click.option("--dry-run", is_flag=True, help="Write runs/<cadence>/<as_of>/email/<owner>.eml instead of sending.")
@click.option("--resend-unknown", is_flag=True, help="Also send emails an interrupted send left of unknown state.")
@click.option("--resend-changed", is_flag=True, help="Send again to owners whose report changed since it was sent.")
@click.pass_context
def send_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, level: str | None, owner: str | None,
             dry_run: bool, resend_unknown: bool, resend_changed: bool) -> None:
    """Email each owner their report of a finished run (never twice); SMTP password from $SPM_SMTP_PASSWORD."""
    from spm_lib.deliver.compose import send_all
    from spm_lib.store.runfolder import run_dir

    cfg = _config(ctx.obj["project"])
    folder = run_dir(cfg, cadence, _as_of(as_of, cfg, cadence))
    summary = send_all(cfg, folder, owner=owner, level=level, dry_run=dry_run,
                       resend_unknown=resend_unknown, resend_changed=resend_changed)
    click.echo(summary.text())
    if dry_run and summary.written:
        click.echo(f"Emails written to {folder / 'email'}")
    if not summary.ok:
        sys.exit(1)


@cli.command("alerts")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Evaluate the alerts on the data as of this day (default: yesterday).")
@CADENCE
@click.option("--dry-run", is_flag=True, help="Write runs/<cadence>/<as_of>/alerts/*.eml instead of mailing; the "
                                              "alert ledger is left as it was.")
@click.pass_context
def alerts_cmd(ctx: click.Context, as_of: datetime | None, cadence: str, dry_run: bool) -> None:
    """Evaluate config/alerts.yml and mail each new alert once (and each cleared one once) to its owner."""
    from spm_lib.deliver.alerts import run_alerts

    cfg = _config(ctx.obj["project"])
    day = as_of.date() if as_of is not None else date.today() - timedelta(days=1)
    summary = run_alerts(cfg, cadence, day, dry_run=dry_run)
    click.echo(summary.text())
    if dry_run and summary.written:
        click.echo(f"Emails written to {Path(summary.written[0]).parent}")
    if not summary.ok:
        sys.exit(1)


@cli.command("link")
@click.option("--owner", default=None, help="Owner id whose live report the link opens.")
@CADENCE
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Pin the link to this as-of (default: the latest run when opened).")
@click.option("--expires", default=None, help="Validity, e.g. 7d, 12h, 30m (default: live.link_days days).")
@click.option("--revoke", "revoke", default=None, metavar="LINK",
              help="Revoke one link (its full address, its token or its link id) before it expires.")
@click.option("--revoke-owner", "revoke_owner", default=None, metavar="ID",
              help="Revoke every link of this owner issued up to now.")
@click.pass_context
def link_cmd(ctx: click.Context, owner: str | None, cadence: str, as_of: datetime | None, expires: str | None,
             revoke: str | None, revoke_owner: str | None) -> None:
    """Print a signed, expiring link to an owner's live report, or revoke links (needs SPM_LINK_SECRET)."""
    from datetime import UTC, datetime, timedelta

    from spm_lib.data.load import load_dataset
    from spm_lib.domain.links import LinkError, link_url, parse_duration, secret_from_env, sign, verify_signature
    from spm_lib.domain.org import Org
    from spm_lib.state import revocations

    cfg = _config(ctx.obj["project"])
    secret = secret_from_env()
    if revoke is not None:
        claims = revocations.claims_of(revoke, secret)
        revocations.revoke_link(cfg, claims.link_id)
        who = f" of {claims.owner_id} ({claims.cadence})" if claims.owner_id else ""
        click.echo(f"revoked link {claims.link_id}{who}: the live server refuses it within "
                   f"{revocations.CACHE_S:.0f} s")
        return
    if revoke_owner is not None:
        at = revocations.revoke_owner(cfg, revoke_owner.strip())
        click.echo(f"revoked every link of {revoke_owner.strip()} issued up to {at:%Y-%m-%d %H:%M:%S} UTC; "
                   "links issued from now on work")
        return
    if owner is None:
        raise click.UsageError("pass --owner ID (or --revoke LINK / --revoke-owner ID)")
    valid = parse_duration(expires) if expires else timedelta(days=cfg.live.link_days)
    owner = Org.from_owners(load_dataset(cfg).tables["owners"]).check_owner(owner)
    until = datetime.now(UTC) + valid
    day = as_of.date() if as_of is not None else None
    token = sign(secret, owner, cadence, day, until)
    try:
        link_id = verify_signature(secret, token).link_id
    except LinkError:  # pragma: no cover - a token just signed always verifies
        link_id = "?"
    click.echo(link_url(cfg, token))
    click.echo(f"valid until {until:%Y-%m-%d %H:%M} UTC; link id {link_id} (spm link --revoke {link_id})", err=True)


@cli.command("serve")
@click.option("--host", default=None, help="Address to bind (default: live.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: live.port, 8866).")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Serve the runs of this as-of (default: the latest run of each cadence, newer runs picked up).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, as_of: datetime | None) -> None:
    """Serve every owner's report live (Voila), opened from signed links (needs SPM_LINK_SECRET)."""
    from spm_lib.live.serve import serve

    cfg = _config(ctx.obj["project"])
    serve(cfg, host=host, port=port, as_of=as_of.date() if as_of is not None else None,
          echo=lambda m: click.echo(m, err=True))


@cli.command("schedule")
@click.option("--next", "show_next", is_flag=True, help="Print the next firings of every job and their as-of.")
@click.option("--print-cron", is_flag=True, help="Print crontab lines (one daily line per job).")
@click.option("--fire", "job", default=None, help="Fire this job now if a firing is due (for cron).")
@click.pass_context
def schedule_cmd(ctx: click.Context, show_next: bool, print_cron: bool, job: str | None) -> None:
    """Run the schedule in-process (default), or show it, print cron lines, or fire one job."""
    import shutil
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from spm_lib.deliver import schedule

    cfg = _config(ctx.obj["project"])
    now = datetime.now(ZoneInfo(cfg.company.timezone))
    if show_next:
        for f in schedule.next_firings(cfg, now):
            click.echo(f"{f.fired_at:%Y-%m-%d %H:%M %Z}  {f.job:<12} as of {f.as_of}")
        return
    if print_cron:
        click.echo(schedule.CRON_HEADER)
        for line in schedule.cron_lines(cfg, shutil.which("spm") or str(Path(sys.executable).parent / "spm")):
            click.echo(line)
        return
    run_fn, send_fn, done, alerts = _schedule_actions(cfg)
    if job:
        click.echo(str(schedule.fire(cfg, job, now, run_fn, send_fn, done, alerts=alerts)))
        return
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    click.echo("spm schedule: serving (Ctrl-C to stop); catching up missed firings first", err=True)
    schedule.serve(cfg, run_fn, send_fn, done, alerts=alerts)


def _schedule_actions(cfg: Config) -> tuple[Action, Action, Done, tuple[Action, Done]]:
    """(run_fn, send_fn, done, (alerts_fn, alerts_done)) of the schedule: render (resume), send the unsent, done = all
    rendered and sent; an alerts job runs `spm alerts`, done once that day was evaluated."""
    from spm_lib.batch.runner import run
    from spm_lib.deliver.alerts import AlertsUnsent, run_alerts
    from spm_lib.deliver.compose import Unsent, send_all
    from spm_lib.state import alerts as alert_ledger
    from spm_lib.state import ledger
    from spm_lib.store.runfolder import has_manifest, read_manifest, run_dir

    def run_fn(cadence: str, as_of: date) -> None:
        # owners whose render failed are not sent and count as failures of the send that follows (the operator
        # gets its summary); everyone else still gets their report, and the next firing re-renders the failed ones
        run(cfg, cadence, as_of, resume=True, progress=False)

    def send_fn(cadence: str, as_of: date) -> None:
        summary = send_all(cfg, run_dir(cfg, cadence, as_of), progress=False)
        if not summary.ok:
            raise Unsent(summary)

    def done(cadence: str, as_of: date) -> bool:
        folder = run_dir(cfg, cadence, as_of)
        if not has_manifest(folder):
            return False
        owners = read_manifest(folder)["owners"]
        if not owners or any(o["status"] != "ok" for o in owners.values()):
            return False
        sent = ledger.rows(cfg, f"{cadence}/{as_of.isoformat()}")
        return not sent.empty and set(sent.loc[sent["status"] == "sent", "owner_id"]) >= set(owners)

    def alerts_fn(cadence: str, as_of: date) -> None:
        summary = run_alerts(cfg, cadence, as_of)
        if not summary.ok:
            raise AlertsUnsent(summary)

    def alerts_done(cadence: str, as_of: date) -> bool:
        return alert_ledger.evaluated(cfg, cadence, as_of)

    return run_fn, send_fn, done, (alerts_fn, alerts_done)


@cli.command("backtest")
@click.option("--cadence", type=click.Choice(["weekly", "monthly", "quarterly", "annual"]), default="quarterly",
              show_default=True, help="Periods replayed: the cadence's own (quarterly: fiscal quarters).")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="First period starting on or after this day (default: the first with enough history).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Last period ending on or before this day (default: the end of the data).")
@click.pass_context
def backtest_cmd(ctx: click.Context, cadence: str, start: datetime | None, end: datetime | None) -> None:
    """Replay the forecast at each past period's start and middle against what was booked (and two baselines)."""
    from spm_lib.engine.backtest import backtest_and_write

    cfg = _config(ctx.obj["project"])
    text, folder = backtest_and_write(cfg, cadence, start.date() if start else None,
                                      end.date() if end else None)
    click.echo(text)
    click.echo(f"Rows, summary and chart in {folder}")


def _emit(df: object, fmt: str, output: str | None = None) -> None:
    """Print `df` as a table, CSV or JSON, or write it to `output` (Parquet needs a file)."""
    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet writes a file: add --output FILE.parquet")
        df.to_parquet(output, index=False)
        click.echo(f"{len(df)} rows written to {output}", err=True)
        return
    if fmt == "csv":
        from spm_lib.util.spreadsheet import to_safe_csv

        text = to_safe_csv(df)
    elif fmt == "json":
        text = df.to_json(orient="records", date_format="iso", indent=1) + "\n"
    else:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            text = (df.to_string(index=False, max_rows=500) if not df.empty else "(no rows)") + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{len(df)} rows written to {output}", err=True)


def main(args: list[str] | None = None) -> None:
    """Run the CLI (on `args`, default: the command line), turning SpmError into a readable message and exit 2."""
    try:
        cli(args=args, standalone_mode=True)
    except SpmError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()


def print_report_path(cadence: str, level: str) -> None:
    """Print where the latest run's report of the first owner of `level` is (for `make demo`)."""
    from spm_lib.report.core import latest_run
    from spm_lib.store.runfolder import read_manifest

    folder = latest_run(cadence)
    manifest = read_manifest(folder)
    mine = sorted(o for o, v in manifest["owners"].items() if v["level"] == level and v["status"] == "ok")
    if mine:
        click.echo(f"\nThe {level}'s report: {manifest['owners'][mine[0]]['html']}")
    click.echo(f"Every report of the run: {folder}/<level>/<owner>.html (manifest: {folder}/manifest.json)")
