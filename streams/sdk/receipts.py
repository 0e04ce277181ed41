"""Receipts: what an outcome reporter needs from the action it judges, as one string to store anywhere."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .errors import ReceiptError


@dataclass(frozen=True)
class Receipt:
    """The action's id, type, the tier it ran at and its `ts` (Unix seconds; the outcome carries it as
    `action_ts`, so the evaluator can tell when the action matures). `str(receipt)` is the compact form to
    keep with a ticket, a review or a payment; `Receipt.parse` reads it back."""

    action_id: str
    action_type: str
    tier: str
    action_ts: int | None = None

    PREFIX: ClassVar[str] = "tg1."

    def __str__(self) -> str:
        body: dict[str, Any] = {"a": self.action_id, "t": self.action_type, "r": self.tier}
        if self.action_ts is not None:
            body["s"] = self.action_ts
        return self.PREFIX + base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Receipt:
        """A receipt string back into a Receipt; ReceiptError for anything this SDK did not issue."""
        if not isinstance(text, str) or not text.startswith(cls.PREFIX):
            raise ReceiptError(f"{text!r} is not a tiergate receipt (they start with {cls.PREFIX!r})")
        body = text[len(cls.PREFIX) :]
        try:
            data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return cls(str(data["a"]), str(data["t"]), str(data["r"]), _optional_ts(data.get("s")))
        except (ValueError, KeyError, TypeError) as error:
            raise ReceiptError(f"damaged receipt {text!r}: {error}") from None


def _optional_ts(value: object) -> int | None:
    if value is None:
        return None  # a receipt issued before receipts carried the action's ts
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"action ts {value!r} is not Unix seconds")
    return value
