"""The read-only console of a Kafka deployment: what it makes of the workers' topics (the tier map, the
promotion log, activations, the DLQ), the CLI commands it shows instead of acting, and — on the real
broker, with a real worker — `tiergate console --kafka` showing a promotion live in Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tiergate.models.decisions import TierRecord
from tiergate.streams.console.commands import override_command, policy_commands
from tiergate.streams.console.topics import TopicView
from tiergate.streams.console.views import Filters
from tiergate.streams.embedded import EmbeddedRuntime

from .console_app import CLIMB, NOON, POLICY
from .histories import producers_events
from .test_console import MARKUP
from .test_console_policy import LOWERED

ROOT = Path(__file__).parent.parent


def folded_store(tmp_path: Path) -> EmbeddedRuntime:
    """An embedded runtime that folded the climb, then an activation lowering a ceiling and retiring a type:
    decisions of every kind a console shows, made by the real fold."""
    from tiergate.streams.clock import ManualClock
    from tiergate.streams.policy_file import parse_policy, read_policy

    runtime = EmbeddedRuntime(read_policy(POLICY), tmp_path / "data", ManualClock(NOON))
    runtime.ingest(producers_events(CLIMB).splitlines(), "import", live=False)
    runtime.apply(parse_policy(LOWERED, "lowered"), "api", "ops", "incident 4411", "alice@ops")
    return runtime


def view_of(runtime: EmbeddedRuntime) -> TopicView:
    """A TopicView fed what a worker would have written for the runtime's decisions, in order."""
    view = TopicView()
    for line in runtime.store.all_decisions():
        view.decision(line.encode())
        decision = json.loads(line)
        if decision["from_tier"] != decision["to_tier"] or decision["kind"] == "initial":
            view.tier_record(decision["action_type"].encode(), _tier_json(decision))
    return view


def _tier_json(decision: dict[str, Any]) -> bytes:
    record = {
        "action_type": decision["action_type"],
        "tier": decision["to_tier"],
        "version": decision["version"],
        "since": decision["at"],
        "decision_id": decision["decision_id"],
        "policy_version": decision["policy_version"],
        "policy_sha256": decision["policy_sha256"],
    }
    return json.dumps(record).encode()


def test_the_view_holds_the_newest_tier_per_type_and_retires_on_a_tombstone(tmp_path: Path) -> None:
    """Records of the compacted map: an older version read late is ignored, a record without a tier or a
    tombstone retires the type, a later record revives it; junk is counted, not fatal."""
    view = TopicView()
    walk = TierRecord("t", 1, 2, 100, "t/2", "p", "s").to_json().encode()
    crawl_older = TierRecord("t", 0, 1, 50, "t/1", "p", "s").to_json().encode()
    view.tier_record(b"t", walk)
    view.tier_record(b"t", crawl_older)
    assert view.tiers["t"]["tier"] == "walk"
    view.tier_record(b"t", None)
    assert "t" not in view.tiers and view.retired == {"t"}
    view.tier_record(b"t", TierRecord("t", 0, 4, None, "t/4", "p", "s").to_json().encode())
    assert view.tiers["t"]["tier"] == "crawl" and view.retired == set()
    view.tier_record(b"t", TierRecord("t", None, 5, 200, "t/5", "p", "s").to_json().encode())
    assert view.retired == {"t"}
    view.tier_record(b"x", b"not json")
    view.decision(b"[1, 2]")
    assert view.unreadable == 2 and [r["action_type"] for r in view.tier_rows()] == ["t"]


def test_activations_are_read_from_the_decisions_they_made(tmp_path: Path) -> None:
    """Each activation the store recorded is found in the decisions topic's records, with its version, sha,
    actor, the types it named, its reason and what it moved at once; the newest is the policy in force."""
    runtime = folded_store(tmp_path)
    try:
        view = view_of(runtime)
        recorded = runtime.store.activations()
    finally:
        runtime.close()
    found = view.policy()["activations"]
    assert [a["activation_id"] for a in found] == [row.activation_id for row in reversed(recorded)]
    newest = found[0]
    assert (newest["policy_version"], newest["actor"], newest["reason"]) == ("golden-2", "ops", "incident 4411")
    assert newest["moved"] == ["refund_over_50: crawl → retired", "reply_to_ticket: run → walk"]
    assert sorted(newest["types"]) == ["lookup_order", "refund_over_50", "refund_up_to_50", "reply_to_ticket"]
    page = view.everything(Filters())
    assert page["policy_version"] == "golden-2"
    rows = {row["action_type"]: row for row in page["tiers"]}
    assert rows["refund_over_50"]["retired"] and rows["reply_to_ticket"]["tier"] == "walk"
    assert rows["reply_to_ticket"]["latest"]["kind"] == "policy"


def test_an_activation_on_the_policies_topic_gives_when_who_why_and_its_key(tmp_path: Path) -> None:
    """The signed document `tiergate policy apply --kafka` records makes the policy in force, with its time,
    actor, reason and signing key, and its document to read; the decisions add what it moved."""
    from tiergate.streams.kafka_policy import plan
    from tiergate.streams.policy_file import parse_policy
    from tiergate.streams.signing import OperatorKey

    runtime = folded_store(tmp_path)
    try:
        view = view_of(runtime)
        newest = runtime.store.activations()[-1]
    finally:
        runtime.close()
    key = OperatorKey.new("ops-2026")
    planned = plan([], parse_policy(LOWERED, "lowered"), key, "prod", newest.activation_id, "ops", "incident", NOON)
    view.policy_record(json.dumps(planned.document).encode())
    policy = view.policy()
    assert policy["current"]["activation_id"] == newest.activation_id
    assert (policy["current"]["ts"], policy["current"]["principal"]) == ("2026-11-02T12:00:00Z", "ops-2026")
    assert policy["current"]["moved"] == ["refund_over_50: crawl → retired", "reply_to_ticket: run → walk"]
    assert "policy_version: golden-2" in policy["document"] and "refund_over_50" not in policy["document"]
    older = policy["activations"][1]
    assert older["principal"] is None and older["ts"] is None  # known from its decisions only


def test_the_log_and_rejected_input_are_filtered_like_the_embedded_store(tmp_path: Path) -> None:
    """The promotion log by type and kind, newest first; the DLQ rows by reason, result and type."""
    runtime = folded_store(tmp_path)
    try:
        view = view_of(runtime)
    finally:
        runtime.close()
    promotions = view.log_rows("reply_to_ticket", "promote")
    assert [d["to_tier"] for d in promotions] == ["run", "walk"]
    for offset, (result, reason, raw) in enumerate(
        [
            ("rejected", "unknown action_type 'nope'", b'{"type":"action","action_type":"nope"}'),
            ("late", "closed at watermark", b'{"type":"outcome","action_type":"reply_to_ticket"}'),
            ("rejected", "malformed JSON", MARKUP.encode()),
        ]
    ):
        headers = [("tiergate-result", result.encode()), ("tiergate-reason", reason.encode())]
        view.rejected_input(SimpleNamespace(headers=headers, value=raw, partition=0, offset=offset))  # type: ignore[arg-type]
    assert [r["id"] for r in view.rejected_rows(Filters())] == ["0:2", "0:1", "0:0"]
    assert [r["id"] for r in view.rejected_rows(Filters(result="late"))] == ["0:1"]
    assert [r["id"] for r in view.rejected_rows(Filters(reason="UNKNOWN"))] == ["0:0"]
    assert [r["id"] for r in view.rejected_rows(Filters(rejected_type="reply_to_ticket"))] == ["0:1"]


@pytest.mark.parametrize(
    "reason", ["it's $(rm -rf ~) `id`", MARKUP, "two\nlines; echo pwned", "--kafka --tier run", "naïve → ok"]
)
def test_a_command_quotes_every_argument_for_the_shell(reason: str) -> None:
    """Whatever the reason holds, the shown command splits back into exactly the arguments asked for."""
    argv = override_command(
        {"op": "pin", "action_type": "refund_up_to_50", "tier": "walk", "actor": "me", "reason": reason}
    )
    assert shlex.split(shlex.join(argv)) == argv
    expected = ["tiergate", "override", "pin", "refund_up_to_50", "--tier", "walk", "--actor", "me", "--reason"]
    assert argv == [*expected, reason, "--kafka"]
    dry, apply = policy_commands({"file": "new policy.yaml", "actor": "me", "reason": reason})
    assert shlex.split(shlex.join(dry)) == [*apply, "--dry-run"]
    assert apply[:4] == ["tiergate", "policy", "apply", "new policy.yaml"] and apply[-1] == "--kafka"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"op": "pin", "action_type": "t", "actor": "a", "reason": "r"}, "pin needs a tier"),
        ({"op": "sudo", "action_type": "t", "actor": "a", "reason": "r"}, "op 'sudo' is not one of"),
        ({"op": "cap", "action_type": "t", "tier": "fly", "actor": "a", "reason": "r"}, "tier 'fly' is not one of"),
        ({"op": "demote", "action_type": "t", "actor": "a", "reason": " "}, "give an actor and a reason"),
        ({"op": "demote", "action_type": "", "actor": "a", "reason": "r"}, "choose the action type"),
    ],
)
def test_a_command_that_cannot_be_right_names_the_field(fields: dict[str, str], problem: str) -> None:
    """An incomplete or wrong request gets its reason instead of a command that would fail."""
    with pytest.raises(ValueError, match=problem):
        override_command(fields)


def test_tiergate_console_says_what_it_is_for_and_refuses_an_open_port(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --kafka it points at serve's own console; on a non-loopback address it needs credentials
    (unreadable credentials are named); each is one line and exit 2, before any broker is contacted."""
    from tiergate.streams.cli import main

    assert main(["console"]) == 2
    assert "the embedded server serves its console itself, at /console" in capsys.readouterr().err
    assert main(["console", "--kafka", "--host", "0.0.0.0"]) == 2
    assert "not loopback and no credentials are set" in capsys.readouterr().err
    missing = tmp_path / "nope"
    assert main(["console", "--kafka", "--host", "0.0.0.0", "--credentials-file", str(missing)]) == 2
    assert f"{missing}: cannot read it" in capsys.readouterr().err


# -- on the real broker ----------------------------------------------------------------------------------


GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture
def deployment(kafka_broker: None, tmp_path: Path) -> Iterator[Any]:
    """A fresh deployment on the local broker whose workers trust the golden operator key (a genesis key)
    and leave ticks to the history."""
    from .kafka_harness import Deployment

    env = {"TIERGATE_WORKER_TICKS": "false", "TIERGATE_KAFKA_GENESIS_KEYS": str(GOLDEN / "genesis.yaml")}
    deployment = Deployment(tmp_path, worker_env=env, policy=None)
    deployment.create_topics()
    yield deployment
    deployment.stop_all()


def kafka_env(deployment: Any) -> dict[str, str]:
    """An operator's shell for the deployment: its broker, its topics, its genesis keys (a first `policy
    apply --kafka` is checked against them)."""
    from .kafka_harness import BOOTSTRAP

    given = {"TIERGATE_KAFKA_BOOTSTRAP": BOOTSTRAP, "TIERGATE_KAFKA_TOPIC_PREFIX": deployment.prefix}
    return dict(os.environ) | given | {"TIERGATE_KAFKA_GENESIS_KEYS": str(GOLDEN / "genesis.yaml")}


@pytest.fixture
def console_process(deployment: Any, tmp_path: Path) -> Iterator[str]:
    """`tiergate console --kafka` on a free port of loopback, once it has read the topics; its URL."""
    from .kafka_harness import wait_for
    from .test_restart import free_port

    port = free_port()
    env = kafka_env(deployment)
    log = open(tmp_path / "console.log", "wb")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "tiergate.streams.cli", "console", "--kafka", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _health(url) == "ok" or process.poll() is not None, 60, "the console to read the topics")
        assert process.poll() is None, (tmp_path / "console.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _health(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return str(json.loads(response.read())["status"])
    except OSError:
        return None


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


PRODUCED = producers_events(CLIMB).splitlines()
FIRST, REST = PRODUCED[: len(PRODUCED) // 2], PRODUCED[len(PRODUCED) // 2 :]


@pytest.fixture
def half_climbed(deployment: Any) -> Any:
    """The golden policy activated with `tiergate policy apply --kafka` (signed with the golden operator
    key), then a worker folding the first half of the climb (which ends with reply_to_ticket at walk); the
    tests wait for the console to show that."""
    apply = [sys.executable, "-m", "tiergate.streams.cli", "policy", "apply", str(POLICY), "--kafka"]
    who = ["--key", str(GOLDEN / "operator.key"), "--actor", "ops@example.com", "--reason", "the first policy"]
    done = subprocess.run([*apply, *who], cwd=ROOT, env=kafka_env(deployment), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    deployment.produce(FIRST)
    deployment.start_worker()
    return deployment


@pytest.mark.kafka
def test_a_kafka_apply_given_an_activation_id_already_recorded_is_refused(deployment: Any) -> None:
    """An id resumes an apply cut short; given again once its activation is on the policies topic, the apply
    would produce duplicates that apply nothing: refused before anything is written (no worker has applied
    it yet, so only the policies topic knows the id)."""
    apply = [sys.executable, "-m", "tiergate.streams.cli", "policy", "apply", str(POLICY), "--kafka"]
    who = ["--key", str(GOLDEN / "operator.key"), "--actor", "ops@example.com", "--reason", "the first policy"]
    again = [*apply, *who, "--activation-id", "20261101T000000Z-0001"]
    first = subprocess.run(again, cwd=ROOT, env=kafka_env(deployment), capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(again, cwd=ROOT, env=kafka_env(deployment), capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "activation id 20261101T000000Z-0001 is already recorded" in second.stderr


def _walk_shown(url: str) -> bool:
    """Does the console's tier map show reply_to_ticket at walk (the worker got through the first half)?"""
    _, tiers = _get(f"{url}/console/parts/tiers")
    row = re.search(r'<tr data-action-type="reply_to_ticket">.*?</tr>', tiers, re.S)
    return row is not None and '<span class="tier walk">walk</span>' in row.group(0)


@pytest.mark.kafka
def test_the_kafka_console_reads_the_topics_and_writes_nothing(half_climbed: Any, console_process: str) -> None:
    """The page shows the worker's tier map, decisions and the activation; it has no acting forms (POSTs are
    not routes), and an override is a command to run."""
    from .kafka_harness import wait_for

    wait_for(lambda: _walk_shown(console_process), 150, "the console to show reply_to_ticket at walk")
    status, page = _get(f"{console_process}/console")
    assert status == 200 and "Kafka, read-only" in page
    assert 'data-decision-id="reply_to_ticket/1"' in page and "Kafka, read-only" in page
    assert 'id="override"' not in page and 'id="command"' in page
    status, policy = _get(f"{console_process}/console/policy")
    assert status == 200 and 'id="in-force-version">golden-1<' in policy and "policy_version: golden-1" in policy
    newest = re.search(r'<tr data-activation-id="[^"]+">.*?</tr>', policy, re.S)
    assert newest is not None, policy
    for cell in ("<td>kafka</td>", '<td class="actor">ops@example.com</td>', '<td class="principal">golden-ops</td>'):
        assert cell in newest.group(0)
    assert '<td class="reason">the first policy</td>' in newest.group(0)
    request = urllib.request.Request(f"{console_process}/console/override", data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (404, 405)
    query = "what=override&op=cap&action_type=refund_up_to_50&tier=crawl&actor=me&reason=it%27s+%24%28id%29"
    status, shown = _get(f"{console_process}/console/command?{query}")
    assert status == 200
    quoted = "&#39;it&#39;&#34;&#39;&#34;&#39;s $(id)&#39;"  # shlex's quoting of it's $(id), HTML-escaped
    assert f"tiergate override cap refund_up_to_50 --tier crawl --actor me --reason {quoted} --kafka" in shown


@pytest.mark.kafka
async def test_a_promotion_and_rejected_input_show_up_live_in_the_browser(
    half_climbed: Any, console_process: str, tmp_path: Path
) -> None:
    """With the page open in Chromium, the rest of the climb and a malformed event go to the input topic:
    the worker's promotion to run and its DLQ record appear without a reload."""
    from playwright.async_api import expect

    from .kafka_harness import wait_for
    from .test_console_browser import WAIT, chromium

    # the worker got through the first half before the page opens: the page shows walk from the start
    await asyncio.to_thread(wait_for, lambda: _walk_shown(console_process), 150, "reply_to_ticket at walk")
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{console_process}/console")
        await expect(page.locator("#live")).to_have_text("live", timeout=WAIT)
        tier = page.locator('#tiers tr[data-action-type="reply_to_ticket"] .tier')
        await expect(tier).to_have_text("walk", timeout=WAIT)
        await page.evaluate("window.sameDocument = true")
        await asyncio.to_thread(half_climbed.produce, [*REST, b'{"type":"action","action_type":"reply_to_ticket"'])
        await expect(tier).to_have_text("run", timeout=60_000)
        await expect(page.locator('#log tr[data-decision-id="reply_to_ticket/2"]')).to_contain_text("promote")
        await expect(page.locator("#rejected tbody tr")).to_have_count(1, timeout=WAIT)
        await expect(page.locator("#rejected .reason")).to_contain_text("malformed JSON")
        assert await page.evaluate("window.sameDocument") is True and errors == []


def _override(deployment: Any, *args: str, key: Path = GOLDEN / "operator.key") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tiergate.streams.cli", "override", *args, "--kafka", "--key", str(key)]
    who = ["--actor", "ops@example.com", "--reason", "incident 4411", "--wait", "60"]
    return subprocess.run(
        [*command, *who], cwd=ROOT, env=kafka_env(deployment), capture_output=True, text=True, timeout=120
    )


@pytest.mark.kafka
def test_the_override_command_the_console_shows_is_signed_and_answered_by_the_workers(
    half_climbed: Any, tmp_path: Path
) -> None:
    """`tiergate override … --kafka` signs with the operator key and prints the workers' decision (naming the
    key as principal); an override the fold refuses, and one signed by a key the policy does not trust, come
    back refused with the fold's reason from the DLQ; a refold of the topic agrees with the workers."""
    from tiergate.streams.signing import OperatorKey

    half_climbed.wait_drained()
    done = _override(half_climbed, "demote", "reply_to_ticket")
    assert done.returncode == 0, done.stderr
    assert re.search(r"override demote  (walk|run) → (crawl|walk)", done.stdout), done.stdout
    assert "actor ops@example.com  principal golden-ops  reason incident 4411" in done.stdout
    refused = _override(half_climbed, "unpin", "reply_to_ticket")
    assert refused.returncode == 1 and "refused by the workers" in refused.stderr
    assert "the action type is not pinned" in refused.stderr
    stranger = OperatorKey.new("stranger")
    stranger.write(tmp_path / "stranger.key")
    untrusted = _override(half_climbed, "pin", "reply_to_ticket", "--tier", "crawl", key=tmp_path / "stranger.key")
    assert untrusted.returncode == 1 and "'stranger' is not trusted" in untrusted.stderr
    half_climbed.wait_drained()
    assert half_climbed.differences() == [], "\n".join(half_climbed.differences())


def test_the_policy_in_force_is_the_newest_activation_the_workers_applied() -> None:
    """An activation on the policies topic that no decision names (the workers refused it: an untrusted key,
    a stale parent) is listed but never in force; the newest applied one is."""
    view = TopicView()
    applied = {"activation_id": "a1", "ts": 100, "policy_version": "p1", "policy_sha256": "s1", "policy": {}}
    refused = {"activation_id": "evil", "ts": 200, "policy_version": "p-evil", "policy_sha256": "s2", "policy": {}}
    view.policy_record(orjson.dumps(applied))
    view.decision(orjson.dumps({"action_type": "t", "kind": "initial", "activation_id": "a1", "to_tier": "crawl"}))
    view.policy_record(orjson.dumps(refused))
    current = view.current()
    assert current is not None and current["activation_id"] == "a1"
    assert [a["activation_id"] for a in view.policy()["activations"]] == ["evil", "a1"]
