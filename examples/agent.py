"""A worked example agent: one action type, `refund_up_to_50`, routed through Crawl, Walk and Run.

It runs against a `tiergate serve` (default http://127.0.0.1:8360, started with examples/policy.yaml or the
demo's policy) and shows what agent code does at each tier:

- Crawl: only suggest the refund; a human reviews the suggestion (here: a scripted reviewer).
- Walk: issue the refund on an internal staff account, where mistakes can be fixed, and report whether
  staff had to correct it; the customer outcome follows once it is final.
- Run: issue the refund to the customer directly and report the customer outcome.

    tiergate serve --policy examples/policy.yaml &      # in one terminal
    python examples/agent.py --requests 20               # in another

The receipt of each recorded action travels with the refund (a ticket field, say), and whoever learns
the outcome reports it with that receipt: the SDK derives the outcome's event id from it, so reporting
twice never counts twice.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from tiergate.streams.sdk import Gate, HttpEventSink, HttpTierTransport, Mode, Reporter, TierMapClient

ACTION_TYPE = "refund_up_to_50"


async def handle_refund(gate: Gate, reporter: Reporter, request: int, rng: random.Random) -> str:
    """One refund request, handled the way the tier allows."""
    decision = await gate.decide(ACTION_TYPE, attributes={"amount": round(rng.uniform(5, 50), 2)})
    receipt = str(decision.receipt)  # stored with the refund; the reporters below only need this string
    if decision.mode is Mode.SUGGEST:
        verdict = "accepted" if rng.random() < 0.95 else "rejected"  # the human reviewer's call
        await reporter.report_outcome(receipt, "review", verdict)
        return f"request {request}: suggested the refund; a human {verdict} it"
    if decision.mode is Mode.ACT_INTERNAL:
        fixed = rng.random() < 0.03  # staff corrected the refund the agent issued on their account
        await reporter.report_outcome(receipt, "internal", "corrected" if fixed else "completed")
        await reporter.report_outcome(receipt, "customer", "success")
        return f"request {request}: refunded via staff account ({'corrected' if fixed else 'completed'})"
    ok = rng.random() < 0.99  # the refund stays refunded: no chargeback, no reopened ticket
    await reporter.report_outcome(
        receipt, "customer", "success" if ok else "failure", reason=None if ok else "chargeback"
    )
    return f"request {request}: refunded the customer directly ({'success' if ok else 'chargeback'})"


async def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--server", default="http://127.0.0.1:8360")
    args.add_argument("--requests", type=int, default=10)
    args.add_argument("--token", help="the server's bearer token, if it has one")
    options = args.parse_args()
    rng = random.Random(1)
    sink = HttpEventSink(options.server, token=options.token)
    reporter = Reporter(sink, agent="example-refund-agent", clock=time.time)
    async with TierMapClient(HttpTierTransport(options.server)) as tiers:
        await tiers.wait_for(lambda client: client.status().loaded, 10)
        gate = Gate(tiers, reporter)
        for request in range(options.requests):
            print(await handle_refund(gate, reporter, request, rng))
    await sink.close()


if __name__ == "__main__":
    asyncio.run(main())
