"""Local fake servers speaking the cascade's three cloud APIs, on loopback (aiohttp), for tests and the bench.

One server answers what the cascade sends to Groq and to ElevenLabs:

    POST /openai/v1/audio/transcriptions       Groq Whisper: multipart (file, model, response_format) -> {"text"}
    POST /openai/v1/chat/completions           Groq chat (or any OpenAI-compatible server): SSE when stream is true
    POST /v1/text-to-speech/{voice_id}/stream  ElevenLabs: raw 16-bit PCM at 24 kHz, streamed in 100 ms pieces
    GET  /openai/v1/models, /v1/models         what probes ask

It checks the keys (`Authorization: Bearer KEY`, `xi-api-key: KEY`), records every request, and
behaves as told: each endpoint takes a queue of one-shot `Plan`s (a status, a delay, a stream cut
after N pieces, a hang), then answers normally. Speech is a stretch of tests/data/agent-voice.wav
(real speech, so the VAD hears it), each request continuing where the last one stopped, under a
slowly rising gain, so that no minute of it repeats and audio played twice by mistake is found by its samples. `len(text) / CHARS_PER_S` seconds a sentence.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import web

AGENT_VOICE = Path(__file__).parent / "data" / "agent-voice.wav"
GOOD_KEY = "gsk_test_secret_0123456789"
GOOD_XI_KEY = "xi_test_secret_9876543210"
CHARS_PER_S = 15.0
PIECE = 2400  # samples per streamed piece: 100 ms at 24 kHz
UNIQUE_SPAN = 60 * 24_000  # samples of fake speech without a repeat
CUT_AFTER_S = 0.2  # a planned cut drops the connection this long after the last piece (aiohttp drops unread data with it)


@dataclass
class Plan:
    """How the next request to an endpoint goes: an error status, a delay before answering, a stream cut
    after `cut_after` pieces (the connection dropped), or a hang longer than any timeout."""

    status: int | None = None
    delay_s: float = 0.0
    cut_after: int | None = None
    hang: bool = False
    piece_delay_s: float = 0.0  # between streamed pieces


@dataclass
class Recorded:
    stt: list[dict] = field(default_factory=list)  # {"pcm": float32 at the WAV's rate, "rate", "model", "response_format"}
    chat: list[dict] = field(default_factory=list)  # the JSON bodies
    tts: list[dict] = field(default_factory=list)  # {"voice_id", "text", "model_id", "output_format", "pcm" sent}
    probes: list[str] = field(default_factory=list)


def _voice() -> np.ndarray:
    with wave.open(str(AGENT_VOICE)) as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        assert f.getframerate() == 24_000 and f.getnchannels() == 1
    return pcm.copy()


class FakeCloud:
    """The fake Groq + ElevenLabs server, on its own thread: `start()`, `url`, then `stop()`.

    transcripts: what speech-to-text answers, one per request in turn (the last repeats).
    replies: what the chat model writes, likewise (streamed word by word).
    """

    def __init__(self, transcripts: list[str] | None = None, replies: list[str] | None = None,
                 groq_key: str | None = GOOD_KEY, xi_key: str = GOOD_XI_KEY) -> None:
        self.transcripts = list(transcripts or ["What is the capital of France?"])
        self.replies = list(replies or ["Paris is the capital. It sits on the Seine."])
        self.groq_key = groq_key
        self.xi_key = xi_key
        self.plans: dict[str, deque[Plan]] = {"stt": deque(), "chat": deque(), "tts": deque(), "models": deque()}
        self.recorded = Recorded()
        self.chat_piece_delay_s = 0.0
        self._voice = _voice()
        self._voice_pos = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fakecloud")
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment that points the cascade here, with good keys."""
        return {"GROQ_BASE_URL": self.url, "ELEVENLABS_BASE_URL": self.url, "GROQ_API_KEY": self.groq_key or "",
                "ELEVENLABS_API_KEY": self.xi_key}

    def plan(self, endpoint: str, *plans: Plan) -> None:
        self.plans[endpoint].extend(plans)

    def start(self) -> FakeCloud:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        """End the handlers still running (a planned hang) and the server."""
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/v1/audio/transcriptions", self._stt)
        app.router.add_post("/openai/v1/chat/completions", self._chat)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts)
        app.router.add_get("/openai/v1/models", self._models)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # -- helpers -------------------------------------------------------------------------------

    def _next(self, endpoint: str) -> Plan:
        return self.plans[endpoint].popleft() if self.plans[endpoint] else Plan()

    async def _before(self, plan: Plan) -> web.Response | None:
        if plan.hang:
            await asyncio.sleep(3600)
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        if plan.status is not None:
            headers = {"Retry-After": "1"} if plan.status == 429 else {}
            return web.json_response({"error": {"message": f"planned status {plan.status}"}}, status=plan.status, headers=headers)
        return None

    def _bearer_ok(self, request: web.Request) -> bool:
        """The Groq key checked; a fake without one is a local server that takes any request."""
        return not self.groq_key or request.headers.get("Authorization") == f"Bearer {self.groq_key}"

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": {"message": "Invalid API Key", "type": "invalid_request_error"}}, status=401)

    # -- endpoints -----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        self.recorded.probes.append(request.path)
        plan = self._next("models")
        if (refused := await self._before(plan)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _stt(self, request: web.Request) -> web.Response:
        plan = self._next("stt")
        if not self._bearer_ok(request):
            return self._unauthorized()
        if (refused := await self._before(plan)) is not None:
            return refused
        form = await request.post()
        upload = form["file"]
        with wave.open(io.BytesIO(upload.file.read())) as f:  # type: ignore[union-attr]
            rate = f.getframerate()
            pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        index = len(self.recorded.stt)
        self.recorded.stt.append({"pcm": pcm, "rate": rate, "model": form.get("model"), "response_format": form.get("response_format")})
        return web.json_response({"text": self.transcripts[min(index, len(self.transcripts) - 1)]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        plan = self._next("chat")
        if not self._bearer_ok(request):
            return self._unauthorized()
        if (refused := await self._before(plan)) is not None:
            return refused
        body = await request.json()
        index = len(self.recorded.chat)
        self.recorded.chat.append(body)
        text = self.replies[min(index, len(self.replies) - 1)]
        pieces = [w + " " for w in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip()
        if not body.get("stream"):
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            if plan.cut_after is not None and i >= plan.cut_after:
                await asyncio.sleep(CUT_AFTER_S)  # the client has read what came; then the connection drops
                request.transport.close()  # type: ignore[union-attr]
                return response
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if plan.piece_delay_s or self.chat_piece_delay_s:
                await asyncio.sleep(plan.piece_delay_s or self.chat_piece_delay_s)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50 + 10 * index, "completion_tokens": len(pieces)}}
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        plan = self._next("tts")
        if request.headers.get("xi-api-key") != self.xi_key:
            return web.json_response({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, status=401)
        if (refused := await self._before(plan)) is not None:
            return refused
        body = await request.json()
        n = max(PIECE, round(len(body["text"]) / CHARS_PER_S * 24_000))
        position = self._voice_pos + np.arange(n)
        self._voice_pos += n
        # The voice loops every 4.6 s; a gain rising over a minute makes every sample of the session's speech unique.
        gain = 0.75 + 0.25 * (position % UNIQUE_SPAN) / UNIQUE_SPAN
        pcm = np.round(self._voice[position % len(self._voice)] * gain).astype(np.int16)
        record = {"voice_id": request.match_info["voice_id"], "text": body["text"], "model_id": body.get("model_id"),
                  "output_format": request.query.get("output_format"), "pcm": np.zeros(0, dtype=np.float32)}
        self.recorded.tts.append(record)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        for i, start in enumerate(range(0, n, PIECE)):
            if plan.cut_after is not None and i >= plan.cut_after:
                await asyncio.sleep(CUT_AFTER_S)  # the client has read what came; then the connection drops
                request.transport.close()  # type: ignore[union-attr]
                return response
            piece = pcm[start : start + PIECE]
            await response.write(piece.astype("<i2").tobytes())
            record["pcm"] = np.concatenate([record["pcm"], piece.astype(np.float32) / 32768.0])
            if plan.piece_delay_s:
                await asyncio.sleep(plan.piece_delay_s)
        await response.write_eof()
        return response


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
