"""Who may use the server: a random token on every bind (loopback too), and a loopback Host header on loopback."""
from __future__ import annotations

import ipaddress
import secrets
from typing import Mapping
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a Host header's name) is loopback only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def new_token() -> str:
    """A fresh random token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    """The token's cookie: one per port, as browsers share cookies between the ports of one host."""
    return f"rtlrp_token_{port}"


def allowed(token: str | None, loopback: bool, cookie: str, headers: Mapping[str, str],
            query: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
    """Whether a request may use the server.

    With a token: the token in the query or in the port's cookie. A loopback server also
    wants a loopback Host header, so a page on another site cannot reach it through DNS rebinding.
    """
    if loopback:
        host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
        if not is_loopback(host):
            return False
    if token is None:
        return True
    given = query.get("token") or cookies.get(cookie) or ""
    return secrets.compare_digest(given.encode(), token.encode())


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a WebSocket handshake comes from this server's own page (or from a non-browser client)."""
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")
