"""`tiergate checkpoint`: an outcome feed's word that its customer failures are complete up to a moment.

With a maturity in the policy, an action counts for the customer only once it is old enough and the feed
has said, with a checkpoint, that its failures are in (a silent feed leaves actions pending). Feeds
usually send checkpoints through the SDK (`Reporter.report_checkpoint`); this is the same from a shell or
a cron job, with a reporter's credential (TIERGATE_CREDENTIAL or TIERGATE_CREDENTIAL_FILE).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from ..sdk.errors import InvalidEvent
from ..sdk.events import checkpoint_event, encode_event
from .policy import SERVER_HELP, call, client
from .terminal import CommandError, err, examples


def _checkpoint(args: argparse.Namespace) -> int:
    try:
        raw = encode_event(checkpoint_event(args.action_type, "customer", args.through, int(time.time())))
    except InvalidEvent as error:
        raise CommandError(str(error)) from None
    with client(args.server) as http:
        answer = call(http, "POST", "/v1/events", content=raw, headers={"Content-Type": "application/json"})
    result = answer["results"][0]
    if result["result"] in ("rejected", "late"):
        raise CommandError(f"the server {result['result']} the checkpoint: {result.get('reason', '')}", code=1)
    err.print(f"checkpoint {orjson.loads(raw)['event_id']}: {result['result']}")
    return 0


def add_commands(commands: Any) -> None:
    point = commands.add_parser(
        "checkpoint",
        help="tell the server a customer outcome feed is complete up to a moment (for a maturity)",
        **examples(
            "tiergate checkpoint refund_up_to_50 --through 2026-11-29T12:00:00Z",
            "TIERGATE_CREDENTIAL_FILE=reporter.token tiergate checkpoint refund_up_to_50 --through "
            "2026-11-29T12:00:00Z --server https://tiergate.internal",
        ),
    )
    point.add_argument("action_type", metavar="ACTION_TYPE")
    point.add_argument("--through", required=True, help="RFC 3339: every customer failure up to here is reported")
    point.add_argument("--server", help=SERVER_HELP)
    point.set_defaults(run=_checkpoint)
