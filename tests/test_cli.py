"""The command line as a user runs it: its output channels, its settings, and what it says when the user
gets something wrong (one line, a non-zero exit, no traceback)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from tiergate.streams.cli import main, parser
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.explain import decisions_for, explain
from tiergate.streams.policy_file import PolicyFileError, read_policy
from tiergate.streams.settings import ServeSettings, SettingsError

ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = GOLDEN / "clean_climb" / "events.jsonl"  # a log that carries its policy (it begins with an activation)
EXPECTED = GOLDEN / "clean_climb" / "expected.jsonl"
OLD_CLIMB = GOLDEN / "old_log" / "events.jsonl"  # the same story from before policies lived in the log
OLD_EXPECTED = GOLDEN / "old_log" / "expected.jsonl"


def tiergate(
    *argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `tiergate ARGV` in a subprocess, as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", *argv],
        capture_output=True,
        input=None if stdin is None else stdin.decode(),
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def refused(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """A user error: exit `code`, nothing on stdout, one clear message on stderr naming each fragment."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


# -- output channels ---------------------------------------------------------------------------------------


def test_replay_runs_as_a_console_script_and_writes_the_tier_map(tmp_path: Path) -> None:
    """`tiergate replay` (a real subprocess) writes the decision log to stdout and the final tier map."""
    tiers = tmp_path / "tiers.jsonl"
    done = tiergate("replay", str(CLIMB), "--tiers", str(tiers))
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXPECTED.read_text()
    records = {r["action_type"]: r for r in map(json.loads, tiers.read_text().splitlines())}
    assert (records["reply_to_ticket"]["tier"], records["reply_to_ticket"]["version"]) == ("run", 2)
    assert records["lookup_order"]["tier"] == "run" and records["refund_over_50"]["since"] is None
    assert "285 applied" in done.stderr


def test_replay_reads_stdin_and_takes_its_policy_from_the_environment() -> None:
    """`tiergate replay -` folds what is piped in, under TIERGATE_POLICY when --policy is not given."""
    done = tiergate("replay", "-", env={"TIERGATE_POLICY": str(POLICY)}, stdin=OLD_CLIMB.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout == OLD_EXPECTED.read_text()
    assert "replayed stdin: 281 applied" in done.stderr


def test_set_aside_events_are_printed_and_kept_only_where_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed line and an unknown type are printed with their line; no file appears beside the input
    unless --rejects names one, which then holds both with their reasons; the rest folds."""
    events = tmp_path / "events.jsonl"
    good = OLD_CLIMB.read_text().splitlines()
    bad = ['{"type":"action"', '{"type":"tick","event_id":"x","ts":"2026-11-02T00:00:00Z","action_type":"nope"}']
    events.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", str(events), "--policy", str(POLICY), "-o", str(out)]) == 0
    assert out.read_bytes() == OLD_EXPECTED.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.jsonl", "events.jsonl"]
    err = capsys.readouterr().err
    assert "events.jsonl:4: rejected: malformed JSON" in err and "unknown action_type 'nope'" in err
    assert "2 events did not count (rejected or late); give --rejects FILE to keep them all" in err
    rejects = tmp_path / "kept" / "rejects.jsonl"
    rejects.parent.mkdir()
    assert main(["replay", str(events), "--policy", str(POLICY), "-o", str(out), "--rejects", str(rejects)]) == 0
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(k["origin"], k["result"], k["event"]) for k in kept] == [
        ("events.jsonl:4", "rejected", bad[0]),
        ("events.jsonl:5", "rejected", bad[1]),
    ]


def test_policy_is_refused_for_a_log_that_carries_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--policy is for old logs: on a log where every type begins with an activation it is an error, and no
    half-written decision log is left behind."""
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", str(CLIMB), "--policy", str(POLICY), "-o", str(out)]) == 2
    assert "carries its own policy" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_bad_policy_stops_replay_with_the_loaders_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A policy error exits non-zero and prints file:line: field: problem."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text().replace("lookback: 1d", "lookback: 90m"))
    assert main(["replay", str(OLD_CLIMB), "--policy", str(policy)]) == 2
    assert "policy.yaml:6: lookback: 1h30m is not a whole number of windows" in capsys.readouterr().err


def test_check_policy_prints_data_on_stdout_and_the_verdict_on_stderr() -> None:
    """stdout is the normalised policy and nothing else (it parses as JSON); the sha every decision will
    carry is on stderr; --json gives one object with the policy, its version and its sha."""
    sha = json.loads(EXPECTED.read_text().splitlines()[0])["policy_sha256"]
    plain = tiergate("check-policy", str(POLICY))
    assert plain.returncode == 0
    assert json.loads(plain.stdout)["policy_version"] == "golden-1"
    assert f"valid; policy_version golden-1, 4 action types, sha256 {sha}" in plain.stderr
    as_json = json.loads(tiergate("check-policy", str(POLICY), "--json").stdout)
    assert (as_json["policy_version"], as_json["policy_sha256"]) == ("golden-1", sha)
    assert as_json["policy"] == json.loads(plain.stdout)


def test_version_and_every_commands_help_ends_with_examples() -> None:
    """`tiergate --version` names the version; each command's --help shows worked examples."""
    done = tiergate("--version")
    assert done.returncode == 0 and done.stdout.startswith("tiergate ")
    choices = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(choices) >= 10
    for name, command in choices.items():
        assert "examples:\n  tiergate " in command.format_help(), name


def test_the_progress_bar_never_mixes_into_the_decision_log_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """With the bar forced on, stdout still holds nothing but canonical decision lines."""
    assert main(["replay", str(CLIMB), "--progress"]) == 0
    assert capsys.readouterr().out == EXPECTED.read_text()


def test_replay_writes_through_to_a_device_path_and_leaves_it_a_device() -> None:
    """`-o /dev/null` must not replace the device with a file (the temp-and-rename is for regular files)."""
    argv = ["replay", str(CLIMB), "-o", "/dev/null", "--rejects", "/dev/null"]
    assert main(argv) == 0
    assert Path("/dev/null").is_char_device()


def with_reader_gone(*argv: str) -> subprocess.CompletedProcess[str]:
    """`tiergate ARGV | head -1` without the race: stdout is a pipe whose reader has already left, so the
    command's first write (or its flush) finds it closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        command = [sys.executable, "-m", "tiergate.streams.cli", *argv]
        return subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


def test_a_command_whose_reader_left_stops_quietly(tmp_path: Path) -> None:
    """`tiergate export | head -1`, `tiergate replay … | head -1`: the command stops as one killed by
    SIGPIPE would (status 141), without a BrokenPipeError traceback or a complaint from the flush at exit."""
    data = tmp_path / "data"
    assert tiergate("import", str(CLIMB), "--data-dir", str(data)).returncode == 0
    for argv in (["export", "--data-dir", str(data)], ["replay", str(CLIMB)]):
        done = with_reader_gone(*argv)
        assert (done.returncode, done.stderr) == (141, ""), argv


# -- explain ---------------------------------------------------------------------------------------------


def test_explain_shows_the_tier_since_and_evidence(capsys: pytest.CaptureFixture[str]) -> None:
    """explain names the tier, when it began, why, and the figures of the decision behind it."""
    assert main(["explain", "reply_to_ticket", "--log", str(EXPECTED)]) == 0
    out = capsys.readouterr().out
    assert "reply_to_ticket is at run since 2026-11-02T09:00:00Z" in out
    assert "why: promoted at 2026-11-02T09:00:00Z: every promote bar passed for the hold time" in out
    assert "customer_success_rate" in out and "0.9630" in out
    assert main(["explain", "no_such_type", "--log", str(EXPECTED)]) == 1
    assert "no decision about 'no_such_type'" in capsys.readouterr().err


def test_explain_shows_the_rule_that_moved_a_type_and_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """A tripwire demotion is explained as one, with the run against the tripwire; a promotion under the
    sound rules shows each bar's log e-value against ln(1/alpha) and its n since the test began."""
    tripped = GOLDEN / "tripwire_in_a_window" / "expected.jsonl"
    assert main(["explain", "reply_to_ticket", "--log", str(tripped)]) == 0
    out = capsys.readouterr().out
    assert "why: demoted at 2026-11-02T05:30:00Z: its tripwire fired (failures in a row on a kept metric)" in out
    assert main(["explain", "reply_to_ticket", "--log", str(tripped), "--json"]) == 0
    (bar,) = json.loads(capsys.readouterr().out)["set_by"]["evidence"]
    assert (bar["test"]["rule"], bar["test"]["statistic"], bar["test"]["threshold"]) == ("tripwire", 6, 6)
    table = io.StringIO()
    explain(
        decisions_for(tripped.read_bytes().splitlines(), "reply_to_ticket"),
        "reply_to_ticket",
        Console(file=table, width=250),
    )
    row = next(line for line in table.getvalue().splitlines() if line.startswith("│ completion_rate"))
    assert [cell.strip() for cell in row.split("│")[-5:-1]] == ["tripwire", "6", "6", "20"]
    kept = GOLDEN / "healthy_low_volume" / "expected.jsonl"
    assert main(["explain", "refund_up_to_50", "--log", str(kept), "--json"]) == 0
    (bar,) = json.loads(capsys.readouterr().out)["set_by"]["evidence"]
    assert bar["test"]["rule"] == "mixture" and bar["test"]["statistic"] >= bar["test"]["threshold"]


def decision_log(tmp_path: Path, *events: dict[str, object]) -> Path:
    """The decision log replay writes for the golden policy and `events`."""
    source, log = tmp_path / "events.jsonl", tmp_path / "decisions.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    assert main(["replay", str(source), "--policy", str(POLICY), "-o", str(log)]) == 0
    return log


def override(op: str, tier: str | None, reason: str, actor: str = "ops@example.com") -> dict[str, object]:
    event = {
        "type": "override",
        "event_id": f"o-{op}",
        "ts": "2026-11-02T01:00:00Z",
        "action_type": "refund_up_to_50",
        "op": op,
        "actor": actor,
        "reason": reason,
    }
    return event if tier is None else {**event, "tier": tier}


def test_explain_without_a_source_asks_for_one_unless_tiergate_server_is_set() -> None:
    """With neither --log nor --server, explain reads TIERGATE_SERVER (here: a server that is not running,
    so it says it cannot reach it); without that either, it asks for a source, exit 2."""
    nothing = tiergate("explain", "reply_to_ticket", env={"TIERGATE_SERVER": ""})
    refused(nothing, 2, "give --log DECISIONS.jsonl or --server URL (or set TIERGATE_SERVER)")
    url = "http://127.0.0.1:9"  # discard: nothing serves tiergate there
    refused(tiergate("explain", "reply_to_ticket", env={"TIERGATE_SERVER": url}), 2, f"cannot reach {url}")


def test_explain_says_an_operators_cap_holds_a_type_at_crawl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A type capped at Crawl is not explained as "every action type starts at crawl": the cap, its actor
    and reason come first; after an uncap the start is the reason again; a cap at Walk does not hold a
    type at Crawl (it has not earned Walk yet)."""
    log = decision_log(tmp_path, override("cap", "crawl", "finance review pending"))
    assert main(["explain", "refund_up_to_50", "--log", str(log), "--json"]) == 0
    told = json.loads(capsys.readouterr().out)
    assert told["tier"] == "crawl"
    assert told["why"] == "held at crawl by an operator's cap: no promotion above it until an uncap"
    assert [(h["op"], h["actor"], h["reason"]) for h in told["held_by"]] == [
        ("cap", "ops@example.com", "finance review pending")
    ]
    assert main(["explain", "refund_up_to_50", "--log", str(log)]) == 0
    assert "cap by ops@example.com at 2026-11-02T01:00:00Z" in capsys.readouterr().out
    lifted = decision_log(tmp_path, override("cap", "crawl", "pending"), override("uncap", None, "done"))
    assert main(["explain", "refund_up_to_50", "--log", str(lifted), "--json"]) == 0
    told = json.loads(capsys.readouterr().out)
    assert (told["held_by"], told["why"]) == ([], "every action type starts at crawl")
    above = decision_log(tmp_path, override("cap", "walk", "no run yet"))
    assert main(["explain", "refund_up_to_50", "--log", str(above), "--json"]) == 0
    told = json.loads(capsys.readouterr().out)
    assert told["why"] == "every action type starts at crawl" and told["held_by"][0]["tier"] == "walk"


def test_explain_shows_what_operators_wrote_as_inert_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Markup and escape sequences in an override's reason and actor reach the terminal as visible text."""
    log = decision_log(tmp_path, override("cap", "crawl", "[bold red]urgent[/] \x1b[2J\x07", actor="ops\x1b]0;x\x07"))
    assert main(["explain", "refund_up_to_50", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "[bold red]urgent[/] \\x1b[2J\\x07" in out and "ops\\x1b]0;x\\x07" in out


# -- settings ----------------------------------------------------------------------------------------------


def test_settings_mistakes_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value names the variable, flag or file key it came from; a missing config file, a key that is
    no setting and an empty token are errors, never ignored."""
    monkeypatch.setenv("TIERGATE_PORT", "abc")
    with pytest.raises(SettingsError, match=r"^TIERGATE_PORT: Input should be a valid integer.*'abc'"):
        ServeSettings.load(None, policy=POLICY)
    monkeypatch.delenv("TIERGATE_PORT")
    with pytest.raises(SettingsError, match=r"^--port: Input should be less than or equal to 65535"):
        ServeSettings.load(None, policy=POLICY, port=70000)
    config = tmp_path / "tiergate.toml"
    config.write_text('max_skew = "soon"\n')
    with pytest.raises(SettingsError, match=r"tiergate.toml: max_skew: Input should be a valid integer"):
        ServeSettings.load(config, policy=POLICY)
    with pytest.raises(SettingsError, match=r"nothere.toml: no such settings file"):
        ServeSettings.load(tmp_path / "nothere.toml", policy=POLICY)
    config.write_text("port = 9000\nprot = 9001\n")
    with pytest.raises(SettingsError, match=r"tiergate.toml: unknown setting 'prot'; the settings are: "):
        ServeSettings.load(config, policy=POLICY)
    with pytest.raises(SettingsError, match=r"^--token: the token is empty") as refused_token:
        ServeSettings.load(None, policy=POLICY, token="  ", host="0.0.0.0")
    assert "got" not in str(refused_token.value)  # a secret is never echoed


def test_duplicate_keys_in_a_policy_are_an_error_naming_both_lines(tmp_path: Path) -> None:
    """YAML would keep the last of two equal keys; the policy loader refuses and names both lines."""
    policy = tmp_path / "policy.yaml"
    text = POLICY.read_text().replace("lookback: 1d\n", "lookback: 1d\nlookback: 2d\n")
    policy.write_text(text)
    line = text.splitlines().index("lookback: 2d") + 1
    with pytest.raises(
        PolicyFileError, match=rf"policy.yaml:{line}: lookback: given twice \(lines {line - 1} and {line}\)"
    ):
        read_policy(policy)
    nested = POLICY.read_text().replace("  reply_to_ticket: {}", "  reply_to_ticket: {max_tier: walk, max_tier: run}")
    policy.write_text(nested)
    with pytest.raises(PolicyFileError, match=r"action_types.reply_to_ticket.max_tier: given twice"):
        read_policy(policy)


def test_export_and_import_take_the_data_dir_from_the_environment(tmp_path: Path) -> None:
    """TIERGATE_DATA_DIR and TIERGATE_POLICY stand in for --data-dir and --policy in import and export."""
    env = {"TIERGATE_DATA_DIR": str(tmp_path / "data"), "TIERGATE_POLICY": str(POLICY)}
    done = tiergate("import", str(OLD_CLIMB), "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 281
    assert (tmp_path / "data" / "tiergate.db").is_file() and not (tmp_path / "tiergate-data").exists()
    decisions = tmp_path / "decisions.jsonl"
    exported = tiergate("export", "--decisions", str(decisions), env=env, cwd=tmp_path)
    assert exported.returncode == 0 and exported.stdout.endswith(OLD_CLIMB.read_text())
    assert exported.stdout.startswith('{"type":"policy","event_id":"policy/')  # the policy came first
    replayed = tiergate("replay", "-", stdin=exported.stdout.encode())  # the export carries its policy
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == decisions.read_text()


# -- user errors: one line, no traceback ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "fragments"),
    [
        (["explain", "x", "--log", "nothere.jsonl"], {}, ["nothere.jsonl: no such file; give a decision log"]),
        (["plot", "nothere.jsonl", "--policy", str(POLICY)], {}, ["nothere.jsonl: no such file"]),
        (["replay", "nothere.jsonl", "--policy", str(POLICY)], {}, ["nothere.jsonl: no such file"]),
        (["replay", str(OLD_CLIMB)], {}, ["has no policy activation", "replay it with --policy POLICY.yaml"]),
        (["export", "--data-dir", "nothere"], {}, ["nothere/tiergate.db: no store here"]),
        (["serve", "--policy", str(POLICY)], {"TIERGATE_PORT": "abc"}, ["TIERGATE_PORT: Input should be"]),
        (["serve", "--policy", str(POLICY), "--config", "nothere.toml"], {}, ["nothere.toml: no such settings"]),
        (["serve", "--policy", str(POLICY), "--host", "0.0.0.0", "--token", ""], {}, ["--token: the token is empty"]),
        (["serve", "--policy", str(POLICY), "--host", "0.0.0.0"], {}, ["not loopback and no credentials are set"]),
        (["serve", "--policy", "nothere.yaml"], {}, ["invalid policy", "nothere.yaml: cannot read the policy"]),
        (
            ["policy", "history", "--server", "localhost:18710"],  # a server URL without its scheme, anywhere
            {},
            ["--server: no scheme: add http:// (e.g. http://localhost:18710)"],
        ),
        (
            ["explain", "x", "--server", "localhost:1"],
            {},
            ["--server: no scheme: add http:// (e.g. http://localhost:1)"],
        ),
        (
            ["override", "demote", "x", "--actor", "a", "--reason", "r"],
            {"TIERGATE_SERVER": "localhost:18710"},
            ["TIERGATE_SERVER: no scheme: add http:// (e.g. http://localhost:18710)"],
        ),
        (
            ["explain", "x", "--server", "http:/localhost:1"],
            {},
            ["--server: a mistyped scheme: write it http:// or https://"],
        ),
        (
            ["checkpoint", "x", "--through", "2026-11-02T10:00:00Z"],
            {"TIERGATE_SERVER": "ftp://example.com"},
            ["TIERGATE_SERVER: a tiergate server speaks http:// or https://"],
        ),
        (
            ["topics", "describe", "--bootstrap", "127.0.0.1:1"],  # the packaged definition, from any directory
            {},
            ["cannot reach the Kafka broker at 127.0.0.1:1", "deploy/kafka/broker.sh start"],
        ),
        (
            ["replay", "--from-kafka", "--policy", str(POLICY)],
            {"TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
            ["cannot reach the Kafka broker at 127.0.0.1:1"],
        ),
        (  # genesis keys that cannot be used: named before the broker is asked anything
            ["worker"],
            {"TIERGATE_KAFKA_GENESIS_KEYS": "nothere.yaml", "TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
            ["TIERGATE_KAFKA_GENESIS_KEYS: nothere.yaml: cannot read the genesis keys (No such file or directory)"],
        ),
        (
            ["replay", "--from-kafka"],
            {"TIERGATE_KAFKA_GENESIS_KEYS": str(GOLDEN / "operator.key"), "TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
            ["TIERGATE_KAFKA_GENESIS_KEYS: ", "operator.key: genesis keys are a list of {key_id, public_key, actor}"],
        ),
        (
            [
                "policy",
                "apply",
                str(POLICY),
                "--kafka",
                "--key",
                str(GOLDEN / "operator.key"),
                "--actor",
                "a",
                "--reason",
                "r",
            ],
            {"TIERGATE_KAFKA_GENESIS_KEYS": "nothere.yaml", "TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
            ["TIERGATE_KAFKA_GENESIS_KEYS: nothere.yaml: cannot read the genesis keys"],
        ),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    """Each mistake gets exit 2 and a message that names it and the fix, never a traceback."""
    refused(tiergate(*argv, env=env, cwd=tmp_path), 2, "error", *fragments)


def test_import_of_a_missing_file_leaves_no_empty_store_behind(tmp_path: Path) -> None:
    """A typo in the file name is an error before the data dir is touched."""
    done = tiergate("import", "nothere.jsonl", "--policy", str(POLICY), "--data-dir", "data", cwd=tmp_path)
    refused(done, 2, "nothere.jsonl: no such file")
    assert not (tmp_path / "data").exists()


def test_backfill_refuses_unsigned_operator_events_and_signs_them_with_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history that carries its policy and overrides unsigned (as an embedded export does) would have them
    rejected on Kafka, and every later event of their types with the policy events: backfill refuses it
    before the broker is asked anything and says how to sign (unsigned overrides alone: a warning). With
    --key each unsigned policy and override event is signed for the deployment and verifies against the
    genesis keys; every other line is produced as it is."""
    from tiergate.streams.cli.kafka import _signed_operator_events
    from tiergate.streams.codec import decode
    from tiergate.streams.signing import read_trusted, verify

    history = GOLDEN / "cap_and_pin" / "events.jsonl"
    done = tiergate(
        "backfill", str(history), env={"TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "TIERGATE_OPERATOR_KEY_FILE": ""}
    )
    refused(done, 2, "events.jsonl: 4 policy events (and 4 overrides) are unsigned", "--key OPERATOR.key")
    lines = [line for line in history.read_bytes().splitlines() if line.strip()]
    events = [(decode(line).action_type, line) for line in lines]
    monkeypatch.delenv("TIERGATE_OPERATOR_KEY_FILE", raising=False)
    overrides_only = [(name, line) for name, line in events if b'"type":"policy"' not in line]
    assert _signed_operator_events(overrides_only, history, None, "prod") == overrides_only
    signed = _signed_operator_events(events, history, str(GOLDEN / "operator.key"), "prod")
    genesis = read_trusted(GOLDEN / "genesis.yaml")
    changed = [(before, after) for (_, before), (_, after) in zip(events, signed, strict=True) if before != after]
    assert len(changed) == 8
    assert all(verify(after, genesis, "prod") is None for _, after in changed)
    assert all(
        orjson.loads(after) | {"sig": 0, "key_id": 0, "deployment": 0}
        == orjson.loads(before) | {"sig": 0, "key_id": 0, "deployment": 0}
        for before, after in changed
    )


def test_a_workers_busy_web_port_names_its_option_and_variable(tmp_path: Path) -> None:
    """A worker's port is `--web-port` (or TIERGATE_WORKER_WEB_PORT), not serve's `--port`; it is checked before
    the broker is asked anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tiergate(
            "worker", "--web-port", str(port), env={"TIERGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, cwd=tmp_path
        )
    refused(done, 2, f"127.0.0.1:{port} is already in use (another tiergate worker?)")
    assert "give another --web-port (or TIERGATE_WORKER_WEB_PORT)" in done.stderr and " --port" not in done.stderr


def test_a_busy_port_is_reported_before_the_banner(tmp_path: Path) -> None:
    """`serve` on a port another process listens on says so and exits 2; it never printed that it serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tiergate("serve", "--policy", str(POLICY), "--data-dir", "data", "--port", str(port), cwd=tmp_path)
    refused(done, 2, f"127.0.0.1:{port} is already in use", "give another --port")
    assert "tiergate serve:" not in done.stderr


def test_import_keeps_each_rejected_line_with_its_line_number_across_batches(tmp_path: Path) -> None:
    """A rejected line's origin is its 1-based line number in the file, as replay says it, blank lines
    counted and batches or not (the fourth and the seventh line here, imported two events at a time)."""
    good = OLD_CLIMB.read_text().splitlines()
    misnamed = [line.replace('"reply_to_ticket"', '"reply_to_tikcet"') for line in good[3:5]]
    history = tmp_path / "small.jsonl"
    history.write_text("\n".join([good[0], "", good[1], misnamed[0], good[2], good[5], misnamed[1]]) + "\n")
    done = tiergate("import", str(history), "--policy", str(POLICY), "--data-dir", "data", "--batch", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = tiergate("rejected", "--data-dir", "data", "--json", cwd=tmp_path)
    origins = [row["origin"] for row in json.loads(listed.stdout)["rejected"]]
    assert origins == ["import(small.jsonl):4", "import(small.jsonl):7"]
    replayed = tiergate("replay", str(history), "--policy", str(POLICY), cwd=tmp_path)
    assert "small.jsonl:4: rejected" in replayed.stderr and "small.jsonl:7: rejected" in replayed.stderr


def test_one_action_type_is_counted_in_the_singular(tmp_path: Path) -> None:
    """A policy with one action type is `1 action type` in check-policy's verdict and serve's banner."""
    import yaml

    raw = yaml.safe_load(POLICY.read_text())
    raw["action_types"] = {"reply_to_ticket": {}}
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(raw))
    assert "golden-1, 1 action type, sha256" in tiergate("check-policy", str(single)).stderr
    serve = subprocess.Popen(
        [sys.executable, "-m", "tiergate.streams.cli", "serve", "--policy", str(single), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert serve.stderr is not None
        banner = next(line for line in serve.stderr if line.startswith("tiergate serve:"))
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    assert "policy golden-1 (1 action type), data in" in banner


def run_read_only(directory: Path, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`tiergate ARGV` with `directory` (or a file) read-only: a read-only bind mount in a private mount namespace when
    root (whom permissions do not stop), else the directory's write bits removed."""
    command = [sys.executable, "-m", "tiergate.streams.cli", *argv]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a directory read-only")
        mount = 'mount -o bind,ro "$0" "$0" && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", mount, str(directory), *command]
    else:
        directory.chmod(0o555)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_read_only_data_dir_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """serve, import and export on a data dir they cannot write name it and say what to do instead."""
    data = tmp_path / "ro"
    EmbeddedRuntime(read_policy(POLICY), data, ManualClock(0)).close()  # an existing store, now read-only
    for argv in (
        ["serve", "--policy", str(POLICY), "--data-dir", str(data), "--port", "0"],
        ["import", str(CLIMB), "--data-dir", str(data / "fresh")],
    ):
        done = run_read_only(data, argv)
        refused(done, 2, "cannot use this data directory", "give a writable --data-dir")
    done = run_read_only(data, ["export", "--data-dir", str(data)])
    refused(done, 2, "tiergate.db: cannot open the store", "export from a writable copy of the data dir")


def test_a_read_only_store_in_a_writable_data_dir_is_refused_at_start(tmp_path: Path) -> None:
    """serve and import refuse a tiergate.db they cannot write, naming it, though they can write its
    directory (serve used to start, say ok on /healthz, and answer the first POST 503)."""
    data = tmp_path / "data"
    EmbeddedRuntime(read_policy(POLICY), data, ManualClock(0)).close()
    store = data / "tiergate.db"
    for argv in (
        ["serve", "--policy", str(POLICY), "--data-dir", str(data), "--port", "0"],
        ["import", str(CLIMB), "--data-dir", str(data)],
    ):
        done = run_read_only(store, argv)
        refused(done, 2, f"{store}: cannot write it", "make it writable by this user")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_real_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() turns only user errors into messages: an unexpected ValueError from inside propagates."""

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr("tiergate.streams.cli.history.replay_file", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["replay", str(CLIMB), "--policy", str(POLICY)])


# -- import into a served data dir ----------------------------------------------------------------------


def test_import_into_a_served_data_dir_says_its_history_turned_late(tmp_path: Path) -> None:
    """After a server's clock has closed the windows, an import of older history is mostly late: the CLI
    says how many, why and what to do, and exits 1."""
    data = tmp_path / "data"
    served = EmbeddedRuntime(read_policy(POLICY), data, ManualClock(1_900_000_000))
    tick = {"type": "tick", "ts": "2030-03-17T17:46:40Z"}
    served.ingest(
        [orjson.dumps({**tick, "event_id": f"t-{name}", "action_type": name}) for name in served.state.keys],
        "server",
    )
    served.close()
    done = tiergate("import", str(OLD_CLIMB), "--policy", str(POLICY), "--data-dir", str(data))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "281 late" in done.stderr
    assert "281 of 281 events (100%) were late: this data dir had already closed their windows (up to " in done.stderr
    assert "Import history before serving the data dir, or import it into a fresh --data-dir." in done.stderr
    fresh = tiergate("import", str(OLD_CLIMB), "--policy", str(POLICY), "--data-dir", str(tmp_path / "fresh"))
    assert fresh.returncode == 0 and "late" not in fresh.stderr


def test_every_command_is_in_the_command_table_of_docs_cli_md() -> None:
    """Each subcommand the parser registers has a row in docs/cli.md's command table, and the table names
    no command that does not exist."""
    import argparse
    import re

    from tiergate.streams.cli import parser

    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("| command | what |") : text.index("## Conventions")]
    first_cells = [row.split("|")[1] for row in table.splitlines()[2:] if row.startswith("|")]
    documented = {name.split()[0] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert set(commands.choices) == documented


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("aiokafka", ["topics", "describe", "--bootstrap", "127.0.0.1:1"], "kafka"),
        ("aiokafka", ["rejected", "--kafka", "--bootstrap", "127.0.0.1:1"], "kafka"),
        ("cryptography", ["keys", "new", "--key-id", "ops-1", "--actor", "ops"], "kafka"),
        ("matplotlib", ["plot", str(CLIMB), "-o", "tiers.png"], "plot"),
    ],
)
def test_a_command_without_its_extra_names_the_extra_to_install(
    tmp_path: Path, module: str, argv: list[str], extra: str
) -> None:
    """Installed without an optional extra, a command that needs it says which to install (exit 2), not a
    traceback. (The module is shadowed by one that cannot be imported, as when it is not installed.)"""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    message = f"No module named {module!r}"
    (shadow / "__init__.py").write_text(f"raise ModuleNotFoundError({message!r}, name={module!r})\n")
    done = tiergate(*argv, env={"PYTHONPATH": str(tmp_path / "shadow")}, cwd=tmp_path)
    refused(done, 2, f"this command needs the {extra} extra", f"pip install 'tiergate[{extra}]'")
