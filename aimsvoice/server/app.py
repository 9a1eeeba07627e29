"""The ASGI application: routes, access checks, and each WebSocket's two tasks. No engine code here.

`create_app(config)` returns a Starlette app whose lifespan starts the scheduler (which loads the
model) and stops it; uvicorn serves it (`run.serve`), and any other ASGI host can (one replica per GPU).

Routes:
- `GET /api/chat` (WebSocket): the reference protocol; refused with HTTP 503 + Retry-After when full.
- `GET /ws` (WebSocket): the brief's protocol; when full, a JSON error and close 1013.
- `GET /healthz`: JSON, open to load balancers; `GET /metrics`: Prometheus text.
- `GET /` and `GET /static/NAME`: the web page (web/, open to all: it asks for the token itself);
  `GET /api/personas`: the personas, for its picker (JSON; token-guarded like /metrics).

Each session runs a receiver (client messages -> decoded audio -> `Inbound`) and a sender
(`Outbox` events -> encoded messages) on the event loop; the tick thread never waits for either.
When the client goes, the session ends and its row is freed at once; when the session ends
(a limit, shutdown, an error), the client gets the end message and a clean close, and a client
that does not read by then is cut off after SEND_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..session import resolve_model_dir
from . import web
from .access import Access, Denial, access_for
from .conditioning import conversation_for
from .config import CONFIG_TIMEOUT_S, FRAME_S, MAX_AUDIO_MESSAGE_BYTES, MAX_TEXT_MESSAGE_BYTES, SEND_TIMEOUT_S, ServerConfig
from .governance import Decision
from .metrics import CONTENT_TYPE, Metrics
from .protocols import (
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SERVER_ERROR, CLOSE_SERVICE_RESTART, CLOSE_TOO_BIG, CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED, KIND_AUDIO, OPUS_24K, AudioFormat, ProtocolError, SessionRequest, audio_message, close_reason, decoder, encoder,
    error_message, handshake, json_message, parse_chat_query, parse_persona_config, ping_id, split_kind, text_message,
)
from .scheduler import EngineFactory, Scheduler, pytorch_engine_factory
from .sessions import AudioOut, Ended, Event, Pong, Ready, ServerSession, TextOut, Warming

END_CODES = {"server-shutdown": CLOSE_GOING_AWAY, "error": CLOSE_SERVER_ERROR, "bad-request": CLOSE_POLICY}  # else normal
CLIENT_ENDINGS = frozenset({"client-ended"})  # the client ended the session and still listens


@dataclass
class ServerState:
    """What the routes share, on `app.state.server`."""

    config: ServerConfig
    scheduler: Scheduler
    metrics: Metrics
    access: Access
    model_dir: Path | None  # None: the cascade or the local tier


def create_app(config: ServerConfig, *, engine_factory: EngineFactory | None = None, model_dir: Path | None = None) -> Starlette:
    # config.engine: "cascade" or "local" (decided by `serve`) runs without a model folder, on `engine_factory`
    """The server as an ASGI app. engine_factory: builds the engine (default: PersonaPlex on config's model)."""
    access = access_for(config)
    if model_dir is None and config.engine in ("auto", "personaplex"):  # the cascade has no model folder
        model_dir = resolve_model_dir(config.model)
    metrics = Metrics()
    scheduler = Scheduler(config, metrics, engine_factory or pytorch_engine_factory(config, model_dir))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        await asyncio.to_thread(scheduler.wait_ready)
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = Starlette(
        routes=[
            WebSocketRoute("/api/chat", chat_endpoint),
            WebSocketRoute("/ws", brief_endpoint),
            Route("/healthz", healthz),
            Route("/metrics", metrics_endpoint),
            Route("/", web.index),
            Route("/static/{name}", web.asset),
            Route("/api/personas", personas_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.server = ServerState(config, scheduler, metrics, access, model_dir)
    return app


def _state(connection: WebSocket | Request) -> ServerState:
    return connection.app.state.server


# -- HTTP -------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse(_state(request).scheduler.health())


async def metrics_endpoint(request: Request) -> Response:
    state = _state(request)
    denial = state.access.check(request.headers, request.query_params)
    if denial is not None:
        return PlainTextResponse(denial.message + "\n", denial.status, headers=_auth_headers(denial))
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


async def personas_endpoint(request: Request) -> Response:
    denial = _state(request).access.check(request.headers, request.query_params)
    if denial is not None:
        return JSONResponse({"error": denial.message}, denial.status, headers=_auth_headers(denial))
    return JSONResponse(await asyncio.to_thread(web.persona_list))


def _auth_headers(denial: Denial) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"} if denial.status == 401 else {}


async def _deny(websocket: WebSocket, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Refuse before the upgrade, with an HTTP status (a plain close, HTTP 403, where the server cannot)."""
    try:
        await websocket.send_denial_response(PlainTextResponse(message + "\n", status, headers=headers))
    except RuntimeError:
        await websocket.close(CLOSE_POLICY, close_reason(message))


# -- WebSockets -------------------------------------------------------------------------------


class _Link:
    """The event loop's end of a session: the wake-ups the tick thread sends it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.wakeup = asyncio.Event()
        self.ended = asyncio.Event()

    def wake(self) -> None:
        """Tick thread: events are waiting."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.wakeup.set)

    def end(self) -> None:
        """Tick thread: the session has ended."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.ended.set)


async def _admit(websocket: WebSocket, protocol: str) -> tuple[ServerState, ServerSession | Decision | Denial, _Link]:
    state = _state(websocket)
    link = _Link()
    denial = state.access.check(websocket.headers, websocket.query_params)
    if denial is not None:
        state.metrics.sessions_rejected.labels("unauthorized" if denial.status == 401 else "origin").inc()
        return state, denial, link
    return state, state.scheduler.admit(protocol, link.wake, link.end), link


async def chat_endpoint(websocket: WebSocket) -> None:
    """The reference protocol: conditioning from the query, then 0x00, 0x01 Opus both ways, 0x02 text."""
    state, admitted, link = await _admit(websocket, "chat")
    if isinstance(admitted, Denial):
        await _deny(websocket, admitted.status, admitted.message, _auth_headers(admitted))
        return
    if isinstance(admitted, Decision):
        await _deny(websocket, 503, admitted.reason, {"Retry-After": str(admitted.retry_after_s)})
        return
    session = admitted
    wire = ChatWire(session)
    end_reason = "client-closed"
    try:
        await websocket.accept()
        try:
            request = parse_chat_query(websocket.query_params)
        except ProtocolError as e:
            end_reason = "bad-request"
            await wire.fail(websocket, e)
            return
        end_reason = await _converse(websocket, state, session, request, wire, link)
    finally:
        state.scheduler.release(session, end_reason)


async def brief_endpoint(websocket: WebSocket) -> None:
    """The brief's protocol: a persona_config first, then raw audio both ways and JSON events."""
    state, admitted, link = await _admit(websocket, "ws")
    if isinstance(admitted, Denial):
        await _deny(websocket, admitted.status, admitted.message, _auth_headers(admitted))
        return
    await websocket.accept()
    if isinstance(admitted, Decision):
        with contextlib.suppress(Exception):
            await websocket.send_text(json_message("error", message=admitted.reason, retry_after_s=admitted.retry_after_s))
            await websocket.close(CLOSE_TRY_LATER, close_reason(admitted.reason))
        return
    session = admitted
    end_reason = "client-closed"
    try:
        try:
            message = await asyncio.wait_for(websocket.receive(), CONFIG_TIMEOUT_S)
        except asyncio.TimeoutError:
            end_reason = "bad-request"
            await BriefWire(session, AudioFormat()).fail(
                websocket, ProtocolError(f"no persona_config within {CONFIG_TIMEOUT_S:g} s; send it first"))
            return
        if message["type"] == "websocket.disconnect":
            return
        session.stats.bytes_in += _size(message)
        try:
            if message.get("text") is None:
                raise ProtocolError('the first message must be text: {"type": "persona_config", ...}', CLOSE_UNSUPPORTED)
            request, fmt = parse_persona_config(message["text"])
        except ProtocolError as e:
            end_reason = "bad-request"
            await BriefWire(session, AudioFormat()).fail(websocket, e)
            return
        end_reason = await _converse(websocket, state, session, request, BriefWire(session, fmt), link)
    finally:
        state.scheduler.release(session, end_reason)


async def _converse(
    websocket: WebSocket, state: ServerState, session: ServerSession, request: SessionRequest, wire: Wire, link: _Link,
) -> str:
    """Condition the session, then run its receiver and sender until one side ends it. Returns why it ended."""
    try:
        spec, info = await asyncio.to_thread(conversation_for, request, state.model_dir)
    except ProtocolError as e:
        await wire.fail(websocket, e)
        return "bad-request"
    info["protocol"] = session.protocol
    state.scheduler.open(session, spec, info)
    sender = asyncio.create_task(_send_loop(websocket, session, wire, link, state.metrics))
    receiver = asyncio.create_task(_receive_loop(websocket, session, wire, state))
    waiter = asyncio.create_task(link.ended.wait())
    try:
        done, _ = await asyncio.wait({sender, receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            reason = receiver.result()
            state.scheduler.end(session, reason)
            if reason not in CLIENT_ENDINGS:
                return reason
            # The client asked to end: it hears the end message and a clean close.
            await asyncio.wait({sender}, timeout=2 * SEND_TIMEOUT_S)
            return reason
        if sender not in done:  # ended while the sender is busy (a client that does not read): a grace period
            await asyncio.wait({sender, receiver}, timeout=SEND_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        return session.end_reason or "ended"
    finally:
        for task in (sender, receiver, waiter):
            task.cancel()
        await asyncio.gather(sender, receiver, waiter, return_exceptions=True)


async def _send_loop(websocket: WebSocket, session: ServerSession, wire: Wire, link: _Link, metrics: Metrics) -> None:
    """Outbox -> client, until Ended has been sent (then the socket is closed)."""
    while True:
        link.wakeup.clear()
        while (event := session.outbox.pop()) is not None:
            if isinstance(event, Ended):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(wire.finish(websocket, event), SEND_TIMEOUT_S)
                return
            try:
                sent = await wire.send(websocket, event)
            except (WebSocketDisconnect, OSError, RuntimeError):
                return  # the receiver sees the disconnect and ends the session
            if isinstance(event, AudioOut):
                session.stats.frames_sent += 1
                metrics.audio_out_seconds.inc(FRAME_S)
            session.stats.bytes_out += sent
        await link.wakeup.wait()


async def _receive_loop(websocket: WebSocket, session: ServerSession, wire: Wire, state: ServerState) -> str:
    """Client -> Inbound, until the client goes (or breaks the protocol beyond repair). Returns the reason."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return "client-closed"
        if message["type"] == "websocket.disconnect":
            # uvicorn closes every WebSocket with 1012 (service restart) when it shuts down
            return "server-shutdown" if message.get("code") == CLOSE_SERVICE_RESTART else "client-closed"
        session.stats.bytes_in += _size(message)
        try:
            outcome = wire.receive(message)
        except ProtocolError as e:
            if e.close_code == CLOSE_POLICY:  # a message to ignore: say so, go on
                with contextlib.suppress(Exception):
                    await wire.error(websocket, str(e))
                continue
            await wire.fail(websocket, e)  # the stream itself is broken (too big, not Opus): close
            return "protocol-error"
        if outcome is not None:
            return outcome


def _size(message: dict[str, Any]) -> int:
    if message.get("bytes") is not None:
        return len(message["bytes"])
    return len(message.get("text") or "")


# -- the two wires ----------------------------------------------------------------------------


class Wire:
    """How one protocol puts events on the wire and reads client messages."""

    def __init__(self, session: ServerSession, fmt: AudioFormat) -> None:
        self.session = session
        self.decoder = decoder(fmt)
        self.encoder = encoder(fmt)

    async def send(self, websocket: WebSocket, event: Event) -> int:
        """Send one event; returns the bytes sent."""
        raise NotImplementedError

    async def finish(self, websocket: WebSocket, ended: Ended) -> None:
        """The session is over: say why and close."""
        raise NotImplementedError

    async def error(self, websocket: WebSocket, message: str) -> None:
        raise NotImplementedError

    async def fail(self, websocket: WebSocket, error: ProtocolError) -> None:
        """An error the session cannot go on after: tell the client, then close with the reason."""
        with contextlib.suppress(Exception):
            await self.error(websocket, str(error))
            await asyncio.wait_for(websocket.close(error.close_code, close_reason(str(error))), SEND_TIMEOUT_S)

    def receive(self, message: dict[str, Any]) -> str | None:
        """One client message; returns a reason when the client ends the session. Raises ProtocolError."""
        raise NotImplementedError

    def _audio(self, data: bytes) -> None:
        if len(data) > MAX_AUDIO_MESSAGE_BYTES:
            raise ProtocolError(
                f"an audio message of {len(data)} bytes; send at most {MAX_AUDIO_MESSAGE_BYTES} bytes at a time", CLOSE_TOO_BIG)
        self.session.inbound.push(self.decoder.decode(data))


class ChatWire(Wire):
    """The reference protocol: kind bytes, Opus both ways."""

    def __init__(self, session: ServerSession) -> None:
        super().__init__(session, OPUS_24K)

    async def send(self, websocket: WebSocket, event: Event) -> int:
        if isinstance(event, Ready):
            message = handshake()
        elif isinstance(event, AudioOut):
            pages = self.encoder.encode(event.pcm)
            if not pages:
                return 0
            message = audio_message(pages)
        elif isinstance(event, TextOut):
            message = text_message(event.text)
        else:  # Warming: the protocol has no word for it; 0x00 just comes later
            return 0
        await websocket.send_bytes(message)
        return len(message)

    async def finish(self, websocket: WebSocket, ended: Ended) -> None:
        if ended.message:
            await websocket.send_bytes(error_message(ended.message))
        await websocket.close(END_CODES.get(ended.reason, CLOSE_NORMAL), close_reason(ended.message or ended.reason))

    async def error(self, websocket: WebSocket, message: str) -> None:
        await websocket.send_bytes(error_message(message))

    def receive(self, message: dict[str, Any]) -> str | None:
        data = message.get("bytes")
        if data is None:
            raise ProtocolError("text messages mean nothing here: send binary messages, 0x01 + Ogg Opus pages")
        kind, payload = split_kind(data)
        if kind != KIND_AUDIO:
            raise ProtocolError(f"unknown message kind 0x{kind:02x}: a client sends 0x01 (audio: Ogg Opus pages)")
        self._audio(payload)
        return None


class BriefWire(Wire):
    """The brief's protocol: raw audio in the session's format, JSON events."""

    async def send(self, websocket: WebSocket, event: Event) -> int:
        if isinstance(event, AudioOut):
            data = self.encoder.encode(event.pcm)
            if not data:
                return 0
            await websocket.send_bytes(data)
            return len(data)
        if isinstance(event, Ready):
            text = json_message("ready", session=self.session.id)
        elif isinstance(event, Warming):
            text = json_message("warming", message="the model is loading; ready follows")
        elif isinstance(event, TextOut):
            text = json_message("text", text=event.text)
        elif isinstance(event, Pong):
            text = json_message("pong", id=event.id)
        else:
            return 0
        await websocket.send_text(text)
        return len(text)

    async def finish(self, websocket: WebSocket, ended: Ended) -> None:
        if ended.message:
            await websocket.send_text(json_message("error", message=ended.message))
        stats = self.session.cost(time.monotonic())
        await websocket.send_text(json_message("end", reason=ended.reason, stats=stats))
        await websocket.close(END_CODES.get(ended.reason, CLOSE_NORMAL), close_reason(ended.reason))

    async def error(self, websocket: WebSocket, message: str) -> None:
        await websocket.send_text(json_message("error", message=message))

    def receive(self, message: dict[str, Any]) -> str | None:
        data = message.get("bytes")
        if data is not None:
            self._audio(data)
            return None
        text = message.get("text") or ""
        if len(text) > MAX_TEXT_MESSAGE_BYTES:
            raise ProtocolError(f"a text message of {len(text)} characters; control messages are small JSON", CLOSE_TOO_BIG)
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ProtocolError('a text message that is not JSON; send {"type": "end"} to end, binary messages for audio') from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "end":
            return "client-ended"
        if kind == "ping":  # answered in turn with the agent's audio: the round trip a client's audio sees
            self.session.outbox.put(Pong(ping_id(data.get("id"))))
            return None
        if kind == "persona_config":
            raise ProtocolError("persona_config comes once, first; open a new connection for another persona")
        raise ProtocolError(
            f'unknown message type {kind!r}: after persona_config a client sends audio, {{"type": "ping", "id": N}} or {{"type": "end"}}')

