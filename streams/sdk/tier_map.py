"""The agent fleet's live view of the tier map: the newest version per action type, failing closed.

A transport (HTTP, Kafka, in memory) feeds the client through the `TierFeed` calls; the client keeps the
highest version per type, forgets retired types, and answers `tier_for`. It is *ready* when a first full
view has loaded and the source was heard from within `staleness` seconds; until then, and for any type it
does not hold, every answer is Crawl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tiergate.models.wire import TIERS

from .errors import TierMapNotReady

log = logging.getLogger("tiergate.sdk")

CRAWL = "crawl"
Condition = Literal["starting", "ready", "stale", "error"]


class TierFeed(Protocol):
    """What a transport tells the client."""

    def apply(self, record: Mapping[str, Any]) -> None:
        """A tier record; ignored unless its version is newer than the one held (or retired)."""

    def retire(self, action_type: str, version: int | None) -> None:
        """The type left the catalog (a `retired` event, a tombstone): forget it; answer Crawl."""

    def snapshot(self, records: Iterable[Mapping[str, Any]]) -> None:
        """A full view: apply each record, forget every type it does not hold, and count as loaded."""

    def loaded(self) -> None:
        """The records applied so far are a full view."""

    def heard(self) -> None:
        """The source proved it is still there (a record, a heartbeat, a poll that reached the broker)."""

    def failed(self, error: str) -> None:
        """The transport's latest error; shown by `status()` until the next full view loads."""


class TierTransport(Protocol):
    """Feeds tier records to a client until cancelled, reconnecting by itself."""

    async def run(self, feed: TierFeed) -> None: ...


@dataclass(frozen=True)
class TierMapStatus:
    """Whether answers come from a live view or fail closed to Crawl, and why."""

    ready: bool  # loaded and fresh: tier_for answers from the live map
    loaded: bool  # a first full view has arrived
    age: float | None  # seconds since the source was last heard from
    action_types: int
    last_error: str | None  # the transport's latest error, until the next full view loads
    running: bool  # False once the transport stopped (closed, or failed for good: see last_error)


@dataclass(frozen=True)
class TierMapEvent:
    """A change a listener hears of: the client became `ready`, went `stale` (loaded, but not heard from
    within the bound), hit an `error` before it had a view, or a type `changed` (its tier or retirement)."""

    kind: Literal["ready", "stale", "error", "changed"]
    message: str = ""
    action_types: tuple[str, ...] = ()


Listener = Callable[[TierMapEvent], None]


class TierMapClient:
    """The live tier map, read through an injected transport. `async with` starts and stops it."""

    def __init__(
        self, transport: TierTransport, staleness: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.transport, self.staleness, self.clock = transport, staleness, clock
        self._records: dict[str, Mapping[str, Any]] = {}
        self._floors: dict[str, int] = {}  # retired types: the version a revival must exceed
        self._loaded = False
        self._heard_at: float | None = None
        self._last_error: str | None = None
        self._condition: Condition = "starting"
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the transport (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="tiergate-tier-map")
            self._watch = asyncio.create_task(self._watch_freshness(), name="tiergate-tier-map-watch")

    async def close(self) -> None:
        """Stop the transport and release its connection."""
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch = None

    async def __aenter__(self) -> TierMapClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _follow(self) -> None:
        try:
            await self.transport.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a transport that cannot run must say so, not die silently
            self._last_error = f"transport stopped: {error}"
            log.error("tier map transport stopped; answering crawl for every action type: %s", error)
            self._publish_condition()
        finally:
            self._changed.set()

    async def _watch_freshness(self) -> None:
        """Staleness comes with time, not with an event: look at it often enough to say so promptly."""
        while True:
            await asyncio.sleep(max(0.01, min(1.0, self.staleness / 10)))
            self._publish_condition()

    # -- answers ----------------------------------------------------------------------------------------

    def tier_for(self, action_type: str) -> str:
        """The tier to act at: Crawl for an unknown or retired type, before the first full load, or when stale."""
        heard = self._heard_at
        if self._loaded and heard is not None and self.clock() - heard <= self.staleness:
            record = self._records.get(action_type)
            return CRAWL if record is None else str(record["tier"])
        return CRAWL

    def record(self, action_type: str) -> Mapping[str, Any] | None:
        """The newest tier record held for a type, whatever the freshness (for display and debugging)."""
        return self._records.get(action_type)

    @property
    def ready(self) -> bool:
        """True while answers come from a live view (loaded, and heard from within the staleness bound)."""
        heard = self._heard_at
        return self._loaded and heard is not None and self.clock() - heard <= self.staleness

    def status(self) -> TierMapStatus:
        age = None if self._heard_at is None else self.clock() - self._heard_at
        running = self._task is not None and not self._task.done()
        return TierMapStatus(self.ready, self._loaded, age, len(self._records), self._last_error, running)

    async def wait_until_ready(self, timeout: float) -> None:
        """Wait for a live view; TierMapNotReady (with the transport's last error) if none comes in time."""
        if self._task is None:
            raise TierMapNotReady("the tier map client is not started: use `async with client` or start()")
        stopped = await self.wait_for(lambda client: client.ready or not client.status().running, timeout)
        if not (stopped and self.ready):
            raise TierMapNotReady(self._not_ready(timeout))

    def _not_ready(self, timeout: float) -> str:
        status = self.status()
        why = status.last_error or ("no sign of the source" if status.loaded else "no full view yet")
        if not status.running:
            return f"tier map transport stopped: {why}"
        return f"tier map not ready after {timeout:g}s: {why}"

    async def wait_for(self, predicate: Callable[[TierMapClient], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked at each change), or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    # -- listeners --------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` on each TierMapEvent (on the client's event loop); returns the unsubscribe call."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _tell(self, event: TierMapEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the tier map
                log.exception("tier map listener failed on %s", event.kind)

    def _publish_condition(self) -> None:
        condition = self._current_condition()
        if condition == self._condition:
            return
        self._condition = condition
        if condition == "starting":
            return
        message = self._describe(condition)
        (log.info if condition == "ready" else log.warning)("tier map %s", message)
        self._tell(TierMapEvent(condition, message))

    def _current_condition(self) -> Condition:
        if self.ready:
            return "ready"
        if self._loaded:
            return "stale"
        return "error" if self._last_error is not None else "starting"

    def _describe(self, condition: Condition) -> str:
        if condition == "ready":
            return f"ready: {len(self._records)} action types"
        age = "never" if self._heard_at is None else f"{self.clock() - self._heard_at:.0f}s ago"
        error = f"; last error: {self._last_error}" if self._last_error else ""
        return f"{condition}: answering crawl for every action type (source last heard {age}{error})"

    # -- the feed (called by the transport) -------------------------------------------------------------

    def apply(self, record: Mapping[str, Any]) -> None:
        name, version = record.get("action_type"), record.get("version")
        if not isinstance(name, str) or not isinstance(version, int) or record.get("tier") not in TIERS:
            log.warning("ignoring a malformed tier record: %r", record)
            return
        held = self._records.get(name)
        floor = held["version"] if held is not None else self._floors.get(name, -1)
        if version <= floor:
            return  # an older or repeated version: the newest one wins
        self._records[name] = record
        self._floors.pop(name, None)
        self._changed_type(name)

    def retire(self, action_type: str, version: int | None) -> None:
        held = self._records.get(action_type)
        held_version = -1 if held is None else int(held["version"])
        if version is not None and version <= held_version:
            return  # a retirement older than the record held (a revival came after it)
        self._floors[action_type] = max(held_version, version if version is not None else -1)
        if self._records.pop(action_type, None) is not None:
            self._changed_type(action_type)

    def snapshot(self, records: Iterable[Mapping[str, Any]]) -> None:
        present = set()
        for record in records:
            self.apply(record)
            present.add(record.get("action_type"))
        for name in [name for name in self._records if name not in present]:
            self.retire(name, None)  # retired while we were not listening
        self.loaded()

    def loaded(self) -> None:
        self._loaded = True
        self._last_error = None
        self.heard()

    def heard(self) -> None:
        self._heard_at = self.clock()
        self._changed.set()
        self._publish_condition()

    def failed(self, error: str) -> None:
        self._last_error = error
        self._changed.set()
        self._publish_condition()

    def _changed_type(self, action_type: str) -> None:
        self.heard()
        if self._loaded:
            self._tell(TierMapEvent("changed", f"{action_type} changed", (action_type,)))
