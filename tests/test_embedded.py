"""The embedded runtime end to end: a real aiohttp server on a loopback port, a real HTTP client, real SQLite."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tiergate.models.wire import parse_ts
from tiergate.streams.canonical import policy_sha256, without_rule_fields
from tiergate.streams.cli import main
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import WRITER, make_app
from tiergate.streams.policy_file import parse_policy, read_policy
from tiergate.streams.settings import ServeSettings
from tiergate.streams.store import Store

from .histories import feed

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
LOG = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes().splitlines()
ACTIVATION = [line for line in LOG if line.startswith(b'{"type":"policy"')]  # the golden policy's activation
CLIMB = b"\n".join(line for line in LOG if line not in ACTIVATION)  # what agents and reviewers post


@dataclass
class Running:
    client: TestClient
    clock: ManualClock
    evaluator: EmbeddedRuntime
    data_dir: Path


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """An embedded server on 127.0.0.1 whose clock the test moves; ticking only when the test asks for it."""
    ticking = getattr(request, "param", {}).get("ticking", False)
    token = getattr(request, "param", {}).get("token")
    clock = ManualClock(parse_ts("2026-11-02T12:00:00Z"))
    evaluator = EmbeddedRuntime(None, tmp_path / "data", clock, max_skew=300)
    evaluator.ingest(ACTIVATION, "policy(golden-1)", live=False)  # as an operator's apply writes it
    settings = ServeSettings(policy=POLICY, data_dir=tmp_path / "data", tick_interval=0.02, token=token, max_batch=1000)
    http = TestServer(make_app(evaluator, settings, ticking=ticking), host="127.0.0.1")
    async with http, TestClient(http) as client:
        yield Running(client, clock, evaluator, tmp_path / "data")
    evaluator.close()


async def post(client: TestClient, body: bytes, status: int = 200) -> dict:  # type: ignore[type-arg]
    response = await client.post("/v1/events", data=body, headers={"Content-Type": "application/x-ndjson"})
    assert response.status == status, await response.text()
    return await response.json()  # type: ignore[no-any-return]


async def climb(server: Running, history: bytes = CLIMB) -> Counter[str]:
    """Post a history's events over HTTP and fold its ticks as the server's clock (tests/histories.py); the
    results of all of them."""
    counts = Counter[str]()

    async def send(body: bytes) -> None:
        counts.update((await post(server.client, body))["counts"])

    assert server.client.app is not None
    return counts + await feed(server.client.app, history, send)


async def test_posted_events_are_folded_into_tiers_and_decisions(server: Running) -> None:
    """The clean climb posted as NDJSON gives the same decision log as `tiergate replay`, and the tier map shows it."""
    assert await climb(server) == {"applied": 281}
    tiers = {r["action_type"]: r for r in (await (await server.client.get("/v1/tiers")).json())["tiers"]}
    assert (tiers["reply_to_ticket"]["tier"], tiers["reply_to_ticket"]["version"]) == ("run", 2)
    one = await (await server.client.get("/v1/tiers/reply_to_ticket")).json()
    assert one == tiers["reply_to_ticket"]
    stored = list(server.evaluator.store.all_decisions())
    assert stored == (GOLDEN / "clean_climb" / "expected.jsonl").read_text().splitlines()


async def test_each_event_gets_its_result_and_bad_ones_are_kept(server: Running) -> None:
    """applied, duplicate, late and rejected (malformed, unknown type, future) each with the reason; all kept."""
    lines = CLIMB.splitlines()
    batch = [
        lines[0],
        lines[0],  # duplicate
        b'{"type":"action"',  # malformed
        review("u", "2026-11-02T01:00:00Z", "nope"),  # unknown type
        review("f", "2026-11-03T00:00:00Z"),  # future
        review("t", "2026-11-02T03:00:00Z"),
        lines[0].replace(b'"event_id":"e1"', b'"event_id":"late-1"'),  # its window is now closed
    ]
    results = (await post(server.client, b"\n".join(batch)))["results"]
    assert [r["result"] for r in results] == [
        "applied",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "applied",
        "late",
    ]
    assert "malformed JSON" in results[2]["reason"]
    assert "unknown action_type 'nope'" in results[3]["reason"]
    assert results[4]["reason"].startswith("future:")
    assert "closed at watermark" in results[6]["reason"]
    kept = server.evaluator.store.rejected()
    assert sorted(k["result"] for k in kept) == ["late", "rejected", "rejected", "rejected"]
    assert any(k["event"] == '{"type":"action"' for k in kept)


async def test_a_rejected_answer_echoes_the_event_id_the_input_names(server: Running) -> None:
    """An event the schema rejects is answered with the event_id it names (a string), so its producer can
    tell which it was; input naming none, or not as a string, is answered with null."""
    batch = [
        b'{"type":"action","event_id":"bad-1","ts":"2026-11-02T01:00:00Z","action_type":"reply_to_ticket"}',
        b'{"type":"action","event_id":7,"ts":"2026-11-02T01:00:00Z","action_type":"reply_to_ticket"}',
        b'{"type":"action","event_id":"cut',
    ]
    results = (await post(server.client, b"\n".join(batch)))["results"]
    assert [(r["event_id"], r["result"]) for r in results] == [
        ("bad-1", "rejected"),
        (None, "rejected"),
        (None, "rejected"),
    ]
    assert results[0]["reason"].startswith("action_id: is required: add it")


async def test_ndjson_sent_as_application_json_is_kept_with_the_content_type_to_send(server: Running) -> None:
    """Two events one a line posted as application/json are one input, kept rejected as before; its reason
    says to post them as application/x-ndjson. Two objects on one NDJSON line keep the NDJSON fix."""
    body = review("j1", "2026-11-02T01:00:00Z") + b"\n" + review("j2", "2026-11-02T01:00:00Z") + b"\n"
    response = await server.client.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200
    (result,) = (await response.json())["results"]
    assert result["result"] == "rejected" and "unexpected content after document: line 2" in result["reason"]
    assert "several events, one a line" in result["reason"]
    assert "Content-Type: application/x-ndjson" in result["reason"]
    (kept,) = server.evaluator.store.rejected()
    assert (kept["event"], kept["reason"]) == (body.decode(), result["reason"])
    one_line = review("j3", "2026-11-02T01:00:00Z") + review("j4", "2026-11-02T01:00:00Z")
    (result,) = (await post(server.client, one_line))["results"]
    assert result["reason"].endswith("one event a line (NDJSON), each a single JSON object")


async def test_input_not_utf8_or_nested_too_deep_gets_a_reason_that_fits(server: Running) -> None:
    """A raw 0xFF in a string is named as not UTF-8 with its offset (orjson's own words name surrogates at
    position 0); nesting past the parser's depth says so, closed or left open, not 'strings in double
    quotes'."""
    not_utf8 = b'{"type":"action","event_id":"a\xff"}'
    batch = [not_utf8, b"[" * 1100, b"[" * 1100 + b"]" * 1100]
    results = (await post(server.client, b"\n".join(batch)))["results"]
    assert [r["result"] for r in results] == ["rejected"] * 3
    first = results[0]["reason"]
    assert "the input is not valid UTF-8: byte 0xff at offset 30" in first and "surrogate" not in first
    for deep in results[1:]:
        assert "nested deeper than the parser takes (1024 levels" in deep["reason"], deep
        assert "double quotes" not in deep["reason"]


def review(event_id: str, ts: str, action_type: str = "reply_to_ticket") -> bytes:
    """A review outcome (an event any reporter may post)."""
    fields = (event_id.encode(), ts.encode(), action_type.encode(), event_id.encode())
    return (
        b'{"type":"outcome","event_id":"%s","ts":"%s","action_type":"%s","action_id":"x-%s","tier":"crawl",'
        b'"kind":"review","result":"accepted"}' % fields
    )


async def test_malformed_requests_get_a_4xx_that_names_the_problem(server: Running) -> None:
    """An empty body and an oversized batch are refused whole, with what to do instead."""
    empty = await post(server.client, b"  \n", status=400)
    assert "empty body" in empty["error"]
    too_many = b"\n".join([b"{}"] * 1001)
    assert "over the limit of 1000" in (await post(server.client, too_many, status=413))["error"]
    bad_query = await server.client.get("/v1/decisions?since=yesterday")
    assert bad_query.status == 400 and "RFC 3339" in (await bad_query.json())["fix"]


@pytest.mark.parametrize("server", [{"token": "s3cret"}], indirect=True)
async def test_a_configured_token_guards_writes(server: Running) -> None:
    """Without the bearer token a write is refused; with it, accepted; reads stay open."""
    refused = await server.client.post("/v1/events", data=CLIMB.splitlines()[0])
    assert refused.status == 401
    accepted = await server.client.post(
        "/v1/events", data=CLIMB.splitlines()[0], headers={"Authorization": "Bearer s3cret"}
    )
    assert accepted.status == 200
    assert (await server.client.get("/v1/tiers")).status == 200


def test_without_a_token_only_loopback_is_allowed(tmp_path: Path) -> None:
    """Binding beyond loopback with writes unguarded is refused at start-up."""
    with pytest.raises(ValueError, match="not loopback and no credentials"):
        ServeSettings(policy=POLICY, host="0.0.0.0").check_exposure()
    ServeSettings(policy=POLICY, host="127.0.0.1").check_exposure()


async def test_the_stream_sends_the_map_then_each_change(server: Running) -> None:
    """SSE: every current record first, then the promotions as they are committed."""
    response = await server.client.get("/v1/tiers/stream")
    records: list[dict] = []  # type: ignore[type-arg]

    async def read(count: int) -> None:
        while len(records) < count:
            line = await response.content.readline()
            if line.startswith(b"data: "):
                records.append(json.loads(line[6:]))

    await asyncio.wait_for(read(4), 5)
    assert {r["action_type"] for r in records} == {
        "reply_to_ticket",
        "refund_up_to_50",
        "refund_over_50",
        "lookup_order",
    }
    await climb(server)
    await asyncio.wait_for(read(6), 1)  # a new tier record within one second of the decision
    assert [(r["action_type"], r["tier"], r["version"]) for r in records[4:]] == [
        ("reply_to_ticket", "walk", 1),
        ("reply_to_ticket", "run", 2),
    ]
    response.close()


@pytest.mark.parametrize("server", [{"ticking": True}], indirect=True)
async def test_clock_ticks_close_idle_windows(server: Running) -> None:
    """With no more traffic, the clock's ticks close the windows that finish the hold: the type is promoted."""
    lines = [line for line in CLIMB.splitlines() if b'"2026-11-02T0' in line and b"review" in line]
    await post(server.client, b"\n".join(lines[:30]))  # reviews of hours 0-2: passing from 02:00
    server.clock.current = parse_ts("2026-11-02T12:00:00Z")
    for _ in range(100):
        if server.evaluator.tiers["reply_to_ticket"].tier == 1:
            break
        await asyncio.sleep(0.02)
    assert server.evaluator.tiers["reply_to_ticket"].tier == 1
    ticks = [raw for _, raw in server.evaluator.store.events() if b'"type":"tick"' in raw]
    assert ticks and all(b'"ts":"2026-11-02T12:00:00Z"' in raw for raw in ticks)


async def test_metrics_show_tiers_bars_and_counts(server: Running) -> None:
    """/metrics is Prometheus text with the tier, bar figures and event counts; an action type outside the
    catalog is counted without an action_type label, so producers cannot grow the label set, and an event the
    schema rejects is counted under the catalog type it names (as `tiergate rejected` lists it)."""
    await climb(server)
    await post(server.client, review("u", "2026-11-02T11:00:00Z", "made_up"))
    walkk = review("w", "2026-11-02T11:00:00Z", "refund_up_to_50").replace(b'"tier":"crawl"', b'"tier":"walkk"')
    await post(server.client, walkk)
    text = await (await server.client.get("/metrics")).text()
    assert "made_up" not in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("tiergate_tier", (("action_type", "reply_to_ticket"), ("tier", "run")))] == 1
    applied = samples[("tiergate_events_total", (("action_type", "reply_to_ticket"), ("result", "applied")))]
    assert applied == 281 + 1  # its events and its part of the policy's activation
    assert samples[("tiergate_decisions_total", (("action_type", "reply_to_ticket"), ("kind", "promote")))] == 2
    assert samples[("tiergate_unattributed_events_total", (("result", "rejected"),))] == 1
    assert samples[("tiergate_events_total", (("action_type", "refund_up_to_50"), ("result", "rejected")))] == 1
    assert (
        "tiergate_bar_samples",
        (("action_type", "reply_to_ticket"), ("metric", "customer_success_rate"), ("rule", "keep")),
    ) in samples


async def test_decisions_filter_by_type_and_time_and_page(server: Running) -> None:
    """/v1/decisions filters by action type and `at`, and pages with `after`."""
    await climb(server)
    url = "/v1/decisions?action_type=reply_to_ticket&since=2026-11-02T05:00:00Z"
    page = await (await server.client.get(url)).json()
    assert [(d["kind"], d["to_tier"]) for d in page["decisions"]] == [("promote", "run")]
    first = await (await server.client.get("/v1/decisions?limit=2")).json()
    rest = await (await server.client.get(f"/v1/decisions?after={first['next_after']}")).json()
    assert len(first["decisions"]) == 2 and len(rest["decisions"]) == 4


async def test_policy_and_health_are_published(server: Running) -> None:
    """GET /v1/policy carries the normalised policy and the sha every decision is stamped with."""
    policy = await (await server.client.get("/v1/policy")).json()
    assert policy["policy_sha256"] == read_policy(POLICY).sha256 and policy["policy"]["window"] == "1h"
    health = await (await server.client.get("/healthz")).json()
    assert health["status"] == "ok" and health["policy_version"] == "golden-1"


async def test_export_then_replay_reproduces_the_stored_decisions(server: Running, tmp_path: Path) -> None:
    """`tiergate export` writes the log (ticks included) that `tiergate replay` turns into the same bytes."""
    await climb(server, CLIMB[: len(CLIMB) // 2].rsplit(b"\n", 1)[0])
    assert server.client.app is not None
    await server.client.app[WRITER].run(server.evaluator.tick)  # the clock's ticks, as the ticker sends them
    await post(
        server.client,
        b'{"type":"override","event_id":"o","ts":"2026-11-02T06:00:00Z","action_type":"refund_over_50",'
        b'"op":"cap","tier":"crawl","actor":"ops","reason":"audit"}',
    )
    exported, replayed = tmp_path / "events.jsonl", tmp_path / "decisions.jsonl"
    assert main(["export", "--data-dir", str(server.data_dir), "-o", str(exported)]) == 0
    assert main(["replay", str(exported), "-o", str(replayed)]) == 0
    assert replayed.read_text().splitlines() == list(server.evaluator.store.all_decisions())
    assert b'"type":"tick"' in exported.read_bytes()


def test_import_appends_history_without_ticks_and_refuses_a_busy_data_dir(tmp_path: Path) -> None:
    """`tiergate import` folds an old history into a data dir; a second process on the same dir is refused."""
    data = tmp_path / "data"
    assert (
        main(
            [
                "import",
                str(GOLDEN / "regression_and_cooldown" / "events.jsonl"),
                "--data-dir",
                str(data),
                "--batch",
                "50",
            ]
        )
        == 0
    )
    exported = tmp_path / "decisions.jsonl"
    assert main(["export", "--data-dir", str(data), "-o", str(tmp_path / "e.jsonl"), "--decisions", str(exported)]) == 0
    assert exported.read_bytes() == (GOLDEN / "regression_and_cooldown" / "expected.jsonl").read_bytes()
    holder = EmbeddedRuntime(read_policy(POLICY), data, ManualClock(0))
    try:
        assert (
            main(
                [
                    "import",
                    str(GOLDEN / "thin_evidence" / "events.jsonl"),
                    "--data-dir",
                    str(data),
                ]
            )
            == 2
        )
    finally:
        holder.close()


def test_a_restart_with_an_edited_policy_file_activates_it_and_keeps_every_tier_and_evidence(tmp_path: Path) -> None:
    """`serve --policy` on an existing data dir applies an edited file as an activation: reply_to_ticket stays
    at run with its evidence; the same file again is no activation; a file that cannot apply (another window)
    leaves the policy in force and the server degraded with the reason."""
    data, clock = tmp_path / "data", ManualClock(parse_ts("2026-11-02T12:00:00Z"))
    first = EmbeddedRuntime(read_policy(POLICY), data, clock)
    first.ingest(CLIMB.splitlines(), "http(test)")
    before = first.state.keys["reply_to_ticket"].to_dict()
    first.close()
    raised = tmp_path / "raised.yaml"
    raised.write_text(POLICY.read_text().replace('"golden-1"', '"golden-2"').replace("target: 0.85", "target: 0.8"))
    second = EmbeddedRuntime(read_policy(raised), data, clock)
    key = second.state.keys["reply_to_ticket"]
    assert (key.tier, key.version, key.lookback.totals) == (before["tier"], before["version"], first_totals(before))
    assert [r.source for r in second.store.activations()] == ["file", "file"] and not second.problems
    policy_decisions = [d for d in map(json.loads, second.store.all_decisions()) if d["kind"] == "policy"]
    assert {d["action_type"] for d in policy_decisions} == set(read_policy(raised).types)
    second.close()
    EmbeddedRuntime(read_policy(raised), data, clock).close()  # unchanged: nothing new
    moved = tmp_path / "moved.yaml"
    moved.write_text(raised.read_text().replace("window: 1h", "window: 2h").replace("lookback: 1d", "lookback: 2d"))
    third = EmbeddedRuntime(read_policy(moved), data, clock)
    assert len(third.store.activations()) == 2
    assert third.problems and "window cannot change for an existing action type" in third.problems[0]
    third.close()


def first_totals(saved: dict[str, object]) -> list[int]:
    """The lookback totals a saved key state adds up to."""
    totals = [0] * 18
    for _, counters in saved["closed"]:  # type: ignore[attr-defined]
        totals = [a + b for a, b in zip(totals, counters, strict=True)]
    return totals


def test_settings_come_from_flags_then_environment_then_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tiergate serve` settings: a flag beats TIERGATE_*, which beats the TOML file, which beats the default."""
    config = tmp_path / "tiergate.toml"
    config.write_text(f'policy = "{POLICY}"\nport = 9001\nmax_skew = 60\ntick_interval = 5.0\n')
    monkeypatch.setenv("TIERGATE_PORT", "9002")
    monkeypatch.setenv("TIERGATE_MAX_SKEW", "90")
    settings = ServeSettings.load(config, port=9003, host=None)
    assert (settings.port, settings.max_skew, settings.tick_interval, settings.host) == (9003, 90, 5.0, "127.0.0.1")
    assert ServeSettings.load(config).port == 9002
    monkeypatch.delenv("TIERGATE_PORT")
    assert ServeSettings.load(config).port == 9001


async def test_status_shows_each_bars_rule_and_its_figures(tmp_path: Path) -> None:
    """GET /v1/status under the sound rules: the type's rules, and for each bar its test's statistic,
    threshold and the outcomes since the test began (the healthy low-volume golden story: kept at Walk)."""
    history = (GOLDEN / "healthy_low_volume" / "events.jsonl").read_bytes().splitlines()
    evaluator = EmbeddedRuntime(None, tmp_path / "data", ManualClock(parse_ts("2026-11-02T15:00:00Z")))
    evaluator.ingest(history, "healthy_low_volume", live=False)
    settings = ServeSettings(policy=POLICY, data_dir=tmp_path / "data", tick_interval=60)
    http = TestServer(make_app(evaluator, settings, ticking=False), host="127.0.0.1")
    async with http, TestClient(http) as client:
        status = await (await client.get("/v1/status")).json()
    evaluator.close()
    view = next(s for s in status["action_types"] if s["action_type"] == "refund_up_to_50")
    assert view["tier"] == "walk" and view["rules"] == {"promotion": "mixture", "demotion": "sprt", "tripwire": 6}
    (keep,) = view["keep"]
    assert keep["test"]["rule"] == "sprt" and keep["test"]["n"] == 20 and keep["test"]["threshold"] == 2.0
    assert keep["test"]["statistic"] < 0 and keep["verdict"] == "pass" and "threshold" not in keep
    assert {bar["test"]["rule"] for bar in view["promote"]} == {"mixture"}


def test_a_store_from_before_activations_migrates_under_the_v1_rules(tmp_path: Path) -> None:
    """A store bound to a policy before policies lived in the log (its sha as written then, before the bar
    rules were policy fields) is migrated by activation 0 with the v1 rules — what decided it — and the
    file, which names no rule, is applied after it with the sound ones; the old climb keeps its tiers."""
    text = POLICY.read_text().replace("promotion: {rule: wilson}\n", "").replace(", rule: point, tripwire: 0", "")
    policy = parse_policy(text, "unnamed.yaml")
    store = Store(tmp_path / "data" / "tiergate.db")
    claimed = policy_sha256(without_rule_fields(policy.before_activations.normalised))
    store.db.executemany("INSERT INTO meta VALUES (?, ?)", [("policy_version", "golden-1"), ("policy_sha256", claimed)])
    old = (GOLDEN / "old_log" / "events.jsonl").read_bytes().splitlines()
    store.db.executemany(
        "INSERT INTO events (action_type, result, raw) VALUES (?, 'applied', ?)",
        [(json.loads(raw)["action_type"], raw) for raw in old],
    )
    store.db.commit()
    store.close()
    evaluator = EmbeddedRuntime(policy, tmp_path / "data", ManualClock(parse_ts("2026-11-02T12:00:00Z")))
    try:
        migration, applied = evaluator.store.activations()
        assert (migration.activation_id, migration.source, applied.source) == ("0", "migration", "file")
        rules = [a.document["action_types"]["reply_to_ticket"] for a in (migration, applied)]
        assert [r["promotion"]["rule"] for r in rules] == ["wilson", "mixture"]
        assert [(r["demotion"]["rule"], r["demotion"]["tripwire"]) for r in rules] == [("point", 0), ("sprt", 6)]
        assert {r.action_type: r.tier for r in evaluator.tier_map()}["reply_to_ticket"] == 2
    finally:
        evaluator.close()
