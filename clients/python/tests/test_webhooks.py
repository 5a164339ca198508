"""The demand webhook, received: the Standard Webhooks check (the specification's example),
refusals of calls that are not modelcast's, and a real server's calls handed to `on_demand`."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from conftest import free_port, start_server

from modelcast import DemandHandler, Publisher, WebhookError
from modelcast.webhooks import sign, verify

# The example of the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {"Webhook-Id": SPEC_ID, "Webhook-Timestamp": str(SPEC_TIMESTAMP), "Webhook-Signature": signature}


def test_the_specification_example_holds_and_anything_else_is_refused() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    with pytest.raises(WebhookError, match="not a modelcast event"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)  # signed, but no `data`
    with pytest.raises(WebhookError, match="signature does not match"):
        verify(SPEC_SECRET, spec_headers(), b'{"test": 1}', now=SPEC_TIMESTAMP)
    with pytest.raises(WebhookError, match="from now"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP + 3600)
    with pytest.raises(WebhookError, match="not a signed webhook call"):
        verify(SPEC_SECRET, {}, SPEC_BODY)


async def test_a_real_server_calls_on_demand_when_a_model_is_watched_and_unwatched() -> None:
    secret = "a-demand-secret-of-some-length"
    told: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    handler = DemandHandler(secret, lambda model, watchers: told.put_nowait((model, watchers)))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")[1:]
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
        body = await reader.readexactly(length)
        try:
            await handler.handle(headers, body)
            status = "204 No Content"
        except WebhookError:
            status = "400 Bad Request"
        writer.write(f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    port = free_port()
    receiver = await asyncio.start_server(answer, "127.0.0.1", port)
    env = {
        "MODELCAST_DEMAND_WEBHOOK": f"http://127.0.0.1:{port}/demand",
        "MODELCAST_DEMAND_WEBHOOK_SECRET": secret,
        "MODELCAST_DEMAND_DEBOUNCE": "0.5",
    }
    server = start_server(env=env)
    try:
        # Demand counts the models the backend announced.
        status = {
            "type": "model_status_update",
            "data": {
                "model_id": "m1",
                "availability_status": "available",
                "is_available": True,
                "is_loaded": False,
                "size_mb": 1000,
                "integrity_score": 1,
                "performance_score": 1,
                "usage_frequency": 0,
                "update_available": False,
            },
        }
        async with Publisher(server.base) as publisher:
            await publisher.publish(status)
        async with websockets.connect(f"{server.ws}/watcher") as ws:
            subscribe = {"action": "subscribe", "topic": "model_status", "filter": {"model_ids": ["m1"]}}
            await ws.send(json.dumps(subscribe))
            assert await asyncio.wait_for(told.get(), 10) == ("m1", 1)
        assert await asyncio.wait_for(told.get(), 10) == ("m1", 0)
    finally:
        server.stop()
        receiver.close()
