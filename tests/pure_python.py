"""The fold as plain Python: setup.py compiles models/ and replay's loop with mypyc, and the suite tests the
compiled modules. A few tests run the same source uncompiled, in a subprocess: to compare the two, and to
watch calls inside the fold, which compiled callers make directly (a monkeypatch there changes nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tiergate.streams.compiled import fold_build

ROOT = Path(__file__).parent.parent


def compiled() -> bool:
    """Is the fold installed compiled (not with TIERGATE_PURE_PYTHON=1)?"""
    return fold_build() != "plain Python"


def run_pure(tmp_path: Path, script: str, *args: str) -> str:
    """Run `script` (with `args`) on a copy of the sources as plain Python, from the repository (so `tests`
    imports); its stdout. Its first line must be the file the fold was imported from, which is checked."""
    pure = tmp_path / "pure"
    for package in ("models", "streams"):
        shutil.copytree(
            ROOT / package, pure / "tiergate" / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(pure)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, _, rest = done.stdout.partition("\n")
    assert first == str(pure / "tiergate" / "models" / "fold.py")
    return rest
