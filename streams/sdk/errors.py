"""The SDK's exceptions: one small tree, so agent code can catch `TiergateError` and know it has them all.

    TiergateError
    ├── TransportError      the server or broker could not be reached, or refused a request
    ├── InvalidEvent        an event failed validation before it was queued (names the field and the fix)
    ├── ReceiptError        a receipt string that this SDK did not issue, or that was damaged on the way
    └── TierMapNotReady     wait_until_ready() ran out of time (also a TimeoutError)

Delivery problems never reach the caller of `decide()` or `report_*()`: reporting is buffered, and what the
buffer could not deliver is counted in `Reporter.stats()`. A `TransportError` surfaces there and in
`status().last_error` of a tier map client.
"""

from __future__ import annotations


class TiergateError(Exception):
    """Base of every error the SDK raises."""


class TransportError(TiergateError):
    """The server or broker could not be reached, or refused the request. `retryable` is False when sending
    the same request again cannot help (a wrong token, a body the server will never take)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class InvalidEvent(TiergateError, ValueError):
    """An event failed validation before it was queued; `reason` names the field and the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReceiptError(TiergateError, ValueError):
    """A receipt string that this SDK did not issue, or that was damaged on the way."""


class TierMapNotReady(TiergateError, TimeoutError):
    """The tier map client has no live view yet (or lost it): the message says why."""
