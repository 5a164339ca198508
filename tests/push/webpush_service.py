"""A local stand-in for a browser's push service (tests/push.rs), checking what a real one
checks, with an implementation of its own (http_ece, cryptography, PyJWT — not modelcast's
code):

- `POST /subscribe/<name>` makes a browser: a P-256 key pair and an auth secret; answers the
  `PushSubscription` JSON a browser would give (`endpoint`, `keys.p256dh`, `keys.auth`).
- `POST /push/<name>` is the push endpoint: the VAPID header (`vapid t=<JWT>, k=<key>`: ES256
  verified with the key, `aud` this service's origin, `exp` within 24 h, `sub` mailto:/https:),
  `Content-Encoding: aes128gcm` and a `TTL`; the body decrypted with the browser's private key.
  Answers 201, or what `/behave/<name>` scripted (e.g. 410, or 429 with `Retry-After`).
- `GET /received/<name>`: what arrived, decrypted, with its headers, in order.
- `POST /behave/<name>` `{"status": 429, "retry_after": 1, "times": 1}`.

Usage: webpush_service.py PORT (prints "ready" once it listens).
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PORT = int(sys.argv[1])
ORIGIN = f"http://127.0.0.1:{PORT}"
LOCK = threading.Lock()
BROWSERS = {}  # name -> (private key, auth secret)
RECEIVED = {}  # name -> [ {payload, headers} | {error} ]
BEHAVIOUR = {}  # name -> {"status", "retry_after", "times"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_vapid(header: str) -> str:
    """The VAPID header's problem, or '' when it is right."""
    if not header.startswith("vapid "):
        return f"not a vapid authorization: {header[:40]}"
    parts = dict(p.strip().split("=", 1) for p in header[len("vapid ") :].split(","))
    token, key = parts.get("t"), parts.get("k")
    if not token or not key:
        return "vapid without t= or k="
    point = unb64url(key)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        claims = jwt.decode(token, public, algorithms=["ES256"], audience=ORIGIN)
    except jwt.PyJWTError as error:
        return f"the VAPID JWT does not verify: {error}"
    if claims["exp"] > time.time() + 24 * 3600:
        return "exp is more than 24 hours ahead"
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        return f"sub is not mailto: or https: ({claims.get('sub')})"
    return ""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def answer(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        with LOCK:
            self.answer(200, RECEIVED.get(name, []))

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        kind, name = self.path.strip("/").split("/", 1)
        if kind == "subscribe":
            private = ec.generate_private_key(ec.SECP256R1())
            auth = b"0123456789abcdef"
            point = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            with LOCK:
                BROWSERS[name] = (private, auth)
            endpoint = f"{ORIGIN}/push/{name}"
            return self.answer(200, {"endpoint": endpoint, "keys": {"p256dh": b64url(point), "auth": b64url(auth)}})
        if kind == "behave":
            with LOCK:
                BEHAVIOUR[name] = json.loads(body)
            return self.answer(200, {})
        if kind != "push":
            return self.answer(404, {"error": "no such route"})
        with LOCK:
            behaviour = BEHAVIOUR.get(name)
            if behaviour and behaviour.get("times", 1) > 0:
                behaviour["times"] = behaviour.get("times", 1) - 1
                RECEIVED.setdefault(name, []).append({"answered": behaviour["status"]})
                headers = [("retry-after", str(behaviour["retry_after"]))] if "retry_after" in behaviour else []
                return self.answer(behaviour["status"], {}, headers)
        problem = check_vapid(self.headers.get("authorization", ""))
        if not problem and self.headers.get("content-encoding") != "aes128gcm":
            problem = f"content-encoding {self.headers.get('content-encoding')}"
        if not problem and not self.headers.get("ttl", "").isdigit():
            problem = "no TTL"
        if problem:
            with LOCK:
                RECEIVED.setdefault(name, []).append({"error": problem})
            return self.answer(401 if "VAPID" in problem or "vapid" in problem else 400, {"error": problem})
        with LOCK:
            private, auth = BROWSERS[name]
        try:
            payload = http_ece.decrypt(body, private_key=private, auth_secret=auth, version="aes128gcm")
        except Exception as error:  # noqa: BLE001 - any failure to decrypt is the finding
            with LOCK:
                RECEIVED.setdefault(name, []).append({"error": f"cannot decrypt: {error}"})
            return self.answer(400, {"error": "cannot decrypt"})
        record = {
            "payload": json.loads(payload),
            "headers": {k: self.headers.get(k) for k in ("ttl", "urgency", "topic")},
            "at": time.time(),
        }
        with LOCK:
            RECEIVED.setdefault(name, []).append(record)
        self.answer(201, None, [("location", f"{ORIGIN}/message/{time.time_ns()}")])


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
