"""An OpenFeature provider over the tier map client, for fleets that read flags through OpenFeature.

The flag key is the action type and its string value the tier (`crawl`, `walk`, `run`); the integer value
is the tier level (0, 1, 2). Answers fail closed exactly as `tier_for` does, and never with an error code
that would hand the caller's own default back: while the client is not ready the value is `crawl` with
reason STALE; for an action type the map does not hold (unknown, or retired) it is `crawl` with reason
DEFAULT. Booleans, floats and objects are not tiers: they resolve with a TYPE_MISMATCH error.

    from openfeature import api
    with SyncTierMapClient(HttpTierTransport("http://127.0.0.1:8360")) as tiers:
        api.set_provider_and_wait(TiergateProvider(tiers))   # waits up to ready_timeout for the map
        tier = api.get_client().get_string_value("refund_up_to_50", "crawl")

`initialize` waits up to `ready_timeout` for a live view and raises ProviderNotReadyError if none came (the
provider is then in ERROR, and still answers `crawl`). The client's changes become provider events: READY,
STALE, ERROR (no view yet, with the transport's error) and CONFIGURATION_CHANGED (flags_changed = the action
types whose tier changed or that were retired). While a provider initialises, the OpenFeature SDK itself
answers the caller's default: pass "crawl" as the default, and prefer `set_provider_and_wait`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from tiergate.models.wire import TIER_INDEX

from .sdk import SyncTierMapClient, TierMapEvent, TierMapNotReady, TierMapStatus

T = TypeVar("T")


class TierSource(Protocol):
    """What the provider reads: a TierMapClient or a SyncTierMapClient."""

    @property
    def ready(self) -> bool: ...

    def tier_for(self, action_type: str) -> str: ...

    def record(self, action_type: str) -> Mapping[str, Any] | None: ...

    def status(self) -> TierMapStatus: ...

    def subscribe(self, listener: Callable[[TierMapEvent], None]) -> Callable[[], None]: ...


class TiergateProvider(AbstractProvider):
    """Resolves a flag named after an action type to the tier it may act at."""

    def __init__(self, tiers: TierSource, ready_timeout: float = 5.0) -> None:
        super().__init__()
        self.tiers, self.ready_timeout = tiers, ready_timeout
        self._unsubscribe: Callable[[], None] | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="tiergate")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Forward the client's changes as provider events; wait (a sync client only) for a live view."""
        if self._unsubscribe is None:
            self._unsubscribe = self.tiers.subscribe(self._forward)
        if isinstance(self.tiers, SyncTierMapClient) and self.ready_timeout > 0:
            with contextlib.suppress(TierMapNotReady):
                self.tiers.wait_until_ready(self.ready_timeout)
        if not self.tiers.ready:
            why = self.tiers.status().last_error or "no live view yet"
            raise ProviderNotReadyError(f"tier map not ready ({why}): every flag answers crawl until it is")

    def shutdown(self) -> None:
        """Stop forwarding events (the client belongs to the caller, who closes it)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _forward(self, event: TierMapEvent) -> None:
        if event.kind == "changed":
            details = ProviderEventDetails(flags_changed=list(event.action_types), message=event.message)
            self.emit_provider_configuration_changed(details)
        elif event.kind == "ready":
            self.emit_provider_ready(ProviderEventDetails(message=event.message))
        elif event.kind == "stale":
            self.emit_provider_stale(ProviderEventDetails(message=event.message))
        else:  # never PROVIDER_FATAL: that would make the SDK hand back the caller's default
            self.emit_provider_error(ProviderEventDetails(message=event.message, error_code=ErrorCode.GENERAL))

    def _tier(self, flag_key: str) -> FlagResolutionDetails[str]:
        tier = self.tiers.tier_for(flag_key)
        if not self.tiers.ready:
            return FlagResolutionDetails(tier, reason=Reason.STALE, variant=tier)
        record = self.tiers.record(flag_key)
        if record is None:  # unknown or retired: crawl, as the fleet's default
            return FlagResolutionDetails(tier, reason=Reason.DEFAULT, variant=tier)
        metadata: dict[str, bool | int | float | str] = {
            "version": int(record["version"]),
            "decision_id": str(record.get("decision_id", "")),
        }
        return FlagResolutionDetails(tier, reason=Reason.STATIC, variant=tier, flag_metadata=metadata)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._tier(flag_key)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        tier = self._tier(flag_key)
        return FlagResolutionDetails(
            TIER_INDEX[tier.value], reason=tier.reason, variant=tier.variant, flag_metadata=tier.flag_metadata
        )

    def _mismatch(self, default_value: T) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(
            default_value,
            error_code=ErrorCode.TYPE_MISMATCH,
            reason=Reason.ERROR,
            error_message="tiergate flags are tiers: read them as strings or integers",
        )

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._mismatch(default_value)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._mismatch(default_value)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._mismatch(default_value)
