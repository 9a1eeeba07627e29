"""The two wire protocols, as pure functions and codec objects: nothing here touches a socket.

Reference protocol (`GET /api/chat`), as NVIDIA's PersonaPlex server and Kyutai's Moshi clients speak it:
binary messages whose first byte is the kind. The server sends `0x00` once the session's system
prompt has run, `0x01` + Ogg Opus pages (24 kHz mono) of the agent's voice, `0x02` + UTF-8 text
pieces of its words, and `0x05` + a UTF-8 message on an error (the kind Moshi's web client
reads as an error). The client sends `0x01` + Ogg Opus pages. The session is chosen by query
parameters (`parse_chat_query`).

Brief protocol (`GET /ws`): the first message is a JSON `persona_config` (`parse_persona_config`),
then binary messages are raw audio in the format it names (`AudioFormat`) both ways, and the
server's text messages are JSON (`{"type": "ready" | "warming" | "text" | "error" | "end", ...}`).

Audio goes in through a `Decoder` (bytes -> float32 PCM at 24 kHz, the model's rate) and out
through an `Encoder` (24 kHz PCM -> bytes), one of each per session: Opus through sphn's Ogg
stream reader and writer, raw PCM through soxr's streaming resampler when the client's rate is
not 24 kHz (pass-through at 24 kHz, so 16-bit input reaches the model bit-exact).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import soxr
import sphn

from ..audio.format import SAMPLE_RATE
from .config import MAX_TEXT_PROMPT_CHARS

KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02
KIND_ERROR = 0x05  # Moshi's web client: an error to show; the reference server never sends one

# WebSocket close codes (RFC 6455 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003  # a binary message where JSON was due, or text where audio was
CLOSE_POLICY = 1008  # a request the server will not serve: bad persona_config, bad parameters
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012  # the server shuts down (uvicorn sends it to every WebSocket)
CLOSE_TRY_LATER = 1013  # every session is taken

PCM_S16LE = "pcm_s16le"
PCM_F32LE = "pcm_f32le"
OPUS = "opus"
AUDIO_FORMATS = (PCM_S16LE, PCM_F32LE, OPUS)
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MIN_RATE, MAX_RATE = 8_000, 192_000

TEMPERATURE_MAX = 10.0
TOPK_MAX = 100_000
SEED_MAX = 2**63 - 1
VOICE_NAME_MAX = 64
PING_ID_MAX = 64


class ProtocolError(ValueError):
    """A message or parameter the server cannot take. str(error) is what the client is told.

    close_code: the WebSocket close code when the session cannot go on.
    """

    def __init__(self, message: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True)
class SessionRequest:
    """What a client asks a session to be: a persona and overrides, all optional.

    voice: a voice of the model by name (`NATF0`, `NATF0.pt`; checked against the model later);
    voice_audio: the bytes of a WAV file to use as the voice instead; the sampling fields override
    the persona's; None everywhere means the persona's (the default persona when `persona` is None).
    """

    persona: str | None = None
    voice: str | None = None
    voice_audio: bytes | None = None
    text_prompt: str | None = None
    seed: int | None = None
    temp_text: float | None = None
    topk_text: int | None = None
    temp_audio: float | None = None
    topk_audio: int | None = None

    def sampling_overrides(self) -> dict[str, float | int]:
        fields = ("temp_text", "topk_text", "temp_audio", "topk_audio")
        return {f: value for f in fields if (value := getattr(self, f)) is not None}


@dataclass(frozen=True)
class AudioFormat:
    """How a /ws client's audio is encoded, both ways."""

    codec: str = PCM_S16LE
    sample_rate: int = SAMPLE_RATE

    @property
    def bytes_per_sample(self) -> int:
        return {PCM_S16LE: 2, PCM_F32LE: 4}.get(self.codec, 0)


OPUS_24K = AudioFormat(OPUS, SAMPLE_RATE)  # the reference protocol's audio

# The reference's query parameters and the persona_config fields that mean the same, by our name.
_SAMPLING_PARAMS = {
    "text_temperature": "temp_text",
    "text_topk": "topk_text",
    "audio_temperature": "temp_audio",
    "audio_topk": "topk_audio",
}
CHAT_PARAMS = ("voice_prompt", "text_prompt", "persona", "seed", *_SAMPLING_PARAMS, "token")
CONFIG_FIELDS = ("type", "persona", "voice_prompt", "voice_audio", "text_prompt", "seed", *_SAMPLING_PARAMS, "audio", "sample_rate")


# -- requests ---------------------------------------------------------------------------------


def parse_chat_query(params: Mapping[str, str]) -> SessionRequest:
    """The reference protocol's query parameters -> a request. Parameters we do not know are ignored,
    as the reference's web client sends some (pad_mult, repetition_penalty...) that mean nothing here."""
    values: dict[str, Any] = {name: params[name] for name in CHAT_PARAMS if name in params and name != "token"}
    return _request(values, number_from_text=True)


def parse_persona_config(text: str) -> tuple[SessionRequest, AudioFormat]:
    """The brief protocol's first message -> a request and the audio format both ways."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"the first message is not JSON ({e}); send {{\"type\": \"persona_config\", ...}}") from None
    if not isinstance(data, dict) or data.get("type") != "persona_config":
        raise ProtocolError('the first message must be {"type": "persona_config", ...} (every other field is optional)')
    unknown = sorted(set(data) - set(CONFIG_FIELDS))
    if unknown:
        raise ProtocolError(f"persona_config: unknown field {', '.join(map(repr, unknown))}; allowed: {', '.join(CONFIG_FIELDS)}")
    request = _request({k: v for k, v in data.items() if k not in ("type", "audio", "sample_rate")}, number_from_text=False)
    return request, _audio_format(data.get("audio"), data.get("sample_rate"))


def _request(values: dict[str, Any], *, number_from_text: bool) -> SessionRequest:
    fields: dict[str, Any] = {}
    if (persona := _optional_text(values, "persona")) is not None:
        fields["persona"] = persona.strip() or None
    if (voice := _optional_text(values, "voice_prompt")) is not None and voice.strip():
        fields["voice"] = voice_name(voice.strip())
    if (text_prompt := _optional_text(values, "text_prompt")) is not None:
        if len(text_prompt) > MAX_TEXT_PROMPT_CHARS:
            raise ProtocolError(f"text_prompt: {len(text_prompt)} characters; at most {MAX_TEXT_PROMPT_CHARS}")
        fields["text_prompt"] = text_prompt if text_prompt.strip() else None  # empty: the persona's
    if "voice_audio" in values and values["voice_audio"] is not None:
        if "voice" in fields:
            raise ProtocolError("give voice_prompt or voice_audio, not both")
        fields["voice_audio"] = _base64(values["voice_audio"])
    if "seed" in values and values["seed"] is not None:
        fields["seed"] = _integer(values["seed"], "seed", 0, SEED_MAX, number_from_text)
    for name, field in _SAMPLING_PARAMS.items():
        if name in values and values[name] is not None:
            if field.startswith("temp"):
                fields[field] = _number(values[name], name, 0.0, TEMPERATURE_MAX, number_from_text)
            else:
                fields[field] = _integer(values[name], name, 1, TOPK_MAX, number_from_text)
    return SessionRequest(**fields)


def voice_name(value: str) -> str:
    """A voice of the model as a client may name it: `NATF0` or `NATF0.pt`; never a path or a URL."""
    if "://" in value or value.lower().startswith(("http:", "https:", "data:")):
        raise ProtocolError(
            "voice_prompt: the server never fetches a URL; name a voice of the model (e.g. NATF0) "
            "or send the audio itself as voice_audio (base64 WAV, at most 30 s)"
        )
    name = value
    for suffix in (".pt", ".wav"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    if not name or len(name) > VOICE_NAME_MAX or not all(c.isalnum() or c in "_-" for c in name):
        raise ProtocolError(f"voice_prompt {value!r}: give the name of a voice of the model, such as NATF0 or NATF0.pt")
    return name


def _optional_text(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("voice_audio must be a string: a WAV file in base64")
    if "://" in value[:16]:
        raise ProtocolError("voice_audio: the server never fetches a URL; send the WAV file's bytes in base64")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("voice_audio is not valid base64; send the WAV file's bytes in base64") from None
    if not data:
        raise ProtocolError("voice_audio is empty; send a WAV file of 1 to 30 s")
    return data


def _number(value: Any, name: str, low: float, high: float, from_text: bool) -> float:
    if isinstance(value, str) and from_text:
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ProtocolError(f"{name}: give a number from {low:g} to {high:g}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int, from_text: bool) -> int:
    if isinstance(value, str) and from_text:
        try:
            value = int(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{name}: give a whole number from {low} to {high}")
    return value


def _audio_format(codec: Any, rate: Any) -> AudioFormat:
    codec = PCM_S16LE if codec is None else codec
    if codec not in AUDIO_FORMATS:
        raise ProtocolError(f"persona_config: audio {codec!r} is not one of {', '.join(AUDIO_FORMATS)}")
    if rate is None:
        return AudioFormat(codec, SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ProtocolError("persona_config: sample_rate must be a whole number of Hz")
    if codec == OPUS:
        if rate not in OPUS_RATES:
            raise ProtocolError(f"persona_config: opus runs at {', '.join(map(str, OPUS_RATES))} Hz, not {rate}")
        return AudioFormat(OPUS, SAMPLE_RATE)  # both ways a 24 kHz stream: any Opus decoder plays it at its own rate
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"persona_config: sample_rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE}")
    return AudioFormat(codec, rate)


# -- messages ---------------------------------------------------------------------------------


def split_kind(message: bytes) -> tuple[int, bytes]:
    """A reference-protocol message -> (kind, payload)."""
    if not message:
        raise ProtocolError("empty message: every message starts with its kind byte (0x01 for audio)")
    return message[0], message[1:]


def handshake() -> bytes:
    return bytes([KIND_HANDSHAKE])


def audio_message(payload: bytes) -> bytes:
    return bytes([KIND_AUDIO]) + payload


def text_message(text: str) -> bytes:
    return bytes([KIND_TEXT]) + text.encode("utf-8")


def error_message(text: str) -> bytes:
    return bytes([KIND_ERROR]) + text.encode("utf-8")


def ping_id(value: Any) -> int | float | str | None:
    """A /ws ping's `id`, echoed in its pong: a number or a short string (or none)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return value
    if isinstance(value, str) and len(value) <= PING_ID_MAX:
        return value
    raise ProtocolError(f"ping: id must be a number or a string of at most {PING_ID_MAX} characters")


def json_message(kind: str, **fields: Any) -> str:
    """A brief-protocol server message: {"type": kind, ...}."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def close_reason(text: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", errors="ignore") + "..."


# -- audio ------------------------------------------------------------------------------------


class Decoder(Protocol):
    def decode(self, data: bytes) -> np.ndarray:
        """Bytes as they came -> float32 mono PCM at 24 kHz (possibly empty)."""
        ...


class Encoder(Protocol):
    def encode(self, pcm: np.ndarray) -> bytes:
        """float32 mono PCM at 24 kHz -> bytes to send (possibly empty)."""
        ...


class OpusDecoder:
    """An Ogg Opus stream in any chunking -> 24 kHz PCM. Garbage raises ProtocolError."""

    def __init__(self) -> None:
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)

    def decode(self, data: bytes) -> np.ndarray:
        try:
            pcm = self._reader.append_bytes(data)
        except Exception as e:  # sphn raises ValueError (and others) on what is not Ogg Opus
            raise ProtocolError(f"audio is not an Ogg Opus stream ({e})", CLOSE_UNSUPPORTED) from None
        return np.asarray(pcm, dtype=np.float32).reshape(-1)


class OpusEncoder:
    """24 kHz PCM -> Ogg Opus pages (the first call also returns the stream's header pages)."""

    def __init__(self) -> None:
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))


class PcmDecoder:
    """Little-endian 16-bit or 32-bit float samples at the client's rate -> 24 kHz PCM.

    A message may end mid-sample: the rest waits for the next one.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._width = fmt.bytes_per_sample
        self._dtype = "<i2" if fmt.codec == PCM_S16LE else "<f4"
        self._partial = b""
        self._resampler = None if fmt.sample_rate == SAMPLE_RATE else soxr.ResampleStream(
            fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        data = self._partial + data
        usable = len(data) - len(data) % self._width
        self._partial = data[usable:]
        samples = np.frombuffer(data[:usable], dtype=self._dtype)
        if self.fmt.codec == PCM_S16LE:
            pcm = samples.astype(np.float32) / np.float32(32768.0)
        else:
            pcm = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
            pcm = np.clip(pcm, -1.0, 1.0)
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
        return np.asarray(pcm, dtype=np.float32)


class PcmEncoder:
    """24 kHz PCM -> little-endian samples at the client's rate."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._resampler = None if fmt.sample_rate == SAMPLE_RATE else soxr.ResampleStream(
            SAMPLE_RATE, fmt.sample_rate, 1, dtype="float32", quality="HQ")

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.float32)
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
        if self.fmt.codec == PCM_S16LE:
            return np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2").tobytes()
        return np.clip(pcm, -1.0, 1.0).astype("<f4").tobytes()


def decoder(fmt: AudioFormat) -> Decoder:
    return OpusDecoder() if fmt.codec == OPUS else PcmDecoder(fmt)


def encoder(fmt: AudioFormat) -> Encoder:
    return OpusEncoder() if fmt.codec == OPUS else PcmEncoder(fmt)
