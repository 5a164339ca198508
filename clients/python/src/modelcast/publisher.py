"""Publishing over `POST /api/publish` with httpx: one kept-alive connection pool, retries
with backoff that cannot duplicate (every publish carries an `Idempotency-Key`, reused by its
retries), and errors that carry the server's code and every field problem.

httpx rather than aiohttp: the same API for the async publisher and its sync facade (one
code path to test), typed, with timeouts per phase and HTTP/1.1 keep-alive by default."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import Problem, PublishError, UnavailableError
from .messages import frame_of
from .urls import http_base

#: Statuses after which the same request may be sent again: the server took nothing (503 and
#: 429 say so; a partial 503 names what to resend, and the Idempotency-Key keeps the rest
#: from being published twice).
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Accepted:
    """What the server did with one message: `status` is `sent` (with its `seq`), `held`
    (throttle or batch window: it, or a newer value, follows), `filtered` (below the health
    notification level) or `rejected`."""

    type: str
    status: str
    topic: str | None = None
    seq: int | None = None
    epoch: str | None = None
    """The topic's epoch `seq` belongs to: a new one means the numbering started again."""


@dataclass(frozen=True)
class Audience:
    """Who a message is for: the connections whose token's `sub` is one of `users`, or whose
    `roles` claim holds one of `roles`. Without an audience a message reaches every subscriber
    of its topic; with one, connections without a token get nothing of it. Subscribers never
    see it (the frame they receive is unchanged), and `seq` stays per topic: a subscriber sees
    gaps where messages were for others."""

    users: Sequence[str] = ()
    roles: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.users, str) or isinstance(self.roles, str):
            raise TypeError("users and roles are sequences of names, not one string")
        if not self.users and not self.roles:
            raise ValueError("an audience names users, roles or both (an empty one reaches nobody)")
        # Tuples: an audience is a value (hashable, comparable), whatever sequence it was given.
        object.__setattr__(self, "users", tuple(self.users))
        object.__setattr__(self, "roles", tuple(self.roles))

    def to_json(self) -> dict[str, list[str]]:
        """The `audience` field of a publish."""
        out: dict[str, list[str]] = {}
        if self.users:
            out["users"] = list(self.users)
        if self.roles:
            out["roles"] = list(self.roles)
        return out


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry (exponential backoff with jitter, honouring the
    server's `Retry-After`)."""

    attempts: int = 5
    initial_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """The wait before retry number `attempt` (from 1)."""
        base = min(self.max_delay, self.initial_delay * 2 ** (attempt - 1))
        wait = base / 2 + random.random() * base / 2
        if retry_after and retry_after.strip().isdigit():
            wait = max(wait, min(float(retry_after), self.max_delay))
        return wait


def _settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = url or os.environ.get("MODELCAST_URL") or "http://127.0.0.1:8000"
    api_key = api_key if api_key is not None else os.environ.get("MODELCAST_API_KEY")
    headers = {"content-type": "application/json", "user-agent": "modelcast-python"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return f"{http_base(url)}/api/publish", headers


def _accepted(response: httpx.Response) -> list[Accepted]:
    body = response.json()
    return [
        Accepted(
            type=a.get("type", ""), status=a["status"], topic=a.get("topic"), seq=a.get("seq"), epoch=a.get("epoch")
        )
        for a in body["accepted"]
    ]


def _error(response: httpx.Response) -> PublishError:
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    code = error.get("code", "http_error")
    message = error.get("message", response.text[:200] or response.reason_phrase)
    problems = [
        Problem(field=p.get("field", ""), message=p.get("message", ""), index=p.get("index"))
        for p in error.get("errors", [])
    ]
    if not problems and "field" in error:
        problems = [Problem(field=error["field"], message=message, index=error.get("index"))]
    kind = UnavailableError if response.status_code in RETRYABLE_STATUS else PublishError
    return kind(response.status_code, code, message, problems)


def _outcome(
    retry: RetryPolicy, attempt: int, result: httpx.Response | httpx.TransportError, endpoint: str
) -> list[Accepted] | float:
    """What attempt number `attempt` came to, for both publishers: what was accepted, or how
    long to wait before retrying; raises when the attempt is final."""
    if isinstance(result, httpx.TransportError):
        if attempt >= retry.attempts:
            message = (
                f"cannot reach modelcast at {endpoint} ({attempt} attempts): {type(result).__name__}: {result}; "
                "is the server running there (MODELCAST_URL)?"
            )
            raise UnavailableError(None, "connection_failed", message) from result
        return retry.delay(attempt, None)
    if result.status_code == 202:
        return _accepted(result)
    if result.status_code in RETRYABLE_STATUS and attempt < retry.attempts:
        return retry.delay(attempt, result.headers.get("retry-after"))
    raise _error(result)


def _frame(message: Any, audience: Audience | None) -> dict[str, Any]:
    frame = frame_of(message)
    if audience is not None:
        frame = {**frame, "audience": audience.to_json()}
    return frame


def _body(messages: Any, many: bool, audience: Audience | None) -> Any:
    if many:
        frames = [_frame(m, audience) for m in messages]
        if not frames:
            raise ValueError("publish_many needs at least one message")
        return frames
    return _frame(messages, audience)


class Publisher:
    """Publishes to a modelcast server (async).

    `url` is the server's address, `http://host:port` or `ws://host:port/ws` (default:
    `MODELCAST_URL`, else `http://127.0.0.1:8000`); `api_key` is a publish key (default:
    `MODELCAST_API_KEY`). Use as `async with Publisher() as p:` or call `aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint, headers = _settings(url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def publish(self, message: Any, *, audience: Audience | None = None) -> Accepted:
        """Publishes one message (a `modelcast.models` data model, or `{"type", "data"}`), to
        `audience` only if one is given."""
        return (await self._send(_body(message, many=False, audience=audience)))[0]

    async def publish_many(self, messages: Iterable[Any], *, audience: Audience | None = None) -> list[Accepted]:
        """Publishes several messages in one request (all or nothing if any is invalid), each
        to `audience` if one is given."""
        return await self._send(_body(list(messages), many=True, audience=audience))

    async def _send(self, body: Any) -> list[Accepted]:
        headers = {"idempotency-key": uuid.uuid4().hex}  # the same for every retry
        for attempt in itertools.count(1):
            try:
                response = await self._http.post(self.endpoint, json=body, headers=headers)
                outcome = _outcome(self.retry, attempt, response, self.endpoint)
            except httpx.TransportError as error:
                outcome = _outcome(self.retry, attempt, error, self.endpoint)
            if isinstance(outcome, list):
                return outcome
            await asyncio.sleep(outcome)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncPublisher:
    """The same as `Publisher`, blocking (for scripts and synchronous services)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint, headers = _settings(url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(headers=headers, timeout=timeout)

    def publish(self, message: Any, *, audience: Audience | None = None) -> Accepted:
        """Publishes one message (to `audience` only, if given)."""
        return self._send(_body(message, many=False, audience=audience))[0]

    def publish_many(self, messages: Iterable[Any], *, audience: Audience | None = None) -> list[Accepted]:
        """Publishes several messages in one request (each to `audience`, if given)."""
        return self._send(_body(list(messages), many=True, audience=audience))

    def _send(self, body: Any) -> list[Accepted]:
        headers = {"idempotency-key": uuid.uuid4().hex}  # the same for every retry
        for attempt in itertools.count(1):
            try:
                response = self._http.post(self.endpoint, json=body, headers=headers)
                outcome = _outcome(self.retry, attempt, response, self.endpoint)
            except httpx.TransportError as error:
                outcome = _outcome(self.retry, attempt, error, self.endpoint)
            if isinstance(outcome, list):
                return outcome
            time.sleep(outcome)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
