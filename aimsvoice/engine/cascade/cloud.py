"""The cloud tier's providers: Groq's Whisper, OpenAI-compatible chat completions (Groq, or any
server given by --llm-url), ElevenLabs' streaming speech. Each also has a probe: a cheap GET of
the provider's model list, which tells whether it is back after a failure.
"""

from __future__ import annotations

import io
import json
import wave
from typing import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from .config import ELEVENLABS_KEY_VAR, GROQ_KEY_VAR
from .failover import CUT
from .providers import Http, ProviderFailure

STT_RATE = 16_000
MAX_REPLY_TOKENS = 400  # a spoken answer, not an essay


def wav_bytes(pcm: np.ndarray, rate: int = STT_RATE) -> bytes:
    """Mono float32 -> a 16-bit PCM WAV file's bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
    return out.getvalue()


def openai_base(url: str) -> str:
    """An OpenAI-compatible server's base URL: as given, or with /v1 when the URL has no path (Ollama, llama.cpp, vLLM)."""
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class GroqWhisper:
    """Speech-to-text: POST {base}/openai/v1/audio/transcriptions, a WAV of the turn at 16 kHz."""

    cloud = True

    def __init__(self, http: Http, base_url: str, key: str, model: str, timeout_s: float) -> None:
        self.name = "groq"
        self.http = http
        self.url = f"{base_url}/openai/v1/audio/transcriptions"
        self.models_url = f"{base_url}/openai/v1/models"
        self.key = key
        self.model = model
        self.timeout_s = timeout_s

    async def transcribe(self, pcm_16k: np.ndarray) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(pcm_16k), filename="turn.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("response_format", "json")
        headers = {"Authorization": f"Bearer {self.key}"}
        async with self.http.request(
            "Groq speech-to-text", "POST", self.url, key_var=GROQ_KEY_VAR, hint=f"the model {self.model!r}",
            first_byte_s=self.timeout_s, data=form, headers=headers,
        ) as response:
            try:
                data = json.loads(await self.http.read_all(response))
            except ValueError:
                raise ProviderFailure(CUT, self.name, "the answer was not JSON") from None
        return str(data.get("text", "")).strip() if isinstance(data, dict) else ""

    async def probe(self) -> bool:
        return await self.http.ok(self.models_url, {"Authorization": f"Bearer {self.key}"})


class ChatCompletions:
    """The reply: POST {base}/chat/completions with stream: true, read as server-sent events.

    base: Groq's {url}/openai/v1, or an OpenAI-compatible server's /v1 (--llm-url).
    """

    def __init__(
        self, http: Http, name: str, base: str, model: str, key: str | None, key_var: str | None, *, cloud: bool,
    ) -> None:
        self.name = name
        self.cloud = cloud
        self.http = http
        self.base = base
        self.model = model
        self.key = key
        self.key_var = key_var
        self.last_usage: tuple[int, int, bool] = (0, 0, True)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def reply(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        body = {
            "model": self.model, "messages": messages, "stream": True, "max_tokens": MAX_REPLY_TOKENS,
            "stream_options": {"include_usage": True},
        }
        label = "Groq chat" if self.name == "groq" else f"the LLM server at {self.base}"
        written: list[str] = []
        usage = None
        finished = False
        async with self.http.request(
            label, "POST", f"{self.base}/chat/completions", key_var=self.key_var,
            hint=f"--llm-model (the model {self.model!r})", json=body, headers=self._headers(),
        ) as response:
            while line := await self.http.readline(response):
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    finished = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage") or usage
                for choice in chunk.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        written.append(piece)
                        yield piece
                    if choice.get("finish_reason"):
                        finished = True
        if not finished:
            raise ProviderFailure(CUT, self.name, "the reply's stream ended before it was complete")
        if usage and "prompt_tokens" in usage:
            self.last_usage = (int(usage["prompt_tokens"]), int(usage.get("completion_tokens", 0)), False)
        else:
            chars_in = sum(len(m["content"]) for m in messages)
            self.last_usage = (chars_in // 4, len("".join(written)) // 4, True)

    async def probe(self) -> bool:
        return await self.http.ok(f"{self.base}/models", self._headers())


class ElevenLabsSpeech:
    """Speech: POST {base}/v1/text-to-speech/{voice_id}/stream?output_format=pcm_24000; raw 16-bit audio streamed back."""

    cloud = True

    def __init__(self, http: Http, base_url: str, key: str, voice_id: str, model: str) -> None:
        self.name = "elevenlabs"
        self.http = http
        self.base_url = base_url
        self.models_url = f"{base_url}/v1/models"
        self.key = key
        self.voice_id = voice_id
        self.model = model

    async def speak(self, text: str) -> AsyncIterator[np.ndarray]:
        carry = b""
        async with self.http.request(
            "ElevenLabs", "POST", f"{self.base_url}/v1/text-to-speech/{self.voice_id}/stream", key_var=ELEVENLABS_KEY_VAR,
            hint=f"the voice_id {self.voice_id!r} (the persona's [cascade] table) and the model {self.model!r}",
            params={"output_format": "pcm_24000"}, json={"text": text, "model_id": self.model},
            headers={"xi-api-key": self.key},
        ) as response:
            while piece := await self.http.read(response):
                data = carry + piece
                n = len(data) // 2 * 2
                carry = data[n:]
                if n:
                    yield np.frombuffer(data[:n], dtype="<i2").astype(np.float32) / 32768.0

    async def probe(self) -> bool:
        return await self.http.ok(self.models_url, {"xi-api-key": self.key})
