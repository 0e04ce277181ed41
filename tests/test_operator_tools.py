"""Operators' tools: rejected input readable over HTTP and from the command line (embedded store, Kafka DLQ),
`tiergate override` checked against a live server before it is sent, `tiergate import` refusing policy
activations into a data dir that already holds a log. Real servers, real SQLite, a real broker for the DLQ."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tiergate.models.wire import parse_ts
from tiergate.streams.access import Credentials
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import DB_NAME, EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings
from tiergate.streams.store import Store

from .test_cli import tiergate
from .test_restart import free_port

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = GOLDEN / "clean_climb" / "events.jsonl"
FIRST_EVENT = next(line for line in CLIMB.read_text().splitlines() if '"type":"policy"' not in line)
OPERATOR, AGENT, READER = "operator-secret-0123456789", "agent-secret-0123456789", "reader-secret-0123456789"
CREDENTIALS = f"alice@ops operator {OPERATOR}\nsupport-bot agent {AGENT}\ngrafana reader {READER}\n"

BAD = [
    b'{"type":"action"',  # malformed, names no type
    b'{"type":"outcome","event_id":"u1","ts":"2026-11-02T11:00:00Z","action_type":"nope","action_id":"a",'
    b'"tier":"crawl","kind":"review","result":"accepted"}',  # unknown type
    b'{"type":"outcome","event_id":"b1","ts":"2026-11-02T11:00:00Z","action_type":"reply_to_ticket",'
    b'"action_id":"a","tier":"crawl","kind":"review","result":"bogus"}',  # a bad result, naming its type
    b'{"type":"outcome","event_id":"f1","ts":"2026-11-03T11:00:00Z","action_type":"refund_up_to_50",'
    b'"action_id":"a","tier":"crawl","kind":"review","result":"accepted"}',  # future
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    """A server with credentials whose rejected table holds four kinds of bad input."""
    evaluator = EmbeddedRuntime(read_policy(POLICY), tmp_path / "data", ManualClock(parse_ts("2026-11-02T12:00:00Z")))
    settings = ServeSettings(policy=POLICY, data_dir=tmp_path / "data")
    app = make_app(evaluator, settings, ticking=False, credentials=Credentials.parse(CREDENTIALS, "test"))
    async with TestServer(app, host="127.0.0.1") as http, TestClient(http) as client:
        response = await client.post("/v1/events", data=b"\n".join(BAD), headers=auth(OPERATOR))
        assert response.status == 200
        yield client
    evaluator.close()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def rejected(client: TestClient, query: str, secret: str = READER) -> dict:  # type: ignore[type-arg]
    response = await client.get(f"/v1/rejected{query}", headers=auth(secret))
    assert response.status == 200, await response.text()
    return await response.json()  # type: ignore[no-any-return]


async def test_rejected_input_is_read_over_http_filtered_and_paged(client: TestClient) -> None:
    """GET /v1/rejected gives each input with its reason and the type it names, oldest first; filters by
    reason substring, result and type; pages with after/next_after."""
    everything = (await rejected(client, ""))["rejected"]
    assert [r["event"].encode() for r in everything] == BAD
    assert [r["action_type"] for r in everything] == [None, "nope", "reply_to_ticket", "refund_up_to_50"]
    assert "malformed JSON" in everything[0]["reason"] and everything[3]["reason"].startswith("future:")
    assert everything[0]["origin"].startswith("http(127.0.0.1 as alice@ops)")
    by_reason = (await rejected(client, "?reason=UNKNOWN%20action_type"))["rejected"]
    assert [r["action_type"] for r in by_reason] == ["nope"]
    by_type = (await rejected(client, "?action_type=reply_to_ticket&result=rejected"))["rejected"]
    assert [r["event"].encode() for r in by_type] == [BAD[2]]
    assert (await rejected(client, "?result=late"))["rejected"] == []
    first = await rejected(client, "?limit=3")
    rest = await rejected(client, f"?after={first['next_after']}")
    assert [r["id"] for r in first["rejected"] + rest["rejected"]] == [r["id"] for r in everything]


@pytest.mark.parametrize(
    ("query", "fragment"), [("?limit=0", "limit=0 is outside"), ("?result=applied", "result='applied'")]
)
async def test_a_bad_rejected_query_is_a_400_naming_it(client: TestClient, query: str, fragment: str) -> None:
    """A bad parameter is refused with what it should be."""
    response = await client.get(f"/v1/rejected{query}", headers=auth(READER))
    assert response.status == 400 and fragment in (await response.json())["error"]


def test_a_store_from_before_names_its_rejected_input_when_opened(tmp_path: Path) -> None:
    """A store made before the action_type and principal columns gets them on open; its rejected rows are
    given the type their input names."""
    path = tmp_path / DB_NAME
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, action_type TEXT, result TEXT NOT NULL, raw BLOB NOT NULL);"
        "CREATE TABLE rejected (id INTEGER PRIMARY KEY, origin TEXT NOT NULL, result TEXT NOT NULL, "
        "reason TEXT NOT NULL, raw BLOB NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('store_format', 'tiergate-store-1');"
    )
    db.executemany(
        "INSERT INTO rejected (origin, result, reason, raw) VALUES ('old:1', 'rejected', 'bad', ?)",
        [(raw,) for raw in BAD],
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert [r["action_type"] for r in reversed(store.rejected())] == [
            None,
            "nope",
            "reply_to_ticket",
            "refund_up_to_50",
        ]
        assert "principal" in {row[1] for row in store.db.execute("PRAGMA table_info(events)")}
    finally:
        store.close()


def test_tiergate_rejected_reads_a_data_dir_as_a_table_or_json(tmp_path: Path) -> None:
    """`tiergate rejected --data-dir` prints the table (markup and control characters inert) or JSON."""
    data = tmp_path / "data"
    hostile = b'{"type":"action","event_id":"x","agent":"[bold red]boom[/] \x1b[31m<script>"'
    history = tmp_path / "bad.jsonl"
    history.write_bytes(b"\n".join([*BAD[:3], hostile]) + b"\n")
    imported = tiergate("import", str(history), "--policy", str(POLICY), "--data-dir", str(data))
    assert imported.returncode == 0, imported.stderr
    table = tiergate("rejected", "--data-dir", str(data))
    assert table.returncode == 0 and "unknown action_type 'nope'" in table.stdout
    assert "\x1b" not in table.stdout and "[bold red]boom[/]" in table.stdout
    as_json = json.loads(tiergate("rejected", "--data-dir", str(data), "--action-type", "nope", "--json").stdout)
    assert [r["action_type"] for r in as_json["rejected"]] == ["nope"]
    page = json.loads(tiergate("rejected", "--data-dir", str(data), "--limit", "2", "--json").stdout)
    assert page["next_after"] == page["rejected"][-1]["id"] and len(page["rejected"]) == 2
    after = str(page["next_after"])
    rest = json.loads(tiergate("rejected", "--data-dir", str(data), "--after", after, "--json").stdout)
    assert len(rest["rejected"]) == 2 and rest["rejected"][0]["id"] > page["next_after"]
    assert "more: --after" in tiergate("rejected", "--data-dir", str(data), "--limit", "2").stderr
    last = tiergate("rejected", "--data-dir", str(data), "--limit", "2", "--after", after)
    assert last.returncode == 0 and "more:" not in last.stderr  # a full last page says no more
    for limit in ("0", "-1", "10001"):
        wrong = tiergate("rejected", "--data-dir", str(data), "--limit", limit)
        assert wrong.returncode == 2 and "give 1 to 10000 rows" in wrong.stderr
    kafka_id = tiergate("rejected", "--data-dir", str(data), "--after", "0:3")
    assert kafka_id.returncode == 2 and "ids are whole numbers" in kafka_id.stderr
    missing = tiergate("rejected", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no store here" in missing.stderr


def test_a_large_rejected_event_is_shortened_in_the_table_and_whole_in_json(tmp_path: Path) -> None:
    """A 70 KB rejected event shows in the table as its first 200 characters and its size, so no line is
    wider than a screenful; --json gives it whole."""
    data, history = tmp_path / "data", tmp_path / "large.jsonl"
    large = FIRST_EVENT.replace('"accepted"', '"accepted","note":"' + "x" * 70_000 + '"')
    history.write_text(large + "\n")
    assert tiergate("import", str(history), "--policy", str(POLICY), "--data-dir", str(data)).returncode == 0
    table = tiergate("rejected", "--data-dir", str(data))
    assert table.returncode == 0 and f"… ({len(large.encode())} bytes)" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) < 600
    as_json = json.loads(tiergate("rejected", "--data-dir", str(data), "--json").stdout)
    assert [r["event"] for r in as_json["rejected"]] == [large]


def test_import_refuses_policy_events_into_a_data_dir_that_holds_a_log(tmp_path: Path) -> None:
    """A history with a policy activation is refused before anything is written when the data dir already
    holds events (the store is byte for byte as it was), and with a --policy that would contradict it."""
    data = tmp_path / "data"
    assert tiergate("import", str(CLIMB), "--data-dir", str(data)).returncode == 0
    before = (data / DB_NAME).read_bytes()
    history = tmp_path / "with-policy.jsonl"
    activation = '{"type":"policy","event_id":"policy/a1/reply_to_ticket","ts":"2026-11-03T00:00:00Z"}'
    history.write_text(FIRST_EVENT + "\n" + activation + "\n")
    refused = tiergate("import", str(history), "--data-dir", str(data))
    assert refused.returncode == 2, refused.stderr
    assert "with-policy.jsonl carries policy activations" in refused.stderr, refused.stderr
    assert "only into an empty --data-dir" in refused.stderr
    assert (data / DB_NAME).read_bytes() == before
    fresh = tmp_path / "fresh"
    doubled = tiergate("import", str(history), "--policy", str(POLICY), "--data-dir", str(fresh))
    assert doubled.returncode == 2 and "carries its own policy (activations)" in doubled.stderr, doubled.stderr
    assert not fresh.exists()
    plain = tmp_path / "mentions-policy.jsonl"  # the word in a reason is no activation
    plain.write_text(FIRST_EVENT.replace('"accepted"', '"accepted","note":"policy"') + "\n")
    assert tiergate("import", str(plain), "--policy", str(POLICY), "--data-dir", str(data)).returncode == 0


# -- tiergate override against a served data dir -----------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`tiergate serve` in its own process with credentials from a file; its URL."""
    credentials = tmp_path / "credentials"
    credentials.write_text(CREDENTIALS)
    credentials.chmod(0o600)
    port = free_port()
    process = subprocess.Popen(
        [
            *tiergate_argv(),
            "serve",
            "--policy",
            str(POLICY),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--credentials-file",
            str(credentials),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def tiergate_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "tiergate.streams.cli"]


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(process.stderr.read().decode() if process.stderr else "server did not start")


def override(url: str, secret: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return tiergate(
        "override", *argv, "--actor", "ops@example.com", "--server", url, env={"TIERGATE_CREDENTIAL": secret}
    )


def decisions(url: str) -> list[dict]:  # type: ignore[type-arg]
    import urllib.request

    request = urllib.request.Request(f"{url}/v1/decisions", headers=auth(READER))
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["decisions"]  # type: ignore[no-any-return]


def test_override_checks_then_sends_and_prints_the_decision(served: str) -> None:
    """An operator's promote is sent and printed with actor and principal; a pin below the new tier is
    refused with the fold's hint and never sent; an agent's credential is refused by the server."""
    done = override(served, OPERATOR, "promote", "reply_to_ticket", "--reason", "trial on staff")
    assert done.returncode == 0, done.stderr
    assert "reply_to_ticket/1" in done.stdout and "crawl → walk" in done.stdout
    assert "principal alice@ops" in done.stdout and "actor ops@example.com" in done.stdout
    count = len(decisions(served))
    pin = override(served, OPERATOR, "pin", "reply_to_ticket", "--tier", "crawl", "--reason", "hold it")
    assert pin.returncode == 1 and "demote to crawl first, then pin" in pin.stderr and "nothing was sent" in pin.stderr
    assert len(decisions(served)) == count
    agent = override(served, AGENT, "demote", "reply_to_ticket", "--reason", "sneaky")
    assert agent.returncode == 2 and "403" in agent.stderr and "needs a credential with role operator" in agent.stderr
    as_json = json.loads(
        override(served, OPERATOR, "cap", "reply_to_ticket", "--tier", "crawl", "--reason", "x", "--json").stdout
    )
    assert as_json["decisions"][0]["to_tier"] == "crawl" and as_json["decisions"][0]["principal"] == "alice@ops"


@pytest.mark.parametrize(
    "argv",
    [
        ("policy", "history"),
        ("explain", "reply_to_ticket"),
        ("checkpoint", "reply_to_ticket", "--through", "2026-11-02T10:00:00Z"),
        ("override", "demote", "reply_to_ticket", "--actor", "a", "--reason", "r"),
    ],
)
def test_a_command_without_a_credential_names_the_clients_variables(served: str, argv: tuple[str, ...]) -> None:
    """Against a server with credentials, a server command sent without one exits 2 saying how to give the
    client its credential (TIERGATE_CREDENTIAL[_FILE]), not the server's credentials file."""
    env = {"TIERGATE_SERVER": served, "TIERGATE_CREDENTIAL": "", "TIERGATE_CREDENTIAL_FILE": ""}
    server = ("--server", served) if argv[0] in ("policy", "checkpoint", "override") else ()
    done = tiergate(*argv, *server, env=env)
    assert done.returncode == 2, done.stderr
    assert "TIERGATE_CREDENTIAL_FILE" in done.stderr and "TIERGATE_CREDENTIAL" in done.stderr
    assert "TIERGATE_CREDENTIALS" not in done.stderr


def test_override_mistakes_are_caught_before_anything_is_sent(tmp_path: Path) -> None:
    """A pin without a tier, or an unpin with one, is refused locally in the command's words (--tier, not the
    event's field); --kafka without an operator key says how to give one; no server, a clear line."""
    url = f"http://127.0.0.1:{free_port()}"
    missing_tier = override(url, OPERATOR, "pin", "reply_to_ticket", "--reason", "r")
    assert missing_tier.returncode == 2, missing_tier.stderr
    assert "pin reply_to_ticket: pin needs a tier: add --tier crawl, walk or run" in missing_tier.stderr
    extra_tier = override(url, OPERATOR, "unpin", "reply_to_ticket", "--tier", "walk", "--reason", "r")
    assert extra_tier.returncode == 2, extra_tier.stderr
    assert "unpin reply_to_ticket: unpin takes no tier: remove --tier walk" in extra_tier.stderr
    assert "tier field" not in extra_tier.stderr
    kafka = tiergate("override", "demote", "reply_to_ticket", "--actor", "a", "--reason", "r", "--kafka")
    assert kafka.returncode == 2 and "--key FILE or TIERGATE_OPERATOR_KEY_FILE" in kafka.stderr
    down = override(url, OPERATOR, "demote", "reply_to_ticket", "--reason", "r")
    assert down.returncode == 2 and "cannot reach" in down.stderr and "Traceback" not in down.stderr


# -- the DLQ on Kafka ---------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_tiergate_rejected_reads_the_dlq_topic(kafka_broker: None, tmp_path: Path) -> None:
    """`tiergate rejected --kafka` reads tiergate.events.v1.dlq from the start, with the worker's headers, and
    filters it like the store."""
    from aiokafka import AIOKafkaProducer

    from tiergate.streams.kafka import DLQ

    from .kafka_harness import BOOTSTRAP, Deployment

    deployment = Deployment(tmp_path)
    deployment.create_topics()

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
        await producer.start()
        try:
            for i, raw in enumerate(BAD[:3]):
                headers = [
                    ("tiergate-result", b"rejected"),
                    ("tiergate-reason", f"reason {i}: unknown action_type".encode() if i == 1 else b"bad"),
                    ("tiergate-origin", f"tiergate.events.v1/0:{i}".encode()),
                ]
                await producer.send_and_wait(deployment.settings.topic(DLQ), raw, key=b"k", headers=headers)
        finally:
            await producer.stop()

    asyncio.run(produce())
    env = {"TIERGATE_KAFKA_BOOTSTRAP": BOOTSTRAP, "TIERGATE_KAFKA_TOPIC_PREFIX": deployment.prefix}
    done = tiergate("rejected", "--kafka", "--json", env=env)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rejected"]
    assert [r["event"].encode() for r in rows] == BAD[:3]
    assert rows[2]["action_type"] == "reply_to_ticket" and rows[0]["origin"] == "tiergate.events.v1/0:0"
    filtered = json.loads(tiergate("rejected", "--kafka", "--json", "--reason", "unknown", env=env).stdout)
    assert [r["action_type"] for r in filtered["rejected"]] == ["nope"]
    first = json.loads(tiergate("rejected", "--kafka", "--json", "--limit", "2", env=env).stdout)
    assert [r["event"].encode() for r in first["rejected"]] == BAD[:2] and first["next_after"] == rows[1]["id"]
    rest = json.loads(tiergate("rejected", "--kafka", "--json", "--after", first["next_after"], env=env).stdout)
    assert [r["event"].encode() for r in rest["rejected"]] == BAD[2:3]
    unreadable = tiergate("rejected", "--kafka", "--after", "12", env=env)
    assert unreadable.returncode == 2 and "PARTITION:OFFSET" in unreadable.stderr
