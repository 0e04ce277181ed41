"""The tier map client for synchronous agent code (and OpenFeature, whose Python SDK is synchronous)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from .tier_map import Listener, TierMapClient, TierMapStatus, TierTransport

T = TypeVar("T")


class SyncTierMapClient:
    """A TierMapClient on its own event loop thread, with plain calls: `with SyncTierMapClient(t) as tiers`.

    `tier_for`, `record`, `ready` and `status` read the same view as the async client and never block;
    `wait_until_ready` blocks the calling thread. Listeners are called on the client's thread.
    """

    def __init__(self, transport: TierTransport, staleness: float = 60.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tiergate-tier-map", daemon=True)
        self._thread.start()
        self.client: TierMapClient = self._call(self._start(transport, staleness))

    async def _start(self, transport: TierTransport, staleness: float) -> TierMapClient:
        client = TierMapClient(transport, staleness)
        await client.start()
        return client

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def tier_for(self, action_type: str) -> str:
        """The tier to act at (Crawl when unknown, retired, not loaded or stale)."""
        return self.client.tier_for(action_type)

    def record(self, action_type: str) -> Mapping[str, Any] | None:
        return self.client.record(action_type)

    @property
    def ready(self) -> bool:
        return self.client.ready

    def status(self) -> TierMapStatus:
        return self.client.status()

    def wait_until_ready(self, timeout: float) -> None:
        """Block until the view is live; TierMapNotReady with the transport's last error otherwise."""
        self._call(self.client.wait_until_ready(timeout))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.client.subscribe(listener)

    def close(self) -> None:
        """Stop the transport, then the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._call(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncTierMapClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
