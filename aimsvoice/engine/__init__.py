"""Engines: 80 ms frames of the user's audio in, the agent's audio and text out.

contract.py is what every engine offers (torch-free: `ConversationSpec`, `StepOut`, `FrameEngine`,
`BatchEngine`); the rest is PersonaPlex: model loading (moshi), persona conditioning and the
batched step loop. Names are imported on first use, so importing the contract loads no torch.
cascade/ holds the other engines, behind the same contract: the fallback chain's cascade (Groq,
ElevenLabs) and local tier, torch-free.
"""

from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {
    "BatchEngine": ".contract",
    "ConversationSpec": ".contract",
    "FrameEngine": ".contract",
    "SoloEngine": ".contract",
    "StepOut": ".contract",
    "EngineConfig": ".config",
    "SamplingConfig": ".config",
    "LoadedModel": ".load",
    "ModelCheck": ".load",
    "check_model": ".load",
    "load_model": ".load",
    "max_batch_size": ".memory",
    "read_model_files": ".load",
    "Engine": ".loop",
    "PersonaPlexBatch": ".loop",
    "PersonaPlexGen": ".loop",
    "PromptState": ".prompts",
    "VoicePrompt": ".prompts",
    "load_voice": ".prompts",
    "resolve_voice": ".prompts",
    "voice_names": ".prompts",
    "ensure_tiny_model": ".tiny",
    "write_tiny_model": ".tiny",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
