"""`PushDevices` against the real server with Web Push on: a user's browser registered on the
user's behalf, listed, removed; every refusal a `PushError` with the server's code and field."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BINARY, Server, start_server

from modelcast import PushDevices, PushError, vapid_public_key

SECRET = "push-py-secret-0123456789-0123456789"


def token(sub: str, roles: list[str] | None = None) -> str:
    def b64(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "roles": roles or [], "exp": int(time.time()) + 600}
    unsigned = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}"
    signature = hmac.new(SECRET.encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def push_keys(path: Path) -> str:
    """A VAPID key made by `modelcast push-keys` at `path`; its public key."""
    made = subprocess.run([str(BINARY), "push-keys"], capture_output=True, check=True, text=True)
    path.write_text(made.stdout)
    return made.stderr.split("serves it): ", 1)[1].split()[0]


@pytest.fixture
def push_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    public = push_keys(tmp_path / "vapid.pem")
    args = [
        "--jwt-secret",
        SECRET,
        "--vapid-private-key",
        str(tmp_path / "vapid.pem"),
        "--vapid-subject",
        "mailto:ops@example.com",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    server = start_server(args=args)
    yield server, public
    server.stop()


def browser(tmp_path: Path, name: str) -> dict[str, object]:
    """A browser's `PushSubscription` JSON (a real P-256 public key, a random auth secret)."""
    p256dh = push_keys(tmp_path / f"{name}.pem")
    auth = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    return {
        "endpoint": f"https://push.example.com/{name}",
        "expirationTime": None,
        "keys": {"p256dh": p256dh, "auth": auth},
    }


async def test_a_users_browser_is_registered_listed_and_removed(
    push_server: tuple[Server, str], tmp_path: Path
) -> None:
    server, public = push_server
    assert await vapid_public_key(server.ws) == public
    laptop = browser(tmp_path, "laptop")
    async with PushDevices(server.base, token("alice", ["user"])) as alice:
        device = await alice.register_web(laptop, types=["download_status_change"])
        assert (device.kind, device.endpoint, device.types) == ("web", laptop["endpoint"], ("download_status_change",))
        again = await alice.register_web(laptop)
        assert again.id == device.id and again.types is None, "registering again updates the device"
        assert [d.id for d in await alice.list()] == [device.id]
        async with PushDevices(server.base, token("bob")) as bob:
            assert await bob.list() == []
            assert await bob.remove(id=device.id) is False, "bob cannot remove alice's device"
        assert await alice.remove(endpoint=str(laptop["endpoint"])) is True
        assert await alice.remove(endpoint=str(laptop["endpoint"])) is False
        assert await alice.list() == []


async def test_refusals_carry_the_servers_code_and_field(push_server: tuple[Server, str], tmp_path: Path) -> None:
    server, _ = push_server
    async with PushDevices(server.base, token("alice")) as alice:
        with pytest.raises(PushError) as bad:
            await alice.register_web({**browser(tmp_path, "x"), "endpoint": "ftp://push.example.com/x"})
        assert (bad.value.status, bad.value.code) == (400, "invalid_registration")
        assert [p.field for p in bad.value.problems] == ["endpoint"]
        with pytest.raises(PushError) as no_fcm:
            await alice.register_fcm("token-1")
        assert no_fcm.value.code == "invalid_registration" and no_fcm.value.problems[0].field == "fcm_token"
        with pytest.raises(ValueError):
            await alice.remove()
    async with PushDevices(server.base, "not-a-token") as anyone:
        with pytest.raises(PushError) as anonymous:
            await anyone.list()
        assert (anonymous.value.status, anonymous.value.code) == (401, "unauthorized")


async def test_a_server_without_push_says_so(server: Server) -> None:
    with pytest.raises(PushError) as off:
        await vapid_public_key(server.base)
    assert (off.value.status, off.value.code) == (404, "push_off")
    async with PushDevices(server.base, token("alice")) as alice:
        with pytest.raises(PushError) as listed:
            await alice.list()
        assert listed.value.code == "push_off"
