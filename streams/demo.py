"""`tiergate demo`: a simulated fleet earns (and loses) autonomy on a live embedded server, in under a minute.

The demo starts the embedded runtime on a loopback port with a clock it drives itself: simulated event
time runs about a day a second. Each simulated hour the fleet asks the server for the tier map (as an
agent would) and acts at those tiers; what arrives in the hour is posted as NDJSON with the server's clock
at the time it arrived by (so nothing is ahead of the clock, and nothing in transit finds its window
closed); the server's own ticker closes the windows. A live table shows tiers, rates, sample sizes and hold
progress. At the end the data directory holds the SQLite store and an export of the log that
`tiergate replay` turns back into the same promotion log, which the demo checks.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from tiergate.models.wire import format_ts, parse_ts

from .clock import ManualClock
from .embedded import DB_NAME, EmbeddedRuntime
from .http import make_app
from .policy_file import read_policy
from .replay import line_writer, replay_file
from .settings import ServeSettings
from .simulate import HOUR, Delivery, Fleet, Profile, Quality, TierOf, story_fleet
from .store import Store

START = parse_ts("2026-11-01T00:00:00Z")
NEW_TYPE = "summarize_thread"  # the action type the operator adds half way through


def changed_policy(path: Path) -> str:
    """The operator's mid-run change: refund_over_50's acceptance bar tightened, summarize_thread added."""
    text = path.read_text().replace('policy_version: "demo-1"', 'policy_version: "demo-2"')
    text = text.replace(
        "  refund_over_50: {max_tier: walk, outcomes: {customer: {maturity: 2d}}}",
        "  refund_over_50: {max_tier: walk, outcomes: {customer: {maturity: 2d}},\n"
        "                   tiers: {crawl: {promote: {bars: [\n"
        "                     {metric: acceptance_rate, target: 0.95, min_samples: 50}]}}}}\n"
        f"  {NEW_TYPE}: {{}}",
    )
    return text


TIER_STYLE = {"crawl": "yellow", "walk": "cyan", "run": "bold green", "retired": "dim"}


def demo_policy_path() -> Path:
    return Path(str(files("tiergate.streams") / "examples" / "demo-policy.yaml"))


@dataclass
class DemoResult:
    data_dir: Path
    posted: Counter[str]  # what the server made of each posted event: applied, duplicate, late, rejected
    decisions: list[dict[str, Any]]
    replay_matches: bool

    @property
    def events(self) -> int:
        return sum(self.posted.values())

    def record(self) -> dict[str, Any]:
        """The run's figures as data (`tiergate demo --json`)."""
        moves = [d for d in self.decisions if d["kind"] not in ("initial", "violation")]
        return {
            "data_dir": str(self.data_dir),
            "events": {"posted": self.events, **dict(sorted(self.posted.items()))},
            "tier_changes": len(moves),
            "violations": sum(d["kind"] == "violation" for d in self.decisions),
            "tiers": {d["action_type"]: d["to_tier"] for d in self.decisions if d["kind"] != "violation"},
            "replay_matches": self.replay_matches,
        }


def status_table(status: dict[str, Any], now: int, posted: Counter[str]) -> Table:
    """One row per action type: tier, each bar's rate and samples against its target, hold progress."""
    title = f"tiergate demo — event time {format_ts(now)} — {posted_line(posted)}"
    table = Table(title=title, title_justify="left")
    for column in ("action type", "tier", "bars (figure, n / min samples, bar)", "hold", "since"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps a name, never cuts it
    for view in status["action_types"]:
        tier = view["tier"] or "retired"  # a retired type has no tier (and no bars)
        bars = [_bar_line(rule, bar) for rule in ("promote", "keep") for bar in view[rule]]
        customer = view.get("customer") or {}
        if customer.get("pending"):
            waiting = ", ".join(f"{n} at {tier}" for tier, n in customer["pending"].items())
            bars.append(f"customer units maturing: {waiting}")
        notes = [f"cap {view['cap']}"] if view["cap"] else []
        notes += ["read-only"] if view["read_only"] else []
        hold = view["hold"]
        progress = "" if hold["required"] is None else _bar(hold["progress"])
        table.add_row(
            view["action_type"],
            f"[{TIER_STYLE[tier]}]{tier}[/]" + (f" ({', '.join(notes)})" if notes else ""),
            "\n".join(bars) or "-",
            progress,
            (view["since"] or "start")[:16],  # to the minute, as the promotion log's times
        )
    return table


def posted_line(posted: Counter[str]) -> str:
    """ "1,234 events posted: 1,200 applied, 30 late, 4 duplicate" — every result the server gave, rejections too."""
    results = ", ".join(f"{n:,} {result}" for result, n in sorted(posted.items(), key=lambda item: -item[1]))
    return f"{sum(posted.values()):,} events posted" + (f": {results}" if results else "")


def _bar_line(rule: str, bar: dict[str, Any]) -> str:
    """A bar by its rule's figure: a sequential test's statistic against its threshold (on the outcomes since
    the test began); under v1, a promote bar's Wilson lower bound against the target and a keep bar's rate
    against target − margin."""
    test = bar.get("test")
    if test is not None:
        name = "log e-value" if test["rule"] == "mixture" else "sequential test"
        line = f"≥{test['threshold']:.2f} passes" if rule == "promote" else f"demote at ≥{test['threshold']:g}"
        figures = f"(n {test['n']}/{bar['min_samples']}, {line})"
        return f"{bar['metric']} {name} {test['statistic']:.2f} {figures} {_verdict(bar['verdict'])}"
    if rule == "promote":
        figure, line = bar["lower"], f"≥{bar['target']}"
    else:
        figure, line = bar["rate"], f"≥{bar['threshold']:g} = {bar['target']} − margin"
    shown = "-" if figure is None or not bar["n"] else format(figure, ".3f")
    label = "lower" if rule == "promote" else "keep rate"
    return f"{bar['metric']} {label} {shown} (n {bar['n']}/{bar['min_samples']}, {line}) {_verdict(bar['verdict'])}"


def _verdict(verdict: str) -> str:
    return {"pass": "[green]pass[/]", "fail": "[red]fail[/]", "inconclusive": "[dim]thin[/]"}[verdict]


def _bar(progress: float, width: int = 12) -> str:
    filled = round(progress * width)
    return "█" * filled + "░" * (width - filled) + f" {progress:4.0%}"


async def run_demo(
    data_dir: Path, days: int, seconds: float, console: Console, seed: int = 7, sock: socket.socket | None = None
) -> DemoResult:
    """Run the story for `days` of event time in about `seconds` of wall time, serving on `sock` (a listening
    socket; default: a free loopback port); return what it decided."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    policy_path = data_dir / "policy.yaml"
    shutil.copyfile(demo_policy_path(), policy_path)
    policy = read_policy(policy_path)
    clock = ManualClock(START)
    evaluator = EmbeddedRuntime(policy, data_dir, clock)
    settings = ServeSettings(policy=policy_path, data_dir=data_dir, tick_interval=0.01)
    runner = web.AppRunner(make_app(evaluator, settings), access_log=None)
    await runner.setup()
    sock = sock or _loopback_socket()
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    console.print(
        f"serving on http://127.0.0.1:{port} while it runs: the console at /console, the tier map at /v1/tiers"
    )
    maturity = {name: rules.maturity for name, rules in policy.types.items() if rules.maturity is not None}
    fleet = story_fleet(START, seed=seed, days=days, maturity=maturity)
    posted: Counter[str] = Counter()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            view = FleetView(http, posted)
            first = status_table(await view.status(), clock.now(), posted)
            with Live(first, console=console, refresh_per_second=8) as live:

                async def refresh() -> None:
                    live.update(status_table(await view.status(), clock.now(), posted))

                settle = settling_time(fleet.delivery, policy.allowed_lateness)
                await _story(fleet, view, clock, Pace(days, seconds), settle, refresh, policy_path)
                clock.current = START + days * 24 * HOUR + policy.allowed_lateness  # the last window closes
                await asyncio.sleep(0.1)  # the ticker's last closes
                await refresh()
    finally:
        await runner.cleanup()
        evaluator.close()
    return _finish(data_dir, policy_path, posted)


def _loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@dataclass(frozen=True)
class Pace:
    """`days` of event time spread over `seconds` of wall time."""

    days: int
    seconds: float

    @property
    def hours(self) -> int:
        return self.days * 24


async def _story(
    fleet: Fleet,
    view: FleetView,
    clock: ManualClock,
    pace: Pace,
    settle: int,
    refresh: Callable[[], Awaitable[None]],
    policy_path: Path,
) -> None:
    """Each simulated hour: act on the tier map, post what arrived, keep pace with the wall clock. Half way
    through, the operator changes the policy of the running server (a tighter bar, a new action type)."""
    started = time.monotonic()
    for hour in range(pace.hours):
        begins = START + hour * HOUR
        if hour == pace.hours // 2:
            clock.current = begins
            await view.apply(changed_policy(policy_path))
            fleet.profiles[NEW_TYPE] = Profile(6, Quality(acceptance=0.99))
        fleet.act(begins, await view.tier_map())
        for until in (begins + settle, begins + HOUR):
            clock.current = until  # the server's clock reads the time the batch arrives by
            await view.post(list(fleet.arrivals(until)))
        await asyncio.sleep(max(0.0, started + (hour + 1) * pace.seconds / pace.hours - time.monotonic()))
        if hour % 6 == 5:
            await refresh()


def settling_time(delivery: Delivery, allowed_lateness: int) -> int:
    """How long into an hour the fleet posts what arrived so far, before the clock moves to the hour's end.

    Events delayed in transit (up to `delivery.jitter_seconds`) still belong to the previous hour's window;
    they must reach the server before its clock passes that window's end plus the allowed lateness, when
    the server's ticker closes it. Everything else of the hour is posted with the clock at the hour's end,
    so no event is ever ahead of the clock (`future`)."""
    if not delivery.jitter_seconds < allowed_lateness:
        raise ValueError(
            f"the fleet delays events up to {delivery.jitter_seconds}s, not less than the policy's "
            f"allowed_lateness of {allowed_lateness}s: the demo would make them late"
        )
    return delivery.jitter_seconds


@dataclass
class FleetView:
    """The fleet's side of the HTTP API: the tier map it acts on, and the posts it makes (with their results)."""

    http: aiohttp.ClientSession
    posted: Counter[str]
    activations: list[dict[str, Any]] = field(default_factory=list)  # what the operator applied, as answered

    async def tier_map(self) -> TierOf:
        async with self.http.get("/v1/tiers") as response:
            tiers = {r["action_type"]: r["tier"] for r in (await response.json())["tiers"]}
        return lambda action_type: tiers.get(action_type, "crawl")  # an unknown type is crawl: fail closed

    async def post(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        body = b"\n".join(orjson.dumps(event) for event in events)
        headers = {"Content-Type": "application/x-ndjson"}
        async with self.http.post("/v1/events", data=body, headers=headers) as response:
            response.raise_for_status()
            self.posted.update((await response.json())["counts"])

    async def apply(self, policy_text: str) -> None:
        """What an operator does mid-week: activate a changed policy on the running server."""
        body = {"policy": policy_text, "actor": "ops@example.com", "reason": "tighter refund bar; summaries go live"}
        async with self.http.post("/v1/policy", json=body) as response:
            response.raise_for_status()
            self.activations.append(await response.json())

    async def status(self) -> dict[str, Any]:
        async with self.http.get("/v1/status") as response:
            return await response.json()  # type: ignore[no-any-return]


def _finish(data_dir: Path, policy_path: Path, posted: Counter[str]) -> DemoResult:
    """Export the log and the stored decisions, replay the export, and compare the two decision logs."""
    events, stored, replayed = data_dir / "events.jsonl", data_dir / "decisions.jsonl", data_dir / "replayed.jsonl"
    store = Store(data_dir / DB_NAME)
    try:
        with line_writer(events) as write_event:
            for _, raw in store.events():
                write_event(raw.decode())
        with line_writer(stored) as write_stored:
            for record in store.all_decisions():
                write_stored(record)
    finally:
        store.close()
    with line_writer(replayed) as write_replayed, line_writer(data_dir / "rejected.jsonl", lazy=True) as keep:
        # the exported log carries its policy: the replay needs none
        replay_file(events, None, lambda d: write_replayed(d.to_json()), lambda r: keep(r.to_json().decode()))
    decisions = [orjson.loads(line) for line in stored.read_bytes().splitlines()]
    return DemoResult(data_dir, posted, decisions, stored.read_bytes() == replayed.read_bytes())


def _a_move(decision: dict[str, Any]) -> bool:
    """A decision the summary shows: tier changes, and the types a later activation brought in."""
    if decision["kind"] == "violation":
        return False
    if decision["kind"] == "initial":
        return bool(decision["policy_version"] != "demo-1")
    return bool(decision["kind"] != "policy" or decision["from_tier"] != decision["to_tier"])


def tiergate_command() -> str:
    """How to run tiergate from the user's shell: `tiergate` where it is on the PATH, else the script this
    process runs from (`make demo` runs the virtualenv's, which is not on the PATH until it is activated)."""
    if shutil.which("tiergate") is not None:
        return "tiergate"
    script = Path(sys.argv[0])
    return str(script) if script.name == "tiergate" else "tiergate"


def summary(result: DemoResult) -> Group:
    log = Table(
        title="promotion log (the first initial decisions, tier violations and policy decisions that move nothing "
        "left out)",
        title_justify="left",
    )
    for column in ("decision", "at", "move", "why"):
        log.add_column(column, overflow="fold")
    moves = [d for d in result.decisions if _a_move(d)]
    for d in moves:
        log.add_row(
            d["decision_id"],
            (d["at"] or "—")[:16],  # an initial decision has no time: its type came with an activation
            f"{d['from_tier'] or '(new)'} → {d['to_tier']}"
            + (f" ({d['op']} by {d['actor']})" if d["kind"] == "override" else f" ({d['kind']})"),
            d["reason"],
        )
    activations = sorted(
        {(d["activation_id"], d["policy_version"], d["actor"]) for d in result.decisions if d["kind"] == "policy"}
    )
    violations = sum(d["kind"] == "violation" for d in result.decisions)
    data = result.data_dir
    command = tiergate_command()
    lines = [
        *(
            f"policy {version} activated by {actor} while the fleet ran (activation {activation}): every type kept "
            "its tier and evidence"
            for activation, version, actor in activations
        ),
        f"{posted_line(result.posted)}.",
        f"{len(moves)} tier changes; {violations} tier violations logged (agents acting on a tier map that had "
        "just moved).",
        f"replaying the exported log reproduces the promotion log byte for byte: "
        f"{'[green]yes[/]' if result.replay_matches else '[red]NO[/]'}",
        "",
        f"files in {data}/:",
        f"  {data / 'tiergate.db'}   the SQLite store (event log, decisions, state, kept events)",
        f"  {data / 'events.jsonl'}  the event log, ticks included",
        f"  {data / 'decisions.jsonl'}  the promotion log",
        f"  {data / 'policy.yaml'}  the policy it ran (from {demo_policy_path().name})",
        "",
        "try:",
        f"  {command} explain escalate_to_human --log {data / 'decisions.jsonl'}",
        f"  {command} replay {data / 'events.jsonl'}   # the log carries its policies",
        f"  {command} serve --policy {data / 'policy.yaml'} --data-dir {data}   # then GET /v1/tiers, /metrics",
    ]
    return Group(log, *lines)
