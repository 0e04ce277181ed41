"""HTTP against `tiergate serve`: the tier map (a full view from GET /v1/tiers, then the server-sent events
of /v1/tiers/stream) and the event sink (NDJSON batches to POST /v1/events). httpx is the client and
httpx-sse parses the stream; a reconnecting stream sends `Last-Event-ID` (the server's ids are
`<action_type>/<version>`, and it sends every current record first, so a reconnect never misses one).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import orjson
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from .delivery import Rejection
from .errors import TransportError
from .tier_map import TierFeed

log = logging.getLogger("tiergate.sdk")

_STREAM_ERRORS = (httpx.HTTPError, SSEError, ValueError, KeyError, TypeError)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _describe(error: BaseException) -> str:
    """An error as a line for status() and the log; a server's refusal in its own words, with the fix."""
    if isinstance(error, httpx.HTTPStatusError):
        status, said = error.response.status_code, _said(error.response)
        if status == 401:
            return f"401: {said or 'no credential'}; give the client a credential the server knows (token=…)"
        if status == 403:
            return (
                f"403: {said or 'refused'}; the tier map needs a credential of role agent, reporter, reader or operator"
            )
        return f"{status}: {said or error.response.reason_phrase}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _said(response: httpx.Response) -> str:
    """The server's {error} of a refusal (its body is read: the tier map is a small request)."""
    try:
        body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


class _HeardStream(httpx.AsyncByteStream):
    """A response body that tells the feed each time bytes arrive: SSE heartbeats are comments, which the
    event parser rightly skips, yet they are what proves a quiet server is still there."""

    def __init__(self, stream: httpx.AsyncByteStream, heard: Callable[[], None]) -> None:
        self._stream, self._heard = stream, heard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._heard()
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _HearingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, with the bodies of successful responses wrapped in a _HeardStream."""

    def __init__(self, heard: Callable[[], None]) -> None:
        self._inner, self._heard = httpx.AsyncHTTPTransport(), heard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code != 200 or not isinstance(response.stream, httpx.AsyncByteStream):
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_HeardStream(response.stream, self._heard),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class HttpTierTransport:
    """The tier map of a `tiergate serve`, followed live; reconnects with jittered exponential backoff."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        connect_timeout: float = 5.0,
        read_timeout: float = 45.0,  # the server sends a heartbeat every 15 s: three missed ones end a stream
    ) -> None:
        self.base_url, self.token, self.backoff = base_url.rstrip("/"), token, backoff
        self.timeout = httpx.Timeout(10.0, connect=connect_timeout, read=read_timeout)
        self.last_event_id: str | None = None

    async def run(self, feed: TierFeed) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=_auth(self.token),
            transport=_HearingTransport(feed.heard),
        ) as http:
            while True:
                retrying = AsyncRetrying(
                    retry=retry_if_exception_type(_STREAM_ERRORS),
                    wait=wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
                    before_sleep=lambda state: self._note_failure(feed, state.outcome),
                    reraise=True,
                )
                await retrying(self._session, http, feed)

    def _note_failure(self, feed: TierFeed, outcome: Any) -> None:
        error = outcome.exception() if outcome is not None else None
        message = f"{self.base_url}: {_describe(error) if error else 'unknown error'}"
        log.info("tier map from %s", message)
        feed.failed(message)

    async def _session(self, http: httpx.AsyncClient, feed: TierFeed) -> None:
        """Load a full view (failures here are retried with backoff), then follow the stream until it ends."""
        response = await http.get("/v1/tiers")
        response.raise_for_status()
        feed.snapshot(response.json()["tiers"])
        try:
            await self._follow(http, feed)
        except _STREAM_ERRORS as error:
            feed.failed(f"{self.base_url}: tier stream interrupted: {_describe(error)}")
        else:
            feed.failed(f"{self.base_url}: the server closed the tier stream")

    async def _follow(self, http: httpx.AsyncClient, feed: TierFeed) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with aconnect_sse(http, "GET", "/v1/tiers/stream", headers=headers) as source:
            source.response.raise_for_status()
            async for event in source.aiter_sse():
                self.last_event_id = event.id or self.last_event_id
                self._apply(event, feed)

    def _apply(self, event: ServerSentEvent, feed: TierFeed) -> None:
        if not event.data:
            return  # no data, nothing to dispatch (httpx-sse yields one per heartbeat once an id was seen)
        if event.event in ("tier", "message"):
            feed.apply(event.json())
        elif event.event == "retired":
            data = event.json()
            feed.retire(str(data["action_type"]), data.get("version"))
        else:
            log.debug("ignoring tier stream event %r", event.event)  # a newer server's addition


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


_POSTED_BY = {"action": "agent", "outcome": "reporter", "checkpoint": "reporter"}
"""Which role posts each event type; anything else (an override) is an operator's."""


def _poster(raw: bytes) -> str:
    kind = orjson.loads(raw).get("type")
    return _POSTED_BY.get(kind, "operator") if isinstance(kind, str) else "operator"


def _runs(events: Sequence[bytes]) -> list[tuple[str, list[bytes]]]:
    """The batch cut, in order, into runs of events that one role posts (actions | outcomes and checkpoints |
    overrides): the server refuses a whole request holding an event its credential may not post."""
    runs: list[tuple[str, list[bytes]]] = []
    for raw in events:
        role = _poster(raw)
        if runs and runs[-1][0] == role:
            runs[-1][1].append(raw)
        else:
            runs.append((role, [raw]))
    return runs


def _event_id(raw: bytes) -> str | None:
    event_id = orjson.loads(raw).get("event_id")
    return event_id if isinstance(event_id, str) else None


class HttpEventSink:
    """POSTs NDJSON batches to `tiergate serve`. Each request holds the events of one role: actions with
    `token` (an agent's credential), outcomes and checkpoints with `reporter_token` (a reporter's; `token`
    when not given), so a credential's refusal costs only the events it may not send. `async with` closes it.
    """

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = 10.0, *, reporter_token: str | None = None
    ) -> None:
        self.base_url, self.token, self.timeout = base_url.rstrip("/"), token, timeout
        self.reporter_token = reporter_token
        self._http: httpx.AsyncClient | None = None

    async def send(self, events: Sequence[bytes]) -> list[Rejection]:
        """Send each run of the batch in order; a run the server refuses for good comes back as refused
        rejections. Raises TransportError (retryable) when a run did not get through and may next time."""
        rejections: list[Rejection] = []
        for role, run in _runs(events):
            rejections += await self._post(run, self._token_for(role))
        return rejections

    def _token_for(self, role: str) -> str | None:
        return (self.reporter_token or self.token) if role == "reporter" else self.token

    async def _post(self, events: list[bytes], token: str | None) -> list[Rejection]:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout)
        headers = {"Content-Type": "application/x-ndjson"} | _auth(token)
        try:
            response = await self._http.post("/v1/events", content=b"\n".join(events), headers=headers)
        except httpx.HTTPError as error:
            raise TransportError(f"POST {self.base_url}/v1/events failed: {_describe(error)}") from error
        body = _json_object(response)
        if response.status_code == 200 and "results" in body:
            return [
                Rejection(r.get("event_id"), str(r.get("reason"))) for r in body["results"] if r["result"] == "rejected"
            ]
        status = response.status_code
        why = f"POST {self.base_url}/v1/events: {status} {body.get('error', response.reason_phrase)}" + (
            f" ({body['fix']})" if "fix" in body else ""
        )
        if status >= 500 or status in (408, 429):
            raise TransportError(why, retryable=True)
        return [Rejection(_event_id(raw), why, refused=True) for raw in events]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> HttpEventSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
