"""Who may act on the embedded server: credentials with roles, refused batches that leave no trace, the
principal recorded beside the actor. A real aiohttp server on loopback, a real client, real SQLite."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from tiergate.models.wire import parse_ts
from tiergate.streams.access import GUARDED_TYPES, POSTS, ROLES, Caller, Credentials, CredentialsError, first_forbidden
from tiergate.streams.cli import main
from tiergate.streams.clock import ManualClock
from tiergate.streams.embedded import EmbeddedRuntime
from tiergate.streams.http import make_app
from tiergate.streams.policy_file import read_policy
from tiergate.streams.settings import ServeSettings, SettingsError

from .histories import feed, producers_events
from .test_cli import tiergate

GOLDEN = Path(__file__).parent / "golden"
POLICY = GOLDEN / "policy.yaml"
CLIMB = (GOLDEN / "clean_climb" / "events.jsonl").read_bytes()
NOON = parse_ts("2026-11-02T12:00:00Z")

SECRETS = {
    "support-bot": "agent-secret-0123456789",
    "billing-feed": "reporter-secret-0123456789",
    "alice@ops": "operator-secret-0123456789",
    "grafana": "reader-secret-0123456789",
}
ROLE_OF = {"support-bot": "agent", "billing-feed": "reporter", "alice@ops": "operator", "grafana": "reader"}
CREDENTIALS_TEXT = "# name role secret\n" + "".join(f"{n} {ROLE_OF[n]} {s}\n" for n, s in SECRETS.items())

ACTION = (
    b'{"type":"action","event_id":"act-1","ts":"2026-11-02T11:00:00Z","action_type":"reply_to_ticket",'
    b'"action_id":"a-1","tier":"crawl","agent":"support-bot"}'
)
OUTCOME = (
    b'{"type":"outcome","event_id":"out-1","ts":"2026-11-02T11:00:00Z","action_type":"reply_to_ticket",'
    b'"action_id":"a-1","tier":"crawl","kind":"review","result":"accepted"}'
)
PROMOTE = (
    b'{"type":"override","event_id":"ovr-1","ts":"2026-11-02T11:00:00Z","action_type":"reply_to_ticket",'
    b'"op":"promote","actor":"me","reason":"I say so"}'
)
TICK = b'{"type":"tick","event_id":"tick-1","ts":"2026-11-02T11:00:00Z","action_type":"reply_to_ticket"}'
POLICY_EVENT = b'{"type":"policy","event_id":"policy/x/reply_to_ticket","ts":"2026-11-02T11:00:00Z","action_type":"r"}'


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}", "Content-Type": "application/x-ndjson"}


@dataclass
class Running:
    client: TestClient
    evaluator: EmbeddedRuntime
    data_dir: Path

    async def post(self, body: bytes, who: str | None, status: int = 200, query: str = "") -> dict[str, Any]:
        headers = bearer(who) if who else {"Content-Type": "application/x-ndjson"}
        response = await self.client.post(f"/v1/events{query}", data=body, headers=headers)
        assert response.status == status, await response.text()
        return await response.json()  # type: ignore[no-any-return]

    def stored(self) -> tuple[Any, ...]:
        """Everything the store holds that a request could change."""
        db = self.evaluator.store.db
        return tuple(
            db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("events", "decisions", "rejected")
        )


async def served(tmp_path: Path, credentials: Credentials | None, token: str | None = None) -> AsyncIterator[Running]:
    evaluator = EmbeddedRuntime(read_policy(POLICY), tmp_path / "data", ManualClock(NOON))
    settings = ServeSettings(policy=POLICY, data_dir=tmp_path / "data", token=token)
    http = TestServer(make_app(evaluator, settings, ticking=False, credentials=credentials), host="127.0.0.1")
    async with http, TestClient(http) as client:
        yield Running(client, evaluator, tmp_path / "data")
    evaluator.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    """A server with one credential of each role."""
    async for running in served(tmp_path, Credentials.parse(CREDENTIALS_TEXT, "test")):
        yield running


@pytest.fixture
async def legacy(tmp_path: Path) -> AsyncIterator[Running]:
    """A server with only a legacy token."""
    async for running in served(tmp_path, None, token="legacy-token-0123456789"):
        yield running


@pytest.fixture
async def unguarded(tmp_path: Path) -> AsyncIterator[Running]:
    """A server without credentials (loopback only)."""
    async for running in served(tmp_path, None):
        yield running


# -- credentials -----------------------------------------------------------------------------------------


def test_credentials_parse_one_a_line_with_comments() -> None:
    """Each `name role secret` line becomes a credential; comments and blank lines are skipped."""
    credentials = Credentials.parse(CREDENTIALS_TEXT + "\n   # trailing comment\n", "test")
    assert [(c.name, c.role) for c in credentials.all] == [(n, ROLE_OF[n]) for n in SECRETS]
    assert credentials.identify(f"Bearer {SECRETS['grafana']}") == Caller("grafana", "reader")
    assert credentials.identify(f"Bearer {SECRETS['grafana']}x") is None
    assert credentials.identify("") is None
    assert SECRETS["grafana"] not in repr(credentials.all)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bot admin agent-secret-0123456789", "role 'admin' is not one of agent, reporter, operator, reader"),
        ("bot agent short", "shorter than 16 characters"),
        ("bot agent", "2 words"),
        ("b*t agent agent-secret-0123456789", "name 'b*t'"),
        ("bot agent agent-secret-0123456789\nbot reader reader-secret-0123456789", "line 2: bot is also on line 1"),
        ("a agent same-secret-0123456789\nb reader same-secret-0123456789", "the secret of b is also on line 1"),
        ("# only a comment\n", "no credentials in it"),
    ],
)
def test_bad_credentials_name_the_line_and_the_fix_never_the_secret(text: str, fragment: str) -> None:
    """Each mistake in a credentials text is an error naming its source and line, without the secret."""
    with pytest.raises(CredentialsError) as raised:
        Credentials.parse(text, "creds.txt")
    assert fragment in str(raised.value) and str(raised.value).startswith("creds.txt")
    assert "0123456789" not in str(raised.value)


def test_settings_read_credentials_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TIERGATE_CREDENTIALS_FILE names a file, TIERGATE_CREDENTIALS holds the text; both, or either with a
    token, is an error that says which to keep."""
    path = tmp_path / "credentials"
    path.write_text(CREDENTIALS_TEXT)
    monkeypatch.setenv("TIERGATE_CREDENTIALS_FILE", str(path))
    loaded = ServeSettings.load(policy=POLICY).load_credentials()
    assert loaded is not None and len(loaded) == 4
    monkeypatch.setenv("TIERGATE_CREDENTIALS", CREDENTIALS_TEXT)
    with pytest.raises(SettingsError, match="keep one"):
        ServeSettings.load(policy=POLICY).load_credentials()
    monkeypatch.delenv("TIERGATE_CREDENTIALS_FILE")
    assert len(ServeSettings.load(policy=POLICY).load_credentials() or ()) == 4
    monkeypatch.setenv("TIERGATE_TOKEN", "legacy-token-0123456789")
    with pytest.raises(SettingsError, match="as an operator"):
        ServeSettings.load(policy=POLICY).load_credentials()


def test_serve_refuses_an_unreadable_credentials_file_in_one_line(tmp_path: Path) -> None:
    """A missing credentials file stops `tiergate serve` before it binds, with the variable's name and the fix."""
    env = {"TIERGATE_CREDENTIALS_FILE": str(tmp_path / "nope")}
    done = tiergate("serve", "--policy", str(POLICY), "--data-dir", str(tmp_path / "d"), env=env)
    assert done.returncode == 2 and "TIERGATE_CREDENTIALS_FILE" in done.stderr and "cannot read it" in done.stderr
    assert "Traceback" not in done.stderr


@given(st.sampled_from(ROLES), st.lists(st.sampled_from(sorted(GUARDED_TYPES | {"made_up"})), max_size=6))
def test_a_batch_is_refused_exactly_when_one_of_its_events_is_not_the_roles(role: Any, kinds: list[str]) -> None:
    """For any role and batch, the first refused event is the first whose type the role may not post;
    a type no role speaks about is left to the decoder (which rejects and keeps it)."""
    raws = [json.dumps({"type": kind, "event_id": f"e{i}"}).encode() for i, kind in enumerate(kinds)]
    refused = first_forbidden(raws, Caller("someone", role))
    forbidden = [i for i, kind in enumerate(kinds) if kind in GUARDED_TYPES and kind not in POSTS[role]]
    assert (refused.index if refused else None) == (forbidden[0] if forbidden else None)
    assert "tick" not in POSTS[role] and "policy" not in POSTS[role]


# -- the roles on the server -----------------------------------------------------------------------------


async def test_healthz_is_open_and_everything_else_needs_a_credential(server: Running) -> None:
    """Without a credential only /healthz answers; an unknown secret is 401 with a Bearer challenge."""
    assert (await server.client.get("/healthz")).status == 200
    for path in ("/v1/tiers", "/v1/status", "/v1/decisions", "/v1/rejected", "/v1/policy", "/metrics"):
        response = await server.client.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "TIERGATE_CREDENTIALS_FILE" in (await response.json())["fix"]
    await server.post(ACTION, None, status=401)
    wrong = await server.client.get("/v1/tiers", headers={"Authorization": "Bearer not-a-known-secret-at-all"})
    assert wrong.status == 401


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        ("support-bot", "/v1/tiers", 200),
        ("support-bot", "/v1/tiers/reply_to_ticket", 200),
        ("billing-feed", "/v1/tiers", 200),
        ("support-bot", "/v1/decisions", 403),
        ("billing-feed", "/v1/status", 403),
        ("support-bot", "/v1/rejected", 403),
        ("support-bot", "/metrics", 403),
        ("grafana", "/v1/decisions", 200),
        ("grafana", "/v1/rejected", 200),
        ("grafana", "/metrics", 200),
        ("grafana", "/v1/policy", 200),
        ("alice@ops", "/v1/status", 200),
    ],
)
async def test_reads_follow_the_roles(server: Running, who: str, path: str, status: int) -> None:
    """Agents and reporters read the tier map only; readers and operators read everything."""
    response = await server.client.get(path, headers=bearer(who))
    assert response.status == status, await response.text()
    if status == 403:
        assert "reader or operator" in (await response.json())["fix"] or "operator" in (await response.json())["fix"]


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("support-bot", ACTION, 200),
        ("support-bot", OUTCOME, 403),
        ("support-bot", PROMOTE, 403),
        ("billing-feed", OUTCOME, 200),
        ("billing-feed", ACTION, 403),
        ("billing-feed", PROMOTE, 403),
        ("alice@ops", PROMOTE, 200),
        ("alice@ops", TICK, 403),
        ("alice@ops", POLICY_EVENT, 403),
        ("grafana", OUTCOME, 403),
    ],
)
async def test_each_role_posts_only_its_own_events(server: Running, who: str, body: bytes, status: int) -> None:
    """actions: agents; outcomes: reporters; overrides: operators; ticks and policies: nobody."""
    before = server.stored()
    answer = await server.post(body, who, status=status)
    if status == 403:
        assert server.stored() == before
        assert "nothing of this batch was stored" in answer["error"] or "may not POST" in answer["error"]


async def test_an_agent_cannot_move_its_own_tier_and_its_whole_batch_is_refused(server: Running) -> None:
    """A batch of an agent's actions with one promote in it is refused whole (403 naming the event); the
    store — log, decisions, rejected input — is byte for byte unchanged and the tier has not moved."""
    before, tier = server.stored(), server.evaluator.tiers["reply_to_ticket"]
    junk = b'{"type":"action"'  # malformed: would be kept as rejected input, had the batch been accepted
    answer = await server.post(b"\n".join([ACTION, junk, PROMOTE]), "support-bot", status=403)
    assert "event 2 ('ovr-1') is of type 'override'" in answer["error"]
    assert "support-bot" in answer["error"] and "operator credential" in answer["fix"]
    assert server.stored() == before
    assert server.evaluator.tiers["reply_to_ticket"] == tier
    assert (await server.post(b"\n".join([ACTION, junk]), "support-bot"))["counts"] == {"applied": 1, "rejected": 1}


async def test_an_operators_override_records_the_principal_beside_the_actor(server: Running, tmp_path: Path) -> None:
    """The decision names the credential that posted it (principal) and the actor it declared; the log
    keeps the event's bytes as received and the principal beside them; a replay of the export gives the
    same decisions but for the principal, which is not part of the event."""
    answer = await server.post(PROMOTE, "alice@ops")
    (decision,) = answer["decisions"]
    assert (decision["kind"], decision["actor"], decision["principal"]) == ("override", "me", "alice@ops")
    row = server.evaluator.store.db.execute("SELECT raw, principal FROM events ORDER BY rowid DESC").fetchone()
    assert (bytes(row[0]), row[1]) == (PROMOTE, "alice@ops")
    stored = list(server.evaluator.store.all_decisions())
    assert json.loads(stored[-1])["principal"] == "alice@ops"
    exported, replayed = tmp_path / "events.jsonl", tmp_path / "decisions.jsonl"
    assert main(["export", "--data-dir", str(server.data_dir), "-o", str(exported)]) == 0
    assert main(["replay", str(exported), "-o", str(replayed)]) == 0  # the log carries its policy
    without = [{k: v for k, v in json.loads(line).items() if k != "principal"} for line in stored]
    assert [json.loads(line) for line in replayed.read_text().splitlines()] == without


async def test_a_dry_run_answers_without_storing_and_is_for_operators(server: Running) -> None:
    """?dry_run=1 folds the batch on a copy: the answer an ingest would give (a pin below the tier refused
    with the hint to demote first), nothing stored, the state untouched; other roles get 403."""
    await server.post(PROMOTE, "alice@ops")
    pin = PROMOTE.replace(b'"op":"promote"', b'"op":"pin","tier":"crawl"').replace(b"ovr-1", b"ovr-2")
    before, state = server.stored(), server.evaluator.state.keys["reply_to_ticket"].to_dict()
    tried = await server.post(pin, "alice@ops", query="?dry_run=1")
    assert tried["dry_run"] is True and tried["results"][0]["result"] == "rejected"
    assert "demote to crawl first, then pin" in tried["results"][0]["reason"]
    demote = pin.replace(b'"op":"pin","tier":"crawl"', b'"op":"demote"')
    assert [d["to_tier"] for d in (await server.post(demote, "alice@ops", query="?dry_run=1"))["decisions"]] == [
        "crawl"
    ]
    assert server.stored() == before and server.evaluator.state.keys["reply_to_ticket"].to_dict() == state
    await server.post(ACTION, "support-bot", status=403, query="?dry_run=1")


async def test_a_lone_legacy_token_is_an_operator_and_reads_stay_open(legacy: Running) -> None:
    """With only TIERGATE_TOKEN: writes need it (it may override: principal `token`), reads are open, and
    it still may not post a tick."""
    await legacy.post(ACTION, None, status=401)
    assert (await legacy.client.get("/v1/decisions")).status == 200
    headers = {"Authorization": "Bearer legacy-token-0123456789"}
    response = await legacy.client.post("/v1/events", data=PROMOTE, headers=headers)
    assert response.status == 200
    assert (await response.json())["decisions"][0]["principal"] == "token"
    assert (await legacy.client.post("/v1/events", data=TICK, headers=headers)).status == 403


async def test_without_credentials_everyone_operates_but_nobody_ticks(unguarded: Running) -> None:
    """On a server without credentials (loopback) overrides need nothing, decisions carry no principal,
    and ticks and policy events are still refused."""
    answer = await unguarded.post(PROMOTE, None)
    assert "principal" not in answer["decisions"][0]
    before = unguarded.stored()
    await unguarded.post(b"\n".join([ACTION, TICK]), None, status=403)
    await unguarded.post(POLICY_EVENT, None, status=403)
    assert unguarded.stored() == before


async def test_a_history_goes_in_with_its_producers_credentials(server: Running) -> None:
    """The golden climb, its reviews posted by the reporter and its ticks by the server's clock, reaches Run."""

    async def send(body: bytes) -> None:
        await server.post(body, "billing-feed")

    await feed(server.client.app, producers_events(CLIMB), send)  # type: ignore[arg-type]
    assert server.evaluator.tiers["reply_to_ticket"].tier == 2


def test_serve_warns_that_a_lone_token_is_an_operator_and_reads_are_open(tmp_path: Path) -> None:
    """`tiergate serve` with only TIERGATE_TOKEN starts, and says at start what the token may do."""
    import subprocess
    import sys
    import time
    import urllib.request

    from .test_restart import free_port

    port = free_port()
    env = {**os.environ, "TIERGATE_TOKEN": "legacy-token-0123456789"}
    argv = ["serve", "--policy", str(POLICY), "--data-dir", str(tmp_path / "d"), "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tiergate.streams.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "a lone token (TIERGATE_TOKEN) acts as an operator" in stderr.decode()
