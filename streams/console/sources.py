"""Where the console reads from: the embedded runtime (through the server's writer thread), or the topics
of a Kafka deployment (streams/console/topics.py). The routes see only this interface; acting (overrides,
policy activations) exists only where the source can write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from . import views

if TYPE_CHECKING:
    from ..embedded import EmbeddedRuntime
    from ..http import Writer


class Source(Protocol):
    """What the console shows, read at one moment, and who to tell when it changes."""

    writable: bool  # False: a Kafka deployment, where actions are CLI commands to sign and run

    @property
    def watchers(self) -> set[asyncio.Queue[int | None]]:
        """Queues told how many new facts (decisions, rejected input) each commit made; None at shutdown."""
        ...

    @property
    def changes(self) -> int:
        """How many facts the watchers have been told of so far. A page carries the count it was rendered
        after, and its event stream, opened with it, is told at once of a change made in between."""
        ...

    def catalog(self) -> set[str]:
        """Every action type the source knows, retired ones included."""
        ...

    async def everything(self, filters: views.Filters) -> dict[str, Any]:
        """The page's data: tiers, log, overrides, rejected, the policy in force, the catalog."""
        ...

    async def policy(self) -> dict[str, Any]:
        """The policy in force and the activations, newest first."""
        ...


class EmbeddedSource:
    """The embedded runtime, read on the server's writer thread between batches (committed state only)."""

    writable = True

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    @property
    def runtime(self) -> EmbeddedRuntime:
        return self.writer.evaluator

    @property
    def watchers(self) -> set[asyncio.Queue[int | None]]:
        return self.writer.watchers

    @property
    def changes(self) -> int:
        return self.writer.changes

    def catalog(self) -> set[str]:
        return set(self.runtime.state.keys)

    async def everything(self, filters: views.Filters) -> dict[str, Any]:
        return await self.writer.call(lambda: views.everything(self.runtime, filters))

    async def policy(self) -> dict[str, Any]:
        return await self.writer.call(lambda: views.policy_view(self.runtime))
