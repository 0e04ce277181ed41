"""examples/agent.py as a user runs it: against a fresh `tiergate serve` it climbs Crawl → Walk → Run on its
own evidence; against a dead server it says so in one line and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_restart import free_port

ROOT = Path(__file__).parent.parent
AGENT = ROOT / "examples" / "agent.py"


AGENT_SECRET, REPORTER_SECRET = "agent-secret-0123456789", "reporter-secret-0123456789"
ROLES = f"refund-agent agent {AGENT_SECRET}\nrefund-feed reporter {REPORTER_SECRET}\n"


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[str]:
    """`tiergate serve` on examples/agent-policy.yaml, in its own process, on the real clock, with an agent's
    and a reporter's credential."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the process owns it
    policy = ROOT / "examples" / "agent-policy.yaml"
    command = ["serve", "--policy", str(policy), "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tiergate.streams.cli", *command],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | {"TIERGATE_CREDENTIALS": ROLES},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AGENT), *args], capture_output=True, text=True, timeout=180, env=os.environ | (env or {})
    )


def test_the_example_agent_climbs_through_all_three_tiers_on_its_own_evidence(
    fresh_server: str, tmp_path: Path
) -> None:
    """On a fresh server with roles, the agent (its credential from a file) starts at Crawl and is promoted to
    Walk, then Run, by the evidence its own suggestions, staff actions and customer outcomes produce, the
    outcomes posted with the reporter's credential; it exits 0, dropping nothing, with nothing on stderr."""
    (tmp_path / "agent.secret").write_text(AGENT_SECRET + "\n")
    env = {"TIERGATE_CREDENTIAL_FILE": str(tmp_path / "agent.secret"), "TIERGATE_REPORTER_CREDENTIAL": REPORTER_SECRET}
    done = run_agent("--server", fresh_server, "--max-seconds", "150", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    changes = [
        line.split(" at ", 1)[1].split(":")[0] for line in done.stdout.splitlines() if "refund_up_to_50 at" in line
    ]
    assert changes == ["crawl", "walk", "run"]
    assert (
        "suggested the refund" in done.stdout and "staff account" in done.stdout and "customer directly" in done.stdout
    )
    assert "dropped {}" in done.stdout and done.stderr == ""


def test_against_a_dead_server_the_example_agent_prints_one_line_and_exits_non_zero() -> None:
    """No server: one clear line on stderr naming the problem, exit code 1, no traceback, no warning about
    an unclosed client session."""
    done = run_agent("--server", f"http://127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("agent: tier map not ready after 1s: http://127.0.0.1:") and "ConnectError" in line
