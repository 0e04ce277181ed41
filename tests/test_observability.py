"""Observability checked with the real thing: promtool on the rules and config, a real Prometheus scraping a
running embedded server, and the dashboard's and alerts' queries against what the code exports."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tiergate.models import fold
from tiergate.models.wire import format_ts
from tiergate.streams.codec import decode
from tiergate.streams.metrics import Tallies, TiergateCollector, WorkerCollector
from tiergate.streams.policy_file import read_policy

from .builders import Log, policy
from .test_restart import free_port, post, start

ROOT = Path(__file__).parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"

GOLDEN = ROOT / "tests" / "golden"
pytestmark = pytest.mark.prometheus
COUNTER = itertools.count()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT)


def test_promtool_accepts_the_config_and_rules_and_the_rule_tests_pass() -> None:
    """`promtool check config`, `check rules` and `test rules` (each alert fires and stays quiet) succeed."""
    for args in (
        ("check", "config", str(PROMETHEUS / "prometheus.yml")),
        ("check", "rules", str(PROMETHEUS / "tiergate.rules.yml")),
        ("test", "rules", str(ROOT / "tests" / "prometheus" / "rules_test.yml")),
    ):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "tests" / "prometheus" / "rules_test.yml").read_text()))
    defined = set(re.findall(r"alert: (\w+)", (PROMETHEUS / "tiergate.rules.yml").read_text()))
    assert defined == tested


def test_every_alert_links_its_runbook_and_a_down_target_alerts() -> None:
    """Each alert's runbook_url names a page of docs/runbooks/ that exists and is about that alert, every
    page belongs to an alert, and a scrape target that is down (up == 0) has an alert of its own."""
    rules = yaml.safe_load((PROMETHEUS / "tiergate.rules.yml").read_text())["groups"][0]["rules"]
    pages = {rule["alert"]: ROOT / rule["annotations"]["runbook_url"] for rule in rules}
    for alert, page in pages.items():
        assert page.parent == ROOT / "docs" / "runbooks" and page.is_file(), (alert, page)
        assert page.read_text().startswith(f"# {alert}\n"), page
    runbooks = set((ROOT / "docs" / "runbooks").glob("*.md")) - {ROOT / "docs" / "runbooks" / "README.md"}
    assert runbooks == set(pages.values())
    down = [rule for rule in rules if rule["expr"].startswith("up{")]
    assert len(down) == 1 and down[0]["expr"].endswith("== 0") and down[0]["labels"]["severity"] == "critical"


def exported_names() -> set[str]:
    """Every metric name the embedded server's and the worker's collectors expose (sample names)."""
    events = [decode(line) for line in (GOLDEN / "clean_climb" / "events.jsonl").read_bytes().splitlines()]
    state, _ = fold(events)  # the log carries its policy
    maturing = Log().activate(0, policy(outcomes={"customer": {"maturity": "3h"}}), "m")
    maturing.override(0.1, "promote").action(0.5, tier="walk").checkpoint(0.6, through=0.5)
    state.keys |= fold(maturing.models())[0].keys  # a type with customer units waiting to mature
    registry = CollectorRegistry()
    tallies = Tallies(
        events=Counter({("reply_to_ticket", "applied"): 1}), decisions=Counter({("reply_to_ticket", "violation"): 1})
    )
    registry.register(
        TiergateCollector(lambda: ("golden-1", "0" * 64), lambda: state, lambda: tallies, lambda: 1_800_000_000)
    )
    registry.register(WorkerCollector(lambda: {0: 5}, lambda: 1, lambda: 2))
    text = generate_latest(registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_metric_names_follow_prometheus_conventions() -> None:
    """tiergate_ prefix, _total counters, base units (seconds, ratio), and a build_info."""
    names = exported_names()
    assert all(name.startswith("tiergate_") for name in names)
    assert "tiergate_build_info" in names
    assert {"tiergate_events_total", "tiergate_decisions_total", "tiergate_tier_violations_total"} <= names
    assert not any(re.search(r"_(ms|milliseconds|minutes|hours|percent)$", name) for name in names)


def test_every_dashboard_and_alert_query_uses_metrics_the_code_exports() -> None:
    """No panel or alert refers to a metric that does not exist."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "tiergate.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += re.findall(r"expr: (.+)", (PROMETHEUS / "tiergate.rules.yml").read_text())
    used = {name for expr in exprs for name in re.findall(r"\btiergate_[a-z_]+", expr)}
    assert used and used <= exported_names(), used - exported_names()
    assert len(dashboard["panels"]) >= 8


LIVE_POLICY = """
policy_version: live-1
window: 2s          # seconds-long windows, so a live scenario climbs in seconds
lookback: 20s
tiers:
  crawl: {promote: {hold: 2s, bars: [{metric: acceptance_rate, target: 0.5, min_samples: 10}]}}
  walk:
    keep: [{metric: completion_rate, target: 0.5}]
    promote: {hold: 2s, bars: [{metric: completion_rate, target: 0.5, min_samples: 10},
                               {metric: customer_success_rate, target: 0.5, min_samples: 10}]}
  run: {keep: [{metric: customer_success_rate, target: 0.5}]}
action_types: {reply_to_ticket: {}, refund_up_to_50: {}}
"""


def live_batch(tier: str, n: int) -> bytes:
    """What a fleet at `tier` reports now for reply_to_ticket: reviews at crawl, completions and customers after."""
    now = format_ts(int(time.time()))
    kinds = {
        "crawl": [("review", "accepted")],
        "walk": [("internal", "completed"), ("customer", "success")],
        "run": [("customer", "success")],
    }[tier]
    events = []
    for kind, result in kinds:
        for _ in range(n):
            i = next(COUNTER)
            events.append(
                orjson.dumps(
                    {
                        "type": "outcome",
                        "event_id": f"o{i}",
                        "ts": now,
                        "action_type": "reply_to_ticket",
                        "action_id": f"a{i}",
                        "tier": tier,
                        "kind": kind,
                        "result": result,
                    }
                )
            )
    return b"\n".join(events)


def test_a_real_prometheus_scrapes_the_embedded_server_while_a_scenario_is_posted(tmp_path: Path) -> None:
    """Prometheus (Debian's) on loopback scrapes `tiergate serve` while a fleet earns Run live; its query
    API returns the tier, the events and the promotions."""
    assert shutil.which("prometheus"), "prometheus is missing: `make test` installs Debian's prometheus package"
    port, prom_port = free_port(), free_port()
    policy = tmp_path / "live.yaml"
    policy.write_text(LIVE_POLICY)
    server = start(tmp_path / "data", port, policy)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: tiergate\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        posted, tier, deadline = 0, "crawl", time.monotonic() + 60
        while tier != "run" and time.monotonic() < deadline:
            body = live_batch(tier, 5)
            assert post(port, body)
            posted += body.count(b"\n") + 1
            time.sleep(0.25)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tiers/reply_to_ticket", timeout=2) as response:
                tier = json.loads(response.read())["tier"]
        assert tier == "run"

        def value(expr: str) -> str | None:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.parse.quote(expr)}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    found = json.loads(response.read())["data"]["result"]
            except OSError:
                return None
            return str(found[0]["value"][1]) if found else None

        # every posted outcome is counted (applied, or late at a window's edge), plus the clock's ticks (one
        # per closed 2 s window at most)
        reported = 'sum(tiergate_events_total{action_type="reply_to_ticket"})'

        def counted() -> float:
            return float(value(reported) or 0)

        def at_run() -> bool:
            return value('tiergate_tier{action_type="reply_to_ticket",tier="run"}') == "1"

        # wait for a scrape that has both: the count alone can be reached early, the ticks making up for
        # outcomes not counted yet, by a scrape taken before the promotion
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (counted() >= posted and at_run()):
            time.sleep(0.5)
        assert posted <= counted() < posted + 60
        assert at_run()
        assert value('tiergate_decisions_total{action_type="reply_to_ticket",kind="promote"}') == "2"
        assert value('tiergate_tier{action_type="refund_up_to_50",tier="crawl"}') == "1"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=20)
        server.terminate()
        server.wait(timeout=20)


def test_plot_draws_bars_samples_and_tiers_from_a_history(tmp_path: Path) -> None:
    """`tiergate plot` samples each type's view at its closes (the climb to Run is in the data) and writes a PNG."""
    from tiergate.streams.cli import main
    from tiergate.streams.plot import timelines

    events = GOLDEN / "clean_climb" / "events.jsonl"
    lines = timelines(events.read_bytes().splitlines(), read_policy(GOLDEN / "policy.yaml"))
    tiers = [view.tier for view in lines["reply_to_ticket"].views]
    assert tiers[0] == "crawl" and tiers[-1] == "run" and "walk" in tiers
    assert "lookup_order" not in lines  # read-only: never evaluated, nothing to draw
    output = tmp_path / "tiers.png"
    assert main(["plot", str(events), "--policy", str(GOLDEN / "policy.yaml"), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 20_000


def test_plot_takes_the_policy_from_a_log_that_carries_it(tmp_path: Path) -> None:
    """A history that begins with its policy's activation (examples/events.jsonl) plots without --policy, as
    replay and backtest fold it; a log without one says what to give."""
    from tiergate.streams.cli import main

    output = tmp_path / "tiers.png"
    examples = ROOT / "examples"
    assert main(["plot", str(examples / "events.jsonl"), "-o", str(output), "--types", "reply_to_ticket"]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old_log = GOLDEN / "old_log" / "events.jsonl"  # from before policies lived in the log
    bare = subprocess.run(
        [sys.executable, "-m", "tiergate.streams.cli", "plot", str(old_log)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TIERGATE_POLICY"},
    )
    assert bare.returncode == 2 and "carries no policy activation? give --policy POLICY.yaml" in bare.stderr
