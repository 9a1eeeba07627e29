"""The local tier's providers: no network, no cost.

- Speech-to-text: PocketSphinx, whose wheel ships a US English model (`pocketsphinx.get_model_path()`).
- Speech: espeak-ng (a system package, run as `espeak-ng --stdout`), or a Piper voice when one is
  installed: a `.onnx` voice file (with its `.onnx.json`) as the persona's `[cascade] local_voice`
  or in AIMSVOICE_PIPER_VOICE, and the `piper` command (pip install piper-tts). Resampled to 24 kHz.
- The reply: a local OpenAI-compatible server (chat completions, as cloud.py speaks them) when
  --llm-url is given or one answers at Ollama's address; else `OfflineResponder`, which says it
  is offline and what it understood. It never pretends to converse.

The blocking work (PocketSphinx's decoding, the subprocesses) runs off the worker's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import soxr

from ...audio.format import SAMPLE_RATE
from ...errors import AimsvoiceError
from .cloud import STT_RATE
from .failover import CUT
from .providers import ProviderFailure

PIPER_VOICE_VAR = "AIMSVOICE_PIPER_VOICE"
ESPEAK_WPM = 165
DECODE_CHUNK_S = 0.1  # PocketSphinx is fed this much at a time: other threads run between chunks (it holds the GIL)


class LocalSpeechError(AimsvoiceError):
    """The local tier cannot run: a missing program or model."""


class PocketSphinx:
    """Speech-to-text with PocketSphinx's bundled US English model (loaded once, on first use)."""

    name = "pocketsphinx"
    cloud = False

    def __init__(self) -> None:
        self._decoder = None

    def _load(self):
        if self._decoder is None:
            try:
                from pocketsphinx import Decoder
            except ImportError as e:
                raise LocalSpeechError("pocketsphinx is not installed; run `make install` (or pip install pocketsphinx)") from e
            self._decoder = Decoder(samprate=STT_RATE, loglevel="FATAL")
        return self._decoder

    def decode(self, pcm_16k: np.ndarray) -> str:
        """Blocking: the words of the audio (float32 mono at 16 kHz)."""
        decoder = self._load()
        raw = (np.clip(pcm_16k, -1.0, 1.0) * 32767.0).astype("<i2")
        step = round(DECODE_CHUNK_S * STT_RATE)
        decoder.start_utt()
        for i in range(0, len(raw), step):
            decoder.process_raw(raw[i : i + step].tobytes(), no_search=False, full_utt=False)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    async def transcribe(self, pcm_16k: np.ndarray) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.decode, pcm_16k)

    def warm(self) -> None:
        """Load the model now (about a second), not at the first turn."""
        self._load()


async def _run(argv: list[str], stdin: bytes, what: str) -> bytes:
    """A subprocess's standard output; killed if the turn is cancelled."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise LocalSpeechError(f"cannot run {argv[0]} ({e.strerror}); install {what}") from e
    try:
        out, err = await process.communicate(stdin)
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        message = " ".join(err.decode(errors="replace").split())[:200]
        raise ProviderFailure(CUT, argv[0], f"exited with status {process.returncode}: {message}")
    return out


def wav_pcm(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV from a pipe (its sizes may be placeholders) -> float32 samples and rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if tag == b"fmt ":
            rate = struct.unpack("<I", data[pos + 12 : pos + 16])[0]
        if tag == b"data":
            body = data[pos + 8 :]
            body = body[: len(body) // 2 * 2]
            if rate is None:
                raise ValueError("no fmt chunk before the data")
            return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0, rate
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk")


def _to_24k(pcm: np.ndarray, rate: int) -> np.ndarray:
    return pcm if rate == SAMPLE_RATE else soxr.resample(pcm, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


class Espeak:
    """Speech with espeak-ng (`voice`: an espeak-ng voice, e.g. en-us+klatt)."""

    name = "espeak-ng"
    cloud = False

    def __init__(self, voice: str = "en-us+klatt", words_per_minute: int = ESPEAK_WPM) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute

    async def speak(self, text: str) -> AsyncIterator[np.ndarray]:
        out = await _run(
            ["espeak-ng", "-v", self.voice, "-s", str(self.words_per_minute), "--stdout", "--stdin"],
            text.encode("utf-8"), "espeak-ng (apt-get install espeak-ng)",
        )
        try:
            pcm, rate = wav_pcm(out)
        except ValueError as e:
            raise ProviderFailure(CUT, self.name, f"unreadable audio ({e})") from None
        yield _to_24k(pcm, rate)


class Piper:
    """Speech with a Piper voice: `piper --model VOICE.onnx --output-raw`, the text on its input."""

    name = "piper"
    cloud = False

    def __init__(self, voice: Path, command: str) -> None:
        self.voice = voice
        self.command = command
        config = json.loads(Path(f"{voice}.json").read_text(encoding="utf-8"))
        self.rate = int(config["audio"]["sample_rate"])

    async def speak(self, text: str) -> AsyncIterator[np.ndarray]:
        out = await _run([self.command, "--model", str(self.voice), "--output-raw"], text.encode("utf-8"), "piper-tts")
        out = out[: len(out) // 2 * 2]
        yield _to_24k(np.frombuffer(out, dtype="<i2").astype(np.float32) / 32768.0, self.rate)


def local_speech(voice: str | None) -> Espeak | Piper:
    """Piper when a voice file is named (here or in AIMSVOICE_PIPER_VOICE) and `piper` is installed, else espeak-ng."""
    candidates = [v for v in (voice, os.environ.get(PIPER_VOICE_VAR)) if v and v.endswith(".onnx")]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        command = shutil.which("piper")
        if path.is_file() and Path(f"{path}.json").is_file() and command is not None:
            return Piper(path, command)
    espeak_voice = voice if voice and not voice.endswith(".onnx") else "en-us+klatt"
    if shutil.which("espeak-ng") is None:
        raise LocalSpeechError("espeak-ng is not installed; run `make install` (or apt-get install espeak-ng)")
    return Espeak(espeak_voice)


class OfflineResponder:
    """The reply when no language model can be reached: says it is offline, and what it understood."""

    name = "offline"
    cloud = False

    def __init__(self) -> None:
        self.last_usage: tuple[int, int, bool] = (0, 0, False)

    async def reply(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        heard = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").strip()
        if heard:
            yield f"I am offline, so I cannot really answer. I understood: {heard}."
        else:
            yield "I am offline, and I did not understand that."

    async def probe(self) -> bool:
        return True
