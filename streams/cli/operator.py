"""Operators' commands: `override` (pin, unpin, cap, uncap, promote, demote a type on a server),
`rejected` (the input that did not count, from an embedded data dir or the Kafka DLQ) and `console --kafka`
(the read-only console of a Kafka deployment).

`override` checks first (a dry run on the server: the fold's own rules, against the live state), says why
an override cannot apply and what to do instead, and only then sends it; it prints the decision it made.
The operator's credential comes from TIERGATE_CREDENTIAL or TIERGATE_CREDENTIAL_FILE, never the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tiergate.models.wire import OPS_NEEDING_TIER, OPS_WITHOUT_TIER, format_ts

from ..clock import SystemClock
from ..codec import EventError, decode, excerpt
from ..embedded import DB_NAME
from ..explain import plain
from ..pipeline import readable_origin
from ..settings import OperatorSettings, StoreSettings, load
from ..store import RejectedQuery, Store, StoreError
from .terminal import NO_CREDENTIAL, CommandError, err, examples, print_json

EXIT_PENDING = 3  # Kafka: produced, but no worker answered in time
OPS = ("pin", "unpin", "cap", "uncap", "promote", "demote")
TIMEOUT = 10.0


# -- override --------------------------------------------------------------------------------------------


class ServerSender:
    """An embedded server's POST /v1/events (with ?dry_run=1 to check)."""

    def __init__(self, settings: OperatorSettings) -> None:
        secret = settings.secret()
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {secret}"} if secret else {})
        self.url = settings.server.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def check(self, raw: bytes) -> dict[str, Any]:
        return self._post(raw, {"dry_run": "1"})

    def send(self, raw: bytes) -> dict[str, Any]:
        return self._post(raw, {})

    def _post(self, raw: bytes, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = self.http.post("/v1/events", content=raw, params=params)
        except httpx.HTTPError as error:
            raise CommandError(
                f"cannot reach {self.url} ({type(error).__name__}): start `tiergate serve`, or give --server "
                "(or TIERGATE_SERVER)"
            ) from None
        return _answer(response)


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200 and isinstance(body, dict):
        return body
    error, fix = (body.get("error"), body.get("fix")) if isinstance(body, dict) else (None, None)
    if response.status_code == 401:
        fix = NO_CREDENTIAL
    if response.status_code == 403:
        fix = f"an override needs a credential with role operator: {NO_CREDENTIAL}"
    raise CommandError(f"the server answered {response.status_code}: {error or response.text[:200]}; {fix or ''}")


def override_event(args: argparse.Namespace, now: int) -> bytes:
    """The override as wire JSON, checked by the one codec before anything is sent (whether the op takes a
    tier first, so the message names the option, --tier, rather than the event's field)."""
    if args.op in OPS_NEEDING_TIER and args.tier is None:
        raise CommandError(
            f"override {args.op} {args.action_type}: {args.op} needs a tier: add --tier crawl, walk or run"
        )
    if args.op in OPS_WITHOUT_TIER and args.tier is not None:
        raise CommandError(f"override {args.op} {args.action_type}: {args.op} takes no tier: remove --tier {args.tier}")
    event: dict[str, Any] = {
        "type": "override",
        "event_id": f"cli/{uuid.uuid4()}",
        "ts": format_ts(now),
        "action_type": args.action_type,
        "op": args.op,
        "actor": args.actor,
        "reason": args.reason,
    }
    if args.tier is not None:
        event["tier"] = args.tier
    raw = orjson.dumps(event)
    try:
        decode(raw)
    except EventError as error:
        raise CommandError(f"override {args.op} {args.action_type}: {error.reason}") from None
    return raw


def _override(args: argparse.Namespace) -> int:
    raw = override_event(args, SystemClock().now())
    if args.kafka:
        return _override_on_kafka(args, raw)
    sender = ServerSender(load(OperatorSettings, server=args.server))
    tried = sender.check(raw)
    result = tried["results"][0]
    if result["result"] != "applied":
        err.print(f"[red]refused:[/] {plain(result.get('reason') or result['result'])} (nothing was sent)")
        return 1
    done = sender.send(raw)
    if args.json:
        print_json(done)
    else:
        _print_outcome(done)
    return 0 if done["results"][0]["result"] == "applied" else 1


def _override_on_kafka(args: argparse.Namespace, raw: bytes) -> int:
    """Sign, produce, and report what the workers' fold made of it (there is no dry run on Kafka)."""
    from ..kafka import DECISIONS, DLQ, EVENTS
    from ..kafka_override import send_override
    from .kafka import kafka_settings, preflight
    from .keys import operator_key

    settings = kafka_settings(args)
    key = operator_key(args.key)
    preflight(settings, (EVENTS, DECISIONS, DLQ))
    signed = key.sign(orjson.loads(raw), settings.deployment)
    answer = asyncio.run(send_override(settings, signed, args.wait))
    if args.json:
        print_json({"event_id": signed["event_id"], "decision": answer.decision, "refused": answer.refused})
    elif answer.refused is not None:
        err.print(f"[red]refused by the workers:[/] {plain(answer.refused['reason'])} (kept on the DLQ)")
    elif answer.decision is not None:
        _print_outcome({"results": [{"result": "applied"}], "decisions": [answer.decision]})
    else:
        err.print(
            f"produced {signed['event_id']} signed by {key.key_id}, but no worker answered within {args.wait:g}s: it "
            "is in the log and counts when a worker folds it (is `tiergate worker` running?); its decision, or "
            "its refusal on `tiergate rejected --kafka`, will name that event id"
        )
    return 0 if answer.decision is not None else 1 if answer.refused is not None else EXIT_PENDING


def _print_outcome(done: dict[str, Any]) -> None:
    result = done["results"][0]
    if result["result"] != "applied":
        err.print(f"[red]{result['result']}:[/] {plain(result.get('reason') or '')}")
        return
    out = Console(highlight=False, soft_wrap=True)
    for decision in done["decisions"]:
        line = (
            f"{decision['decision_id']}  {decision['kind']} {decision.get('op', '')}  "
            f"{decision['from_tier']} → {decision['to_tier']}  at {decision['at']}  "
            f"actor {decision.get('actor')}  principal {decision.get('principal', '—')}  reason {decision['reason']}"
        )
        out.print(plain(line))


# -- rejected --------------------------------------------------------------------------------------------


def _rejected(args: argparse.Namespace) -> int:
    query = RejectedQuery(  # one row past the page: is there more?
        limit=args.limit + 1, reason=args.reason, result=args.result, action_type=args.action_type
    )
    rows = _from_kafka(args, query) if args.kafka else _from_store(args, query)
    more, rows = len(rows) > args.limit, rows[: args.limit]
    if args.json:
        unmoved = args.after if args.kafka else int(args.after or 0)  # no rows: the page stays where it was
        print_json({"rejected": rows, "next_after": rows[-1]["id"] if rows else unmoved})
    else:
        _print_rejected(rows)
        if more:
            err.print(f"more: --after {rows[-1]['id']}")
    return 0


def _page_size(text: str) -> int:
    """--limit: rows a page, 1 to 10,000 (as /v1/rejected takes them)."""
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a page size: give 1 to 10000 rows")
    return int(text)


def _from_store(args: argparse.Namespace, query: RejectedQuery) -> list[dict[str, Any]]:
    if args.after is not None and not args.after.isdigit():
        raise CommandError(f"--after {args.after}: the store's rejected input ids are whole numbers (the table's)")
    query = replace(query, after=int(args.after or 0))
    data_dir = load(StoreSettings, data_dir=args.data_dir).data_dir
    path = data_dir / DB_NAME
    if not path.is_file():
        raise CommandError(f"{path}: no store here; give the --data-dir (or TIERGATE_DATA_DIR) of a tiergate serve")
    try:
        store = Store(path, create=False)
    except (sqlite3.OperationalError, StoreError) as error:
        raise CommandError(f"{path}: cannot open the store ({error})") from None
    try:
        return store.rejected_input(query)
    finally:
        store.close()


def _from_kafka(args: argparse.Namespace, query: RejectedQuery) -> list[dict[str, Any]]:
    """The DLQ topic from offset 0 to its end, filtered like the store's rows, in the order of their ids
    (partition, then offset): a page is `limit` rows after the id `--after`."""
    from ..kafka import DLQ
    from ..kafka_replay import dlq_row, read_topic
    from .kafka import kafka_settings, preflight

    after = (-1, -1) if args.after is None else _dlq_place(args.after)
    settings = kafka_settings(args)
    preflight(settings, (DLQ,))
    rows = sorted(
        (dlq_row(record) for record in asyncio.run(read_topic(settings, DLQ))), key=lambda r: _dlq_place(r["id"])
    )
    return [row for row in rows if _dlq_place(row["id"]) > after and _matches(row, query)][: query.limit]


def _dlq_place(row_id: str) -> tuple[int, int]:
    """A DLQ row's id, `PARTITION:OFFSET`, as a place in the listing's order."""
    partition, _, offset = row_id.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise CommandError(f"--after {row_id}: on Kafka a rejected input's id is PARTITION:OFFSET (the table's)")
    return int(partition), int(offset)


def _matches(row: dict[str, Any], query: RejectedQuery) -> bool:
    return (
        (query.reason is None or query.reason.lower() in row["reason"].lower())
        and (query.result is None or row["result"] == query.result)
        and (query.action_type is None or row["action_type"] == query.action_type)
    )


def _print_rejected(rows: list[dict[str, Any]]) -> None:
    if not rows:
        err.print("no rejected input matches")
        return
    table = Table("id", "origin", "result", "type", "reason", "input")
    for row in rows:
        shown = excerpt(row["event"])  # the whole of it: --json
        cells = (
            row["id"],
            readable_origin(row["origin"]),
            row["result"],
            row["action_type"] or "—",
            row["reason"],
            shown,
        )
        table.add_row(*(plain(cell) for cell in cells))
    wide = None if sys.stdout.isatty() else 100_000  # piped: one line a row, for grep
    Console(highlight=False, file=sys.stdout, width=wide).print(table)


# -- the commands ----------------------------------------------------------------------------------------


# -- console --kafka ---------------------------------------------------------------------------------------


def _console(args: argparse.Namespace) -> int:
    """The read-only console of a Kafka deployment, until interrupted."""
    from aiohttp import web

    from ..console.readonly import make_app
    from ..console.topics import KafkaSource
    from ..kafka import DECISIONS, DLQ, TIER_MAP
    from ..settings import ConsoleSettings
    from .kafka import kafka_settings, preflight
    from .serve import Listener, listening_socket

    if not args.kafka:
        raise CommandError(
            "the embedded server serves its console itself, at /console of `tiergate serve`; "
            "`tiergate console --kafka` is the read-only console of a Kafka deployment"
        )
    settings = load(ConsoleSettings, host=args.host, port=args.port, credentials_file=args.credentials_file)
    settings.check_exposure()
    credentials = settings.load_credentials()
    kafka = kafka_settings(args)
    preflight(kafka, (TIER_MAP, DECISIONS, DLQ))
    sock = listening_socket(settings.host, settings.port, Listener("tiergate console"))
    port = sock.getsockname()[1]
    err.print(
        f"tiergate console: reading {escape(kafka.topic(TIER_MAP))}, {escape(kafka.topic(DECISIONS))} and "
        f"{escape(kafka.topic(DLQ))} on {escape(kafka.bootstrap)}; read-only at http://{settings.host}:{port}/console"
    )
    web.run_app(make_app(KafkaSource(kafka), credentials), sock=sock, print=None, access_log=None)
    return 0


def add_commands(commands: Any) -> None:
    _add_override(commands)
    _add_rejected(commands)
    _add_console(commands)


def _add_console(commands: Any) -> None:
    console = commands.add_parser(
        "console",
        help="the read-only console of a Kafka deployment (tiergate serve has its own at /console)",
        description="Serve the console of a Kafka deployment: the tier map, the promotion log, the activations "
        "and rejected input, read live from the workers' topics. It writes nothing: for an override or a policy "
        "it shows the CLI command to run, which signs it. Readers and operators sign in with the credentials of "
        "TIERGATE_CREDENTIALS_FILE; without credentials it binds to loopback only.",
        **examples(
            "tiergate console --kafka",
            "TIERGATE_CREDENTIALS_FILE=/etc/tiergate/console tiergate console --kafka --host 0.0.0.0 "
            "--bootstrap kafka:9092",
        ),
    )
    console.add_argument("--kafka", action="store_true", help="read a Kafka deployment's topics (required)")
    console.add_argument("--host", help="(or TIERGATE_HOST; default 127.0.0.1)")
    console.add_argument("--port", type=int, help="(or TIERGATE_PORT; default 8362)")
    console.add_argument("--credentials-file", type=Path, metavar="FILE", help="(or TIERGATE_CREDENTIALS_FILE)")
    console.add_argument("--bootstrap", help="host:port (or TIERGATE_KAFKA_BOOTSTRAP; default 127.0.0.1:19092)")
    console.add_argument("--topic-prefix", help="(or TIERGATE_KAFKA_TOPIC_PREFIX)")
    console.set_defaults(run=_console)


def _add_override(commands: Any) -> None:
    override = commands.add_parser(
        "override",
        help="pin, unpin, cap, uncap, promote or demote an action type on a server",
        description="Check an override against the server's live state with the evaluator's own rules (a dry "
        "run), say why it cannot apply, or send it and print the decision. The operator credential comes from "
        "TIERGATE_CREDENTIAL_FILE or TIERGATE_CREDENTIAL, the server from --server or TIERGATE_SERVER. Exit 1 "
        "when the override is refused. With --kafka: signed with the operator key (--key or "
        "TIERGATE_OPERATOR_KEY_FILE) and produced; the workers' fold answers (exit 3: no answer within --wait).",
        **examples(
            "tiergate override cap refund_over_50 --tier walk --actor ops@example.com --reason 'finance review'",
            "tiergate override demote reply_to_ticket --actor ops@example.com --reason 'incident 4411'",
            "TIERGATE_CREDENTIAL_FILE=~/.tiergate/operator tiergate override unpin lookup_order --actor me "
            "--reason done --server https://tiergate.internal",
            "TIERGATE_OPERATOR_KEY_FILE=ops-2026.key tiergate override promote lookup_order --kafka --actor me "
            "--reason ok",
        ),
    )
    override.add_argument("op", choices=OPS)
    override.add_argument("action_type", metavar="ACTION_TYPE")
    override.add_argument("--tier", choices=("crawl", "walk", "run"), help="for pin and cap; optional for demote")
    override.add_argument("--actor", required=True, help="who decides (recorded beside the credential's name)")
    override.add_argument("--reason", required=True, help="why (recorded in the promotion log)")
    override.add_argument("--server", help="the embedded server (or TIERGATE_SERVER; default http://127.0.0.1:8360)")
    override.add_argument("--kafka", action="store_true", help="sign with the operator key and produce to Kafka")
    override.add_argument("--key", metavar="FILE", help="with --kafka: operator key (or TIERGATE_OPERATOR_KEY_FILE)")
    override.add_argument("--bootstrap", help="with --kafka: host:port (or TIERGATE_KAFKA_BOOTSTRAP)")
    override.add_argument("--topic-prefix", help="with --kafka: (or TIERGATE_KAFKA_TOPIC_PREFIX)")
    override.add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS", help="with --kafka: wait for the answer"
    )
    override.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    override.set_defaults(run=_override)


def _add_rejected(commands: Any) -> None:
    rejected = commands.add_parser(
        "rejected",
        help="the input that did not count (bad, refused or late), with its reason",
        description="Read rejected input from an embedded data dir (oldest first, paged by id) or, with "
        "--kafka, from the DLQ topic tiergate.events.v1.dlq (by partition and offset, paged likewise by a "
        "PARTITION:OFFSET id). Filter by reason (a substring), result and type. The table shows the first 200 "
        "characters of a long input and its size; --json has all of it (on Kafka, as the DLQ keeps it: a record "
        "over 64 KiB is kept cut to that size, whole in its ingress topic).",
        **examples(
            "tiergate rejected --data-dir tiergate-data",
            "tiergate rejected --data-dir tiergate-data --reason 'unknown action_type' --json",
            "tiergate rejected --kafka --result late --action-type refund_up_to_50",
            "tiergate rejected --kafka --after 3:1041",
        ),
    )
    rejected.add_argument("--data-dir", metavar="DIR", help="(or TIERGATE_DATA_DIR; default ./tiergate-data)")
    rejected.add_argument("--kafka", action="store_true", help="read the DLQ topic instead")
    rejected.add_argument("--bootstrap", help="with --kafka: host:port (or TIERGATE_KAFKA_BOOTSTRAP)")
    rejected.add_argument("--topic-prefix", help="with --kafka: (or TIERGATE_KAFKA_TOPIC_PREFIX)")
    rejected.add_argument("--reason", help="only reasons containing this (case-insensitive)")
    rejected.add_argument("--result", choices=("rejected", "late"))
    rejected.add_argument("--action-type", metavar="TYPE")
    rejected.add_argument("--after", metavar="ID", help="the page after this id (PARTITION:OFFSET on Kafka)")
    rejected.add_argument("--limit", type=_page_size, default=100, metavar="N", help="rows a page, 1 to 10000")
    rejected.add_argument("--json", action="store_true", help="print JSON: `rejected` (each input whole), `next_after`")
    rejected.set_defaults(run=_rejected)
