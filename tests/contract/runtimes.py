"""Each runtime behind one small interface, so that one contract suite can run against all of them.

A runtime takes a log (raw lines, with the message key a keyed transport would carry) and returns what it
decided, per key, and the rejected input it kept. `restart_at` asks it to stop after that many inputs,
save its state the way it would across a restart, and fold the rest from what it saved.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from tiergate.models.decisions import Decision
from tiergate.models.policy import Policy
from tiergate.models.state import State
from tiergate.models.wire import TS_MAX, parse_ts
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.keyed import KeyedFold, Outputs, Saved
from tiergate.streams.pipeline import Input, Rejected
from tiergate.streams.replay import replay_inputs

Record = tuple[bytes | None, bytes]  # (message key, raw event)


@dataclass
class Outcome:
    """What a runtime made of a log: decisions per key (canonical JSON, in order) and rejected input."""

    decisions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)  # (result, reason, raw)

    def decided(self, decision: Decision) -> None:
        self.decisions[decision.action_type].append(decision.to_json())

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append((rejected.result, rejected.reason, rejected.raw))


class Runtime(Protocol):
    keyed: ClassVar[bool]  # does its transport carry a message key (and so check it)?
    lazy: ClassVar[bool]  # does it publish a key's `initial` decision only when the key first appears?

    def run(
        self, records: list[Record], policy: Policy | None, tmp: Path, restart_at: int | None = None
    ) -> Outcome: ...


def inputs(records: list[Record], source: str, start: int = 0) -> Iterator[Input]:
    for position, (key, raw) in enumerate(records, start):
        yield Input(source, position, raw, key)


class Replay:
    """`tiergate replay`: the reference fold; a restart saves the state to JSON and folds on from it."""

    keyed = False
    lazy = False

    def run(self, records: list[Record], policy: Policy | None, tmp: Path, restart_at: int | None = None) -> Outcome:
        out = Outcome()
        cut = len(records) if restart_at is None else restart_at
        head = replay_inputs(inputs(records[:cut], "log"), policy, out.decided, out.reject)
        if cut < len(records):
            saved = State.from_dict(json.loads(json.dumps(head.state.to_dict())))
            replay_inputs(inputs(records[cut:], "log", cut), policy, out.decided, out.reject, state=saved)
        return out


class Embedded:
    """The embedded runtime on a manual clock, no ticker, batches of 7 through `ingest` (the live path:
    its clock checks apply, with the clock at the log's latest time); a restart closes the store and
    opens it again."""

    keyed = False
    lazy = False
    batch = 7

    def run(self, records: list[Record], policy: Policy | None, tmp: Path, restart_at: int | None = None) -> Outcome:
        clock = ManualClock(_latest(records))
        data = tmp / "embedded"
        runtime = EmbeddedRuntime(policy, data, clock, max_skew=0, max_past=TS_MAX)
        cut = len(records) if restart_at is None else restart_at
        try:
            for start in range(0, cut, self.batch):
                runtime.ingest([raw for _, raw in records[start : min(start + self.batch, cut)]], "http(test)")
            if cut < len(records):
                runtime.close()
                runtime = EmbeddedRuntime(policy, data, clock, max_skew=0, max_past=TS_MAX)
                for start in range(cut, len(records), self.batch):
                    runtime.ingest([raw for _, raw in records[start : start + self.batch]], "http(test)")
            out = Outcome()
            for line in runtime.store.all_decisions():
                out.decisions[json.loads(line)["action_type"]].append(line)
            for row in reversed(runtime.store.rejected(limit=1_000_000)):
                out.rejected.append((row["result"], row["reason"], row["event"].encode()))
            return out
        finally:
            runtime.close()


class WorkerFold:
    """The Kafka worker's per-key batch fold into an in-memory sink, without Kafka: batches of 5 records,
    grouped by message key as the worker groups them, each key's saved state round-tripped through its
    table format after every batch (as if another worker took the partition over each time). A restart
    re-delivers the 10 records before `restart_at` too, as a worker whose offset commit lagged its table
    write would: the stored offsets must skip them."""

    keyed = True
    lazy = True
    batch = 5

    def run(self, records: list[Record], policy: Policy | None, tmp: Path, restart_at: int | None = None) -> Outcome:
        fold, out = KeyedFold(policy), Outcome()
        table: dict[bytes, dict[str, object]] = {}
        numbered = list(inputs(records, "events/0"))
        if restart_at is not None:
            numbered = numbered[:restart_at] + numbered[max(0, restart_at - 10) :]
        for start in range(0, len(numbered), self.batch):
            by_key: dict[bytes, list[Input]] = defaultdict(list)
            for record in numbered[start : start + self.batch]:
                by_key[record.key or b""].append(record)
            for key, batch in by_key.items():
                self._fold(fold, table, key, batch, out)
        return out

    @staticmethod
    def _fold(
        fold: KeyedFold, table: dict[bytes, dict[str, object]], key: bytes, batch: list[Input], out: Outcome
    ) -> None:
        name = key.decode("utf-8", errors="replace")
        if key in table:
            saved = Saved.from_dict(json.loads(json.dumps(table[key])))
        else:
            saved, started = fold.start(name)
            for decision in started:
                out.decided(decision)
        outputs = Outputs()
        saved = fold.fold(name, saved, batch, outputs)
        for decision in outputs.decisions:
            out.decided(decision)
        for rejected in outputs.rejected:
            out.reject(rejected)
        table[key] = saved.to_dict()


def _latest(records: list[Record]) -> int:
    latest = 0
    for _, raw in records:
        try:
            latest = max(latest, parse_ts(json.loads(raw)["ts"]))
        except (ValueError, KeyError, TypeError):
            continue
    return latest


class Kafka:
    """The worker on the real broker: the log produced to a fresh deployment's input topic, one worker with
    its clock ticks off (the log is history), outputs read back from the decisions and rejected-input
    topics once the worker has committed every input offset. Operator events (activations, overrides) are
    signed with the golden operator key, which the worker trusts as a genesis key, as an operator's CLI
    would sign them; the rejected input is compared as it was before signing. A restart is a SIGKILL of the
    worker after the first part was folded, and a new worker for the rest."""

    keyed = True
    lazy = True

    def run(self, records: list[Record], policy: Policy | None, tmp: Path, restart_at: int | None = None) -> Outcome:
        from tests.kafka_harness import Deployment

        env = {"TIERGATE_WORKER_TICKS": "false", "TIERGATE_KAFKA_GENESIS_KEYS": str(GOLDEN / "genesis.yaml")}
        deployment = Deployment(tmp, worker_env=env, policy=None)
        deployment.create_topics()
        signed, unsigned = _signed(records)
        cut = len(records) if restart_at is None else restart_at
        try:
            deployment.produce([raw for _, raw in signed[:cut]], [key or b"" for key, _ in signed[:cut]])
            worker = deployment.start_worker()
            deployment.wait_drained()
            if cut < len(records):
                deployment.kill(worker)
                deployment.produce([raw for _, raw in signed[cut:]], [key or b"" for key, _ in signed[cut:]])
                deployment.start_worker()
                deployment.wait_drained()
            out = deployment.outcome(Outcome())
            out.rejected = [(result, reason, unsigned.get(raw, raw)) for result, reason, raw in out.rejected]
            return _signed_by_golden_key(out)
        finally:
            deployment.stop_all()


GOLDEN = Path(__file__).parent.parent / "golden"


def _signed_by_golden_key(out: Outcome) -> Outcome:
    """The decisions as an unsigned log makes them: each override's decision names the key that signed it
    as its principal (checked here to be the golden key), which a log with no transport cannot know."""
    from tiergate.models.policy import canonical_json

    for name, lines in out.decisions.items():
        records = [json.loads(line) for line in lines]
        for record in records:
            if record["kind"] == "override":
                assert record.pop("principal") == "golden-ops", record
        out.decisions[name] = [canonical_json(record) for record in records]
    return out


def _signed(records: list[Record]) -> tuple[list[Record], dict[bytes, bytes]]:
    """The log with its operator events signed by the golden operator key, and signed bytes -> as given."""
    from tiergate.streams.signing import OperatorKey

    key = OperatorKey.read(GOLDEN / "operator.key")
    out: list[Record] = []
    unsigned: dict[bytes, bytes] = {}
    for message_key, raw in records:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("type") in ("policy", "override"):
            signed = json.dumps(key.sign(event, "tiergate"), separators=(",", ":")).encode()
            unsigned[signed] = raw
            raw = signed
        out.append((message_key, raw))
    return out, unsigned
