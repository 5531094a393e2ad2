"""Logs of the live server without secrets: link tokens, session ids and kernel ids never reach a log line.

Every record of every logger passes one filter on the root handlers (tornado's error lines quote the full URL with
`?t=`, jupyter_server and Voila name kernel ids at INFO). The filter rewrites the formatted message and any
traceback text: a query parameter `t`, `next` or `_xsrf` keeps its name and loses its value, an itsdangerous token
anywhere becomes `<link>`, and a kernel id becomes `kernel:` plus a short keyed digest, so lines about the same
kernel can still be matched up by someone who reads the log, but nobody can reach the kernel from it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

_PARAM = re.compile(r"(?i)((?:^|[?&;\s\"'])(?:t|next|_xsrf|token)(?:=|%3D))[^&\s\"';,)]+")
_TOKEN = re.compile(r"\.?e(?:yJ|J)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{10,}")  # itsdangerous: (zlib) JSON.signature
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_HEX_KEY = re.compile(r"(/voila/query/)[0-9a-f]{64}")


class Redactor:
    """Rewrites text so that no link token, session or query key, or kernel id survives."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("spm-log:" + secret).encode()).digest()

    def kernel_tag(self, kernel_id: str) -> str:
        """A short keyed digest standing for a kernel id in logs."""
        return "kernel:" + hmac.new(self._key, kernel_id.lower().encode(), hashlib.sha256).hexdigest()[:8]

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced."""
        text = _PARAM.sub(r"\1…", text)
        text = _TOKEN.sub("<link>", text)
        text = _HEX_KEY.sub(r"\1<key>", text)
        return _UUID.sub(lambda m: self.kernel_tag(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that applies a Redactor to the message and traceback of every record."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place (never drops it)."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secret: str, *loggers: logging.Logger) -> Redactor:
    """Redact every record reaching the handlers of the root logger and of `loggers` (those that do not propagate)."""
    redact = Redactor(secret)
    flt = RedactingFilter(redact)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for logger in (root, *loggers):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
    return redact
