"""Posting a recorded history to a live embedded server the way it arose: its producers' events over HTTP,
its clock ticks through the server's own writer (ticks are the server's: no credential may post one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from itertools import groupby

from aiohttp import web

from tiergate.streams.http import WRITER

TICK = b'"type":"tick"'


def runs(history: bytes) -> Iterator[tuple[bool, list[bytes]]]:
    """The history's lines in order, grouped into runs of ticks (True) and of other events (False)."""
    lines = (line for line in history.splitlines() if line.strip())
    for ticks, run in groupby(lines, key=lambda line: TICK in line):
        yield ticks, list(run)


async def feed(app: web.Application, history: bytes, post: Callable[[bytes], Awaitable[object]]) -> Counter[str]:
    """Fold `history` into the server of `app`: each run of events through `post`, each run of ticks through
    the writer as the server's clock does; the results of the ticks and of what the runtime folded."""
    writer, counts = app[WRITER], Counter[str]()
    for ticks, lines in runs(history):
        if ticks:
            done = await writer.run(lambda lines=lines: writer.evaluator.ingest(lines, "clock", live=False))  # type: ignore[misc]
            assert done is not None
            counts.update(r.result for r in done.results)
        else:
            await post(b"\n".join(lines))
    return counts
