"""Who may use the server: a bearer token, and the browser origins allowed. Pure checks on a request's headers.

- On loopback (the default host) anyone on this machine may connect, and browsers only from
  pages on localhost or the server's own origin: a web page elsewhere cannot drive a local
  server through the user's browser.
- Any other host needs a token (`--token-file`): `Authorization: Bearer TOKEN`, or `?token=TOKEN`
  where a browser's WebSocket cannot set headers. A browser's `Origin` must then be the server's
  own or one given with `--allow-origin` ("*": any).
- /healthz stays open for load balancers; /metrics, /api/chat and /ws need the token when there is one.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from ..errors import ServerError
from .config import LOOPBACK_HOSTS, ServerConfig

LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True)
class Denial:
    """A request refused before any WebSocket upgrade: the HTTP status and the reason."""

    status: int
    message: str


class Access:
    """The token and origin rules for one server."""

    def __init__(self, token: str | None, allow_origins: tuple[str, ...] = (), loopback: bool = True) -> None:
        self.token = token
        self.allow_any = "*" in allow_origins
        self.allow_origins = frozenset(_origin(o) for o in allow_origins if o != "*")
        self.loopback = loopback

    def check(self, headers: Mapping[str, str], query: Mapping[str, str], *, needs_token: bool = True) -> Denial | None:
        """None when the request may go on; else why not. headers: lower-case names."""
        if needs_token and self.token is not None:
            given = _bearer(headers.get("authorization")) or query.get("token")
            if given is None:
                return Denial(401, "this server needs a token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN")
            if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
                return Denial(401, "wrong token")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host", "")):
            return Denial(403, f"origin {origin} is not allowed; start the server with --allow-origin {origin}")
        return None

    def origin_allowed(self, origin: str, host: str) -> bool:
        if self.allow_any:
            return True
        normal = _origin(origin)
        if normal in self.allow_origins:
            return True
        parts = urlsplit(normal)
        if parts.netloc and parts.netloc == host.lower():
            return True  # the server's own pages
        return self.loopback and (parts.hostname or "") in LOCAL_ORIGIN_HOSTS


def _origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def read_token(path: Path) -> str:
    """The token in a file (its first line, stripped)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ServerError(f"--token-file {path}: cannot read it ({e.strerror}); give a file holding the token") from e
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ServerError(f"--token-file {path}: the token must be at least 16 characters; e.g. `openssl rand -hex 32 > {path}`")
    return token


def access_for(config: ServerConfig) -> Access:
    """The rules a config asks for; a host beyond loopback without a token is refused."""
    if config.host not in LOOPBACK_HOSTS and config.token_file is None:
        raise ServerError(
            f"--host {config.host} lets other machines connect: give --token-file FILE (a bearer token clients must send; "
            "e.g. `openssl rand -hex 32 > FILE`), or keep the default --host 127.0.0.1"
        )
    token = read_token(config.token_file) if config.token_file is not None else None
    return Access(token, config.allow_origins, loopback=config.host in LOOPBACK_HOSTS)
