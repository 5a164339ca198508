"""modelcast's demand webhook, received: a model went from no watchers to some
(`model.watched`) or back (`model.unwatched`). Calls are signed as Standard Webhooks says
(`webhook-id`, `webhook-timestamp`, `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
`{id}.{timestamp}.{body}`), with the secret set as `MODELCAST_DEMAND_WEBHOOK_SECRET`.

    handler = DemandHandler(secret, on_demand=preload_or_unload)
    await handler.handle(request.headers, await request.body())   # raises WebhookError
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .errors import ModelcastError

#: Seconds a call's timestamp may be away from now (replays older than this are refused).
TOLERANCE_SECONDS = 300


class WebhookError(ModelcastError):
    """A webhook call that is not modelcast's: a missing header, a bad signature, a timestamp
    too far from now, or a body that is not a demand event. Answer it with 400 (or 401)."""


def _key(secret: str) -> bytes:
    """The signing key: a `whsec_` secret's base64 decoded, or the secret's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` modelcast sends for `body` as message `message_id` at
    `timestamp` (for tests of a receiver)."""
    mac = hmac.new(_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The event of a call whose signature holds (and whose timestamp is within
    `TOLERANCE_SECONDS` of `now`); `WebhookError` otherwise. Header names in any case."""
    lower = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError) as error:
        raise WebhookError(f"not a signed webhook call: {error!r} missing or malformed") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_SECONDS:
        raise WebhookError(f"webhook-timestamp {timestamp} is more than {TOLERANCE_SECONDS} s from now")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookError("the signature does not match (wrong secret, or the body was changed)")
    try:
        event = json.loads(body)
    except ValueError as error:
        raise WebhookError(f"the body is not JSON: {error}") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise WebhookError("the body is not a modelcast event")
    return event


#: What a demand handler calls: the model and its watchers now (0: no one watches).
OnDemand = Callable[[str, int], "Awaitable[None] | None"]


class DemandHandler:
    """Verifies demand webhook calls and calls `on_demand(model_id, watchers)` for each
    `model.watched` / `model.unwatched` event (a coroutine function is awaited)."""

    def __init__(self, secret: str, on_demand: OnDemand) -> None:
        self.secret = secret
        self.on_demand = on_demand

    async def handle(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Verifies the call, hands its model to `on_demand`; returns the event.
        `WebhookError` for a call that is not modelcast's (answer 400)."""
        event = verify(self.secret, headers, body)
        if event.get("type") in ("model.watched", "model.unwatched"):
            data = event["data"]
            result = self.on_demand(str(data["model_id"]), int(data.get("watchers", 0)))
            if inspect.isawaitable(result):
                await result
        return event
