"""Operators' signatures on Kafka: what counts, what is refused, and that a refusal squats no id."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from tiergate.streams.keyed import KeyedFold, Outputs, Saved
from tiergate.streams.pipeline import Input
from tiergate.streams.signing import (
    OperatorKey,
    OperatorKeyError,
    kafka_admission,
    read_trusted,
    signing_key,
    verify,
)

from .builders import Log, policy

GENESIS = OperatorKey.new("genesis")
SECOND = OperatorKey.new("second")


def entry(key: OperatorKey, actor: str = "ops") -> dict[str, str]:
    return {"key_id": key.key_id, "public_key": key.public_key(), "actor": actor}


def genesis_file(tmp_path: Path) -> Path:
    path = tmp_path / "genesis.yaml"
    path.write_text(yaml.safe_dump([entry(GENESIS)]))
    return path


def fold_key(
    fold: KeyedFold, name: str, events: list[dict[str, object]], saved: Saved | None = None
) -> tuple[Saved, Outputs]:
    """Fold `events` (already signed or not) as one key's batch on Kafka."""
    saved = saved or fold.start(name)[0]
    outputs = Outputs()
    records = [
        Input("events/0", i, orjson.dumps(e), name.encode()) for i, e in enumerate(events, start=saved.offset + 1)
    ]
    return fold.fold(name, saved, records, outputs), outputs


def activation(
    pol: object, activation_id: str, key: OperatorKey, deployment: str = "prod", **over: object
) -> dict[str, object]:
    event = next(e for e in Log().activate(0, pol, activation_id).events if e["action_type"] == "t")  # type: ignore[arg-type]
    return key.sign(event | over, deployment)


PROMOTE = {
    "type": "override",
    "event_id": "o1",
    "ts": "2026-11-02T01:00:00Z",
    "action_type": "t",
    "op": "promote",
    "actor": "ops",
    "reason": "ready",
}


def test_a_signature_covers_every_field_and_the_deployment() -> None:
    """A signed event verifies; a changed field, another deployment, an unknown key or no signature do not."""
    event = PROMOTE
    signed = GENESIS.sign(event, "prod")
    trusted = [entry(GENESIS)]
    assert verify(orjson.dumps(signed), trusted, "prod") is None
    assert "bad signature" in (verify(orjson.dumps(signed | {"op": "demote"}), trusted, "prod") or "")
    assert "not 'staging'" in (verify(orjson.dumps(signed), trusted, "staging") or "")
    assert "not trusted" in (verify(orjson.dumps(SECOND.sign(event, "prod")), trusted, "prod") or "")
    assert (verify(orjson.dumps(event), trusted, "prod") or "").startswith("unsigned")


def test_the_first_activation_needs_a_genesis_key_and_names_who_signs_the_next(tmp_path: Path) -> None:
    """Activation 1 signed by the genesis key lists `second` as its operator: activation 2 signed by the genesis
    key is then refused (rotation is an activation), signed by `second` it applies."""
    fold = KeyedFold(None, kafka_admission("prod", genesis_file(tmp_path)))
    rotated = policy()
    first = activation(rotated, "a1", GENESIS) | {}
    first["operators"] = [entry(SECOND)]
    first = GENESIS.sign(first, "prod")
    saved, out = fold_key(fold, "t", [first])
    assert [d.kind for d in out.decisions] == ["initial"] and not out.rejected
    by_genesis = activation(policy(policy_version="v2"), "a2", GENESIS, parent_sha256=rotated.sha256)
    by_second = activation(policy(policy_version="v2"), "a2", SECOND, parent_sha256=rotated.sha256)
    saved, out = fold_key(fold, "t", [by_genesis, by_second], saved)
    assert [r.reason.split(":")[0] for r in out.rejected] == [
        "key 'genesis' is not trusted by this action type's policy"
    ]
    assert [d.kind for d in out.decisions] == ["policy"]  # the second copy, signed right, was not a duplicate


def test_before_the_first_activation_the_genesis_keys_decide_and_the_reason_says_so(tmp_path: Path) -> None:
    """A type's first activation signed by a key that is not a genesis key: no policy is in force yet, so the
    reason names the genesis keys and their variable, and says when none are set."""
    stranger = activation(policy(), "a1", SECOND)
    _, out = fold_key(KeyedFold(None, kafka_admission("prod", genesis_file(tmp_path))), "t", [stranger])
    assert [r.reason for r in out.rejected] == [
        "key 'second' is not among the genesis keys (TIERGATE_KAFKA_GENESIS_KEYS), the only keys trusted before an "
        "action type's first activation: sign with one of them"
    ]
    _, out = fold_key(KeyedFold(None, kafka_admission("prod", None)), "t", [stranger])
    (reason,) = [r.reason for r in out.rejected]
    assert "none are set: set TIERGATE_KAFKA_GENESIS_KEYS" in reason and "its policy" not in reason


def test_an_unsigned_override_is_rejected_before_dedup_and_squats_no_id(tmp_path: Path) -> None:
    """An agent producing an unsigned promote with the id of the operator's real one: rejected, and the
    operator's signed override with that id still applies."""
    fold = KeyedFold(None, kafka_admission("prod", genesis_file(tmp_path)))
    saved, _ = fold_key(fold, "t", [activation(policy(operators=[entry(GENESIS)]), "a1", GENESIS)])
    saved, out = fold_key(fold, "t", [PROMOTE, GENESIS.sign(PROMOTE, "prod")], saved)
    assert out.rejected[0].reason.startswith("unsigned")
    assert [(d.kind, d.to_tier) for d in out.decisions] == [("override", 1)]


def test_an_override_on_kafka_names_the_key_that_signed_it_and_its_event(tmp_path: Path) -> None:
    """The decision of a signed override records the verified key as its principal and the override's
    event id (how `tiergate override --kafka` finds its answer); without the signature check, nobody."""
    signed = GENESIS.sign(PROMOTE, "prod")
    checked = KeyedFold(policy(), kafka_admission("prod", genesis_file(tmp_path)), signing_key)
    _, out = fold_key(checked, "t", [signed])
    assert [(d.details["principal"], d.details["event_id"]) for d in out.decisions if d.kind == "override"] == [
        ("genesis", "o1")
    ]
    _, unchecked = fold_key(KeyedFold(policy()), "t", [signed])
    assert [d.details.get("principal") for d in unchecked.decisions if d.kind == "override"] == [None]


def test_key_files_say_what_is_wrong(tmp_path: Path) -> None:
    """A key file round-trips; a file that is not one, and genesis keys in the wrong shape, name the fix."""
    path = tmp_path / "ops.key"
    GENESIS.write(path)
    assert OperatorKey.read(path).public_key() == GENESIS.public_key() and path.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other.key"
    other.write_text("hello")
    with pytest.raises(OperatorKeyError, match="tiergate keys new"):
        OperatorKey.read(other)
    shape = tmp_path / "genesis.yaml"
    shape.write_text("- just a string\n")
    with pytest.raises(OperatorKeyError, match="key_id, public_key, actor"):
        read_trusted(shape)
    shape.write_text("- key_id: ops\n  public_key: [unclosed\n")
    with pytest.raises(OperatorKeyError, match=r"genesis.yaml: the genesis keys are not YAML at line \d+; write"):
        read_trusted(shape)
    shape.write_text(yaml.safe_dump([{"key_id": "ops", "public_key": "not-a-key", "actor": "ops"}]))
    with pytest.raises(OperatorKeyError, match=r"entry 0 \('ops'\): public_key is not an Ed25519 public key"):
        read_trusted(shape)
    with pytest.raises(OperatorKeyError, match=r"nothere.yaml: cannot read the genesis keys \(No such file"):
        read_trusted(tmp_path / "nothere.yaml")


def test_a_kafka_apply_is_refused_before_writing_when_its_key_is_not_trusted() -> None:
    """`policy apply --kafka` checks the signing key against the policy in force (the genesis keys before
    any activation) and says which keys would do; a trusted key passes."""
    from tiergate.streams.kafka_policy import Activation, refusals

    golden = policy()
    first = refusals([], golden, "evil", ["ops"])
    assert first == [
        "key 'evil' is not among the deployment's genesis keys (TIERGATE_KAFKA_GENESIS_KEYS): sign with a key it lists"
    ]
    assert refusals([], golden, "ops", ["ops"]) == []
    document = golden.normalised | {"operators": [{"key_id": "ops", "public_key": "…", "actor": "ops@example.com"}]}
    record = {"policy_version": golden.version, "policy_sha256": golden.sha256}
    applied = [Activation("a1", document, record)]
    later = refusals(applied, golden, "evil", ["ops"])
    assert later == [f"key 'evil' is not among the policy in force ({golden.version}): sign with a key it lists"]
    assert refusals(applied, golden, "ops", ["someone-else"]) == []
    assert refusals(applied, golden, "ops", None) == []  # no type's first activation: the genesis keys are not asked


def test_a_kafka_apply_of_a_first_activation_needs_the_genesis_keys_to_check_it_against() -> None:
    """Without TIERGATE_KAFKA_GENESIS_KEYS in the operator's shell, a first activation (of the deployment, or
    of a type a later policy adds) is refused naming the variable, rather than produced unchecked; a type
    added later must be signed by a genesis key too, as the workers check it."""
    from tiergate.streams.kafka_policy import Activation, refusals

    golden = policy()
    (first,) = refusals([], golden, "ops", None)
    assert first.startswith("TIERGATE_KAFKA_GENESIS_KEYS is not set here, and the workers check a type's first")
    document = golden.normalised | {"operators": [{"key_id": "ops", "public_key": "…", "actor": "ops@example.com"}]}
    applied = [Activation("a1", document, {"policy_version": golden.version, "policy_sha256": golden.sha256})]
    wider = policy(action_types={"new_type": {}})
    (added,) = refusals(applied, wider, "ops", None)
    assert "the workers check the first activation of new_type against the genesis keys" in added
    assert refusals(applied, wider, "ops", ["genesis"]) == [
        "key 'ops' is not among the deployment's genesis keys (TIERGATE_KAFKA_GENESIS_KEYS), which the workers "
        "check the first activation of new_type against: sign with a key it lists"
    ]
    assert refusals(applied, wider, "ops", ["ops"]) == []


def test_an_empty_genesis_keys_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`TIERGATE_KAFKA_GENESIS_KEYS=` (say, blanked in a compose file) means none, not the current directory."""
    from tiergate.streams.kafka import KafkaSettings

    monkeypatch.setenv("TIERGATE_KAFKA_GENESIS_KEYS", "")
    assert KafkaSettings().genesis_keys is None
    monkeypatch.setenv("TIERGATE_KAFKA_GENESIS_KEYS", "genesis.yaml")
    assert KafkaSettings().genesis_keys == Path("genesis.yaml")
