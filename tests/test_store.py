"""The embedded store: a broken file is refused, a failed batch leaves nothing behind — in the store or in
memory — and the state always equals a fold of the stored log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from tiergate.models import fold
from tiergate.models.fold import step
from tiergate.models.wire import format_ts, parse_ts
from tiergate.streams.clock import ManualClock
from tiergate.streams.codec import decode
from tiergate.streams.embedded import DB_NAME, EmbeddedRuntime, PolicyRefused
from tiergate.streams.http import make_app
from tiergate.streams.pipeline import Pipeline
from tiergate.streams.policy_file import policy_from_mapping, read_policy
from tiergate.streams.settings import ServeSettings
from tiergate.streams.store import Store, StoreError

GOLDEN = Path(__file__).parent / "golden"
POLICY = read_policy(GOLDEN / "policy.yaml")
NOON = parse_ts("2026-11-02T12:00:00Z")
LOG = (GOLDEN / "cap_and_pin" / "events.jsonl").read_bytes().splitlines()
STORY = [line for line in LOG if not line.startswith(b'{"type":"policy"')]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[EmbeddedRuntime]:
    served = EmbeddedRuntime(POLICY, tmp_path / "data", ManualClock(NOON))
    yield served
    served.close()


def stored_fold(runtime: EmbeddedRuntime) -> dict[str, object]:
    """The fold of what the store holds, as a state snapshot."""
    state, _ = fold(decode(raw) for _, raw in runtime.store.events())
    return state.to_dict()


def test_a_zero_byte_store_is_refused_not_treated_as_new(tmp_path: Path) -> None:
    """An existing but empty tiergate.db is not silently a fresh store."""
    (tmp_path / DB_NAME).touch()
    with pytest.raises(StoreError, match="exists but is empty"):
        EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))


def test_a_damaged_page_is_found_at_start_and_refused(tmp_path: Path) -> None:
    """A store with a zeroed page fails its integrity check at start with what to do, before any write."""
    first = EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))
    first.ingest(STORY[:200], "http(test)")
    first.close()
    path = tmp_path / DB_NAME
    with open(path, "r+b") as db:
        db.seek(4096 * 3)
        db.write(b"\0" * 4096)
    with pytest.raises(StoreError, match="restore it from a backup or an export"):
        EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))


TAMPERING = {
    "a row that is not JSON": "UPDATE state SET snapshot = '{not json' WHERE action_type = 'reply_to_ticket'",
    "a row cut short": "UPDATE state SET snapshot = substr(snapshot, 1, 40) WHERE action_type = 'reply_to_ticket'",
    "a row deleted": "DELETE FROM state WHERE action_type = 'reply_to_ticket'",
    "a field changed": "UPDATE state SET snapshot = replace(snapshot, '\"tier\":0', '\"tier\":7')",
    "a position that is no number": "UPDATE meta SET value = 'abc' WHERE key = 'snapshot_seq'",
    "a position past the log": "UPDATE meta SET value = '99999999' WHERE key = 'snapshot_seq'",
}


@pytest.mark.parametrize("tampering", TAMPERING.values(), ids=TAMPERING.keys())
def test_a_saved_state_that_is_not_what_was_saved_is_refolded_not_trusted(tmp_path: Path, tampering: str) -> None:
    """A snapshot changed, cut short, missing a type or claiming a position past the log is not restored
    (it would crash the start or silently skip events): the server refolds the log and starts."""
    first = EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))
    first.ingest(STORY[:100], "http(test)")
    with first.store.transaction():
        first.store.save_snapshot(first.state.keys.values())
    first.ingest(STORY[100:200], "http(test)")  # after the snapshot: a restore must fold these
    first.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute(tampering).rowcount > 0
    again = EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))
    try:
        assert again.state.to_dict() == stored_fold(again)
        assert "reply_to_ticket" in again.state.keys
        assert again.store.snapshot()[1] == again.store.last_seq()  # saved again: the next start folds nothing
    finally:
        again.close()


def test_a_second_data_dir_linking_to_the_same_database_is_refused(tmp_path: Path) -> None:
    """The lock follows the database a data directory really uses: two servers never write one file."""
    first = EmbeddedRuntime(POLICY, tmp_path / "a", ManualClock(NOON))
    try:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / DB_NAME).symlink_to(tmp_path / "a" / DB_NAME)
        with pytest.raises(StoreError, match="in use by another tiergate process"):
            EmbeddedRuntime(None, tmp_path / "b", ManualClock(NOON))
    finally:
        first.close()


def test_serving_the_file_an_imported_log_carried_keeps_a_later_activation(tmp_path: Path) -> None:
    """A data dir made by importing a log that carries its policy, then changed through the API, is not
    reverted by `serve --policy` with the file the log was made with: only a file that differs from what the
    directory was last given unattended is applied."""
    imported = EmbeddedRuntime(None, tmp_path, ManualClock(NOON))
    imported.ingest(LOG, "import(events.jsonl)")
    assert [row.source for row in imported.store.activations()] == ["log"]
    tuned = policy_from_mapping(yaml.safe_load((GOLDEN / "policy.yaml").read_text()) | {"policy_version": "tuned"})
    imported.apply(tuned, "api", "ops", "tuned by hand")
    imported.close()
    restarted = EmbeddedRuntime(POLICY, tmp_path, ManualClock(NOON))
    try:
        in_force = restarted.current_policy()
        assert in_force is not None and (in_force.source, in_force.policy_version) == ("api", "tuned")
    finally:
        restarted.close()


@pytest.mark.parametrize("again", ["third", "second"])
def test_an_activation_id_already_recorded_is_refused(runtime: EmbeddedRuntime, again: str) -> None:
    """An id only resumes an apply cut short; given again — with another document, or with its own after a
    later activation replaced it — its events are duplicates: it would apply nothing while reporting
    success. It is refused, and nothing is written."""
    golden = yaml.safe_load((GOLDEN / "policy.yaml").read_text())
    runtime.apply(policy_from_mapping(golden | {"policy_version": "second"}), "api", "ops", "one", activation_id="x")
    runtime.apply(policy_from_mapping(golden | {"policy_version": "later"}), "api", "ops", "two")
    before = runtime.store.last_seq()
    with pytest.raises(PolicyRefused, match="activation id x is already recorded, for policy second"):
        runtime.apply(policy_from_mapping(golden | {"policy_version": again}), "api", "ops", "3", activation_id="x")
    assert runtime.store.last_seq() == before


@pytest.mark.parametrize("failing", list(range(0, 60, 7)))
def test_a_batch_failing_anywhere_leaves_the_state_equal_to_the_stored_log(
    runtime: EmbeddedRuntime, failing: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while folding the n-th event of a batch leaves nothing of the batch in the store or in
    memory: the state is a fold of the stored log, and the same batch sent again applies as if first sent."""
    runtime.ingest(STORY[:40], "http(test)")
    batch = STORY[40:100]
    real, calls, live_pipeline = step, 0, runtime._pipeline

    def failing_step(state: object, event: object) -> object:
        nonlocal calls
        calls += 1
        if calls == failing + 1:  # once: the refold that restores the state works
            raise RuntimeError("injected")
        return real(state, event)  # type: ignore[arg-type]

    def failing_pipeline(live: bool) -> Pipeline:
        pipeline = live_pipeline(live)
        pipeline.step = failing_step  # type: ignore[assignment]
        return pipeline

    monkeypatch.setattr(runtime, "_pipeline", failing_pipeline)
    before = runtime.store.last_seq()
    with pytest.raises(RuntimeError, match="injected"):
        runtime.ingest(batch, "http(test)")
    assert runtime.store.last_seq() == before
    assert runtime.state.to_dict() == stored_fold(runtime)
    monkeypatch.setattr(runtime, "_pipeline", live_pipeline)
    again = runtime.ingest(batch, "http(test)")
    assert [r.result for r in again.results].count("duplicate") == 0
    assert runtime.state.to_dict() == stored_fold(runtime)


def test_a_failing_commit_leaves_nothing_and_a_retry_is_not_a_duplicate(
    runtime: EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the write (a full disk): the batch is not stored, the state is rolled back, and the
    same batch retried later is applied, not answered `duplicate`."""
    runtime.ingest(STORY[:40], "http(test)")
    promote = orjson.dumps(
        {
            "type": "override",
            "event_id": "o-ok",
            "ts": "2026-11-02T01:00:00Z",
            "action_type": "reply_to_ticket",
            "op": "promote",
            "actor": "ops",
            "reason": "r",
        }
    )

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "append", full)
    with pytest.raises(StoreError, match="free space"):
        runtime.ingest([promote], "http(test)")
    assert runtime.write_error is not None and runtime.state.to_dict() == stored_fold(runtime)
    monkeypatch.undo()
    retried = runtime.ingest([promote], "http(test)")
    assert retried.results[0].result == "applied" and runtime.write_error is None
    assert [d.kind for d in retried.decisions] == ["override"]


async def test_health_says_failing_while_writes_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the store refuses writes, POST answers 503 with why and /healthz is not ok; after, both recover."""
    runtime = EmbeddedRuntime(POLICY, tmp_path / "data", ManualClock(NOON))
    settings = ServeSettings(policy=GOLDEN / "policy.yaml", data_dir=tmp_path / "data")
    server = TestServer(make_app(runtime, settings, ticking=False), host="127.0.0.1")
    async with server, TestClient(server) as client:

        def readonly(*args: object, **kwargs: object) -> None:
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(Store, "append", readonly)
        refused = await client.post("/v1/events", data=STORY[0], headers={"Content-Type": "application/json"})
        assert refused.status == 503 and "must be writable" in (await refused.json())["error"]
        health = await client.get("/healthz")
        assert health.status == 503 and (await health.json())["status"] == "failing"
        monkeypatch.undo()
        assert (
            await client.post("/v1/events", data=STORY[0], headers={"Content-Type": "application/json"})
        ).status == 200
        assert (await (await client.get("/healthz")).json())["status"] == "ok"
    runtime.close()


def test_the_first_event_of_a_type_far_in_the_past_is_refused_live(runtime: EmbeddedRuntime) -> None:
    """A live post dated two days before the clock would start the type's windows there: refused `past`,
    with the way to post history; the same event through import (not live) is accepted."""
    old = orjson.dumps(
        {"type": "tick", "event_id": "old", "ts": format_ts(NOON - 2 * 86400), "action_type": "refund_up_to_50"}
    )
    live = runtime.ingest([old], "http(test)").results[0]
    assert (
        live.result == "rejected"
        and (live.reason or "").startswith("past:")
        and "tiergate import" in (live.reason or "")
    )
    assert runtime.ingest([old], "import(history)", live=False).results[0].result == "applied"
