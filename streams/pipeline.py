"""The one ingest pipeline: what every runtime does with each input (replay, the embedded server, the worker).

    decode → admit → step → sink

Each input becomes a `Handled` record: where it came from, the event (None when it could not be
decoded), what became of it and why, and the decisions it caused. An input refused on admission (the
embedded server's clock checks, the worker's key check) never enters the log; everything decoded and
admitted does, whatever the fold then makes of it. Input that did not count — rejected or late — is
*rejected input*: kept with its reason wherever the runtime keeps it (replay's rejects file, the embedded
store's `rejected` table, the Kafka rejected-input topic), never dropped.

Sinks receive every `Handled` in log order and `commit()` at the end of a batch: replay writes JSONL, the
embedded runtime one SQLite transaction, the worker its topics and table. `Counting` wraps any sink once
and counts only what was committed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

import orjson

from tiergate.models.decisions import Decision
from tiergate.models.fold import REJECTED, Event, Result, Stepped, step
from tiergate.models.results import SET_ASIDE
from tiergate.models.state import State
from tiergate.models.wire import Override

from .codec import EventError, decode


class Input:
    """One input as a runtime received it: its bytes, and where it came from. (A plain class, compiled with
    the pipeline: built and read once per input, it costs a fraction of a tuple's or a dataclass's
    Python-level constructor.)"""

    __slots__ = ("key", "position", "principal", "raw", "source")

    def __init__(
        self, source: str, position: int, raw: bytes, key: bytes | None = None, principal: str | None = None
    ) -> None:
        self.source = source  # a file name, `http(<remote>)`, `<topic>/<partition>`, `clock`
        self.position = position  # line number, index in the request, offset
        self.raw = raw
        self.key = key  # the message key, where the transport has one
        self.principal = principal  # who sent it, authenticated (a credential's name), where the runtime knows

    def __repr__(self) -> str:
        return f"Input({self.source!r}, {self.position}, {self.raw!r})"

    @property
    def origin(self) -> str:
        return f"{self.source}:{self.position}"


def request_source(remote: str | None, credential: str | None) -> str:
    """The source of events posted over HTTP: the sender's address, and its credential where there is one
    (so a rejected input's origin says who sent it: `http(127.0.0.1 as support-bot):3`)."""
    return f"http({remote})" if credential is None else f"http({remote} as {credential})"


POSTED = re.compile(r"http\((?P<remote>[^ )]*)(?: as (?P<credential>[^)]+))?\):(?P<index>\d+)")


def readable_origin(origin: str) -> str:
    """An origin as people read it: a posted event's sender, address and place in its request
    (`support-bot from 127.0.0.1, event 4 of its request`); any other origin (`file:line`,
    `topic/partition:offset`) as it is."""
    posted = POSTED.fullmatch(origin)
    if posted is None:
        return origin
    sender = posted["remote"] if posted["credential"] is None else f"{posted['credential']} from {posted['remote']}"
    return f"{sender}, event {int(posted['index']) + 1} of its request"


class Rejected(NamedTuple):
    """Input that did not count (result `rejected` or `late`), kept with why and where it came from."""

    origin: str
    result: str
    reason: str
    raw: bytes
    action_type: str | None = None  # the event's, or the one undecodable input names (None if it names none)

    def record(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "result": self.result,
            "reason": self.reason,
            "event": self.raw.decode("utf-8", errors="replace"),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.record(), option=orjson.OPT_SORT_KEYS)


class Handled:
    """What became of one input."""

    __slots__ = ("decisions", "event", "input", "logged", "reason", "result")

    def __init__(
        self,
        item: Input,
        event: Event | None,
        result: Result,
        reason: str | None,
        decisions: tuple[Decision, ...],
        logged: bool,
    ) -> None:
        self.input = item
        self.event = event  # None: it could not be decoded
        self.result = result
        self.reason = reason
        self.decisions = decisions
        self.logged = logged  # decoded and admitted: it is part of the log, whatever the fold made of it

    def __repr__(self) -> str:
        return f"Handled({self.input!r}, {self.result!r}, {self.reason!r}, {len(self.decisions)} decisions)"

    @property
    def rejection(self) -> Rejected | None:
        """The rejected-input record, for an input that did not count."""
        return self.rejected_input() if self.result in SET_ASIDE else None

    def rejected_input(self) -> Rejected:
        """The rejected-input record of an input whose result is in SET_ASIDE (a sink that has checked)."""
        assert self.reason is not None  # the fold and the pipeline give a reason for both
        return Rejected(self.input.origin, self.result, self.reason, self.input.raw, self.named_action_type)

    @property
    def action_type(self) -> str | None:
        return None if self.event is None else self.event.action_type

    @property
    def named_action_type(self) -> str | None:
        """The event's action type, or the one input the decoder refused names."""
        return self.action_type if self.event is not None else named_action_type(self.input.raw)

    @property
    def event_id(self) -> str | None:
        """The event's id, or the one input the decoder refused names: so its producer can tell which it was."""
        return self.event.event_id if self.event is not None else named(self.input.raw, "event_id")


def named(raw: bytes, field: str) -> str | None:
    """The string `field` of input the decoder refused, if it is a JSON object naming one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def named_action_type(raw: bytes) -> str | None:
    """The `action_type` that input the decoder refused names, if it is a JSON object naming one: so rejected
    input can be found by type even when it is malformed in another field."""
    return named(raw, "action_type")


def carried(item: Input, event: Event) -> str | None:
    """Who sent an input, as the runtime authenticated it and stored it beside the event."""
    return item.principal


Principal = Callable[[Input, Event], str | None]
"""A runtime's answer to who sent an input (None: it cannot tell)."""


def with_principal(principal: str | None, decisions: tuple[Decision, ...]) -> tuple[Decision, ...]:
    """An override's decisions record who sent it (`principal`, authenticated) beside the `actor` it declares."""
    if principal is None:
        return decisions
    named = {"principal": principal}
    return tuple(replace(d, details=d.details | named) if d.kind == "override" else d for d in decisions)


class Sink(Protocol):
    def handled(self, item: Handled) -> None:
        """One input, in log order."""

    def commit(self) -> None:
        """The end of a batch: make what was handled durable (or raise, and nothing of it counts)."""


Admit = Callable[[Input, Event, State], str | None]
"""A runtime's check before the fold: the reason to refuse an input (kept, never in the log), or None."""


class Pipeline:
    """decode → admit → step; the runtimes differ only in `admit` and their sink."""

    def __init__(
        self, admit: Admit | None = None, principal: Principal = carried, fold: Callable[[State, Event], Stepped] = step
    ) -> None:
        self.admit, self.principal = admit, principal
        self.step = fold  # the core's step; a test may give one that fails (the module is compiled: no patching)

    def handle(self, state: State, item: Input) -> Handled:
        try:
            event = decode(item.raw)
        except EventError as error:
            return Handled(item, None, REJECTED, error.reason, (), False)
        if self.admit is not None:
            refused = self.admit(item, event, state)
            if refused is not None:
                return Handled(item, event, REJECTED, refused, (), False)
        decisions, result, reason = self.step(state, event)
        if decisions and type(event) is Override:  # only an override's decision records who sent it
            decisions = with_principal(self.principal(item, event), decisions)
        return Handled(item, event, result, reason, decisions, True)

    def run(self, inputs: Iterable[Input], state: State, sink: Sink) -> None:
        """Fold a batch of inputs into `state`, in order, and commit it to `sink`."""
        handle, handled = self.handle, sink.handled
        for item in inputs:
            handled(handle(state, item))
        sink.commit()


def key_matches(item: Input, event: Event, state: State) -> str | None:
    """A keyed log (Kafka) must hold each event under its own action type: the order of a key's log is
    the order the fold sees, so an event under another key would be folded out of order."""
    if item.key is None or item.key == event.action_type.encode():
        return None
    key = item.key.decode("utf-8", errors="replace")
    return f"message key {key!r} is not the action_type {event.action_type!r}: produce with key = action_type"


class Tallies(NamedTuple):
    """What a runtime has counted: events by (action type, result), decisions by (action type, kind)."""

    events: Counter[tuple[str, str]]
    decisions: Counter[tuple[str, str]]

    @classmethod
    def empty(cls) -> Tallies:
        return cls(Counter(), Counter())


class Counting:
    """Counts what a sink committed. Event counts are labelled by action type only for types the state
    holds, so labels stay bounded by the catalog whatever producers send; input the decoder refused counts
    under the catalog type it names, as `tiergate rejected` lists it."""

    def __init__(self, inner: Sink, tallies: Tallies, state: State) -> None:
        self.inner, self.tallies, self.state = inner, tallies, state
        self.batch = Tallies.empty()

    def handled(self, item: Handled) -> None:
        name = item.named_action_type
        self.batch.events[name if name is not None and name in self.state.keys else "", item.result] += 1
        if item.decisions:
            for decision in item.decisions:
                self.batch.decisions[decision.action_type, decision.kind] += 1
        self.inner.handled(item)

    def commit(self) -> None:
        try:
            self.inner.commit()
        finally:
            batch, self.batch = self.batch, Tallies.empty()
        self.tallies.events.update(batch.events)
        self.tallies.decisions.update(batch.decisions)
