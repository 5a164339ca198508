"""The publisher: array form, retries without duplicates, errors with field paths, URL forms."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any

import pytest
from conftest import free_port, start_server

from modelcast import Publisher, PublishError, RetryPolicy, SyncPublisher, UnavailableError, http_base, models, ws_url


def alert(i: int) -> dict:
    return {"type": "alert", "data": {"alert_id": f"a{i}", "level": "info", "title": "t", "message": f"m{i}"}}


async def test_publish_a_model_and_many_in_one_request(server, collector) -> None:
    async with Publisher(server.base) as p:
        one = await p.publish(
            models.Alert(alert_id="a0", level="warning", title="t", message="m", timestamp=datetime.now(timezone.utc))
        )
        assert (one.type, one.status, one.topic, one.seq) == ("alert", "sent", "alerts", 1)
        many = await p.publish_many([alert(1), alert(2)])
        assert [a.seq for a in many] == [2, 3]
    await collector.wait_for(lambda f: f["seq"] == 3)
    assert [f["data"]["alert_id"] for f in collector.frames] == ["a0", "a1", "a2"]


async def test_a_400_names_every_field_and_publishes_nothing(server, collector) -> None:
    bad = {"type": "download_progress_update", "data": {"model_id": "m", "progress_percent": 140}}
    async with Publisher(server.base) as p:
        with pytest.raises(PublishError) as caught:
            await p.publish_many([alert(1), bad])
        await p.publish(alert(2))
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_message")
    fields = {(problem.index, problem.field) for problem in error.problems}
    assert (1, "data.progress_percent") in fields
    assert (1, "data.total_mb") in fields, "every problem, not only the first"
    await collector.wait_for(lambda f: f["data"]["alert_id"] == "a2")
    assert [f["data"]["alert_id"] for f in collector.frames] == ["a2"]


async def test_retries_while_the_server_is_away_then_publishes_once() -> None:
    port = free_port()
    policy = RetryPolicy(attempts=30, initial_delay=0.1, max_delay=0.3)
    async with Publisher(f"http://127.0.0.1:{port}", retry=policy) as p:
        pending = asyncio.create_task(p.publish(alert(1)))
        await asyncio.sleep(0.5)  # refused connections meanwhile
        assert not pending.done()
        server = await asyncio.to_thread(start_server, port)
        try:
            accepted = await asyncio.wait_for(pending, 15)
            assert (accepted.status, accepted.seq) == ("sent", 1)
        finally:
            server.stop()


async def test_a_retry_after_a_lost_answer_does_not_duplicate(server, collector) -> None:
    # A proxy that swallows the first answer (the publish happened; the client cannot know).
    upstream = server.port
    swallowed = threading.Event()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        back_r, back_w = await asyncio.open_connection("127.0.0.1", upstream)
        request = await reader.read(65536)
        back_w.write(request)
        await back_w.drain()
        answer = await back_r.read(65536)
        if not swallowed.is_set():
            swallowed.set()
            writer.close()  # the answer never arrives
        else:
            writer.write(answer)
            await writer.drain()
            writer.close()
        back_w.close()

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    async with Publisher(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=5, initial_delay=0.05)) as p:
        accepted = await p.publish(alert(7))
    proxy.close()
    assert swallowed.is_set() and accepted.seq == 1
    await asyncio.sleep(0.3)
    assert [f["data"]["alert_id"] for f in collector.frames] == ["a7"], "published once"


async def test_publish_keys_and_the_sync_facade() -> None:
    server = await asyncio.to_thread(start_server, None, {"MODELCAST_PUBLISH_KEYS": "k-0123456789abcdef"})
    try:
        with SyncPublisher(server.base, api_key="k-0123456789abcdef") as p:
            assert p.publish(alert(1)).status == "sent"
        with SyncPublisher(server.base, api_key="wrong") as p, pytest.raises(PublishError) as caught:
            p.publish(alert(2))
        assert caught.value.status == 403 and not isinstance(caught.value, UnavailableError)
    finally:
        server.stop()


def test_both_url_forms() -> None:
    assert http_base("ws://127.0.0.1:8000/ws") == "http://127.0.0.1:8000"
    assert http_base("wss://hub.example/ws/conn-1") == "https://hub.example"
    assert http_base("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url("https://hub.example") == "wss://hub.example/ws"
    assert ws_url("ws://127.0.0.1:8000/ws/me") == "ws://127.0.0.1:8000/ws/me"
    with pytest.raises(ValueError, match="not a modelcast URL"):
        http_base("127.0.0.1:8000")


async def test_subscribe_recovers_what_was_published_while_cut_off(server) -> None:
    import modelcast

    relay = await Relay.start(server.port)
    got: list[str] = []
    gaps: list[object] = []

    async def read() -> None:
        url = f"http://127.0.0.1:{relay.port}"
        async for frame in modelcast.subscribe(url, "alerts", min_delay=0.05, max_delay=0.2, on_gap=gaps.append):
            got.append(frame.data.alert_id)
            if len(got) == 4:
                return

    reader = asyncio.create_task(read())
    async with Publisher(server.base) as p:
        await asyncio.sleep(0.3)
        await p.publish_many([alert(1), alert(2)])
        while len(got) < 2:
            await asyncio.sleep(0.02)
        relay.cut()  # the subscriber's connection dies; new ones are refused for a while
        await p.publish_many([alert(3), alert(4)])
        await asyncio.sleep(0.3)
        relay.refusing = False
    await asyncio.wait_for(reader, 10)
    relay.close()
    assert got == ["a1", "a2", "a3", "a4"], "recovered with since: nothing lost, nothing twice"
    assert gaps == []


async def test_subscribe_yields_nothing_twice_when_a_new_epoch_replays_the_log(redis) -> None:
    """Redis back with `everysec` (as after a failover): the node gives the topic a new epoch
    and replays its log numbered anew; the subscriber says the gap and yields only what is new."""
    import modelcast

    server = start_server(args=["--redis-url", redis.url])
    got: list[str] = []
    gaps: list[modelcast.Gap] = []

    async def read() -> None:
        async for frame in modelcast.subscribe(server.base, "alerts", on_gap=gaps.append):
            got.append(frame.data.alert_id)

    reader = asyncio.create_task(read())
    try:
        async with Publisher(server.base, retry=RetryPolicy(attempts=40, initial_delay=0.05, max_delay=0.25)) as p:
            await asyncio.sleep(0.3)
            await p.publish_many([alert(k) for k in range(5)])
            while len(got) < 5:
                await asyncio.sleep(0.02)
            redis.restart()
            await p.publish(alert(5))  # retried through the 503s while the node reconnects
            await p.publish(alert(6))
        while "a6" not in got:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a replay would still be on its way
    finally:
        reader.cancel()
        server.stop()
    assert got == [f"a{k}" for k in range(7)], "nothing yielded twice"
    assert [(g.after_seq, g.previous_epoch != g.epoch) for g in gaps] == [(5, True)]


async def test_subscribe_without_a_token_where_one_is_required_says_so_at_once() -> None:
    import modelcast

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    # A deadline beyond the test's patience: only the welcome's hint can end this in time.
    server = start_server(env={"MODELCAST_JWT_SECRET": secret, "MODELCAST_AUTH_DEADLINE": "120"})
    try:

        async def first() -> None:
            async for _ in modelcast.subscribe(server.base, "alerts"):
                pass

        with pytest.raises(modelcast.SubscriptionError, match="requires a token") as caught:
            await asyncio.wait_for(first(), 10)
        assert caught.value.code == "unauthorized"
    finally:
        server.stop()


async def test_subscribe_stops_when_an_operator_disconnects_the_user() -> None:
    """4403: raised as `revoked`, not reconnected (the token is still valid, so a reconnect
    would succeed and fight the operator)."""
    import modelcast

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    key = "a-publish-key-of-32-characters--"
    server = start_server(env={"MODELCAST_JWT_SECRET": secret, "MODELCAST_PUBLISH_KEYS": key})
    try:
        token = hs256({"sub": "mallory", "exp": int(time.time()) + 600}, secret)
        frames: list[Any] = []

        async def listen() -> None:
            async for frame in modelcast.subscribe(server.base, "alerts", token=token, min_delay=0.05):
                frames.append(frame)

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.5)
        request = urllib.request.Request(
            f"{server.base}/api/disconnect",
            data=json.dumps({"user": "mallory"}).encode(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        )

        def disconnect() -> Any:
            with urllib.request.urlopen(request) as response:
                return json.load(response)

        assert (await asyncio.to_thread(disconnect))["closed"] == 1
        with pytest.raises(modelcast.SubscriptionError) as caught:
            await asyncio.wait_for(task, 10)
        assert caught.value.code == "revoked"
    finally:
        server.stop()


async def test_subscribe_is_compressed_and_frames_arrive_intact(server) -> None:
    """`websockets` offers permessage-deflate; the server agrees and sends frames compressed."""
    import modelcast

    message = "the model's weights failed their checksum; downloading them again. " * 8
    got: list[object] = []

    async def read() -> None:
        async for frame in modelcast.subscribe(server.base, "alerts"):
            got.append(frame)
            if len(got) == 3:
                return

    reader = asyncio.create_task(read())
    async with Publisher(server.base) as p:
        await asyncio.sleep(0.3)
        await p.publish_many([{**alert(i), "data": {**alert(i)["data"], "message": message}} for i in (1, 2, 3)])
    await asyncio.wait_for(reader, 10)
    assert [(f.data.alert_id, f.data.message) for f in got] == [("a1", message), ("a2", message), ("a3", message)]

    def stats() -> dict:
        with urllib.request.urlopen(f"{server.base}/api/stats") as answer:
            return json.load(answer)["compression"]

    compression = await asyncio.to_thread(stats)
    assert compression["frames"] >= 1, compression
    assert compression["bytes_after"] < compression["bytes_before"] / 2, compression


class Relay:
    """A TCP relay to the server that can cut every connection and refuse new ones."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.refusing = False

    @classmethod
    async def start(cls, upstream: int) -> Relay:
        relay = cls()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if relay.refusing:
                writer.close()
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
            relay.writers += [writer, up_w]
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        relay.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        relay.port = relay.server.sockets[0].getsockname()[1]
        return relay

    def cut(self) -> None:
        self.refusing = True
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


async def test_an_unreachable_server_is_named_in_the_error() -> None:
    port = free_port()
    policy = RetryPolicy(attempts=2, initial_delay=0.05, max_delay=0.05)
    async with Publisher(f"http://127.0.0.1:{port}", retry=policy) as p:
        with pytest.raises(UnavailableError) as caught:
            await p.publish(alert(1))
    text = str(caught.value)
    assert caught.value.status is None and caught.value.code == "connection_failed"
    assert text.startswith("connection_failed: cannot reach modelcast at "), text
    assert f"http://127.0.0.1:{port}/api/publish" in text, text


def hs256(claims: dict, secret: str) -> str:
    """An HS256 JWT, made with the standard library."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_an_audience_reaches_its_users_and_roles_only() -> None:
    import time

    import websockets

    from modelcast import Audience

    secret = "test-secret-0123456789-0123456789"
    server = await asyncio.to_thread(start_server, None, None, ["--jwt-secret", secret])
    try:
        exp = int(time.time()) + 3600
        seen: dict[str, list[str]] = {}
        sockets = {}
        for user, roles in [("alice", ["user"]), ("bob", ["user"]), ("carol", ["ops"])]:
            token = hs256({"sub": user, "roles": roles, "exp": exp}, secret)
            ws = await websockets.connect(f"{server.ws}/{user}?token={token}")
            await ws.send(json.dumps({"action": "subscribe", "topic": "alerts"}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass
            sockets[user] = ws
        async with Publisher(server.base) as p:
            await p.publish(alert(1), audience=Audience(users=["alice"]))
            await p.publish_many([alert(2), alert(3)], audience=Audience(roles=["ops"]))
            await p.publish(alert(4))
            with pytest.raises(ValueError):
                Audience()
        for user, ws in sockets.items():
            await ws.send(json.dumps({"action": "ping"}))
            seen[user] = []
            while (frame := json.loads(await ws.recv()))["type"] != "pong":
                assert "audience" not in frame, "subscribers never see an audience"
                seen[user].append(frame["data"]["alert_id"])
            await ws.close()
        assert seen == {"alice": ["a1", "a4"], "bob": ["a4"], "carol": ["a2", "a3", "a4"]}
    finally:
        server.stop()
