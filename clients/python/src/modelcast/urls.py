"""The two forms of a server address: `http://host:port` (publishing) and
`ws://host:port/ws` (subscribing). Either may be given; the other is derived."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def http_base(url: str) -> str:
    """`http(s)://host:port` from either form (a `/ws...` path is dropped)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a modelcast URL: {url!r} (expected http://host:port or ws://host:port/ws)")
    path = parts.path.rstrip("/")
    if path == "/ws" or path.startswith("/ws/"):
        path = ""
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def ws_url(url: str) -> str:
    """`ws(s)://host:port/ws` from either form (a `/ws/<id>` path is kept)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a modelcast URL: {url!r} (expected http://host:port or ws://host:port/ws)")
    path = parts.path.rstrip("/")
    if not (path == "/ws" or path.startswith("/ws/")):
        path = f"{path}/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
