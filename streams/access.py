"""Who may act on the embedded server (docs/embedded.md, "Credentials and roles").

Agents report what they did; other systems report what came of it; only operators override; only the
server's clock ticks. Nobody may be able to raise a tier they are judged by. A credential is a name, a role
and a secret; the secret arrives as `Authorization: Bearer <secret>` and is compared in constant time.

Credentials come from TIERGATE_CREDENTIALS (the text itself) or TIERGATE_CREDENTIALS_FILE (a path), one a
line, never from the command line:

    # name          role      secret
    support-bot     agent     3k9…
    billing-feed    reporter  Qm2…
    alice@ops       operator  Zr8…
    grafana         reader    W1c…
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import orjson

Role = Literal["agent", "reporter", "operator", "reader"]
ROLES: tuple[Role, ...] = ("agent", "reporter", "operator", "reader")

POSTS: dict[Role, frozenset[str]] = {
    "agent": frozenset({"action"}),
    "reporter": frozenset({"outcome", "checkpoint"}),
    "operator": frozenset({"action", "outcome", "checkpoint", "override"}),
    "reader": frozenset(),
}
"""The event types each role may post to /v1/events. Nobody posts `tick` (the server's clock does) or
`policy` (activations go through the policy endpoint)."""

GUARDED_TYPES = frozenset({"action", "outcome", "checkpoint", "override", "tick", "policy"})
"""Event types the roles speak about. Input of any other `type` is no event at all: it goes to the fold's
decoder, which rejects it with its reason, and it is kept."""

WHO_POSTS = {
    "action": "an agent or operator credential",
    "outcome": "a reporter or operator credential",
    "checkpoint": "a reporter or operator credential",
    "override": "an operator credential (tiergate override …, or the console)",
    "tick": "nobody: the server's clock writes ticks",
    "policy": "nobody: apply a policy through the policy endpoint (tiergate policy apply)",
}

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}")
MIN_SECRET = 16
GENERATE = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class CredentialsError(ValueError):
    """A credentials text that cannot be used; the message names the line and the fix, never a secret."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a credential's name (None when the server runs without credentials) and role."""

    name: str | None
    role: Role

    def may_post(self, event_type: str) -> bool:
        return event_type not in GUARDED_TYPES or event_type in POSTS[self.role]


ANONYMOUS = Caller(None, "operator")
"""Everyone, on a server without credentials (it binds to loopback only)."""


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    role: Role
    secret: bytes

    def __repr__(self) -> str:  # never print a secret
        return f"Credential({self.name!r}, {self.role!r})"


class Credentials:
    """The credentials a server knows; finds the one a bearer secret belongs to, in constant time."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self.all = tuple(credentials)

    def __len__(self) -> int:
        return len(self.all)

    def identify(self, authorization: str) -> Caller | None:
        """The caller whose secret the `Authorization: Bearer …` header carries, or None. Every secret is
        compared (as bytes, with hmac.compare_digest), so the time taken says nothing about which matched."""
        supplied = authorization.encode("utf-8", "surrogateescape")
        found: Credential | None = None
        for credential in self.all:
            if hmac.compare_digest(supplied, b"Bearer " + credential.secret):
                found = credential
        return None if found is None else Caller(found.name, found.role)

    @classmethod
    def parse(cls, text: str, source: str) -> Credentials:
        """Credentials from their text (one `name role secret` a line; `#` comments and blank lines
        ignored), or CredentialsError naming `source`, the line and the fix."""
        parsed = list(_lines(text, source))
        if not parsed:
            raise CredentialsError(f"{source}: no credentials in it; write one `name role secret` a line")
        _unique(parsed, source)
        return cls(credential for _, credential in parsed)


def _lines(text: str, source: str) -> Iterator[tuple[int, Credential]]:
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if words:
            yield number, _credential(words, f"{source} line {number}")


def _credential(words: list[str], where: str) -> Credential:
    if len(words) != 3:
        raise CredentialsError(f"{where}: {len(words)} words; write `name role secret` (the secret without spaces)")
    name, role, secret = words
    if NAME.fullmatch(name) is None:
        raise CredentialsError(f"{where}: name {name!r} must be letters, digits and @._+- (at most 128)")
    if role not in ROLES:
        raise CredentialsError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if len(secret) < MIN_SECRET:
        raise CredentialsError(f"{where}: the secret of {name} is shorter than {MIN_SECRET} characters; {GENERATE}")
    return Credential(name, role, secret.encode())


def _unique(parsed: list[tuple[int, Credential]], source: str) -> None:
    names: dict[str, int] = {}
    secrets: dict[bytes, int] = {}
    for number, credential in parsed:
        if credential.name in names:
            raise CredentialsError(
                f"{source} line {number}: {credential.name} is also on line {names[credential.name]}; "
                "give each credential its own name"
            )
        if credential.secret in secrets:
            raise CredentialsError(
                f"{source} line {number}: the secret of {credential.name} is also on line "
                f"{secrets[credential.secret]}; give each credential its own secret"
            )
        names[credential.name], secrets[credential.secret] = number, number


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a batch is refused whole: the event that the caller may not post."""

    index: int
    event_id: str | None
    event_type: str

    def error(self, caller: Caller) -> str:
        who = "this server's anonymous caller" if caller.name is None else f"credential {caller.name!r}"
        named = "" if self.event_id is None else f" ({self.event_id!r})"
        return (
            f"event {self.index}{named} is of type {self.event_type!r}, which {who} (role {caller.role}) may not "
            "post; nothing of this batch was stored"
        )

    def fix(self) -> str:
        return f"{self.event_type} events are posted by {WHO_POSTS[self.event_type]}; send the others without it"


def first_forbidden(raws: Iterable[bytes], caller: Caller) -> Refusal | None:
    """The first event of a batch that `caller` may not post, judged on its `type` as the decoder will read
    it (orjson, last key wins); input that is not a JSON object is left to the decoder, which rejects it."""
    for index, raw in enumerate(raws):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if isinstance(kind, str) and not caller.may_post(kind):
            event_id = data.get("event_id")
            return Refusal(index, event_id if isinstance(event_id, str) else None, kind)
    return None
