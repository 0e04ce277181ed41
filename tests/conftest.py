"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tiergate.streams.compiled import stale_extensions

from .kafka_harness import broker, broker_running


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a stale build: the fold is compiled (setup.py), and an edited source runs only once
    `make setup` has compiled it again."""
    stale = stale_extensions()
    if stale:
        pytest.exit(f"{', '.join(stale)} changed after it was compiled: run `make setup` first", returncode=2)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[None]:
    """The local broker: started here unless it already runs (make test starts it), stopped if started here."""
    started_here = not broker_running()
    if started_here:
        broker("start")
    yield
    if started_here:
        broker("stop")
