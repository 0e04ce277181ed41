"""The console's sign-in sessions: server-side, in memory, each with its own CSRF token.

A browser gets a session on its first visit (so even the sign-in form carries a CSRF token); signing in
replaces it with a new one (a new id: a session id planted before sign-in is worth nothing after). The
cookie holds only the random id; it is HttpOnly and SameSite=Strict. Sessions end after `IDLE` seconds
unused, on sign-out, and when the server stops.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from tiergate.models.policy import Policy

from ..access import Caller

COOKIE = "tiergate_console"
IDLE = 8 * 3600.0
MOST = 10_000  # sessions kept at once; the least recently used goes first


@dataclass(frozen=True, slots=True)
class PendingPolicy:
    """A previewed policy awaiting its operator's confirmation: what was shown is exactly what is applied,
    and only if the policy in force is still the one the preview was made against (`if_match`)."""

    id: str
    policy: Policy
    actor: str
    reason: str
    if_match: str | None


@dataclass(slots=True)
class Session:
    """One browser's session: who signed in (None: nobody yet), its CSRF token, and a one-time notice."""

    id: str
    csrf: str
    caller: Caller | None = None
    used: float = field(default_factory=time.monotonic)
    notice: tuple[str, str] | None = None  # (kind, text): shown once, after a redirect
    pending: PendingPolicy | None = None  # the policy previewed last, until confirmed or replaced

    def csrf_matches(self, supplied: str | None) -> bool:
        """The form's token, compared in constant time."""
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.csrf.encode())

    def take_notice(self) -> tuple[str, str] | None:
        notice, self.notice = self.notice, None
        return notice


class Sessions:
    def __init__(self) -> None:
        self.live: OrderedDict[str, Session] = OrderedDict()

    def find(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched), or None."""
        session = None if session_id is None else self.live.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.used > IDLE:
            del self.live[session.id]
            return None
        session.used = now
        self.live.move_to_end(session.id)
        return session

    def new(self, caller: Caller | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), caller)
        self.live[session.id] = session
        while len(self.live) > MOST:
            self.live.popitem(last=False)
        return session

    def sign_in(self, old: Session, caller: Caller) -> Session:
        """A new session for `caller`, replacing `old`."""
        self.end(old)
        return self.new(caller)

    def end(self, session: Session) -> None:
        self.live.pop(session.id, None)
