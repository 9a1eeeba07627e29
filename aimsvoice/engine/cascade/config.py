"""What the cascade and the local tier run with: endpoints, models, voice, keys, timeouts, prices.

One frozen `CascadeConfig` per conversation, built by `cascade_config` from the environment, the
persona's `[cascade]` table and the command line. Keys live in `Keys`, whose repr hides them;
every message that could carry one goes through `Keys.redact` first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ... import xdg
from ...errors import AimsvoiceError

GROQ_BASE_URL = "https://api.groq.com"
ELEVENLABS_BASE_URL = "https://api.elevenlabs.io"
OLLAMA_URL = "http://127.0.0.1:11434"  # where a local OpenAI-compatible server is looked for (OLLAMA_HOST moves it)
GROQ_KEY_VAR = "GROQ_API_KEY"
ELEVENLABS_KEY_VAR = "ELEVENLABS_API_KEY"
STT_MODEL = "whisper-large-v3-turbo"
LLM_MODEL = "llama-3.3-70b-versatile"  # Groq's current general Llama
TTS_MODEL = "eleven_flash_v2_5"  # ElevenLabs' low-latency model
DEFAULT_VOICE_ID = "EXAVITQu4vr4xnSDxMaL"  # ElevenLabs' "Sarah", a premade voice every account has
PRICES_FILE = "prices.toml"  # in the config folder: overrides of `Prices`

PACES = ("model", "live")
TIERS = ("cascade", "local")


class CascadeKeyError(AimsvoiceError):
    """A cloud key that is missing, or that the provider rejected."""


class ProviderRequestError(AimsvoiceError):
    """A provider refused the request itself (an unknown model or voice): retrying elsewhere would not help."""


@dataclass(frozen=True)
class Keys:
    """The cloud keys, from GROQ_API_KEY and ELEVENLABS_API_KEY; never printed (repr hides them)."""

    groq: str | None = field(default=None, repr=False)
    elevenlabs: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Keys:
        env = os.environ if env is None else env
        return cls(env.get(GROQ_KEY_VAR, "").strip() or None, env.get(ELEVENLABS_KEY_VAR, "").strip() or None)

    def redact(self, text: str) -> str:
        """`text` with every key replaced by `***`."""
        for key in (self.groq, self.elevenlabs):
            if key:
                text = text.replace(key, "***")
        return text


@dataclass(frozen=True)
class Timeouts:
    """Seconds, fit for a conversation: a provider that does not answer within these is down for now."""

    connect_s: float = 3.0
    stt_s: float = 8.0  # the whole transcription request
    first_byte_s: float = 5.0  # from the request to the first token or audio byte
    idle_s: float = 4.0  # between two pieces of a stream: longer is a stream cut


@dataclass(frozen=True)
class Prices:
    """List prices (USD) the cost estimate uses; override any in ~/.config/aimsvoice/prices.toml.

    Defaults: Groq's whisper-large-v3-turbo per hour of audio and Llama 3.3 70B per million
    tokens; ElevenLabs' per 1000 characters (Flash/Turbo, overage on a paid plan). Estimates:
    check your own plan.
    """

    stt_usd_per_hour: float = 0.04
    llm_usd_per_mtok_in: float = 0.59
    llm_usd_per_mtok_out: float = 0.79
    tts_usd_per_kchar: float = 0.15


@dataclass(frozen=True)
class CascadeConfig:
    """How one cascade (or local) conversation runs.

    tier: "cascade" (cloud providers first, local ones behind) or "local" (no network but a local LLM server).
    pace: "model" (offline: a reply lands at the model time its requests really took, step() waits
        for the network as needed) or "live" (step() never waits; audio plays when it arrives).
    llm_url: an OpenAI-compatible server (Ollama, llama.cpp, vLLM) instead of Groq's chat.
    llm_model: the chat model; None: LLM_MODEL on Groq, the server's first model elsewhere.
    voice_id: the ElevenLabs voice; local_voice: espeak-ng's voice (or a Piper .onnx voice file).
    """

    tier: str = "cascade"
    pace: str = "model"
    keys: Keys = Keys()
    groq_url: str = GROQ_BASE_URL
    elevenlabs_url: str = ELEVENLABS_BASE_URL
    llm_url: str | None = None
    llm_model: str | None = None
    stt_model: str = STT_MODEL
    tts_model: str = TTS_MODEL
    voice_id: str = DEFAULT_VOICE_ID
    local_voice: str = "en-us+klatt"
    probe_local_llm: bool = True  # look for a server at local_llm_url when no llm_url is given
    local_llm_url: str = OLLAMA_URL
    timeouts: Timeouts = Timeouts()
    prices: Prices = Prices()
    max_history: int = 24  # messages kept besides the system prompt

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tier {self.tier!r}: one of {TIERS}")
        if self.pace not in PACES:
            raise ValueError(f"pace {self.pace!r}: one of {PACES}")

    def missing_keys(self) -> tuple[str, ...]:
        """The variables the cascade needs and the environment lacks (the local tier needs none)."""
        if self.tier == "local":
            return ()
        missing = []
        if not self.keys.groq:
            missing.append(GROQ_KEY_VAR)
        if not self.keys.elevenlabs:
            missing.append(ELEVENLABS_KEY_VAR)
        return tuple(missing)


def cascade_config(
    tier: str, *, pace: str = "model", persona_cascade: Mapping[str, Any] | None = None, llm_url: str | None = None,
    llm_model: str | None = None, env: Mapping[str, str] | None = None,
) -> CascadeConfig:
    """The config from the environment (keys, GROQ_BASE_URL, ELEVENLABS_BASE_URL), the persona's
    `[cascade]` table (voice_id, llm_model, local_voice) and the flags (which win)."""
    env = os.environ if env is None else env
    table = dict(persona_cascade or {})
    config = CascadeConfig(
        tier=tier,
        pace=pace,
        keys=Keys.from_env(env),
        groq_url=_base_url(env.get("GROQ_BASE_URL") or GROQ_BASE_URL),
        elevenlabs_url=_base_url(env.get("ELEVENLABS_BASE_URL") or ELEVENLABS_BASE_URL),
        llm_url=_base_url(llm_url) if llm_url else None,
        llm_model=llm_model or table.get("llm_model"),
        local_llm_url=_ollama_url(env.get("OLLAMA_HOST", "")),
        prices=load_prices(),
    )
    overrides = {k: table[k] for k in ("voice_id", "local_voice") if table.get(k)}
    return replace(config, **overrides)


def _ollama_url(host: str) -> str:
    """Ollama's address: OLLAMA_HOST as Ollama reads it (host, host:port or a URL), else its default."""
    host = host.strip()
    if not host:
        return OLLAMA_URL
    if "://" not in host:
        host = f"http://{host}"
    return _base_url(host if host.rsplit(":", 1)[-1].isdigit() else f"{host}:11434")


def _base_url(url: str) -> str:
    return url.strip().rstrip("/")


def load_prices(path: Path | None = None) -> Prices:
    """`Prices`, with the numbers of ~/.config/aimsvoice/prices.toml (if any) in place of the defaults."""
    path = path or xdg.config_dir() / PRICES_FILE
    if not path.is_file():
        return Prices()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AimsvoiceError(f"{path}: cannot read the price table ({e}); fix or remove it") from e
    known = set(Prices.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in data.values()):
        raise AimsvoiceError(f"{path}: expected numbers >= 0 for any of {', '.join(sorted(known))}; fix or remove it")
    return Prices(**{k: float(v) for k, v in data.items()})
