"""An OpenFeature provider over the tier map client, for fleets that read flags through OpenFeature.

The flag key is the action type and its string value the tier (`crawl`, `walk`, `run`); the integer value
is the tier level (0, 1, 2). The answer fails closed exactly as `tier_for` does: while the client is not
loaded or stale the value is `crawl` with reason STALE, and for an action type the map does not hold it is
`crawl` with reason DEFAULT. Booleans, floats and objects are not tiers: they resolve to the caller's
default with a TYPE_MISMATCH error.

    from openfeature import api
    api.set_provider(TiergateProvider(tier_map_client))
    tier = api.get_client().get_string_value("refund_up_to_50", "crawl")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from tiergate.models.wire import TIER_INDEX

from .sdk import TierMapStatus

T = TypeVar("T")


class TierSource(Protocol):
    def tier_for(self, action_type: str) -> str: ...

    def status(self) -> TierMapStatus: ...

    def record(self, action_type: str) -> dict[str, Any] | None: ...


class TiergateProvider(AbstractProvider):
    """Resolves a flag named after an action type to the tier it may act at."""

    def __init__(self, tiers: TierSource) -> None:
        super().__init__()
        self.tiers = tiers

    def get_metadata(self) -> Metadata:
        return Metadata(name="tiergate")

    def _tier(self, flag_key: str) -> FlagResolutionDetails[str]:
        tier = self.tiers.tier_for(flag_key)
        if self.tiers.status().failing_closed:
            return FlagResolutionDetails(tier, reason=Reason.STALE, variant=tier)
        record = self.tiers.record(flag_key)
        if record is None:
            return FlagResolutionDetails(tier, reason=Reason.DEFAULT, variant=tier)
        metadata: dict[str, bool | int | float | str] = {
            "version": int(record["version"]),
            "decision_id": str(record["decision_id"]),
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
