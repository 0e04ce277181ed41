"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kafka_harness import broker, broker_running


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[None]:
    """The local broker: started here unless it already runs (make test starts it), stopped if started here."""
    started_here = not broker_running()
    if started_here:
        broker("start")
    yield
    if started_here:
        broker("stop")
