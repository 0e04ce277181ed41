"""`tiergate keys new`: an operator's Ed25519 signing key for a Kafka deployment."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .terminal import CommandError, err, examples

if TYPE_CHECKING:
    from ..signing import OperatorKey


def operator_key(path: str | None) -> OperatorKey:
    """The operator's signing key: --key FILE, or TIERGATE_OPERATOR_KEY_FILE."""
    from ..signing import OperatorKey, OperatorKeyError

    key_file = path or os.environ.get("TIERGATE_OPERATOR_KEY_FILE")
    if not key_file:
        raise CommandError(
            "give the operator's signing key: --key FILE or TIERGATE_OPERATOR_KEY_FILE (tiergate keys new)"
        )
    try:
        return OperatorKey.read(Path(key_file))
    except OperatorKeyError as error:
        raise CommandError(str(error)) from None


def _new(args: argparse.Namespace) -> int:
    from ..signing import OperatorKey

    path = Path(args.out or f"{args.key_id}.key")
    if path.exists():
        raise CommandError(f"{path} exists: a key file is never overwritten; choose another --out")
    key = OperatorKey.new(args.key_id)
    try:
        key.write(path)
    except OSError as error:
        raise CommandError(f"{path}: cannot write the key ({error.strerror})") from None
    entry = {"key_id": key.key_id, "public_key": key.public_key(), "actor": args.actor}
    err.print(
        f"wrote the private key to {path} (mode 0600: keep it secret; sign with TIERGATE_OPERATOR_KEY_FILE={path}).\n"
        "Add this to the policy's `operators` (or to the workers' genesis keys) so the deployment trusts it:"
    )
    print(yaml.safe_dump({"operators": [entry]}, sort_keys=False).rstrip())
    return 0


def add_commands(commands: Any) -> None:
    group = commands.add_parser(
        "keys",
        help="operator signing keys for a Kafka deployment",
        **examples(
            "tiergate keys new --key-id ops-2026 --actor ops@example.com --out ops-2026.key",
            "TIERGATE_OPERATOR_KEY_FILE=ops-2026.key tiergate policy apply policy.yaml --kafka --actor … --reason …",
        ),
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="make a key; print the public key entry for the policy's operators")
    new.add_argument("--key-id", required=True, help="the name the policy document knows the key by")
    new.add_argument("--actor", required=True, help="whose key it is (in the policy's operators)")
    new.add_argument("--out", metavar="FILE", help="where to write the private key (default KEY_ID.key)")
    new.set_defaults(run=_new)
