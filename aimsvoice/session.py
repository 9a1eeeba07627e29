"""Offline conversations: a persona and a model for `talk`, user audio from a file in, agent audio out.

The live loop (microphone and speakers) is in live/; both open their engine here (`open_engine`)
and keep the agent's words in a `Transcript`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from . import personas
from .audio import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE, n_frames, read_wav, write_wav
from .audio.wavio import check_audio_suffix
# Torch-free: the PersonaPlex pieces (torch, moshi) are imported where a PersonaPlex engine is opened,
# so the cascade and the local tier start without them.
from .engine.config import EngineConfig, SamplingConfig
from .engine.contract import BatchEngine, ConversationSpec, FrameEngine, StepOut
from .errors import AimsvoiceError, ModelNotFoundError
from .interrupts import Interrupt, deferred_interrupt
from .outputs import STDIO, check_outputs, replacing
from .personas import Persona

if TYPE_CHECKING:
    from .engine import Engine, PersonaPlexBatch
    from .engine.cascade.choose import TierChoice


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
    events: list[tuple[float, str]] = field(default_factory=list)  # (time, notice): tiers, providers, failovers

    def add(self, out: StepOut) -> None:
        """Append one frame's text; a piece starting with a space starts a new word."""
        frame = len(self.tokens)
        self.tokens.append(out.text_token)
        if out.event:
            self.events.append((frame / FRAME_RATE, out.event))
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
            **({"events": [{"at": round(t, 3), "event": e} for t, e in self.events]} if self.events else {}),
            "frame_s": 1.0 / FRAME_RATE,
            "tokens": self.tokens,
        }


@dataclass
class OfflineResult:
    """An offline conversation: the agent's audio (as long as the user's), its transcript, what it ran on.

    partial: it was interrupted (Ctrl-C); the audio and transcript cover the frames computed before.
    """

    agent_pcm: np.ndarray
    transcript: Transcript
    compute_ms: list[float]
    engine: dict[str, Any] = field(default_factory=dict)  # the engine's description (model, device, voice...)
    partial: bool = False
    input_s: float = 0.0  # the user's audio, all of it

    @property
    def duration_s(self) -> float:
        """The agent's audio computed (the input's length unless partial)."""
        return len(self.agent_pcm) / SAMPLE_RATE


class Interrupted(AimsvoiceError):
    """Ctrl-C: what was computed is written (marked partial); the exit code is the shell's for SIGINT."""

    exit_code = 130


StepCallback = Callable[[StepOut, int, int], None]  # (the step's output, frames done, frames in all)


class _Conversation:
    """An offline conversation under way: the user's frames (the last zero-padded) and what came back."""

    def __init__(self, user_pcm: np.ndarray, engine: dict[str, Any]) -> None:
        self.engine = engine
        self.n_samples = len(user_pcm)
        self.frames = np.zeros((n_frames(self.n_samples), FRAME_SIZE), dtype=np.float32)
        self.frames.reshape(-1)[: self.n_samples] = user_pcm
        self.agent: list[np.ndarray] = []
        self.transcript = Transcript()
        self.compute_ms: list[float] = []

    @property
    def next_frame(self) -> np.ndarray | None:
        return self.frames[len(self.agent)] if len(self.agent) < len(self.frames) else None

    def add(self, out: StepOut) -> None:
        self.agent.append(out.pcm)
        self.transcript.add(out)
        self.compute_ms.append(out.timings_ms.get("total", float("nan")))

    def result(self, partial: bool = False) -> OfflineResult:
        agent = np.concatenate(self.agent) if self.agent else np.zeros(0, dtype=np.float32)
        return OfflineResult(agent[: self.n_samples], self.transcript, self.compute_ms, self.engine, partial,
                             self.n_samples / SAMPLE_RATE)


def run_frames(engine: FrameEngine, user_pcm: np.ndarray, on_step: StepCallback | None = None) -> OfflineResult:
    """Feed user audio frame by frame; the agent's audio comes back aligned and of equal length.

    The last frame is zero-padded; output frame i is what the engine returned for input frame i.
    Ctrl-C stops it between two frames: the result is then partial.
    """
    conversation = _Conversation(user_pcm, engine.describe())
    with deferred_interrupt() as ctrl_c:
        while (frame := conversation.next_frame) is not None:
            if ctrl_c.requested:
                ctrl_c.handled()
                conversation.engine = engine.describe()
                return conversation.result(partial=True)
            out = engine.step(frame)
            conversation.add(out)
            if on_step is not None:
                on_step(out, len(conversation.agent), len(conversation.frames))
    conversation.engine = engine.describe()  # at the end: an engine may report what served each turn
    return conversation.result()


@dataclass(frozen=True)
class BatchJob:
    """One conversation of a batch: its key (for the caller), its spec, and how to get the user's audio."""

    key: Any
    spec: ConversationSpec
    user_pcm: Callable[[], np.ndarray]  # called when a row is free for it, so audio is read as needed


def run_batch(
    engine: BatchEngine,
    jobs: Iterable[BatchJob],
    on_done: Callable[[Any, OfflineResult], None],
    on_error: Callable[[Any, AimsvoiceError], None] | None = None,
    on_tick: Callable[[int], None] | None = None,
) -> None:
    """Run offline conversations as rows of one batch: each tick steps them all; a finished one frees its row.

    A job takes a row as soon as one is free: its system prompt runs beside the conversations
    under way. on_done(key, result) as each ends (output frame i answers input frame i, as in
    `run_frames`); on_error(key, error) for a job whose audio or voice fails (the others go on;
    without on_error it is raised); on_tick(n_frames) after each tick with the conversation
    frames it computed. Ctrl-C stops it between two ticks: the conversations under way end with
    partial results, and Interrupted is raised (jobs not started are not run).
    """
    with deferred_interrupt() as ctrl_c:
        _run_batch(engine, iter(jobs), on_done, on_error, on_tick, ctrl_c)


def _run_batch(
    engine: BatchEngine, pending: Iterator[BatchJob], on_done: Callable[[Any, OfflineResult], None],
    on_error: Callable[[Any, AimsvoiceError], None] | None, on_tick: Callable[[int], None] | None, ctrl_c: Interrupt,
) -> None:
    rows: dict[int, tuple[Any, _Conversation]] = {}
    exhausted = False
    while True:
        if ctrl_c.requested:
            ctrl_c.handled()
            for row, (key, conversation) in rows.items():
                engine.close_row(row)
                on_done(key, conversation.result(partial=True))
            raise Interrupted(f"interrupted: {len(rows)} conversation{'s' if len(rows) != 1 else ''} under way written as far as computed (marked partial)")
        while not exhausted and len(rows) < engine.batch_size:
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            try:
                user_pcm = job.user_pcm()
                row = engine.open(job.spec)
                rows[row] = (job.key, _Conversation(user_pcm, engine.describe(row)))
            except AimsvoiceError as e:
                if on_error is None:
                    raise
                on_error(job.key, e)
        if not rows:
            return
        frames = {row: frame for row, (_, c) in rows.items()
                  if not engine.in_prompt(row) and (frame := c.next_frame) is not None}
        outs = engine.tick(frames)
        for row, out in outs.items():
            rows[row][1].add(out)
        for row, (key, conversation) in list(rows.items()):
            if not engine.in_prompt(row) and conversation.next_frame is None:
                engine.close_row(row)
                del rows[row]
                on_done(key, conversation.result())
        if on_tick is not None:
            on_tick(len(outs))


def resolve_model_dir(model: str | None) -> Path:
    """`tiny` -> the built-in tiny model (built once); a folder -> itself; None -> pulled weights."""
    if model == "tiny":
        from .engine.tiny import ensure_tiny_model

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
    context: str = "pinned"  # the attention window: "pinned" keeps the persona in it, "ring" (the reference's) does not
    quantize: str = "auto"  # int8 weights: "int8", "none", or "auto" (int8 where bfloat16 does not fit the GPU)
    engine: str = "auto"  # auto, personaplex, cascade or local (see `choose_engine`)
    llm_url: str | None = None  # the cascade and the local tier: an OpenAI-compatible server for the reply
    llm_model: str | None = None

    @property
    def engine_config(self) -> EngineConfig:
        """How the engine runs: device, dtype and attention window."""
        return EngineConfig(device=self.device, dtype=self.dtype, context=self.context, quantize=self.quantize)


ENGINES = ("auto", "personaplex", "cascade", "local")
Notify = Callable[[str], None]


def choose_engine(settings: TalkSettings) -> TierChoice:
    """The tier a conversation runs on, and why: `--engine` as given, or auto's choice over this machine's facts."""
    from .engine.cascade.choose import TierChoice, choose_tier, gather_facts

    if settings.engine not in ENGINES:
        raise AimsvoiceError(f"--engine {settings.engine}: choose one of {', '.join(ENGINES)}")
    if settings.engine != "auto":
        return TierChoice(settings.engine, f"--engine {settings.engine}", auto=False)
    choice = choose_tier(gather_facts(settings.model, settings.device, settings.dtype, settings.quantize))
    return replace(choice, auto=settings.model is None)  # a model named with --model is PersonaPlex, failures and all


def open_cascade(tier: str, settings: TalkSettings, persona: Persona, pace: str) -> FrameEngine:
    """The cascade or the local tier for a persona: its [cascade] table, --llm-url/--llm-model; `pace`: model or live."""
    from .engine.cascade import CascadeEngine, cascade_config

    config = cascade_config(tier, pace=pace, persona_cascade=persona.cascade, llm_url=settings.llm_url, llm_model=settings.llm_model)
    return CascadeEngine(config)


def usage_line(engine: dict[str, Any]) -> str | None:
    """The cloud usage and cost estimate of a conversation, from its engine's description (None: no cloud tier)."""
    usage = engine.get("usage")
    if not usage or engine.get("engine") != "cascade":
        return None
    return (
        f"cloud usage: speech-to-text {usage['stt_s']:.1f} s ({usage['stt_billed_s']:.0f} s billed), LLM "
        f"{usage['llm_tokens_in']} tokens in / {usage['llm_tokens_out']} out, speech {usage['tts_chars']} characters: "
        f"about ${usage['cost_usd_estimate']:.4f} (prices: ~/.config/aimsvoice/prices.toml)"
    )


def conversation_spec(settings: TalkSettings, persona: Persona) -> ConversationSpec:
    """The persona with the settings' overrides: voice, text prompt, sampling and seed."""
    overrides = {key: value for key in ("temp_text", "topk_text", "temp_audio", "topk_audio")
                 if (value := getattr(persona, key)) is not None}
    return ConversationSpec(
        voice=settings.voice or persona.voice,
        text_prompt=persona.text_prompt if settings.text_prompt is None else settings.text_prompt,
        sampling=SamplingConfig(greedy=settings.greedy, **overrides),
        seed=settings.seed,
    )


def voice_file(voice: str | None) -> Path | None:
    """A voice given as a file (an input that no output may overwrite); None for a voice name."""
    return Path(voice) if voice and Path(voice).is_file() else None


def open_engine(
    settings: TalkSettings, *, pace: str = "model", notify: Notify | None = None,
) -> tuple[FrameEngine, ConversationSpec, Persona]:
    """The persona and the engine of the tier `choose_engine` picks; `engine.start(spec)` then starts the conversation.

    pace: "model" offline, "live" on devices (the cascade's; PersonaPlex keeps its own).
    notify: told the tier and why in one line, and of a hand-over. With `auto`, a PersonaPlex that
    fails to load hands over to the next tier at once, and one that fails mid-session at the next
    turn (FallbackEngine). PersonaPlex's files and voice are checked before the weights load.
    """
    persona = personas.load(settings.persona)
    spec = conversation_spec(settings, persona)
    choice = choose_engine(settings)
    if notify is not None and choice.auto:  # auto decided: say which tier and why (a tier named is not explained)
        notify(choice.line())
    if choice.tier != "personaplex":
        return open_cascade(choice.tier, settings, persona, pace), spec, persona
    if not choice.auto:
        return _open_personaplex(settings, spec), spec, persona
    from .engine.cascade.choose import after_personaplex, gather_facts
    from .engine.cascade.fallback import FallbackEngine, failure_line

    def next_tier(why: str) -> TierChoice:
        return after_personaplex(gather_facts(None, "cpu"), why)  # cpu: the GPU is not looked at again

    try:
        engine = _open_personaplex(settings, spec)
    except Exception as e:
        fallback = next_tier(f"PersonaPlex failed to load ({failure_line(e)})")
        if notify is not None:
            notify(fallback.line())
        return open_cascade(fallback.tier, settings, persona, pace), spec, persona

    def hand_over() -> tuple[FrameEngine, str]:
        tier = next_tier("PersonaPlex failed").tier
        return open_cascade(tier, settings, persona, pace), tier

    return FallbackEngine(engine, hand_over), spec, persona


def _open_personaplex(settings: TalkSettings, spec: ConversationSpec) -> Engine:
    from .engine import Engine, check_model, load_model

    model_dir = resolve_model_dir(settings.model)
    check_model(model_dir, (spec,))
    model = load_model(model_dir, device=settings.device, dtype=settings.dtype, quantize=settings.quantize)
    return Engine(model, settings.engine_config)


def open_batch_engine(
    settings: TalkSettings, batch_size: int | None, specs: tuple[ConversationSpec, ...] = (), most: int | None = None,
) -> PersonaPlexBatch:
    """Load the model for a batch of `batch_size` rows (None: as many as its memory allows, see `max_batch_size`).

    specs: conversations checked before the weights load; most: no more rows than this (the conversations there are).
    """
    from .engine import PersonaPlexBatch, check_model, load_model, max_batch_size

    model_dir = resolve_model_dir(settings.model)
    check_model(model_dir, specs)
    model = load_model(model_dir, device=settings.device, dtype=settings.dtype, quantize=settings.quantize)
    size = max_batch_size(model) if batch_size is None else batch_size
    return PersonaPlexBatch(model, settings.engine_config, max(1, min(size, most or size)))


def settings_context(settings: TalkSettings, engine: dict[str, Any], spec: ConversationSpec) -> dict[str, Any]:
    """What a conversation ran with, for its transcript or recording JSON (engine: its description)."""
    return {"text_prompt": spec.text_prompt, **engine, "greedy": settings.greedy, "seed": settings.seed}


def write_transcript(
    path: Path, result: OfflineResult, settings: TalkSettings, persona: Persona, in_path: Path, **extra: Any,
) -> None:
    """The transcript file of an offline conversation: persona, settings, input, then the words and tokens."""
    context = {
        "persona": persona.name,
        **settings_context(settings, result.engine, conversation_spec(settings, persona)),
        "input": str(in_path),
        "duration_s": round(result.duration_s, 3),
        **({"partial": True, "input_duration_s": round(result.input_s, 3)} if result.partial else {}),
        **extra,
    }
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(result.transcript.to_json(**context), indent=1, ensure_ascii=False), encoding="utf-8")


def talk_offline(
    settings: TalkSettings, in_path: Path, out_path: Path, transcript_path: Path | None = None,
    on_step: StepCallback | None = None, notify: Notify | None = None,
) -> OfflineResult:
    """A whole conversation from a file: user audio in, agent audio (and transcript) out.

    The outputs are checked before anything loads, and written only once complete. `-` reads the
    input from standard input or writes the audio to standard output. Ctrl-C while the
    conversation runs writes what was computed (the result is partial); before it starts, nothing.
    """
    check_outputs({"--out": out_path, "--transcript": transcript_path}, inputs=(in_path, voice_file(settings.voice)))
    check_audio_suffix(out_path)
    with deferred_interrupt() as ctrl_c:
        user_pcm = read_wav(in_path)
        engine, spec, persona = open_engine(settings, pace="model", notify=notify)
        try:
            if not ctrl_c.requested:
                engine.start(spec)
            if ctrl_c.requested:
                ctrl_c.handled()
                raise Interrupted("interrupted before the conversation started; nothing was written")
            result = run_frames(engine, user_pcm, on_step)
        finally:
            engine.close()
        write_wav(out_path, result.agent_pcm)
        if transcript_path is not None:
            write_transcript(transcript_path, result, settings, persona, Path(STDIO) if str(in_path) == STDIO else in_path)
        ctrl_c.handled()  # a Ctrl-C while the files were written: they are complete, nothing is lost
    return result
