"""Fixtures: a real `modelcast` binary on a free port, and a WebSocket subscriber that
collects every frame and validates it against schemas/."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import websockets

REPO = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("MODELCAST_BIN", REPO / "target" / "debug" / "modelcast"))
SCHEMA = json.loads((REPO / "schemas" / "server-message.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
TOPICS = list(json.loads((REPO / "schemas" / "topics.json").read_text())["topics"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: `base` (http://…), `ws` (ws://…/ws)."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_server(port: int | None = None, env: dict[str, str] | None = None, args: list[str] | None = None) -> Server:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build -p modelcast-server` first (or set MODELCAST_BIN)")
    port = port or free_port()
    process = subprocess.Popen(
        [str(BINARY), "--bind", f"127.0.0.1:{port}", "--log", "warn", *(args or [])],
        env={**os.environ, "HEALTH_CHECK_NOTIFICATION_LEVEL": "info", **(env or {})},
    )
    server = Server(port, process)
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"{server.base}/healthz", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"modelcast did not start on port {port}")
        time.sleep(0.05)


@dataclass
class Redis:
    """A private `redis-server` with an AOF fsynced every second: restarted, it keeps its log
    and the nodes give its topics a new epoch (what a failover does)."""

    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.process = subprocess.Popen(["redis-server", *args, *aof], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """kill -9, then again on the same port and data."""
        self.kill()
        self.start()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(free_port(), tmp_path)
    r.start()
    yield r
    r.kill()


@pytest.fixture
def server() -> Iterator[Server]:
    s = start_server()
    yield s
    s.stop()


@dataclass
class Collector:
    """Every topic frame received, each validated against schemas/server-message.schema.json."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            if asyncio.get_running_loop().time() > deadline:
                seen = [f"{f['type']}:{f['data'].get('model_id', '')}" for f in self.frames]
                raise AssertionError(f"no matching frame within {timeout} s; seen {seen}")
            await asyncio.sleep(0.02)

    def of_type(self, type_name: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == type_name]


@pytest.fixture
async def collector(server: Server) -> AsyncIterator[Collector]:
    collected = Collector()
    ws = await websockets.connect(server.ws)
    for topic in TOPICS:
        await ws.send(json.dumps({"action": "subscribe", "topic": topic}))
    subscribed = 0
    while subscribed < len(TOPICS):
        if json.loads(await ws.recv())["type"] == "subscribed":
            subscribed += 1

    async def read() -> None:
        async for text in ws:
            frame = json.loads(text)
            errors = [e.message for e in VALIDATOR.iter_errors(frame)]
            if errors:
                collected.invalid.append(f"{frame.get('type')}: {errors}")
            if "topic" in frame and "seq" in frame:
                collected.frames.append(frame)

    task = asyncio.create_task(read())
    yield collected
    task.cancel()
    await ws.close()
    assert collected.invalid == [], "frames that do not match schemas/"
