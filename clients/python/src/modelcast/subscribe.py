"""The subscriber side, small: `async for frame in subscribe(url, "download_progress")`, with
reconnects and `since` recovery (each message once, in order), on the `websockets` package."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import websockets
from pydantic import BaseModel, ValidationError

from . import models
from .urls import ws_url

log = logging.getLogger("modelcast")

#: How many delivered messages a subscription remembers by content (`type` and `data`), so
#: that a replay under a new epoch does not yield them again.
REMEMBERED_MESSAGES = 1024

#: Close codes after which reconnecting would be wrong, and the error code each raises:
#: replaced by another connection with the same id (4002), token refused or expired (4401),
#: disconnected by an operator or the token revoked (4403).
FINAL_CLOSE_CODES = {4002: "replaced", 4401: "unauthorized", 4403: "revoked"}


@dataclass(frozen=True)
class Gap:
    """Messages after `after_seq` (in `previous_epoch`) could not be recovered; delivery
    resumes after `resume_seq` in `epoch`, preceded by the current state (frames marked late)."""

    topic: str
    previous_epoch: str
    after_seq: int
    epoch: str
    resume_seq: int


class SubscriptionError(Exception):
    """The server refused the subscription (`code`: forbidden, unknown_topic, …) or ended the
    connection for good (4002 `replaced`, 4401 `unauthorized`, 4403 `revoked`)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


def _fingerprint(frame: dict[str, Any]) -> str:
    """A message's identity across epochs: its `type` and `data` as canonical JSON (messages
    carry their `timestamp`, so equal content is the same message)."""
    return json.dumps([frame.get("type"), frame.get("data")], sort_keys=True, separators=(",", ":"))


def _typed(frame: dict[str, Any]) -> BaseModel | dict[str, Any]:
    try:
        return models.ServerMessage.model_validate(frame).root
    except ValidationError:
        return frame  # a type this version does not know: passed on as it came


async def subscribe(
    url: str | None,
    topic: str,
    *,
    model_ids: list[str] | None = None,
    max_hz: float | None = None,
    token: str | None = None,
    on_gap: Callable[[Gap], None] | None = None,
    min_delay: float = 0.5,
    max_delay: float = 15.0,
) -> AsyncIterator[Any]:
    """Yields the topic's frames (generated models: `.type`, `.data`, `.seq`, `.late`) once
    each and in order, across reconnects. `url` is `ws://host:port/ws` or `http://host:port`
    (default `MODELCAST_URL`). A gap the server could not fill calls `on_gap` (default: a
    warning in the log) before what the server still holds and the current state arrive; of
    those, a message equal (`type` and `data`) to one of the last `REMEMBERED_MESSAGES`
    yielded before the gap is not yielded again (a failover's new epoch numbers them anew)."""
    target = ws_url(url or os.environ.get("MODELCAST_URL") or "http://127.0.0.1:8000")
    if token:
        target += ("&" if "?" in target else "?") + urlencode({"token": token})
    epoch: str | None = None
    last: int | None = None
    recent: deque[str] = deque(maxlen=REMEMBERED_MESSAGES)
    delivered_before: frozenset[str] = frozenset()
    attempt = 0
    while True:
        try:
            async with websockets.connect(target, open_timeout=10, max_size=None) as ws:
                request: dict[str, Any] = {"action": "subscribe", "topic": topic, "id": "sub"}
                if model_ids is not None:
                    request["filter"] = {"model_ids": model_ids}
                if max_hz is not None:
                    request["max_hz"] = max_hz
                if epoch is not None and last is not None:
                    request["since"] = {"epoch": epoch, "seq": last}
                await ws.send(json.dumps(request))
                async for text in ws:
                    frame = json.loads(text)
                    kind = frame.get("type")
                    if kind == "welcome":
                        if "auth_deadline_seconds" in frame["data"] and not token:
                            # It would be closed (4401) at the deadline: say what is missing now.
                            raise SubscriptionError("unauthorized", "this server requires a token (token=…)")
                        attempt = 0
                    elif kind == "subscribed":
                        data = frame["data"]
                        if epoch is not None and last is not None and not data["recovered"]:
                            gap = Gap(topic, epoch, last, data["epoch"], data["seq"])
                            (on_gap or (lambda g: log.warning("modelcast: %s", g)))(gap)
                            delivered_before = frozenset(recent)
                        if not data["recovered"] or last is None:
                            last = data["seq"]
                        epoch = data["epoch"]
                    elif kind == "error" and frame["data"].get("request_id") == "sub":
                        raise SubscriptionError(frame["data"]["code"], frame["data"]["message"])
                    elif frame.get("topic") == topic and "seq" in frame:
                        if not frame.get("late"):
                            if last is not None and frame["seq"] <= last:
                                continue  # already delivered
                            last = frame["seq"]
                        seen = _fingerprint(frame)
                        if seen in delivered_before:
                            continue  # delivered before the epoch changed; the position moved
                        recent.append(seen)
                        yield _typed(frame)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
            if code in FINAL_CLOSE_CODES:
                raise SubscriptionError(FINAL_CLOSE_CODES[code], str(closed)) from closed
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as error:
            log.info("modelcast: connecting to %s failed: %s", target, error)
        attempt += 1
        ceiling = min(max_delay, min_delay * 2 ** (attempt - 1))
        await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)
