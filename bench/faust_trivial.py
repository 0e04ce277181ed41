"""A trivial faust agent: the ceiling of faust's per-event machinery on this machine, for bench/kafka_worker.py.

It consumes the same topic the same way the tiergate worker does (take_events batches, raw bytes, the
same consumer settings) and only decodes and counts; its count is served on /count.
"""

from __future__ import annotations

import os
import sys

import faust

from tiergate.streams.codec import decode

topic_name, port = sys.argv[1], int(sys.argv[2])
sys.argv[1:] = ["worker", "--web-port", str(port), "--loglevel", "warn"]
app = faust.App(
    f"{topic_name}-trivial",
    broker=f"kafka://127.0.0.1:{os.environ.get('TIERGATE_KAFKA_PORT', '19092')}",  # the broker the benchmark uses
    store="memory://",
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=port,
    consumer_auto_offset_reset="earliest",
    broker_max_poll_records=5000,
    autodiscover=False,
)
source = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
seen = 0


@app.agent(source)
async def count(stream):  # type: ignore[no-untyped-def]
    global seen
    async for batch in stream.take_events(5000, within=0.2):
        for event in batch:
            try:  # noqa: SIM105
                decode(event.value)
            except ValueError:
                pass
        seen += len(batch)


@app.page("/count")
async def counted(view, request):  # type: ignore[no-untyped-def]
    return view.json({"seen": seen})


if __name__ == "__main__":
    app.main()
