"""The fold compiled: the pure core's modules (and replay's loop) built as C extensions by mypyc.

Everything else about the package is in pyproject.toml. The fold is plain, type-checked Python; mypyc turns
the same source into one C extension module each, in which the fold and replay's loop take about half the
time per event (docs/benchmarks.md), with the same behaviour: the whole test suite runs against the compiled
modules, and tests/pure_python.py runs the plain source beside them. The wheel carries the `.py` sources too.

`TIERGATE_PURE_PYTHON=1` builds without compiling (no C compiler needed; everything runs, slower).

mypyc names a module after its path, and the repository keeps `tiergate.models` in `models/` (the package
directories of pyproject.toml): the modules are compiled from a copy laid out as `tiergate/...`, so each
extension has its real name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WITHOUT_COMPILING = "or install without compiling: TIERGATE_PURE_PYTHON=1 pip install ... (the same, slower)"

ROOT = Path(__file__).parent
COMPILED = [
    "models/activations.py",
    "models/closes.py",
    "models/decisions.py",
    "models/durations.py",
    "models/evidence.py",
    "models/fold.py",
    "models/maturity.py",
    "models/overrides.py",
    "models/resolved.py",
    "models/results.py",
    "models/sequential.py",
    "models/state.py",
    "models/stats.py",
    "models/ticks.py",
    "models/transition.py",
    "models/tripwire.py",
    "models/views.py",
    "models/windows.py",
    "streams/pipeline.py",
    "streams/replay.py",
]
"""The fold and replay's loop. Not compiled: the pydantic models (the policy, the rules, the wire format),
whose classes pydantic builds at import, and the runtimes' I/O, where compiling gains nothing."""


MYPY_CONFIG = """[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
"""
"""mypyc's own type check: the types it compiles with, not a review (`make typecheck` is strict, with pydantic's
plugin, over the whole project). A build environment has pydantic (pyproject.toml's build requirements) but
not the runtimes' other libraries, whose values the fold only passes on."""


def compiled_modules() -> list[Extension]:
    if os.environ.get("TIERGATE_PURE_PYTHON", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    staging = ROOT / "build" / "mypyc-src"
    shutil.rmtree(staging, ignore_errors=True)
    for package in ("models", "streams"):
        shutil.copytree(
            ROOT / package, staging / "tiergate" / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    (staging / "mypy.ini").write_text(MYPY_CONFIG)
    paths = [str(staging / "tiergate" / path) for path in COMPILED]
    cwd = Path.cwd()
    os.chdir(staging)  # module names are paths relative to it: tiergate/models/fold.py is tiergate.models.fold
    try:
        return mypycify(
            ["--config-file", "mypy.ini", "--explicit-package-bases", *(os.path.relpath(p, staging) for p in paths)],
            opt_level="3",
            group_name="tiergate_fold",  # the runtime the compiled modules share: tiergate_fold__mypyc
            target_dir=str(ROOT / "build" / "mypyc"),
        )
    except SystemExit as refused:  # mypy's errors are printed above it, naming the staged copy
        raise SystemExit(
            f"mypyc could not compile the fold ({refused}): the errors above name tiergate/<package>/<module>.py, "
            f"which is <package>/<module>.py in this repository; fix them, {WITHOUT_COMPILING}"
        ) from None
    finally:
        os.chdir(cwd)


class CompileOrExplain(build_ext):
    """Building the extensions needs a C compiler and Python's headers: without them, say so and what to do,
    rather than end on the compiler's own error."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as failed:
            raise SystemExit(
                f"compiling the fold failed ({failed}): it needs a C compiler and Python's headers (on Debian: "
                f"apt-get install gcc python3-dev); {WITHOUT_COMPILING}"
            ) from failed


setup(ext_modules=compiled_modules(), cmdclass={"build_ext": CompileOrExplain})
