"""Posting a recorded history to a live embedded server the way it arose: its producers' events over HTTP,
its clock ticks and policy activations through the server's own writer (both are the server's: no credential
may post one to /v1/events)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from itertools import groupby

from aiohttp import web

from tiergate.streams.http import WRITER

SERVERS = (b'"type":"tick"', b'"type":"policy"')


def producers_events(history: bytes) -> bytes:
    """A history without its policy activations: for a server that was started with the same policy file
    (its own activation of it is already in the log; the history's would be stale)."""
    return b"\n".join(line for line in history.splitlines() if b'"type":"policy"' not in line)


def runs(history: bytes) -> Iterator[tuple[bool, list[bytes]]]:
    """The history's lines in order, grouped into runs of the server's own events (ticks and activations:
    True) and of its producers' events (False)."""
    lines = (line for line in history.splitlines() if line.strip())
    for servers, run in groupby(lines, key=lambda line: any(kind in line for kind in SERVERS)):
        yield servers, list(run)


async def feed(app: web.Application, history: bytes, post: Callable[[bytes], Awaitable[object]]) -> Counter[str]:
    """Fold `history` into the server of `app`: each run of events through `post`, each run of ticks and
    activations through the writer as the server's clock and policy do; the results of what the runtime
    folded that way."""
    writer, counts = app[WRITER], Counter[str]()
    for servers, lines in runs(history):
        if servers:
            done = await writer.run(lambda lines=lines: writer.evaluator.ingest(lines, "server", live=False))  # type: ignore[misc]
            assert done is not None
            counts.update(r.result for r in done.results)
        else:
            await post(b"\n".join(lines))
    return counts
