"""Who may use the server: a token on non-loopback binds, a loopback Host header otherwise."""
from __future__ import annotations

import ipaddress
import secrets
from typing import Mapping
from urllib.parse import urlsplit

COOKIE = "rtlrp_token"


def needs_token(host: str) -> bool:
    """Whether a server bound to ``host`` must require a token: every address but loopback."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to any interface


def allowed(token: str | None, headers: Mapping[str, str], query: Mapping[str, str],
            cookies: Mapping[str, str]) -> bool:
    """Token servers: the token in the query or the cookie. Loopback servers: a loopback Host header
    (so a page on another site cannot reach them through DNS rebinding)."""
    if token is None:
        host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
        return not needs_token(host)
    given = query.get("token") or cookies.get(COOKIE) or ""
    return secrets.compare_digest(given.encode(), token.encode())


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a WebSocket handshake comes from this server's own page (or from a non-browser client)."""
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")
