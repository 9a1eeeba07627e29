"""Persona conditioning inputs: the voice prompt (audio or a saved prompt state) and the text prompt.

The token ids below are facts of PersonaPlex's training protocol (the same ids as the reference):
during the system prompt the user's channels hear a 440 Hz sine, and the agent's channels are
given Mimi's tokens for silence between the prompts.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyloudnorm
import torch

from .. import layout, xdg
from ..audio.format import FRAME_RATE, SAMPLE_RATE, n_frames
from ..audio.wavio import read_wav
from ..errors import AudioFileError, PromptTooLongError, VoiceNotFoundError

SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)  # Mimi codes of a silent frame
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)  # Mimi codes of a 440 Hz sine frame
TEXT_PAD = 3  # the text stream's padding token, forced while the voice prompt plays
SILENCE_SECONDS = 0.5  # spacer after the voice prompt and after the text prompt
SILENCE_FRAMES = int(SILENCE_SECONDS * FRAME_RATE)
# The system prompt may take this share of the attention window, so the conversation has at least
# a third of it (80 s on PersonaPlex 7B's 3000 steps; the persona's prompts take 5-15 % of it).
MAX_PROMPT_SHARE = 2 / 3
VOICE_LUFS = -24.0  # loudness the voice prompt audio is normalized to
SYSTEM_TAG = "<system>"


def wrap_system_tags(text: str) -> str:
    """The text prompt as the model was trained on it: `<system> ... <system>`."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


@dataclass
class PromptState:
    """The voice prompt as the LM saw it: one input embedding per step, and the token cache after.

    Replaying the embeddings rebuilds the transformer's state without Mimi or the audio; the file
    format is the one of PersonaPlex's voices.tgz (`{"embeddings": [N, 1, 1, dim], "cache": [1, K, C]}`).
    """

    embeddings: torch.Tensor
    cache: torch.Tensor

    def save(self, path: Path) -> None:
        """Write as a .pt file (tensors only, so it loads with weights_only=True)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"embeddings": self.embeddings.detach().cpu(), "cache": self.cache.detach().cpu()}, tmp)
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> PromptState:
        """Read a .pt prompt state; never unpickles anything but tensors."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise VoiceNotFoundError(
                f"{path}: not a usable voice prompt state ({type(e).__name__}); "
                "use one of the voices from voices.tgz or a WAV file."
            ) from e
        if not isinstance(data, dict) or not {"embeddings", "cache"} <= data.keys():
            raise VoiceNotFoundError(f"{path}: a voice prompt state needs 'embeddings' and 'cache'; use a WAV instead.")
        embeddings, cache = data["embeddings"], data["cache"]
        if embeddings.dim() != 4 or cache.dim() != 3:
            raise VoiceNotFoundError(
                f"{path}: unexpected prompt state shapes {tuple(embeddings.shape)} / {tuple(cache.shape)}; "
                "was it made for another model?"
            )
        return PromptState(embeddings, cache)


@dataclass(frozen=True)
class VoicePrompt:
    """A voice to condition on: audio to encode, or a ready prompt state."""

    source: Path
    audio: np.ndarray | None = None  # float32 mono at 24 kHz, loudness-normalized
    state: PromptState | None = None

    @property
    def n_steps(self) -> int:
        """Steps the voice prompt takes: a frame of audio each, or a replayed embedding each after the dropped first."""
        if self.state is not None:
            return self.state.embeddings.shape[0] + 1
        assert self.audio is not None
        return n_frames(len(self.audio))

    @property
    def content_hash(self) -> str:
        """Hash of the audio samples, the key of the on-disk prompt-state cache."""
        assert self.audio is not None
        return hashlib.sha256(np.ascontiguousarray(self.audio).tobytes()).hexdigest()[:24]

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the voice conditions on, hashed: its audio samples, or its prompt state's tensors."""
        if self.state is None:
            return f"audio:{self.content_hash}"
        digest = hashlib.sha256()
        for tensor in (self.state.embeddings, self.state.cache):
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"state:{digest.hexdigest()[:24]}"


def check_prompt_fits(voice_steps: int, n_text_tokens: int, context: int | None) -> None:
    """The system prompt (voice, silences, text) must leave most of the attention window to the conversation.

    Raises PromptTooLongError with the numbers and the limit when it takes more than MAX_PROMPT_SHARE.
    """
    if context is None:
        return
    steps = voice_steps + 2 * SILENCE_FRAMES + n_text_tokens
    limit = int(MAX_PROMPT_SHARE * context)
    if steps <= limit:
        return
    room = max(limit - voice_steps - 2 * SILENCE_FRAMES, 0)
    raise PromptTooLongError(
        f"the text prompt is {n_text_tokens:,} tokens: with the voice prompt ({voice_steps} steps) and two "
        f"{SILENCE_SECONDS:g} s silences ({2 * SILENCE_FRAMES}) the system prompt takes {steps:,} steps of the model's "
        f"{context:,}-step attention window ({context / FRAME_RATE:.0f} s); it may take at most {limit:,} (two thirds), so "
        f"the conversation has the rest: shorten the text prompt to {room:,} tokens or fewer (about {4 * room:,} characters)."
    )


def normalize_loudness(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE, lufs: float = VOICE_LUFS) -> np.ndarray:
    """Bring mono audio to an integrated loudness of `lufs` (ITU-R BS.1770, via pyloudnorm)."""
    meter = pyloudnorm.Meter(sample_rate)
    try:
        loudness = meter.integrated_loudness(pcm)
    except ValueError as e:  # shorter than one 400 ms gating block
        raise AudioFileError(f"voice prompt is too short to measure its loudness ({e}); use at least 1 s of speech.") from e
    if not np.isfinite(loudness):
        raise AudioFileError("voice prompt is silent; record a few seconds of the voice to imitate.")
    return pyloudnorm.normalize.loudness(pcm, loudness, lufs)


def voice_names(model_dir: Path) -> list[str]:
    """The voices a model folder holds: the names of its voices/*.pt and voices/*.wav, sorted."""
    voices_dir = model_dir / layout.VOICES_DIR
    if not voices_dir.is_dir():
        return []
    return sorted({p.stem for p in voices_dir.iterdir() if p.suffix in layout.VOICE_SUFFIXES and p.is_file()})


def resolve_voice(voice: str, model_dir: Path) -> Path:
    """A voice of the model (its name in voices/, any case), or a path to a WAV or .pt file."""
    voices_dir = model_dir / layout.VOICES_DIR
    names = voice_names(model_dir)
    by_case = {name.lower(): name for name in names}
    name = voice if voice in names else by_case.get(voice.lower())
    if name is not None:
        for suffix in layout.VOICE_SUFFIXES:
            candidate = voices_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    path = Path(voice).expanduser()
    if path.is_file():
        return path
    choices = ", ".join(names) if names else "none found in " + str(voices_dir)
    raise VoiceNotFoundError(f"voice '{voice}': not a voice of this model nor a file; choose one of {choices}, or give a WAV path.")


def load_voice(voice: str, model_dir: Path) -> VoicePrompt:
    """Load a voice by name or path: .pt files as prompt states, anything else as audio."""
    path = resolve_voice(voice, model_dir)
    if path.suffix == ".pt":
        return VoicePrompt(path, state=PromptState.load(path))
    pcm = read_wav(path)
    return VoicePrompt(path, audio=normalize_loudness(pcm))


def prompt_cache_path(voice: VoicePrompt, model_key: str) -> Path:
    """Where the prompt state of an audio voice is cached for a given model (and dtype/device)."""
    return xdg.cache_dir() / "prompts" / model_key / f"{voice.content_hash}.pt"
