"""The live server's sessions: an opaque id per browser, the link it came with, the kernels handed to it.

A signed link is presented once (the report or landing page's `?t=`); the server then keeps the link's claims on its
side and gives the browser only an opaque, random session id in an HttpOnly cookie. Every kernel the server hands to
a request is bound to that request's session: the kernel's HTTP and websocket endpoints answer that session only.
Opens are rate-limited per link, so one leaked link cannot exhaust the server.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from spm_lib.domain import links

MAX_SESSIONS = 20_000  # the oldest are dropped beyond this (each is a few hundred bytes)
WINDOW_S = 60.0


@dataclass
class Session:
    """One browser's session: the verified link it opened with and the kernels handed to it."""

    sid: str
    claims: links.Claims
    token: str  # the link itself, kept on the server (the landing page's report addresses carry it)
    link_key: str  # the link's id, or a digest of its token for links without one
    kernels: set[str] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)

    def expired(self, now: datetime | None = None) -> bool:
        """True once the link this session came with has expired."""
        return (now or datetime.now(UTC)) >= self.claims.expires_at


def link_key(claims: links.Claims, token: str) -> str:
    """What identifies a link for rate limits: its id, or a digest of the token for links signed without one."""
    return claims.link_id or hashlib.sha256(token.encode()).hexdigest()[:24]


class Sessions:
    """Every live session of this server process, the kernel each one owns, and the opens of each link."""

    def __init__(self, opens_per_minute: int, max_sessions: int = MAX_SESSIONS) -> None:
        self._by_id: dict[str, Session] = {}
        self._owner_of_kernel: dict[str, str] = {}
        self._opens: dict[str, deque[float]] = {}
        self._limit = opens_per_minute
        self._max = max_sessions
        self._lock = threading.Lock()

    def start(self, claims: links.Claims, token: str) -> Session:
        """A new session for a verified link (its id is the only thing the browser gets)."""
        with self._lock:
            if len(self._by_id) >= self._max:
                oldest = min(self._by_id.values(), key=lambda s: s.created)
                self._drop(oldest.sid)
            session = Session(sid=secrets.token_urlsafe(32), claims=claims, token=token,
                              link_key=link_key(claims, token))
            self._by_id[session.sid] = session
            return session

    def get(self, sid: str | None) -> Session | None:
        """The live session with id `sid`; None when unknown or its link has expired (then it is dropped)."""
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is not None and session.expired():
                self._drop(sid)
                return None
            return session

    def end(self, sid: str) -> None:
        """Forget a session (its link was revoked)."""
        with self._lock:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        session = self._by_id.pop(sid, None)
        for k in session.kernels if session else ():
            self._owner_of_kernel.pop(k, None)

    def bind(self, sid: str, kernel_id: str) -> None:
        """Hand `kernel_id` to session `sid`: from now on only that session reaches the kernel."""
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return
            session.kernels.add(kernel_id)
            self._owner_of_kernel[kernel_id] = sid

    def owns(self, sid: str | None, kernel_id: str) -> bool:
        """True when session `sid` is alive and was handed `kernel_id`."""
        return bool(sid) and self.get(sid) is not None and self._owner_of_kernel.get(kernel_id) == sid

    def release(self, kernel_id: str) -> None:
        """The kernel is gone (shut down or culled): forget whose it was."""
        with self._lock:
            sid = self._owner_of_kernel.pop(kernel_id, None)
            if sid in self._by_id:
                self._by_id[sid].kernels.discard(kernel_id)

    def retry_after(self, key: str, now: float | None = None) -> float:
        """0 when the link `key` may open one more report now (the open is counted); else seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            opens = self._opens.setdefault(key, deque())
            while opens and now - opens[0] >= WINDOW_S:
                opens.popleft()
            if len(opens) >= self._limit:
                return max(1.0, WINDOW_S - (now - opens[0]))
            opens.append(now)
            return 0.0

    def __len__(self) -> int:
        return len(self._by_id)
