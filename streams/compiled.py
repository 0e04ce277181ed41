"""Which fold runs: setup.py compiles the pure core and replay's loop with mypyc, or leaves them plain
Python (`TIERGATE_PURE_PYTHON=1`). In an editable install (`make setup`) a source edited after it was compiled
does not run until `make setup` compiles it again: the extension beside it is imported first."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("tiergate.models", "tiergate.streams")


def fold_build() -> str:
    """What the fold runs as: "compiled (mypyc)" or "plain Python"."""
    compiled = (importlib.import_module("tiergate.models.fold").__file__ or "").endswith(".so")
    return "compiled (mypyc)" if compiled else "plain Python"


def installed_folders() -> list[Path]:
    return [Path(folder) for name in PACKAGES for folder in importlib.import_module(name).__path__]


def stale_extensions(folders: Iterable[Path] | None = None) -> list[str]:
    """The sources of an editable install changed after they were compiled (their extension runs, not the
    edit). Only linked sources count — the editable install's link tree; an installed wheel's files carry the
    times of the install, in no particular order."""
    stale = []
    for folder in installed_folders() if folders is None else folders:
        for built in folder.glob("*.so"):
            source = folder / (built.name.split(".", 1)[0] + ".py")
            if source.is_symlink() and source.stat().st_mtime > built.stat().st_mtime:
                stale.append(str(source.resolve()))
    return sorted(stale)
