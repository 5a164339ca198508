"""A user's devices for push, registered on the user's behalf: a backend that holds the user's
token (a mobile app's backend, a login service) registers the phone's FCM or APNs token or the
browser's `PushSubscription`, lists and removes them. The server pushes the messages that user
is owed while they are not connected (docs/operators.md#push on the server's side).

```python
from modelcast import PushDevices

devices = PushDevices("http://127.0.0.1:8000", user_token)
await devices.register_fcm(fcm_token, types=["download_status_change"])
```"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import Problem, PushError
from .urls import http_base


@dataclass(frozen=True)
class Device:
    """A registered device as the server shows it (never its keys)."""

    id: str
    kind: str
    """`web`, `fcm` or `apns`."""
    registered: int
    """When it was registered (Unix seconds)."""
    types: tuple[str, ...] | None = None
    """The message types it wants (`None`: every type the server pushes)."""
    endpoint: str | None = None
    """A browser's push endpoint."""

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Device:
        types = value.get("types")
        return cls(
            id=value["id"],
            kind=value["kind"],
            registered=int(value.get("registered", 0)),
            types=None if types is None else tuple(types),
            endpoint=value.get("endpoint"),
        )


class PushDevices:
    """The devices of the user whose JWT is `token`, on the server at `url` (`http(s)://…` or
    `ws(s)://…/ws`). Every refusal raises `PushError` with the server's code (`push_off`,
    `unauthorized`, `invalid_registration` naming the field, `too_many_devices`)."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> None:
        self._base = http_base(url)
        self._headers = {"authorization": f"Bearer {token}"}
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owned = client is None

    async def __aenter__(self) -> PushDevices:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP client (when this object made it)."""
        if self._owned:
            await self._client.aclose()

    async def register_web(self, subscription: dict[str, Any], types: Sequence[str] | None = None) -> Device:
        """Registers a browser: its `PushSubscription` JSON (`{"endpoint", "keys": {"p256dh", "auth"}}`)."""
        return await self._register(dict(subscription), types)

    async def register_fcm(self, fcm_token: str, types: Sequence[str] | None = None) -> Device:
        """Registers an Android (or FCM web) app's registration token."""
        return await self._register({"fcm_token": fcm_token}, types)

    async def register_apns(self, apns_token: str, types: Sequence[str] | None = None) -> Device:
        """Registers an iOS app's device token (hex)."""
        return await self._register({"apns_token": apns_token}, types)

    async def list(self) -> list[Device]:
        """The user's devices."""
        body = await self._call("GET", None)
        return [Device.from_json(d) for d in body["devices"]]

    async def remove(
        self,
        *,
        id: str | None = None,
        endpoint: str | None = None,
        fcm_token: str | None = None,
        apns_token: str | None = None,
    ) -> bool:
        """Removes one device, named by exactly one of its id, endpoint or token; `False` when
        the user has no such device."""
        named = {
            k: v
            for k, v in {"id": id, "endpoint": endpoint, "fcm_token": fcm_token, "apns_token": apns_token}.items()
            if v
        }
        if len(named) != 1:
            raise ValueError("name the device by exactly one of id, endpoint, fcm_token, apns_token")
        try:
            await self._call("DELETE", named)
        except PushError as error:
            if error.status == 404 and error.code == "not_found":
                return False
            raise
        return True

    async def _register(self, body: dict[str, Any], types: Sequence[str] | None) -> Device:
        if types is not None:
            if isinstance(types, str):
                raise TypeError("types is a sequence of message types, not one string")
            body["types"] = list(types)
        return Device.from_json(await self._call("POST", body))

    async def _call(self, method: str, body: dict[str, Any] | None) -> Any:
        url = f"{self._base}/api/push/subscriptions"
        try:
            response = await self._client.request(method, url, headers=self._headers, json=body)
        except httpx.HTTPError as error:
            raise PushError(None, "connection_failed", f"cannot reach {self._base}: {error}") from error
        if response.status_code == 204:
            return None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success and payload is not None:
            return payload
        error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
        problems = [Problem(field=p.get("field", ""), message=p.get("message", "")) for p in error.get("errors", [])]
        raise PushError(
            response.status_code,
            error.get("code", f"http_{response.status_code}"),
            error.get("message", response.text),
            problems,
        )


async def vapid_public_key(url: str, *, timeout: float = 10.0) -> str:
    """The server's VAPID public key (base64url), what a browser subscribes with; `PushError`
    `push_off` when the server has no Web Push."""
    base = http_base(url)
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            response = await client.get(f"{base}/api/push/vapid-public-key")
        except httpx.HTTPError as error:
            raise PushError(None, "connection_failed", f"cannot reach {base}: {error}") from error
    body = response.json()
    if not response.is_success:
        error = body.get("error", {})
        raise PushError(response.status_code, error.get("code", ""), error.get("message", ""))
    return str(body["key"])
