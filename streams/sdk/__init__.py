"""The agent-side SDK: a live tier map client, a gate for agent code, and buffered event reporting.

    tiers = TierMapClient(HttpTierTransport("http://127.0.0.1:8360"))
    reporter = Reporter(HttpEventSink("http://127.0.0.1:8360"), agent="support-bot")
    async with ActionGate(tiers, reporter) as gate:         # starts the client; flushes and closes on exit
        await tiers.wait_until_ready(10)                     # TierMapNotReady says why, if it is not
        decision = await gate.decide("refund_up_to_50")      # suggest / act on staff / act on customers
        ...                                                  # do (or suggest) the action accordingly
        await reporter.report_outcome(decision.receipt, "review", "accepted")

Transports are injected (HTTP against `tiergate serve`, Kafka against the compacted tier-map topic, or in
memory); nothing here needs faust, and the HTTP pieces need no Kafka client. The client fails closed: until
its first full load, when its view is older than the staleness bound, and for an action type it does not
know (or that was retired), every answer is Crawl. Reporting never blocks and never raises because the
server is down; `Reporter.stats()` counts what was delivered, rejected and dropped.

One module per concern: errors, tier_map (the client), sync_client, receipts, events (building and
validating), delivery (the bounded queue and its retries), reporter, gate, and one module of transport and
sink per medium (http_transport, kafka_transport, memory_transport). Exceptions: see `errors`.
"""

from __future__ import annotations

import logging

from .delivery import DeliveryStats, EventSink, Rejection
from .errors import InvalidEvent, ReceiptError, TiergateError, TierMapNotReady, TransportError
from .gate import ActionGate, GateDecision, Mode
from .http_transport import HttpEventSink, HttpTierTransport
from .kafka_transport import KafkaEventSink, KafkaTierTransport
from .memory_transport import MemoryEventSink, MemoryTierTransport
from .receipts import Receipt
from .reporter import Reporter
from .sync_client import SyncTierMapClient
from .tier_map import TierFeed, TierMapClient, TierMapEvent, TierMapStatus, TierTransport

__all__ = [
    "ActionGate",
    "DeliveryStats",
    "EventSink",
    "GateDecision",
    "HttpEventSink",
    "HttpTierTransport",
    "InvalidEvent",
    "KafkaEventSink",
    "KafkaTierTransport",
    "MemoryEventSink",
    "MemoryTierTransport",
    "Mode",
    "Receipt",
    "ReceiptError",
    "Rejection",
    "Reporter",
    "SyncTierMapClient",
    "TierFeed",
    "TierMapClient",
    "TierMapEvent",
    "TierMapNotReady",
    "TierMapStatus",
    "TierTransport",
    "TiergateError",
    "TransportError",
]

# A library logs and the application decides where logs go: without a handler of its own, Python would
# print the SDK's warnings to stderr through its last-resort handler.
logging.getLogger("tiergate.sdk").addHandler(logging.NullHandler())

# The public names say they are `tiergate.streams.sdk.X` (in reprs, tracebacks and docs), whichever
# module defines them, as httpx does for its own.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
