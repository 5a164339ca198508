"""The two forms of a server address: `http://host:port` (publishing) and
`ws://host:port/ws` (subscribing). Either may be given; the other is derived."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _parse(url: str, schemes: dict[str, str]) -> tuple[SplitResult, str, bool]:
    """The URL's parts, its scheme in the wanted form, and whether its path is a `/ws` one."""
    parts = urlsplit(url)
    scheme = schemes.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a modelcast URL: {url!r} (expected http://host:port or ws://host:port/ws)")
    path = parts.path.rstrip("/")
    return parts._replace(path=path), scheme, path == "/ws" or path.startswith("/ws/")


def http_base(url: str) -> str:
    """`http(s)://host:port` from either form (a `/ws...` path is dropped)."""
    parts, scheme, is_ws = _parse(url, _HTTP)
    return urlunsplit((scheme, parts.netloc, "" if is_ws else parts.path, "", ""))


def ws_url(url: str) -> str:
    """`ws(s)://host:port/ws` from either form (a `/ws/<id>` path is kept)."""
    parts, scheme, is_ws = _parse(url, _WS)
    return urlunsplit((scheme, parts.netloc, parts.path if is_ws else f"{parts.path}/ws", parts.query, ""))
