"""The web page `aimsvoice serve` serves at `/`: plain HTML, CSS and JavaScript modules, package data.

No build step and nothing fetched from the internet: the files of this folder are read once and
served from memory (`GET /` the page, `GET /static/NAME` the rest), under a content security
policy that lets the page load only its own files and connect only to its own server. The page
speaks the brief's protocol on `/ws` (app.js, call.js); `GET /api/personas` (`persona_list`)
fills its persona picker. The audio runs in AudioWorklets: capture-worklet.js (the microphone,
80 ms frames of 16-bit PCM at 24 kHz) and playback-worklet.js (the agent, through jitter.js's
bounded jitter buffer).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ... import personas

WEB_DIR = Path(__file__).resolve().parent
PAGE = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts and AudioWorklets need a JavaScript type
    ".svg": "image/svg+xml",
}
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@functools.lru_cache(maxsize=1)
def assets() -> dict[str, Asset]:
    """The page's files by name, read once."""
    found = {}
    for path in sorted(WEB_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            body = path.read_bytes()
            found[path.name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return found


def security_headers(request: Request) -> dict[str, str]:
    """Only the page's own files, only its own server to talk to (ws/wss named for browsers that do not
    count them as 'self'), no framing (a page that opens the microphone)."""
    host = request.headers.get("host", "")
    sockets = f" ws://{host} wss://{host}" if _HOST.match(host) else ""
    policy = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidated (ETag): a new version of aimsvoice serves its new page at once
    }


def _serve(request: Request, name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        return PlainTextResponse(f"no such file: {name}\n", 404)
    headers = {**security_headers(request), "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


async def index(request: Request) -> Response:
    """GET /: the page (`?persona=NAME` picks a persona, `&connect=1` connects at once)."""
    return _serve(request, PAGE)


async def asset(request: Request) -> Response:
    """GET /static/NAME: the page's scripts, style sheet and icon."""
    return _serve(request, request.path_params["name"])


def persona_list() -> dict[str, Any]:
    """GET /api/personas: every persona that loads (a broken file is left out, as `aimsvoice personas` does).

    A voice given as a file is shown by its name only: the page has no use for the server's paths."""
    found, _errors = personas.load_all()
    return {
        "default": personas.DEFAULT_PERSONA,
        "personas": [
            {"name": p.name, "display_name": p.display_name, "description": p.description, "voice": _voice_label(p.voice)}
            for p in found.values()
        ],
    }


def _voice_label(voice: str) -> str:
    return Path(voice).stem if ("/" in voice or "\\" in voice) else voice
