"""The package as a user outside the repository gets it: `python -m build` makes an sdist and a wheel (the
wheel built from the sdist, so the sdist is complete), the wheel installs into a fresh virtualenv in a
directory far from the checkout, and `tiergate demo` runs there with nothing but what the wheel brought."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.package


def run(*argv: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_wheel_installs_outside_the_repo_and_runs_the_demo(tmp_path: Path) -> None:
    """sdist and wheel build without a packaging warning about data directories; the wheel carries the CLI
    package, the demo's policy and the console's templates and static files; installed in a fresh venv and run
    from an unrelated directory, `tiergate demo` replays its log byte for byte."""
    assert not tmp_path.is_relative_to(ROOT)
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    assert "would be ignored" not in built.stdout + built.stderr
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr
    (sdist,), (wheel,) = dist.glob("tiergate-*.tar.gz"), dist.glob("tiergate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"tiergate/streams/cli/__init__.py", "tiergate/streams/examples/demo-policy.yaml"} <= names
    assert "tiergate/streams/topics.yaml" in names  # the topic definition: a worker runs from any directory
    console = {"templates/page.html", "templates/_rejected.html", "static/console.js", "static/console.css"}
    assert {f"tiergate/streams/console/{name}" for name in console} <= names
    assert not any(name.startswith(("tests/", "models/", "streams/")) for name in names)
    compiled = {name.split(".", 1)[0] for name in names if name.endswith(".so")}  # setup.py: mypyc builds the fold
    assert {"tiergate/models/fold", "tiergate/streams/pipeline"} <= compiled
    assert "tiergate/models/fold.py" in names  # the source ships beside its extension
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/streams/cli/__main__.py") for name in archive.getnames())

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    tiergate = tmp_path / "venv" / "bin" / "tiergate"
    assert run(tiergate, "--version", cwd=elsewhere).stdout.startswith("tiergate 0.")
    done = run(tiergate, "demo", "--days", "12", "--seconds", "2", "--data-dir", "demo", "--json", cwd=elsewhere)
    figures = json.loads(done.stdout)
    assert figures["replay_matches"] is True and figures["events"].get("rejected", 0) == 0
    assert (elsewhere / "demo" / "policy.yaml").is_file()
    assert run(tiergate, "check-policy", elsewhere / "demo" / "policy.yaml", cwd=elsewhere).stdout


def test_an_edited_source_of_an_editable_install_is_found_stale(tmp_path: Path) -> None:
    """The link tree of `make setup` links each source beside its extension: a source changed after its
    extension was built is stale (its extension runs, not the edit), and the CLI and the tests say so. A
    copied source (an installed wheel, whose files carry install times) is never judged by its time."""
    from tiergate.streams.compiled import stale_extensions

    repo, tree = tmp_path / "repo", tmp_path / "tree"
    repo.mkdir()
    tree.mkdir()
    for name in ("fold", "closes"):
        (tree / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
        (repo / f"{name}.py").write_text("")
        (tree / f"{name}.py").symlink_to(repo / f"{name}.py")
    (tree / "copied.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tree / "copied.py").write_text("")
    old = (tree / "fold.cpython-311-x86_64-linux-gnu.so").stat().st_mtime - 60
    for built in tree.glob("*.so"):
        os.utime(built, (old, old))
    os.utime(repo / "closes.py", (old - 60, old - 60))  # compiled after its last edit
    assert stale_extensions([tree]) == [str(repo / "fold.py")]
