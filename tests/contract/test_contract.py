"""One contract, every runtime: replay, the embedded server, the worker's batch fold and the worker on a
real broker decide the same thing from the same log, and keep the same rejected input with the same
reasons. Each runtime subclasses `Contract`; the golden scenarios' reviewed logs are the reference.

Logs from different runtimes are compared per key, and within a key byte for byte (the worker publishes
a key's `initial` decision when the key first appears, so it has nothing for a key with no events).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from ..golden.scenarios import OLD_LOGS, SCENARIOS
from .runtimes import Embedded, Kafka, Outcome, Record, Replay, Runtime, WorkerFold

GOLDEN = Path(__file__).parent.parent / "golden"
POLICY = None  # every scenario's log carries its policy: it starts with an activation


def keyed(lines: list[bytes]) -> list[Record]:
    """Each line with the key a producer would give it: its action type."""
    out: list[Record] = []
    for raw in lines:
        try:
            key = str(orjson.loads(raw)["action_type"]).encode()
        except (orjson.JSONDecodeError, KeyError, TypeError):
            key = b"unknown"
        out.append((key, raw))
    return out


def scenario(name: str) -> list[Record]:
    return keyed((GOLDEN / name / "events.jsonl").read_bytes().splitlines())


def expected(name: str) -> Outcome:
    """The reviewed decision log and rejected input of a golden scenario."""
    out = Outcome()
    for line in (GOLDEN / name / "expected.jsonl").read_text().splitlines():
        out.decisions[orjson.loads(line)["action_type"]].append(line)
    for line in (GOLDEN / name / "expected.rejected.jsonl").read_bytes().splitlines():
        record = orjson.loads(line)
        out.rejected.append((record["result"], record["reason"], record["event"].encode()))
    return out


def assert_same(got: Outcome, want: Outcome, lazy: bool) -> None:
    """Per key, byte for byte; rejected input as (result, reason, bytes), in any order across keys."""
    for name in sorted(set(want.decisions) | set(got.decisions)):
        wanted = want.decisions.get(name, [])
        if lazy and name not in got.decisions and len(wanted) == 1 and '"kind":"initial"' in wanted[0]:
            continue  # a key with no events: published lazily, so nothing yet
        assert got.decisions.get(name, []) == wanted, f"decisions of {name} differ"
    assert sorted(got.rejected) == sorted(want.rejected)


class Contract:
    """What every runtime must do. Subclasses name the runtime."""

    runtime: ClassVar[Runtime]

    @pytest.mark.parametrize("name", sorted(set(SCENARIOS) - OLD_LOGS))
    def test_a_golden_scenario_gives_its_reviewed_decisions_and_rejected_input(self, name: str, tmp_path: Path) -> None:
        """Every golden scenario decides, per key and byte for byte, what its reviewed log says."""
        assert_same(self.runtime.run(scenario(name), POLICY, tmp_path), expected(name), self.runtime.lazy)

    def test_redelivering_every_event_changes_nothing(self, tmp_path: Path) -> None:
        """At-least-once delivery: the whole log delivered again after itself decides nothing more, and
        every second copy is a duplicate (not rejected input)."""
        records = scenario("cap_and_pin")
        assert_same(self.runtime.run(records + records, POLICY, tmp_path), expected("cap_and_pin"), self.runtime.lazy)

    @pytest.mark.parametrize("cut", [1, 150, 400])
    def test_a_restart_mid_log_folds_on_from_what_was_saved(self, cut: int, tmp_path: Path) -> None:
        """Stopped after `cut` inputs, its state saved as it saves it and restored, the runtime decides
        exactly what an uninterrupted run decides."""
        assert_same(
            self.runtime.run(scenario("cap_and_pin"), POLICY, tmp_path, restart_at=cut),
            expected("cap_and_pin"),
            self.runtime.lazy,
        )

    @pytest.mark.parametrize("cut", [128, 160, 183])
    def test_a_restart_between_activations_folds_on_under_the_policy_in_force(self, cut: int, tmp_path: Path) -> None:
        """Stopped in the middle of an activation's events, after one, or just before a retirement, the
        runtime restored from what it saved keeps each type's policy and decides what an uninterrupted run
        decides (no policy file: the log carries them all)."""
        assert_same(
            self.runtime.run(scenario("policy_changes"), POLICY, tmp_path, restart_at=cut),
            expected("policy_changes"),
            self.runtime.lazy,
        )

    def test_bad_input_is_rejected_with_its_reason_and_the_log_goes_on(self, tmp_path: Path) -> None:
        """Malformed JSON, a schema violation and an unknown action type are rejected input with the
        reasons the codec and the fold give, and change no decision of the scenario around them."""
        records = scenario("clean_climb")
        bad = keyed(
            [
                b'{"type":"action"',
                b'{"type":"tick","event_id":"x1","ts":"2026-11-02T00:10:00","action_type":"reply_to_ticket"}',
                b'{"type":"tick","event_id":"x2","ts":"2026-11-02T00:10:00Z","action_type":"nope"}',
            ]
        )
        got = self.runtime.run(records[:5] + bad + records[5:], POLICY, tmp_path)
        want = expected("clean_climb")
        want.rejected += [
            (
                "rejected",
                "malformed JSON: unexpected end of data: line 1 column 17 (char 16): the event is cut short; "
                "send the whole object",
                bad[0][1],
            ),
            ("rejected", "ts: '2026-11-02T00:10:00' has no UTC offset; add one, e.g. Z or +02:00", bad[1][1]),
            (
                "rejected",
                "unknown action_type 'nope': add it to the policy's action_types or fix the producer",
                bad[2][1],
            ),
        ]
        assert_same(got, want, self.runtime.lazy)

    def test_a_message_under_another_key_is_rejected_not_folded(self, tmp_path: Path) -> None:
        """A keyed log holds each event under its own action type; one filed under another key would be
        folded out of its key's order, so it is rejected with the fix, and nothing else changes."""
        if not self.runtime.keyed:
            pytest.skip("this runtime's input carries no message key")
        records = scenario("clean_climb")
        stray = (b"refund_up_to_50", records[3][1])
        got = self.runtime.run([*records[:3], stray, *records[3:]], POLICY, tmp_path)
        want = expected("clean_climb")
        fix = "produce with key = action_type"
        reason = f"message key 'refund_up_to_50' is not the action_type 'reply_to_ticket': {fix}"
        want.rejected.append(("rejected", reason, stray[1]))
        assert_same(got, want, self.runtime.lazy)


class TestReplay(Contract):
    runtime = Replay()


class TestEmbedded(Contract):
    runtime = Embedded()


class TestWorkerFold(Contract):
    runtime = WorkerFold()


@pytest.mark.kafka
class TestKafkaWorker(Contract):
    runtime = Kafka()

    @pytest.fixture(autouse=True)
    def _broker(self, kafka_broker: None) -> None:
        """The real broker runs for every test of this class."""
