"""The conversation loop: frames in -> engine -> frames out, with stats and recording.

Offline (`--in/--out`) and live (microphone/speakers) conversations share the same loop: the
engine is anything with `step(pcm) -> StepOut` for one FRAME_SIZE frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from . import personas
from .audio import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE, n_frames, read_wav, write_wav
from .engine.load import read_model_files
from .engine import Conditioning, Engine, EngineConfig, SamplingConfig, StepOut, ensure_tiny_model, load_model, load_voice
from .errors import ModelNotFoundError
from .personas import Persona


class FrameEngine(Protocol):
    """One 80 ms frame of user audio in, one frame of agent audio (and text) out."""

    def step(self, pcm: np.ndarray) -> StepOut: ...


# --- offline ---
@dataclass(frozen=True)
class Word:
    """A word the agent said, with its time in the agent's audio."""

    word: str
    start_s: float
    end_s: float


@dataclass
class Transcript:
    """The agent's text stream: one token per frame, grouped into timed words."""

    tokens: list[int] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)

    def add(self, out: StepOut) -> None:
        """Append one frame's text; a piece starting with a space starts a new word."""
        frame = len(self.tokens)
        self.tokens.append(out.text_token)
        piece = out.text
        if not piece:
            return
        start, end = frame / FRAME_RATE, (frame + 1) / FRAME_RATE
        if piece.startswith(" ") or not self.words:
            if piece.strip():
                self.words.append(Word(piece.strip(), start, end))
        else:
            last = self.words[-1]
            self.words[-1] = Word(last.word + piece, last.start_s, end)

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)

    def to_json(self, **context: Any) -> dict[str, Any]:
        """The transcript file: context (persona, settings), text, timed words, raw tokens."""
        return {
            **context,
            "text": self.text,
            "words": [{"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3)} for w in self.words],
            "frame_s": 1.0 / FRAME_RATE,
            "tokens": self.tokens,
        }


@dataclass
class OfflineResult:
    """An offline conversation: the agent's audio (as long as the user's) and its transcript."""

    agent_pcm: np.ndarray
    transcript: Transcript
    compute_ms: list[float]


def run_frames(
    engine: FrameEngine, user_pcm: np.ndarray, on_step: Callable[[StepOut], None] | None = None
) -> OfflineResult:
    """Feed user audio frame by frame; the agent's audio comes back aligned and of equal length.

    The last frame is zero-padded; output frame i is what the engine returned for input frame i.
    """
    n_samples = len(user_pcm)
    padded = np.zeros(n_frames(n_samples) * FRAME_SIZE, dtype=np.float32)
    padded[:n_samples] = user_pcm
    frames_out, transcript, compute_ms = [], Transcript(), []
    for start in range(0, len(padded), FRAME_SIZE):
        out = engine.step(padded[start : start + FRAME_SIZE])
        frames_out.append(out.pcm)
        transcript.add(out)
        compute_ms.append(out.timings_ms.get("total", float("nan")))
        if on_step is not None:
            on_step(out)
    agent = np.concatenate(frames_out) if frames_out else np.zeros(0, dtype=np.float32)
    return OfflineResult(agent[:n_samples], transcript, compute_ms)


def resolve_model_dir(model: str | None) -> Path:
    """`tiny` -> the built-in tiny model (built once); a folder -> itself; None -> pulled weights."""
    if model == "tiny":
        return ensure_tiny_model()
    if model is not None:
        return Path(model).expanduser()
    from . import weights  # the hub client is only needed when looking for pulled weights

    pulled = weights.find_pulled_model()
    if pulled is None:
        raise ModelNotFoundError(
            "no PersonaPlex weights found: run `aimsvoice pull-weights`, or use `--model tiny` for a demo."
        )
    return pulled


@dataclass(frozen=True)
class TalkSettings:
    """What a conversation runs with: model, persona (with overrides) and engine settings."""

    model: str | None = None
    persona: str | None = None
    voice: str | None = None  # overrides the persona's voice
    text_prompt: str | None = None  # overrides the persona's text prompt
    device: str = "auto"
    dtype: str = "auto"
    greedy: bool = False
    seed: int | None = None


def open_engine(settings: TalkSettings) -> tuple[Engine, Conditioning, Persona]:
    """Load the model and the persona, and condition the engine on it (system prompt run)."""
    persona = personas.load(settings.persona)
    model_dir = resolve_model_dir(settings.model)
    read_model_files(model_dir)  # a missing model is reported before a voice it would hold
    conditioning = Conditioning(
        voice=load_voice(settings.voice or persona.voice, model_dir),
        text_prompt=persona.text_prompt if settings.text_prompt is None else settings.text_prompt,
    )
    defaults = SamplingConfig()
    sampling = SamplingConfig(
        greedy=settings.greedy,
        temp_text=persona.temp_text if persona.temp_text is not None else defaults.temp_text,
        topk_text=persona.topk_text if persona.topk_text is not None else defaults.topk_text,
        temp_audio=persona.temp_audio if persona.temp_audio is not None else defaults.temp_audio,
        topk_audio=persona.topk_audio if persona.topk_audio is not None else defaults.topk_audio,
    )
    config = EngineConfig(device=settings.device, dtype=settings.dtype, sampling=sampling, seed=settings.seed)
    model = load_model(model_dir, device=config.device, dtype=config.dtype)
    engine = Engine(model, config)
    engine.start(conditioning)
    return engine, conditioning, persona


def talk_offline(
    settings: TalkSettings, in_path: Path, out_path: Path, transcript_path: Path | None = None,
    on_step: Callable[[StepOut], None] | None = None,
) -> OfflineResult:
    """A whole conversation from a file: user audio in, agent audio (and transcript) out."""
    user_pcm = read_wav(in_path)
    engine, conditioning, persona = open_engine(settings)
    result = run_frames(engine, user_pcm, on_step)
    write_wav(out_path, result.agent_pcm)
    if transcript_path is not None:
        context = {
            "persona": persona.name,
            "voice": str(conditioning.voice.source),
            "text_prompt": conditioning.text_prompt,
            "model": str(engine.model.files.directory),
            "device": engine.device.type,
            "dtype": str(engine.model.dtype).removeprefix("torch."),
            "greedy": settings.greedy,
            "seed": settings.seed,
            "input": str(in_path),
            "duration_s": round(len(user_pcm) / SAMPLE_RATE, 3),
        }
        transcript_path.parent.mkdir(parents=True, exist_ok=True)
        transcript_path.write_text(json.dumps(result.transcript.to_json(**context), indent=1, ensure_ascii=False))
    return result
# --- end offline ---


# --- live ---
# --- end live ---
