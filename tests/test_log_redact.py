"""Logs without secrets: link tokens, query keys and kernel ids are rewritten in every record, tracebacks included."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from tornado import httpserver, web

from spm_lib.domain import links
from spm_lib.live.log_redact import RedactingFilter, Redactor
from tests.live_server import free_port

SECRET = "rD4-kW9pZ2xQ7vN1sT6mB3jH8cF5gL0aY_eUoIiR"
KERNEL = "0a1b2c3d-1111-2222-3333-444455556666"


def _token() -> str:
    return links.sign(SECRET, "rep-001", "monthly", None, datetime.now(UTC) + timedelta(days=1))


def _parts(token: str) -> list[str]:
    return [p for p in token.split(".") if p]


def test_redactor_by_hand() -> None:
    r = Redactor(SECRET)
    t = _token()
    assert r(f"GET /voila/render/rep_monthly.ipynb?t={t}&owner=rep-002") == \
        "GET /voila/render/rep_monthly.ipynb?t=…&owner=rep-002"
    assert r(f"/login?next=%2F%3Ft%3D{t}") == "/login?next=…"
    assert r(f"the link {t} expired") == "the link <link> expired"
    tag = r.kernel_tag(KERNEL)
    assert tag.startswith("kernel:") and len(tag) == 15 and KERNEL[:8] not in tag
    assert r(f"Kernel started: {KERNEL}") == f"Kernel started: {tag}"
    assert r(f"Kernel started: {KERNEL.upper()}") == f"Kernel started: {tag}"  # one kernel, one tag
    assert r(f"/voila/query/{'ab' * 32}/{KERNEL}") == f"/voila/query/<key>/{tag}"
    assert Redactor("another secret entirely, 128 bits+").kernel_tag(KERNEL) != tag  # keyed: not a plain hash


def test_a_500_with_a_token_in_the_url_logs_no_token() -> None:
    """Tornado's own error line quotes the request URL and the traceback: both pass the filter."""

    class Boom(web.RequestHandler):
        def get(self) -> None:
            raise RuntimeError(f"kernel {KERNEL} failed for {self.request.uri}")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(SECRET)))
    loggers = [logging.getLogger(n) for n in ("tornado.application", "tornado.access", "tornado.general")]
    # an earlier logging.config.dictConfig in this process (Jupyter's apps call one) disables the loggers it does
    # not name, and a server app run earlier may have raised a logger's level: listen as `spm serve` has them
    was = [(lg.disabled, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.disabled, lg.propagate = False, False
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    port = free_port()
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = httpserver.HTTPServer(web.Application([(r"/boom", Boom)]))
        server.listen(port, "127.0.0.1")
        holder["loop"], holder["server"] = loop, server
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    t = _token()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/boom?t={t}", timeout=10)
        assert e.value.code == 500
    finally:
        loop = holder["loop"]
        loop.call_soon_threadsafe(holder["server"].stop)  # type: ignore[union-attr]
        loop.call_soon_threadsafe(loop.stop)  # type: ignore[union-attr]
        thread.join(10)
        for lg, (disabled, level, propagate) in zip(loggers, was, strict=True):
            lg.removeHandler(handler)
            lg.disabled, lg.propagate = disabled, propagate
            lg.setLevel(level)
    log = stream.getvalue()
    assert "Uncaught exception GET /boom?t=…" in log and "500 GET /boom?t=…" in log
    assert "RuntimeError: kernel kernel:" in log  # the traceback is there, rewritten
    assert not any(part in log for part in _parts(t)) and KERNEL not in log
