"""spm send against a real SMTP server on loopback (aiosmtpd): one email per owner, never twice, retries, failures."""

from __future__ import annotations

import email
import json
import shutil
from dataclasses import dataclass, field
from datetime import date
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest
from aiosmtpd.controller import Controller

from spm_lib.batch.runner import run
from spm_lib.config import Config, StateConfig, load_config
from spm_lib.deliver import compose
from spm_lib.deliver import smtp as smtp_mod  # the name smtp is the loopback server fixture
from spm_lib.deliver.compose import DeliveryError, clean_header, make_address, send_all
from spm_lib.deliver.images import check_png
from spm_lib.report.figures import EMAIL_CHARTS
from spm_lib.state import ledger
from tests.live_server import free_port

AS_OF = date(2026, 10, 31)
RUN_KEY = "monthly/2026-10-31"
EVIL_NAME = "Lucas Meyer\r\nBcc: spy@evil.example"
BAD_EMAIL = "not-an-address"
REFUSED = "arthur.hansen@acme-demo.example"  # rep-008: the server answers 550
FLAKY = "anna.santos@acme-demo.example"  # rep-004: the server answers 421 twice, then takes it
OPERATOR = "ops@acme-demo.example"
REDIRECT = "staging@acme-demo.example"
# the demo's owners (tests/conftest.py small_project) and what this module does to them
ADDRESSES = {"exec-01": "hector.rossi@acme-demo.example", "dir-01": "alice.weber@acme-demo.example",
             "mgr-01": "claire.fontaine@acme-demo.example", "rep-001": "alice.jansen@acme-demo.example",
             "rep-002": "agathe.leroy@acme-demo.example", "rep-003": "lucas.meyer@acme-demo.example",
             "rep-004": FLAKY}
# rep-005: invalid address; rep-006: inactive; rep-007: excluded in config; rep-008: refused by the server


# ---------------------------------------------------------------- a real SMTP server
@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message and answers 421 / 550 for chosen recipients."""

    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    tempfail: dict[str, int] = field(default_factory=dict)  # address -> how many more 421 answers
    reject: set[str] = field(default_factory=set)
    rcpt_tries: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget every message; the server refuses REFUSED (550) and nothing else."""
        self.messages.clear()
        self.tempfail.clear()
        self.reject = {REFUSED}
        self.rcpt_tries.clear()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        self.rcpt_tries[address] = self.rcpt_tries.get(address, 0) + 1
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        if self.tempfail.get(address, 0) > 0:
            self.tempfail[address] -= 1
            return "421 4.7.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted"

    def parsed(self) -> list[tuple[list[str], EmailMessage]]:
        return [(rcpts, email.message_from_bytes(raw, policy=policy.default)) for rcpts, raw in self.messages]

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.parsed() if address in rcpts]


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, smtp: tuple[Mailbox, int]) -> None:
    monkeypatch.setenv("SPM_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SPM_SMTP_PORT", str(smtp[1]))
    monkeypatch.setenv("SPM_LINK_SECRET", "a-test-secret-of-enough-length")
    monkeypatch.setattr(smtp_mod, "RETRY_BASE_S", 0.01)


# ---------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deliver") / "p"
    shutil.copytree(small_project, root)
    run(load_config(root), "monthly", AS_OF, workers=1, progress=False)
    # the CRM's owner data, as the run saw it, made hostile in the ways the sender must survive
    path = root / "runs/monthly/2026-10-31/owners.parquet"
    owners = pd.read_parquet(path)
    idx = owners.set_index("owner_id").index
    owners.loc[idx == "rep-003", "name"] = EVIL_NAME
    owners.loc[idx == "rep-005", "email"] = BAD_EMAIL
    owners.loc[idx == "rep-006", "active"] = False
    owners.to_parquet(path)
    return root


def make_cfg(root: Path, state_dir: Path, **delivery: Any) -> Config:
    """The project's config with its own state database and delivery settings for one test."""
    cfg = load_config(root)
    settings = {"exclude": ["rep-007"], "operator_email": OPERATOR, "rate_per_minute": 60000, **delivery}
    return cfg.model_copy(update={"state": StateConfig(url=f"sqlite:///{state_dir / 'state.sqlite'}"),
                                  "delivery": cfg.delivery.model_copy(update=settings)})


def run_dir(root: Path) -> Path:
    return root / "runs/monthly/2026-10-31"


@dataclass
class FirstSend:
    cfg: Config
    summary: compose.Summary
    box: list[tuple[list[str], EmailMessage]]
    raw: list[tuple[list[str], bytes]]
    rcpt_tries: dict[str, int]


@pytest.fixture(scope="module")
def first(project: Path, smtp: tuple[Mailbox, int], tmp_path_factory: pytest.TempPathFactory) -> FirstSend:
    box, port = smtp
    box.reset()
    box.tempfail[FLAKY] = 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPM_SMTP_HOST", "127.0.0.1")
        mp.setenv("SPM_SMTP_PORT", str(port))
        mp.setenv("SPM_LINK_SECRET", "a-test-secret-of-enough-length")
        mp.setattr(smtp_mod, "RETRY_BASE_S", 0.01)
        cfg = make_cfg(project, tmp_path_factory.mktemp("state"))
        summary = send_all(cfg, run_dir(project), progress=False)
    return FirstSend(cfg, summary, box.parsed(), list(box.messages), dict(box.rcpt_tries))


# ---------------------------------------------------------------- the first send
def test_each_owner_with_a_valid_address_receives_exactly_one_email(first: FirstSend) -> None:
    owner_mail = [(r, m) for r, m in first.box if r != [OPERATOR]]
    assert sorted(a for r, _ in owner_mail for a in r) == sorted(ADDRESSES.values())
    for address in ADDRESSES.values():
        (msg,) = [m for r, m in owner_mail if r == [address]]
        assert msg["To"].addresses[0].addr_spec == address
        assert "monthly report 2026-10" in msg["Subject"]
    assert sorted(first.summary.sent) == sorted(ADDRESSES)
    assert first.summary.skipped["rep-006"].startswith("inactive")
    assert first.summary.skipped["rep-007"].startswith("excluded")


def test_the_body_shows_the_charts_inline_as_valid_pngs(first: FirstSend) -> None:
    (msg,) = [m for r, m in first.box if r == [ADDRESSES["exec-01"]]]
    body = msg.get_body(("html",))
    assert body is not None
    html = body.get_content()
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert 2 <= len(images) <= 4
    for part in images:
        check_png(bytes(part.get_payload(decode=True)))  # valid and not blank
        assert f'src="cid:{part["Content-ID"].strip("<>")}"' in html
    # readable with scripts and remote content blocked: no script, nothing fetched, styles inline
    assert "<script" not in html.lower() and 'src="http' not in html and "<link" not in html
    assert "Above the line" in html and "Bookings" in html
    assert "?t=" in html  # the signed link to the live report
    plain = msg.get_body(("plain",))
    assert plain is not None and plain.get_content().startswith("Hector Rossi")


def test_the_attachment_is_that_owners_report(first: FirstSend, project: Path) -> None:
    (msg,) = [m for r, m in first.box if r == [ADDRESSES["rep-001"]]]
    (attached,) = list(msg.iter_attachments())
    assert attached.get_filename() == "rep-001-monthly-2026-10-31.html"
    assert attached.get_payload(decode=True) == (run_dir(project) / "rep/rep-001.html").read_bytes()


def test_a_421_is_retried_until_the_server_takes_the_message(first: FirstSend) -> None:
    assert first.rcpt_tries[FLAKY] == 3  # 421, 421, 250
    rows = ledger.rows(first.cfg, RUN_KEY).set_index("owner_id")
    assert rows.loc["rep-004", "status"] == "sent" and rows.loc["rep-004", "attempts"] == 3


def test_a_550_is_one_permanent_failure(first: FirstSend) -> None:
    assert first.rcpt_tries[REFUSED] == 1
    row = ledger.rows(first.cfg, RUN_KEY).set_index("owner_id").loc["rep-008"]
    assert row["status"] == "failed" and row["attempts"] == 1 and bool(row["permanent"])
    assert "550" in row["error"]
    assert "550" in first.summary.failed["rep-008"]


def test_an_invalid_crm_address_fails_that_owner_with_what_to_fix(first: FirstSend) -> None:
    assert BAD_EMAIL in first.summary.failed["rep-005"] and "owners" in first.summary.failed["rep-005"]
    assert not any(BAD_EMAIL in a for r, _ in first.box for a in r)


def test_a_crm_name_with_a_line_break_adds_no_header(first: FirstSend) -> None:
    (rcpts, msg), = [(r, m) for r, m in first.box if ADDRESSES["rep-003"] in r]
    assert rcpts == [ADDRESSES["rep-003"]]  # spy@evil.example is no recipient
    assert msg["Bcc"] is None
    assert "Bcc: spy@evil.example" in msg["To"].addresses[0].display_name  # kept as text of the name
    (raw,) = [m for r, m in first.raw if r == rcpts]
    headers = raw.split(b"\r\n\r\n", 1)[0]  # the top-level header block as the server received it
    assert not any(line.lower().startswith(b"bcc") for line in headers.split(b"\r\n"))


def test_the_operator_receives_the_summary(first: FirstSend) -> None:
    (msg,) = [m for r, m in first.box if r == [OPERATOR]]
    assert msg["Subject"] == f"SPM send {RUN_KEY}: 7 sent, 2 FAILED"
    text = msg.get_content()
    assert "failed  rep-008" in text and "failed  rep-005" in text


def test_a_second_send_sends_nothing(first: FirstSend, project: Path, smtp: tuple[Mailbox, int]) -> None:
    box = smtp[0]
    box.reset()
    again = send_all(first.cfg, run_dir(project), progress=False)
    assert box.messages == [] and again.sent == [] and again.failed == {}
    assert again.skipped["rep-001"] == "already sent"
    assert again.skipped["rep-008"].startswith("refused earlier")  # fix the address, then it is tried again


# ---------------------------------------------------------------- other sends, each with its own ledger
def test_redirect_to_sends_every_email_to_one_address(project: Path, smtp: tuple[Mailbox, int],
                                                      tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    cfg = make_cfg(project, tmp_path, redirect_to=REDIRECT, operator_email=None)
    summary = send_all(cfg, run_dir(project), level="rep", progress=False)
    # reps 001-005 and 008 (the CRM addresses, even the invalid one, are not used); 006 inactive, 007 excluded
    assert sorted(summary.sent) == ["rep-001", "rep-002", "rep-003", "rep-004", "rep-005", "rep-008"]
    assert [r for r, _ in box.parsed()] == [[REDIRECT]] * 6
    assert {m["To"].addresses[0].addr_spec for _, m in box.parsed()} == {REDIRECT}


def test_cc_leader_copies_the_owners_manager(project: Path, smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    cfg = make_cfg(project, tmp_path, cc_leader=True, operator_email=None)
    send_all(cfg, run_dir(project), owner="rep-001", progress=False)
    ((rcpts, msg),) = box.parsed()
    assert rcpts == [ADDRESSES["rep-001"], ADDRESSES["mgr-01"]]
    assert [a.addr_spec for a in msg["Cc"].addresses] == [ADDRESSES["mgr-01"]]


def test_a_send_interrupted_half_way_resumes_and_mails_each_remaining_owner_once(
        project: Path, smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    cfg = make_cfg(project, tmp_path, operator_email=None)
    sent: list[str] = []

    def crash_after_two(owner_id: str) -> None:
        sent.append(owner_id)
        if len(sent) == 2:
            raise KeyboardInterrupt("the machine went down")

    with pytest.raises(KeyboardInterrupt):
        send_all(cfg, run_dir(project), level="rep", progress=False, on_sent=crash_after_two)
    assert len(box.messages) == 2
    resumed = send_all(cfg, run_dir(project), level="rep", progress=False)
    sendable = ["rep-001", "rep-002", "rep-003", "rep-004"]  # 005 invalid, 006 inactive, 007 excluded, 008 refused
    assert sorted(resumed.sent) == sorted(set(sendable) - set(sent))
    delivered = sorted(a for r, _ in box.parsed() for a in r)
    assert delivered == sorted(ADDRESSES[o] for o in sendable)  # each exactly once


def test_an_email_left_sending_by_a_crash_is_reported_not_resent(project: Path, smtp: tuple[Mailbox, int],
                                                                 tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    cfg = make_cfg(project, tmp_path, operator_email=None)
    gen = json.loads((run_dir(project) / "manifest.json").read_text())["generation"]
    ledger.plan(cfg, RUN_KEY, gen, "rep-001", run_id="x", message_id="<m@x>", content_hash="h", recipients="a")
    ledger.mark_sending(cfg, RUN_KEY, gen, "rep-001")  # ... and then the process died
    assert ledger.unknown(cfg, RUN_KEY) == ["rep-001"]
    summary = send_all(cfg, run_dir(project), owner="rep-001", progress=False)
    assert summary.unknown == ["rep-001"] and not summary.ok and box.messages == []
    again = send_all(cfg, run_dir(project), owner="rep-001", resend_unknown=True, progress=False)
    assert again.sent == ["rep-001"] and len(box.to(ADDRESSES["rep-001"])) == 1
    assert ledger.unknown(cfg, RUN_KEY) == []


def test_resend_changed_mails_only_the_owner_whose_report_changed(project: Path, smtp: tuple[Mailbox, int],
                                                                  tmp_path: Path) -> None:
    box = smtp[0]
    root = tmp_path / "p"
    shutil.copytree(project, root)
    cfg = make_cfg(root, tmp_path, operator_email=None)
    box.reset()
    assert len(send_all(cfg, run_dir(root), level="rep", progress=False).sent) == 4
    # the reports are rendered again (a new generation); only rep-002's came out different
    folder = run_dir(root)
    report = folder / "rep/rep-002.html"
    report.write_text(report.read_text().replace("</body>", "<p>corrected deal</p></body>"))
    for name in ("manifest.json", "cube.json"):
        meta = json.loads((folder / name).read_text())
        meta["run_id"] = "regenerated1"
        if name == "manifest.json":
            meta["generation"] += 1
        (folder / name).write_text(json.dumps(meta))
    box.reset()
    plain = send_all(cfg, folder, level="rep", progress=False)
    assert plain.sent == [] and box.messages == []  # a new generation alone re-mails nobody
    changed = send_all(cfg, folder, level="rep", resend_changed=True, progress=False)
    assert changed.sent == ["rep-002"]
    assert [r for r, _ in box.parsed()] == [[ADDRESSES["rep-002"]]]
    (attached,) = list(box.to(ADDRESSES["rep-002"])[0].iter_attachments())
    assert b"corrected deal" in attached.get_payload(decode=True)


def test_a_dry_run_writes_parseable_eml_files_and_sends_nothing(project: Path, smtp: tuple[Mailbox, int],
                                                               tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    root = tmp_path / "p"
    shutil.copytree(project, root)
    cfg = make_cfg(root, tmp_path)
    manifest = json.loads((run_dir(root) / "manifest.json").read_text())
    manifest["owners"]["rep-003"].update(status="failed", html="", error="RuntimeError: boom")
    (run_dir(root) / "manifest.json").write_text(json.dumps(manifest))
    summary = send_all(cfg, run_dir(root), level="rep", dry_run=True, progress=False)
    assert box.messages == []
    out = run_dir(root) / "email"
    assert sorted(p.name for p in out.glob("rep-*.eml")) == [
        "rep-001.eml", "rep-002.eml", "rep-004.eml", "rep-008.eml"]
    assert "failed to render" in summary.failed["rep-003"]  # a failed render is never emailed
    msg = email.message_from_bytes((out / "rep-002.eml").read_bytes(), policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == ADDRESSES["rep-002"]
    assert msg.get_body(("html",)) is not None and len(list(msg.iter_attachments())) == 1
    assert (out / "_operator-summary.eml").is_file()
    assert ledger.rows(cfg, RUN_KEY).empty  # a dry run records no send
    assert "rep-005" in summary.failed


def test_a_blank_chart_fails_that_owner_and_nothing_is_sent(project: Path, smtp: tuple[Mailbox, int],
                                                           tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    root = tmp_path / "p"
    shutil.copytree(project, root)
    saved = run_dir(root) / "rep/rep-001.email.json"  # the charts `spm run` saved; `spm send` draws these
    figs = json.loads(saved.read_text())
    figs["trend"] = go.Figure(layout={"paper_bgcolor": "white", "plot_bgcolor": "white",
                                      "xaxis": {"visible": False}, "yaxis": {"visible": False}}).to_plotly_json()
    saved.write_text(json.dumps(figs))
    cfg = make_cfg(root, tmp_path, operator_email=None)
    summary = send_all(cfg, run_dir(root), owner="rep-001", progress=False)
    assert "'trend'" in summary.failed["rep-001"] and "blank" in summary.failed["rep-001"] and summary.sent == []
    assert box.messages == []
    row = ledger.rows(cfg, RUN_KEY).set_index("owner_id").loc["rep-001"]
    assert row["status"] == "failed" and not bool(row["permanent"])  # a later send tries it again


def test_the_smtp_password_reaches_no_log_eml_or_ledger(project: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-Pa55")

    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        monkeypatch.setenv("SPM_SMTP_PORT", str(port))
        monkeypatch.setenv("SPM_SMTP_PASSWORD", "s3cret-Pa55")
        root = tmp_path / "p"
        shutil.copytree(project, root)
        cfg = make_cfg(root, tmp_path, operator_email=None)
        cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={
            "smtp": cfg.delivery.smtp.model_copy(update={"user": "spm"})})})
        summary = send_all(cfg, run_dir(root), owner="rep-001", progress=False)
        send_all(cfg, run_dir(root), owner="rep-002", dry_run=True, progress=False)
    finally:
        controller.stop()
    assert summary.sent == ["rep-001"] and logins == [(b"spm", b"s3cret-Pa55")]
    for f in [run_dir(root) / "send.log", run_dir(root) / "email/rep-002.eml", tmp_path / "state.sqlite"]:
        assert b"s3cret-Pa55" not in f.read_bytes(), f


def test_without_the_password_a_configured_login_is_a_clear_error(project: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPM_SMTP_PASSWORD", raising=False)
    cfg = make_cfg(project, tmp_path)
    cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={
        "smtp": cfg.delivery.smtp.model_copy(update={"user": "spm"})})})
    with pytest.raises(DeliveryError, match="SPM_SMTP_PASSWORD"):
        send_all(cfg, run_dir(project), owner="rep-001", progress=False)


# ---------------------------------------------------------------- headers and addresses
def test_header_values_lose_their_line_breaks() -> None:
    assert clean_header("Ann\r\nBcc: x@y.example\tLee") == "Ann Bcc: x@y.example Lee"


def test_make_address_refuses_what_is_not_an_address() -> None:
    addr = make_address("Ann\nLee", "ann.lee@example.com", who="owner 'rep-9'")
    assert (addr.display_name, addr.addr_spec) == ("Ann Lee", "ann.lee@example.com")
    for bad in ["", None, "ann", "ann@", "@example.com", "ann@example.com\r\nBcc: x@y.example", "a b@example.com"]:
        with pytest.raises(DeliveryError, match="owner 'rep-9'"):
            make_address("Ann", bad, who="owner 'rep-9'")


# ---------------------------------------------------------------- the email as bytes
def test_the_wire_bytes_are_what_the_email_package_writes(project: Path, tmp_path: Path) -> None:
    from spm_lib.deliver.images import Exporter, png_size
    from spm_lib.report.core import load

    folder = run_dir(project)
    cfg = make_cfg(project, tmp_path)
    report = (folder / "rep/rep-001.html").read_bytes()
    saved = json.loads((folder / "rep/rep-001.email.json").read_text())  # written by `spm run`
    assert list(saved) == [k for k in EMAIL_CHARTS if k in saved] and len(saved) >= 2
    with Exporter() as ex:
        image = ex.png(saved["attainment"], 600, 300, scale=2)
    assert png_size(image) == (1200, 600)
    with compose.project_env(project):  # the report reads its project's config (findings, CRM links)
        rpt = load("rep-001", "monthly", run_dir=folder)
        msg = compose.build_message(cfg, rpt, to="alice.jansen@acme-demo.example", link_url=None,
                                    images={"attainment.x@acme-demo.example": image}, attachment_html=report)
    raw = compose.message_bytes(msg)
    assert raw == msg.as_bytes()  # the fast writer changes nothing
    back = email.message_from_bytes(raw, policy=policy.default)
    (attached,) = list(back.iter_attachments())
    assert attached.get_payload(decode=True) == report
    (part,) = [p for p in back.walk() if p.get_content_type() == "image/png"]
    assert part.get_payload(decode=True) == image and part["Content-ID"] == "<attainment.x@acme-demo.example>"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998  # SMTP's line limit


# ---------------------------------------------------------------- STARTTLS, SSL and login
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and localhost) made with the openssl CLI: (cert.pem, key.pem)."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@dataclass
class TlsBox(Mailbox):
    """A mailbox that also notes, per message, whether it came over TLS."""

    over_tls: list[bool] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.over_tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return await super().handle_DATA(server, session, envelope)


def tls_server(certificate: tuple[Path, Path], mode: str, logins: list[tuple[bytes, bytes]]) -> tuple[Any, TlsBox]:
    """An aiosmtpd server on loopback speaking STARTTLS ('starttls') or TLS from the start ('ssl'), login required."""
    import ssl

    from aiosmtpd.smtp import AuthResult

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"tls-Pa55word")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    box = TlsBox()
    box.reset()
    tls = {"tls_context": context, "require_starttls": True} if mode == "starttls" else \
        {"ssl_context": context, "auth_require_tls": False}  # aiosmtpd only counts STARTTLS as TLS for AUTH
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_required=True, **tls)
    controller.start()
    return controller, box


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_a_tls_server_with_login_gets_the_email_and_the_password_stays_secret(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path],
        mode: str) -> None:
    logins: list[tuple[bytes, bytes]] = []
    controller, box = tls_server(certificate, mode, logins)
    try:
        monkeypatch.setenv("SPM_SMTP_PORT", str(controller.port))
        monkeypatch.setenv("SPM_SMTP_PASSWORD", "tls-Pa55word")
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the relay's own CA (OpenSSL's variable)
        root = tmp_path / "p"
        shutil.copytree(project, root)
        cfg = make_cfg(root, tmp_path, operator_email=None)
        cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={
            "smtp": cfg.delivery.smtp.model_copy(update={"user": "spm", "security": mode})})})
        summary = send_all(cfg, run_dir(root), owner="rep-001", progress=False)
    finally:
        controller.stop()
    assert summary.sent == ["rep-001"], summary.text()
    assert logins == [(b"spm", b"tls-Pa55word")]
    assert [r for r, _ in box.messages] == [[ADDRESSES["rep-001"]]] and box.over_tls == [True]
    for f in [run_dir(root) / "send.log", tmp_path / "state.sqlite", run_dir(root) / "manifest.json"]:
        assert b"tls-Pa55word" not in f.read_bytes(), f


def test_an_untrusted_certificate_is_refused_not_retried(project: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        certificate: tuple[Path, Path]) -> None:
    logins: list[tuple[bytes, bytes]] = []
    controller, box = tls_server(certificate, "starttls", logins)
    try:
        monkeypatch.setenv("SPM_SMTP_PORT", str(controller.port))
        monkeypatch.setenv("SPM_SMTP_PASSWORD", "tls-Pa55word")
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system's CAs do not know the self-signed one
        cfg = make_cfg(project, tmp_path, operator_email=None)
        cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={
            "smtp": cfg.delivery.smtp.model_copy(update={"user": "spm", "security": "starttls"})})})
        summary = send_all(cfg, run_dir(project), owner="rep-001", progress=False)
    finally:
        controller.stop()
    assert "certificate verify failed" in summary.failed["rep-001"]
    assert "permanent after 1 attempt" in summary.failed["rep-001"]
    assert logins == [] and box.messages == []  # the password never went to a server it could not verify


# ---------------------------------------------------------------- pace, operator
def test_the_pace_spaces_messages_by_the_configured_rate(project: Path, smtp: tuple[Mailbox, int],
                                                         tmp_path: Path) -> None:
    box = smtp[0]
    box.reset()
    cfg = make_cfg(project, tmp_path, operator_email=None, rate_per_minute=30)  # one message every 2 s
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    def half_a_second_per_email(owner_id: str) -> None:
        now[0] += 0.5

    pace = compose.Pace(cfg.delivery.rate_per_minute, clock=lambda: now[0], sleep=sleep)
    summary = send_all(cfg, run_dir(project), level="rep", progress=False, pace=pace,
                       on_sent=half_a_second_per_email)
    # reps 001-004 sent, 008 handed over and refused (550): five messages 2 s apart, each sent one taking 0.5 s
    assert len(summary.sent) == 4 and len(box.messages) == 4 and box.rcpt_tries[REFUSED] == 1
    assert sleeps == [1.5, 1.5, 1.5, 1.5]
    assert now[0] == 100.0 + 4 * 2.0


def test_a_failed_scheduled_firing_is_mailed_to_the_operator(project: Path, smtp: tuple[Mailbox, int],
                                                             tmp_path: Path) -> None:
    from datetime import datetime

    from spm_lib.deliver import schedule
    from spm_lib.errors import SpmError

    box = smtp[0]
    box.reset()
    root = tmp_path / "p"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("runs"))
    cfg = make_cfg(root, tmp_path)
    first = schedule.firings(cfg, "monthly", datetime(2026, 11, 1), datetime(2026, 11, 30))[0]

    def broken_run(cadence: str, as_of: date) -> None:
        raise SpmError("the CRM database is locked")

    with pytest.raises(SpmError, match="locked"):
        schedule.fire(cfg, "monthly", first, broken_run, lambda c, a: None, lambda c, a: False)
    (msg,) = box.to(OPERATOR)
    assert msg["Subject"] == "SPM schedule monthly: monthly as of 2026-10-31 FAILED"
    assert "SpmError: the CRM database is locked" in msg.get_content()
    box.reset()

    def send_with_failures(cadence: str, as_of: date) -> None:
        raise compose.Unsent(compose.Summary(RUN_KEY, 1, False, failed={"rep-008": "SMTP 550"}))

    with pytest.raises(compose.Unsent):
        schedule.fire(cfg, "monthly", first, lambda c, a: None, send_with_failures, lambda c, a: False)
    assert box.messages == []  # the send mailed its own summary: no second message
