"""The embedded runtime's commands: `serve` (HTTP over SQLite) and `demo` (a simulated fleet on it)."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..access import Credentials
from ..embedded import DB_NAME
from ..policy_file import read_policy
from ..settings import ServeSettings
from .history import open_runtime
from .terminal import CommandError, counted, err, examples, print_json, table_width


@dataclass(frozen=True, slots=True)
class Listener:
    """Who listens, and the settings that choose where, as a busy or refused port's message names them."""

    command: str = "tiergate serve"
    port: str = "--port"
    host: str = "--host"


SERVE = Listener()


def listening_socket(host: str, port: int, named: Listener = SERVE) -> socket.socket:
    """Bind and listen before anything is printed, so a busy port is an error, not a banner then a traceback."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        problem = f"{named.host} {host}: cannot resolve it ({error.strerror}); give an address such as 127.0.0.1"
        raise CommandError(problem) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise CommandError(_bind_problem(host, port, error, named)) from None
    return sock


def _bind_problem(host: str, port: int, error: OSError, named: Listener) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use (another {named.command}?): stop it, or give another {named.port}"
    if error.errno == errno.EACCES:
        return f"{host}:{port}: permission denied (ports below 1024 need privileges): give a {named.port} above 1023"
    return f"cannot listen on {host}:{port} ({error.strerror}): give another {named.host} or {named.port}"


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..clock import SystemClock
    from ..http import make_app

    flags = {"policy": args.policy, "data_dir": args.data_dir, "host": args.host, "port": args.port}
    settings = ServeSettings.load(args.config, **flags, token=args.token, credentials_file=args.credentials_file)
    settings.check_exposure()
    credentials = settings.load_credentials()
    _warn_about_access(settings, credentials)
    policy = None if settings.policy is None else read_policy(settings.policy)
    if policy is None and not (settings.data_dir / DB_NAME).exists():
        raise CommandError(f"{settings.data_dir} holds no log yet: give --policy POLICY.yaml (or TIERGATE_POLICY)")
    sock = listening_socket(settings.host, settings.port)
    try:
        evaluator = open_runtime(policy, settings.data_dir, SystemClock(), settings.max_skew, settings.max_past)
    except BaseException:
        sock.close()
        raise
    try:
        port = sock.getsockname()[1]
        in_force = evaluator.current_policy()
        if in_force is not None:
            version = in_force.policy_version
        elif policy is not None:
            version = policy.version
        else:
            raise CommandError(
                f"{settings.data_dir}: its log carries no policy yet: give --policy POLICY.yaml (or TIERGATE_POLICY)"
            )
        types = sum(not key.retired for key in evaluator.state.keys.values())
        err.print(
            f"tiergate serve: policy {escape(version)} ({counted(types, 'action type')}), "
            f"data in {escape(str(settings.data_dir))}, http://{settings.host}:{port}/v1/tiers"
        )
        for problem in evaluator.problems:
            err.print(f"[yellow]warning:[/] {escape(problem)} (/healthz says degraded)")
        app = make_app(evaluator, settings, credentials=credentials)
        web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)
    finally:
        evaluator.close()
    return 0


def _warn_about_access(settings: ServeSettings, credentials: Credentials | None) -> None:
    """Say at start what guards the server, and warn where it is weaker than it should be."""
    if credentials is not None:
        roles = Counter(c.role for c in credentials.all)
        err.print(f"credentials: {', '.join(f'{n} {role}' for role, n in sorted(roles.items()))}")
        if settings.credentials_file is not None and settings.credentials_file.stat().st_mode & 0o077:
            err.print(
                f"[yellow]warning:[/] {escape(str(settings.credentials_file))} can be read by other users: chmod 600 it"
            )
    elif settings.token is not None:
        err.print(
            "[yellow]warning:[/] a lone token (TIERGATE_TOKEN) acts as an operator for every write, and reads stay "
            "open; give agents, reporters and readers their own credentials in TIERGATE_CREDENTIALS_FILE"
        )


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from ..demo import run_demo, summary

    port = _demo_port(args.port)
    console = Console(highlight=False, quiet=args.json, width=table_width())
    sock = listening_socket("127.0.0.1", port)
    console.print(
        f"[bold]tiergate demo[/]: {args.days} days of a simulated support fleet, in about {args.seconds:.0f}s."
    )
    data_dir = Path(args.data_dir)
    try:
        result = asyncio.run(run_demo(data_dir, args.days, args.seconds, console, seed=args.seed, sock=sock))
    except OSError as error:
        raise CommandError(f"{data_dir}: cannot use it for the demo ({error.strerror}); give --data-dir") from None
    if args.json:
        print_json(result.record())
    console.line()  # a live table ends without a newline when the output is not a terminal
    console.print(summary(result))
    return 0 if result.replay_matches else 1


def _demo_port(flag: int | None) -> int:
    """--port, else TIERGATE_PORT, else 0 (any free port: two demos never collide)."""
    if flag is not None:
        return flag
    value = os.environ.get("TIERGATE_PORT", "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) > 65535:
        raise CommandError(f"TIERGATE_PORT: {value!r} is not a port; give a number from 0 to 65535")
    return int(value)


def add_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="the embedded runtime: HTTP API over a SQLite store",
        description="Serve the tier map, the decision log and /metrics over HTTP, folding posted events into "
        "a SQLite store. Settings: flags, then TIERGATE_* variables, then the --config TOML file.",
        **examples(
            "tiergate serve --policy policy.yaml --data-dir tiergate-data",
            "TIERGATE_CREDENTIALS_FILE=/etc/tiergate/credentials tiergate serve --policy policy.yaml --host 0.0.0.0",
            "tiergate serve --config tiergate.toml --port 8361",
        ),
    )
    serve.add_argument("--policy", metavar="POLICY.yaml", help="(or TIERGATE_POLICY)")
    serve.add_argument("--data-dir", metavar="DIR", help="(or TIERGATE_DATA_DIR; default ./tiergate-data)")
    serve.add_argument("--host", help="(or TIERGATE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="(or TIERGATE_PORT; default 8360)")
    serve.add_argument(
        "--credentials-file",
        type=Path,
        metavar="FILE",
        help="credentials, one `name role secret` a line (or TIERGATE_CREDENTIALS_FILE, or TIERGATE_CREDENTIALS)",
    )
    serve.add_argument("--token", help="legacy: one operator token (prefer TIERGATE_TOKEN, which keeps it out of ps)")
    serve.add_argument("--config", type=Path, metavar="FILE.toml", help="settings file (lowest precedence)")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="watch a simulated fleet earn autonomy on a live embedded server",
        description="Start an embedded server on a loopback port, drive a simulated support fleet through "
        "it at about a day a second, show the tiers live, then check that replaying the exported log "
        "reproduces the promotion log. Exit 1 if it does not.",
        **examples(
            "tiergate demo", "tiergate demo --days 10 --seconds 10 --data-dir /tmp/demo", "tiergate demo --json"
        ),
    )
    demo.add_argument("--data-dir", default="tiergate-demo", metavar="DIR", help="replaced on each run")
    demo.add_argument("--days", type=int, default=30, help="simulated days of event time")
    demo.add_argument("--seconds", type=float, default=30.0, help="wall-clock time to spread them over")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--json", action="store_true", help="no live table: print the run's figures as JSON")
    demo.add_argument(
        "--port", type=int, help="serve on this loopback port while it runs (or TIERGATE_PORT; default: any free one)"
    )
    demo.set_defaults(run=_demo)
