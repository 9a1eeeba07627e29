"""What a session cost in the cloud: speech-to-text seconds, LLM tokens, TTS characters, and an estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Prices

STT_MIN_BILLED_S = 10.0  # Groq bills each transcription as at least 10 s


@dataclass
class Usage:
    """Cloud usage counted as requests complete (local providers cost nothing and are not counted).

    stt_s: audio sent to cloud speech-to-text; stt_billed_s: as billed (at least STT_MIN_BILLED_S a request).
    llm_tokens_in/out: from the server's usage report, else estimated at 4 characters a token.
    tts_chars: characters sent to cloud speech.
    """

    stt_requests: int = 0
    stt_s: float = 0.0
    stt_billed_s: float = 0.0
    llm_requests: int = 0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    llm_tokens_estimated: bool = False
    tts_requests: int = 0
    tts_chars: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)  # requests served, local ones too

    def served(self, component: str, provider: str) -> None:
        key = f"{component} {provider}"
        self.by_provider[key] = self.by_provider.get(key, 0) + 1

    def stt(self, seconds: float) -> None:
        self.stt_requests += 1
        self.stt_s += seconds
        self.stt_billed_s += max(seconds, STT_MIN_BILLED_S)

    def llm(self, tokens_in: int, tokens_out: int, estimated: bool) -> None:
        self.llm_requests += 1
        self.llm_tokens_in += tokens_in
        self.llm_tokens_out += tokens_out
        self.llm_tokens_estimated |= estimated

    def tts(self, chars: int) -> None:
        self.tts_requests += 1
        self.tts_chars += chars

    def cost_usd(self, prices: Prices) -> float:
        return (
            self.stt_billed_s / 3600.0 * prices.stt_usd_per_hour
            + self.llm_tokens_in / 1e6 * prices.llm_usd_per_mtok_in
            + self.llm_tokens_out / 1e6 * prices.llm_usd_per_mtok_out
            + self.tts_chars / 1000.0 * prices.tts_usd_per_kchar
        )

    def to_json(self, prices: Prices) -> dict[str, Any]:
        return {
            "stt_requests": self.stt_requests,
            "stt_s": round(self.stt_s, 2),
            "stt_billed_s": round(self.stt_billed_s, 2),
            "llm_requests": self.llm_requests,
            "llm_tokens_in": self.llm_tokens_in,
            "llm_tokens_out": self.llm_tokens_out,
            **({"llm_tokens_estimated": True} if self.llm_tokens_estimated else {}),
            "tts_requests": self.tts_requests,
            "tts_chars": self.tts_chars,
            "served": dict(self.by_provider),
            "cost_usd_estimate": round(self.cost_usd(prices), 5),
        }
