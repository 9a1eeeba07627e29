"""A real `aimsvoice serve` on a loopback port for the tests, and WebSocket clients that talk to it.

`running(config)` runs the app under uvicorn in a thread (the model loads before it listens, as
`serve` does) and stops it after; clients use the `websockets` package, as a browser or moshi's
client would, with hard timeouts everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE
from aimsvoice.server import ServerConfig, bind, create_app, uvicorn_server
from aimsvoice.server.tls import TlsFiles

START_TIMEOUT_S = 60.0
CPU = {"device": "cpu", "dtype": "float32"}


@dataclass
class Running:
    """A server under test: where it listens, and its app (scheduler, metrics) to look into."""

    app: Any
    port: int
    tls: TlsFiles | None = None
    thread: threading.Thread | None = None
    server: Any = None

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def scheduler(self):
        return self.app.state.server.scheduler

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.http + path, headers=headers or {})
        context = ssl.create_default_context(cafile=str(self.tls.cert)) if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz")
        assert status == 200
        return json.loads(body)


@contextlib.contextmanager
def running(config: ServerConfig, tls: TlsFiles | None = None, engine_factory=None) -> Iterator[Running]:
    """Serve `config` (its port is ignored: any free loopback port) until the block ends."""
    config = replace(config, port=0)
    app = create_app(config, engine_factory=engine_factory)
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app, tls, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Running(app, sock.getsockname()[1], tls, thread, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def tiny_config(**overrides: Any) -> ServerConfig:
    return ServerConfig(model="tiny", **{**CPU, "max_sessions": 4, **overrides})


# -- clients -----------------------------------------------------------------------------------


def client_ssl(tls: TlsFiles | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(tls.cert)) if tls else None


def s16(pcm: np.ndarray) -> bytes:
    return np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2").tobytes()


def speechlike(n_frames: int, seed: int, level: float = 0.2) -> np.ndarray:
    """Loud enough to count as speech, below half scale (16-bit values survive the recording exactly)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * FRAME_SIZE) / SAMPLE_RATE
    pitch = 120 + 60 * rng.random()
    pcm = level * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t))
    return np.clip(pcm, -0.24, 0.24).astype(np.float32)


@dataclass
class Heard:
    """What a /ws client got back."""

    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def end(self) -> dict[str, Any] | None:
        ends = self.of("end")
        return ends[-1] if ends else None


async def recv(ws: ClientConnection, heard: Heard, timeout: float = 20.0) -> dict[str, Any] | bytes:
    message = await asyncio.wait_for(ws.recv(), timeout)
    if isinstance(message, str):
        event = json.loads(message)
        heard.events.append(event)
        return event
    heard.audio.append(message)
    return message


async def until(ws: ClientConnection, heard: Heard, kind: str, timeout: float = 30.0) -> dict[str, Any]:
    """Read until a JSON event of this type comes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no {kind!r} within {timeout} s; got {[e.get('type') for e in heard.events]}"
        message = await recv(ws, heard, left)
        if isinstance(message, dict) and message.get("type") == kind:
            return message


async def read_to_close(ws: ClientConnection, heard: Heard, timeout: float = 30.0) -> Heard:
    from websockets.exceptions import ConnectionClosed

    async def forever() -> None:
        while True:
            await recv(ws, heard, timeout)

    try:
        await asyncio.wait_for(forever(), timeout)
    except ConnectionClosed as e:
        heard.close_code = e.rcvd.code if e.rcvd else None
        heard.close_reason = e.rcvd.reason if e.rcvd else ""
    return heard


def ws_connect(url: str, tls: TlsFiles | None = None, **kwargs: Any):
    return connect(url, ssl=client_ssl(tls), open_timeout=20, close_timeout=5, max_size=2**24, **kwargs)


def run(coro, timeout: float = 90.0):
    """Run a test's client side with a hard timeout."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def config_message(**fields: Any) -> str:
    return json.dumps({"type": "persona_config", **fields})


def heard_wav(path: Path) -> np.ndarray:
    """The user's channel of a server recording, as int16 (the model heard value / 32768)."""
    import wave

    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return data[:, 0].copy()
