"""Email benchmark: chart images with one warm exporter, and 1,000 owners' emails built and handed to a loopback server.

Works on the bench project of `bench_batch` (its monthly run as of 2026-10-31, made by that part when missing).
`image_s`: seconds per chart PNG with ONE persistent `images.Exporter`, each owner's charts drawn in one call as
`spm send` draws them (browser start-up reported apart as `image_startup_s`). `email_s_per_1000`: what `spm send`
does per owner once the report is loaded and the charts drawn: the email's facts, content hash and message built
(`deliver.build_message`), serialised, and handed by `SmtpSender.send` to an aiosmtpd server on 127.0.0.1, in its
own process, that counts and discards; the next email is built while the server takes the current one, as in
`spm send` (`deliver.ahead`). It cycles over the run's owners, each message to its own synthetic recipient; the
send pace (delivery.rate_per_minute) is left out. `email_mb`: the executive's full message (report attached).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.batch import AS_OF

BENCH_SECRET = "eM3-kV8qR1wT6yU9iO2pA5sD7fG0hJ4lZ_xCvBn"  # signs the live links of the benchmark's emails only
MIN_IMAGES = 20
EMAILS = 1000
EMAILS_ENV = "SPM_BENCH_EMAILS"  # fewer messages for a quick try; the figure is still scaled to 1,000


@dataclass
class _Counter:
    """An aiosmtpd handler that counts messages and bytes and keeps nothing."""

    messages: int = 0
    nbytes: int = 0
    recipients: set[str] = field(default_factory=set)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages += 1
        self.nbytes += len(envelope.content)
        self.recipients.update(envelope.rcpt_tos)
        return "250 Message accepted"


@dataclass
class _Owner:
    """What one owner's email needs, prepared once: report, report bytes, saved figures and (later) their PNGs."""

    rpt: Any
    report: bytes
    figs: dict[str, Any]
    images: dict[str, bytes] = field(default_factory=dict)
    alts: dict[str, str] = field(default_factory=dict)


def bench_run(root: Path) -> Path:
    """The bench project's monthly run folder (made by the batch part's code when its manifest is missing)."""
    from benchmarks import batch as bench_batch

    proj = root / "runs" / "bench" / "batch" / "project"
    run_dir = proj / "runs" / "monthly" / AS_OF.isoformat()
    if not (run_dir / "manifest.json").is_file():
        bench_batch.run(root)
    return run_dir


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the block, restored after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(cfg: Any, run_dir: Path) -> dict[str, _Owner]:
    """Every rendered owner of the run: report loaded, report file read, email figures read."""
    from spm_lib.deliver.compose import read_figures
    from spm_lib.report.core import load

    owners = json.loads((run_dir / "manifest.json").read_text())["owners"]
    out = {}
    for oid, entry in sorted(owners.items()):
        if entry.get("status") != "ok":
            continue
        rpt = load(oid, "monthly", run_dir=run_dir)
        out[oid] = _Owner(rpt, Path(entry["html"]).read_bytes(), read_figures(rpt, entry["html"]))
    return out


def _render_images(cfg: Any, owners: dict[str, _Owner]) -> tuple[float, float, int]:
    """Render every owner's charts with one exporter, an owner's charts in one call: (start-up s, s per image, n)."""
    from spm_lib.deliver import compose as deliver
    from spm_lib.deliver.images import Exporter

    exporter = Exporter()
    t0 = time.perf_counter()
    exporter.open()
    startup = time.perf_counter() - t0
    n = 0
    try:
        t1 = time.perf_counter()
        for o in owners.values():
            token = deliver.message_token(o.rpt, o.rpt.owner_id)
            drawn = exporter.pngs([deliver.email_chart(f) for f in o.figs.values()])
            for (key, fig), png in zip(o.figs.items(), drawn, strict=True):
                if not isinstance(png, bytes):
                    raise png
                cid = deliver.chart_cid(cfg, token, key)
                o.images[cid], o.alts[cid] = png, deliver.chart_alt(fig, key)
                n += 1
        per_image = (time.perf_counter() - t1) / max(n, 1)
    finally:
        exporter.close()
    if n < MIN_IMAGES:
        raise RuntimeError(f"only {n} chart images in the bench run; the benchmark needs at least {MIN_IMAGES}")
    return startup, per_image, n


def _message(cfg: Any, o: _Owner, to: Any) -> bytes:
    """One owner's email as `spm send` builds it once the charts are drawn (live link signed with the bench secret)."""
    from spm_lib.deliver import compose as deliver

    facts = deliver.read_facts(o.rpt)
    digest = deliver.email_digest(o.rpt, facts, o.report, o.figs)
    msg = deliver.build_message(cfg, o.rpt, to=to, link_url=deliver.live_link(cfg, o.rpt, BENCH_SECRET),
                                images=o.images, attachment_html=o.report, alts=o.alts, digest=digest, facts=facts)
    return deliver.message_bytes(msg)


def _serve() -> None:
    """In a child process: a counting SMTP server on a free loopback port, printed; counts printed at stdin's EOF."""
    from aiosmtpd.controller import Controller

    box, port = _Counter(), _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, data_size_limit=0)
    controller.start()
    print(port, flush=True)
    sys.stdin.read()
    controller.stop()
    print(json.dumps({"messages": box.messages, "bytes": box.nbytes, "recipients": len(box.recipients)}), flush=True)


def _send_many(cfg: Any, owners: dict[str, _Owner], n: int) -> tuple[float, dict[str, int]]:
    """Build and send `n` emails, cycling over the owners, to a counting server in its own process on loopback."""
    from contextlib import closing

    from spm_lib.deliver.compose import SmtpSender, ahead, make_address

    server = subprocess.Popen([sys.executable, "-c", "from benchmarks.email import _serve; _serve()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    items = list(owners.values())

    def build(i: int) -> tuple[bytes, str]:
        o = items[i % len(items)]
        to = make_address(o.rpt.name, f"bench-{i:05d}@bench.invalid")
        return _message(cfg, o, to), to.addr_spec

    try:
        port = int(server.stdout.readline())
        with _env(SPM_SMTP_HOST="127.0.0.1", SPM_SMTP_PORT=str(port)), SmtpSender(cfg) as sender:
            t0 = time.perf_counter()
            with closing(ahead(build, range(n))) as built:
                for _, result in built:
                    if isinstance(result, Exception):
                        raise result
                    sender.send(result[0], [result[1]])
            seconds = time.perf_counter() - t0
        counts, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return seconds, dict(json.loads(counts.strip().splitlines()[-1]))


def run(root: Path, emails: int | None = None) -> dict[str, Any]:
    """Time images and emails on the bench run; return the figures for runs/bench/latest.json."""
    from spm_lib.config import SmtpConfig, load_config
    from spm_lib.deliver.compose import make_address, project_env

    n = emails or int(os.environ.get(EMAILS_ENV, EMAILS))
    run_dir = bench_run(root)
    proj = run_dir.parents[2]
    cfg = load_config(proj)
    # a plain loopback server, no login, every owner emailed with the report attached
    cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={
        "smtp": SmtpConfig(host="127.0.0.1", port=25, security="none", user=None), "attach_report": True,
        "redirect_to": None, "cc_leader": False})})
    with project_env(proj):
        owners = _prepare(cfg, run_dir)
        startup, per_image, n_images = _render_images(cfg, owners)
        seconds, box = _send_many(cfg, owners, n)
        exec_id = next(oid for oid, o in owners.items() if o.rpt.level == "executive")
        exec_msg = _message(cfg, owners[exec_id], make_address(owners[exec_id].rpt.name, "exec@bench.invalid"))
    if box["messages"] != n or box["recipients"] != n:
        raise RuntimeError(f"the loopback server took {box['messages']} messages for {box['recipients']} "
                           f"recipients; {n} were sent")
    figures = {"image_s": round(per_image, 3), "image_startup_s": round(startup, 2), "images": n_images,
               "email_s_per_1000": round(seconds * 1000 / n, 1), "emails_sent": n,
               "email_owners": len(owners), "email_mb": round(len(exec_msg) / 1e6, 3),
               "email_mb_mean_sent": round(box["bytes"] / n / 1e6, 3)}
    print(f"email: {n_images} images at {per_image:.3f} s each (browser start-up {startup:.2f} s); "
          f"{n} emails over {len(owners)} owners in {seconds:.1f} s; executive's email "
          f"{figures['email_mb']} MB")
    return figures


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parents[1]))
