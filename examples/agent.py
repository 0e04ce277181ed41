"""A worked example agent: one action type, `refund_up_to_50`, that earns Walk and then Run on its own evidence.

It handles a stream of refund requests against a `tiergate serve` and does at each tier what the tier
allows, reporting the outcomes that tier can observe:

- Crawl: only suggest the refund; a human reviews the suggestion (here: a scripted reviewer, 95% accepted).
- Walk: issue the refund on an internal staff account, where mistakes can be fixed; report whether staff
  had to correct it, and the customer outcome once it is final.
- Run: issue the refund to the customer directly and report the customer outcome.

Run it against a server on examples/agent-policy.yaml (windows of seconds; the climb takes about half a
minute of wall-clock time):

    tiergate serve --policy examples/agent-policy.yaml --data-dir /tmp/agent-demo &
    python examples/agent.py

Against a server with credentials, the agent posts its actions and reads the tier map with an `agent`
credential, and whoever learns the outcomes posts them with a `reporter` credential — each from the
environment, never a flag: TIERGATE_CREDENTIAL (or TIERGATE_CREDENTIAL_FILE, a file holding it) for the
agent, TIERGATE_REPORTER_CREDENTIAL (or TIERGATE_REPORTER_CREDENTIAL_FILE) for the outcomes. Without a
reporter credential the outcomes go with the agent's (right for an open server or an operator's).

It prints each tier change as the tier map publishes it, stops after `--at-run` requests at Run, and exits
0; 2 if Run was not reached within `--max-seconds` (say, a server on examples/policy.yaml, whose holds
are days); 1, with one line on stderr, if the server cannot be reached. The receipt of each action
travels with the refund, and whoever learns an outcome reports it with that receipt: the SDK derives the
outcome's event id from it, so reporting twice never counts twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from tiergate.streams.sdk import (
    ActionGate,
    HttpEventSink,
    HttpTierTransport,
    Mode,
    Reporter,
    TiergateError,
    TierMapClient,
)

ACTION_TYPE = "refund_up_to_50"


async def handle_refund(gate: ActionGate, reporter: Reporter, request: int, rng: random.Random) -> tuple[str, str]:
    """One refund request, handled the way the tier allows: the tier it ran at, and what happened."""
    decision = await gate.decide(ACTION_TYPE, attributes={"amount": round(rng.uniform(5, 50), 2)})
    receipt = str(decision.receipt)  # stored with the refund; the reporters below only need this string
    if decision.mode is Mode.SUGGEST:
        verdict = "accepted" if rng.random() < 0.95 else "rejected"  # the human reviewer's call
        await reporter.report_outcome(receipt, "review", verdict)
        return "crawl", f"request {request}: suggested the refund; a human {verdict} it"
    if decision.mode is Mode.ACT_INTERNAL:
        fixed = rng.random() < 0.03  # staff corrected the refund the agent issued on their account
        await reporter.report_outcome(receipt, "internal", "corrected" if fixed else "completed")
        await reporter.report_outcome(receipt, "customer", "success")
        return "walk", f"request {request}: refunded via staff account ({'corrected' if fixed else 'completed'})"
    ok = rng.random() < 0.99  # the refund stays refunded: no chargeback, no reopened ticket
    await reporter.report_outcome(
        receipt, "customer", "success" if ok else "failure", reason=None if ok else "chargeback"
    )
    return "run", f"request {request}: refunded the customer directly ({'success' if ok else 'chargeback'})"


@dataclass
class Progress:
    """Requests handled per tier, and the tier the last one was handled at."""

    started: float = field(default_factory=time.monotonic)
    per_tier: Counter[str] = field(default_factory=Counter)
    tier: str | None = None

    def note(self, tier: str, line: str) -> None:
        if tier != self.tier:
            print(f"{time.monotonic() - self.started:5.1f}s  {ACTION_TYPE} at {tier}: {line}", flush=True)
            self.tier = tier
        self.per_tier[tier] += 1


async def climb(gate: ActionGate, reporter: Reporter, options: argparse.Namespace) -> int:
    """Handle requests until `--at-run` of them ran at Run (0) or time runs out (2)."""
    rng, progress = random.Random(options.seed), Progress()
    deadline = progress.started + options.max_seconds
    request = 0
    while progress.per_tier["run"] < options.at_run:
        if time.monotonic() > deadline:
            print(f"did not reach run within {options.max_seconds:g}s (last at {progress.tier})", file=sys.stderr)
            return 2
        progress.note(*await handle_refund(gate, reporter, request, rng))
        request += 1
        await asyncio.sleep(1 / options.rate)
    await reporter.flush(10)
    stats = reporter.stats()
    handled = ", ".join(f"{progress.per_tier[t]} at {t}" for t in ("crawl", "walk", "run"))
    print(f"handled {request} requests ({handled}); events delivered {stats.delivered}, dropped {stats.dropped}")
    return 0


def secret(variable: str) -> str | None:
    """A credential's secret from the file `<variable>_FILE` names, else from `<variable>`; None if neither."""
    path = os.environ.get(f"{variable}_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    return os.environ.get(variable) or None


async def main(options: argparse.Namespace) -> int:
    agent, reporter_secret = secret("TIERGATE_CREDENTIAL"), secret("TIERGATE_REPORTER_CREDENTIAL")
    tiers = TierMapClient(HttpTierTransport(options.server, token=agent))
    sink = HttpEventSink(options.server, token=agent, reporter_token=reporter_secret)
    reporter = Reporter(sink, agent="example-refund-agent")
    async with ActionGate(tiers, reporter) as gate:
        try:
            await tiers.wait_until_ready(options.connect_timeout)
        except TiergateError as error:
            print(f"agent: {error}", file=sys.stderr)
            return 1
        return await climb(gate, reporter, options)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        epilog="credentials: TIERGATE_CREDENTIAL[_FILE] (agent), TIERGATE_REPORTER_CREDENTIAL[_FILE] (reporter)",
    )
    parser.add_argument(
        "--server", default=os.environ.get("TIERGATE_SERVER", "http://127.0.0.1:8360"), help="(or TIERGATE_SERVER)"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="refund requests a second (default 40)")
    parser.add_argument("--at-run", type=int, default=20, help="requests to handle at Run before stopping")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="give up if Run is not reached by then")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the tier map")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(arguments())))
