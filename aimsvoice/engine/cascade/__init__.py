"""When PersonaPlex cannot run: the cascade (Groq Whisper -> a chat model -> ElevenLabs) and the local
tier (PocketSphinx -> a local server or the offline responder -> espeak-ng/Piper), behind the same
frame contract as PersonaPlex. Torch-free.

    engine.py    CascadeEngine: the step thread's side (VAD, turns, barge-in, the timeline, pacing)
    worker.py    the worker loop: a turn's requests, failover between providers, probes
    cloud.py     Groq speech-to-text, OpenAI-compatible chat completions, ElevenLabs speech
    local.py     PocketSphinx, espeak-ng/Piper, the offline responder
    providers.py the providers' protocols, HTTP with the conversation's timeouts, failure kinds
    turns.py, failover.py, playout.py, text.py   the pure decisions: end of turn, failover, timeline, sentences
    config.py    CascadeConfig: endpoints, models, voice, keys (redacted), timeouts, prices; usage.py the cost
    choose.py    `--engine auto`: which tier, and why (a pure choice over facts)
    fallback.py  auto's hand-over mid-session (FallbackEngine) and FrameEngines as a BatchEngine (for serve)
"""

from __future__ import annotations

from ... import lazy_exports

_EXPORTS = {
    "CascadeConfig": ".config",
    "CascadeKeyError": ".config",
    "Keys": ".config",
    "Prices": ".config",
    "Timeouts": ".config",
    "cascade_config": ".config",
    "CascadeEngine": ".engine",
    "TurnConfig": ".turns",
    "Failover": ".failover",
    "FailoverConfig": ".failover",
    "Facts": ".choose",
    "TierChoice": ".choose",
    "choose_tier": ".choose",
    "gather_facts": ".choose",
    "FallbackEngine": ".fallback",
    "FrameRows": ".fallback",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
