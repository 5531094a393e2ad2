"""SMTP for `spm send`: one connection per batch (plain, STARTTLS or SSL; login with the password from the
environment), temporary failures retried with back-off, permanent ones reported, and the pace of a batch.

`SPM_SMTP_HOST` and `SPM_SMTP_PORT` override config/delivery.yml; the password comes only from `SPM_SMTP_PASSWORD`.
The server's certificate is checked against the system's trusted CAs; a relay with a private CA is trusted through
OpenSSL's `SSL_CERT_FILE` (a PEM file of the CA) in the environment of `spm send`.
"""

from __future__ import annotations

import io
import os
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from spm_lib.config import Config
from spm_lib.errors import SpmError

PASSWORD_ENV = "SPM_SMTP_PASSWORD"
HOST_ENV = "SPM_SMTP_HOST"
PORT_ENV = "SPM_SMTP_PORT"
RETRY_BASE_S = 2.0  # first back-off after a temporary SMTP failure (doubles each time)
RETRY_MAX_S = 60.0


class DeliveryError(SpmError):
    """An email cannot be built or sent as configured (bad address, SMTP refusal, missing secret)."""


class SendFailed(DeliveryError):
    """The SMTP server did not take a message after `tries` attempts; `permanent` for a 5xx refusal."""

    def __init__(self, message: str, tries: int, permanent: bool) -> None:
        super().__init__(message)
        self.tries = tries
        self.permanent = permanent



def _temporary(e: BaseException) -> bool:
    """True for failures worth retrying: 4xx replies, dropped or refused connections, time-outs."""
    if isinstance(e, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return bool(e.recipients) and all(400 <= int(c) < 500 for c, _ in e.recipients.values())
    if isinstance(e, smtplib.SMTPResponseException):
        return 400 <= int(e.smtp_code) < 500
    if isinstance(e, smtplib.SMTPException | ssl.SSLCertVerificationError):
        return False
    return isinstance(e, OSError)  # refused or reset connections, time-outs


def _describe(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + "; ".join(
            f"{a} ({c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m})"
            for a, (c, m) in e.recipients.items())
    if isinstance(e, smtplib.SMTPResponseException):
        err = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        return f"SMTP {e.smtp_code} {err}"
    return f"{type(e).__name__}: {e}"


class SmtpSender:
    """One SMTP connection for a batch, reopened after a drop; 4xx and dropped connections retried with back-off."""

    def __init__(self, cfg: Config) -> None:
        smtp = cfg.delivery.smtp
        self.host = os.environ.get(HOST_ENV) or smtp.host
        try:
            self.port = int(os.environ.get(PORT_ENV) or smtp.port)
        except ValueError:
            raise DeliveryError(f"{PORT_ENV}={os.environ.get(PORT_ENV)!r} is not a port number") from None
        self.security = smtp.security
        self.user = smtp.user
        self.timeout = smtp.timeout_s
        self.max_attempts = cfg.delivery.max_attempts
        self._password = os.environ.get(PASSWORD_ENV)
        if self.user and not self._password:
            raise DeliveryError(f"config/delivery.yml sets smtp.user {self.user!r} but {PASSWORD_ENV} is not set: "
                                f"export {PASSWORD_ENV} in the environment of `spm send` (never in a config file)")
        self.envelope_from = parseaddr(cfg.delivery.from_address)[1]
        self._conn: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        if self._conn is not None:
            return self._conn
        if self.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.security == "starttls":
                conn.starttls(context=ssl.create_default_context())
        if self.user:
            try:
                conn.login(self.user, self._password or "")
            except smtplib.SMTPAuthenticationError as e:
                conn.close()
                raise DeliveryError(f"the SMTP server {self.host}:{self.port} refused the login of {self.user!r} "
                                    f"({e.smtp_code}); check smtp.user and {PASSWORD_ENV}") from None
        self._conn = conn
        return conn

    def close(self) -> None:
        """Say goodbye to the server (or just drop a broken connection)."""
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def send(self, msg: EmailMessage | bytes, recipients: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """Hand `msg` (or its bytes) to the server for `recipients`: (tries, refused recipients); DeliveryError when
        it failed."""
        raw = msg if isinstance(msg, bytes) else message_bytes(msg)
        tries = 0

        def attempt() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            try:
                return dict(self._connect().sendmail(self.envelope_from, list(recipients), raw))
            except BaseException:
                self._drop()  # the next attempt starts on a fresh connection
                raise

        try:
            refused = Retrying(retry=retry_if_exception(_temporary), stop=stop_after_attempt(self.max_attempts),
                               wait=wait_exponential(multiplier=RETRY_BASE_S, max=RETRY_MAX_S),
                               reraise=True)(attempt)
        except (smtplib.SMTPException, OSError) as e:
            temporary = _temporary(e)
            kind = "temporary, gave up" if temporary else "permanent"
            raise SendFailed(f"{_describe(e)} ({kind} after {tries} attempt{'s' * (tries != 1)})", tries,
                             not temporary) from None
        return tries, refused


class Pace:
    """At most `per_minute` messages a minute: `wait()` before each one (clock and sleep injectable for tests)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.gap = 60.0 / per_minute
        self.clock, self.sleep = clock, sleep
        self.last = float("-inf")

    def wait(self) -> None:
        """Sleep until a minute / per_minute has passed since the previous message."""
        pause = self.last + self.gap - self.clock()
        if pause > 0:
            self.sleep(pause)
        self.last = self.clock()


# ---------------------------------------------------------------- the wire format
class _Generator(BytesGenerator):
    """The standard generator, except that a base64 payload is written in one piece rather than line by line."""

    def _handle_text(self, msg: Any) -> None:
        payload = msg.get_payload()
        if isinstance(payload, str) and str(msg.get("Content-Transfer-Encoding", "")).lower() == "base64":
            if "\r\n" not in payload[:100] or self._NL != "\r\n":  # type: ignore[attr-defined] # Generator's own
                payload = payload.replace("\r\n", "\n").replace("\n", self._NL)  # type: ignore[attr-defined] # as above
            self._fp.write(payload.encode("ascii"))  # type: ignore[attr-defined] # Generator's output file, unstubbed
            return
        super()._handle_text(msg)  # type: ignore[misc] # private in typeshed, overridden here on purpose


def message_bytes(msg: EmailMessage) -> bytes:
    """The message as the bytes that go on the wire (CRLF line ends), as `msg.as_bytes()` gives them, faster."""
    out = io.BytesIO()
    _Generator(out, mangle_from_=False, policy=msg.policy).flatten(msg)
    return out.getvalue()
