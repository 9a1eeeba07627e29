"""The PersonaPlex engine: model loading (moshi), persona conditioning and the step loop.

Knows nothing of audio devices: PCM frames in, PCM frames and text out.
"""

from .config import EngineConfig, SamplingConfig
from .load import LoadedModel, load_model
from .loop import Conditioning, Engine, PersonaPlexGen, StepOut
from .prompts import PromptState, VoicePrompt, load_voice
from .tiny import ensure_tiny_model, write_tiny_model

__all__ = [
    "Conditioning", "Engine", "EngineConfig", "LoadedModel", "PersonaPlexGen", "PromptState",
    "SamplingConfig", "StepOut", "VoicePrompt", "ensure_tiny_model", "load_model", "load_voice",
    "write_tiny_model",
]
