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
    """Load the model and the persona; `engine.start(conditioning)` then runs its system prompt."""
    persona = personas.load(settings.persona)
    model_dir = resolve_model_dir(settings.model)
    read_model_files(model_dir)  # a missing model is reported before a voice it would hold
    conditioning = Conditioning(
        voice=load_voice(settings.voice or persona.voice, model_dir),
        text_prompt=persona.text_prompt if settings.text_prompt is None else settings.text_prompt,
    )
    overrides = {key: value for key in ("temp_text", "topk_text", "temp_audio", "topk_audio")
                 if (value := getattr(persona, key)) is not None}
    sampling = SamplingConfig(greedy=settings.greedy, **overrides)
    config = EngineConfig(device=settings.device, dtype=settings.dtype, sampling=sampling, seed=settings.seed)
    model = load_model(model_dir, device=config.device, dtype=config.dtype)
    return Engine(model, config), conditioning, persona


def settings_context(settings: TalkSettings, engine: Engine, conditioning: Conditioning) -> dict[str, Any]:
    """What a conversation ran with, for its transcript or recording JSON."""
    return {
        "voice": str(conditioning.voice.source),
        "text_prompt": conditioning.text_prompt,
        "model": str(engine.model.files.directory),
        "device": engine.device.type,
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "greedy": settings.greedy,
        "seed": settings.seed,
    }


def talk_offline(
    settings: TalkSettings, in_path: Path, out_path: Path, transcript_path: Path | None = None,
    on_step: Callable[[StepOut], None] | None = None,
) -> OfflineResult:
    """A whole conversation from a file: user audio in, agent audio (and transcript) out."""
    user_pcm = read_wav(in_path)
    engine, conditioning, persona = open_engine(settings)
    engine.start(conditioning)
    result = run_frames(engine, user_pcm, on_step)
    write_wav(out_path, result.agent_pcm)
    if transcript_path is not None:
        context = {
            "persona": persona.name,
            **settings_context(settings, engine, conditioning),
            "input": str(in_path),
            "duration_s": round(len(user_pcm) / SAMPLE_RATE, 3),
        }
        transcript_path.parent.mkdir(parents=True, exist_ok=True)
        transcript_path.write_text(json.dumps(result.transcript.to_json(**context), indent=1, ensure_ascii=False))
    return result
# --- end offline ---


# --- live ---
import threading
import time

from rich.console import Console

from .audio.aec import MAX_FRAME_SIZE, SUBFRAME_SIZE, EchoCanceller, aec_default
from .audio.format import FRAME_MS
from .audio.devices import BLOCK_MS, AudioConfig, DuplexAudio, RateConverter, list_devices, match_device, open_duplex
from .audio.latency import LatencyGovernor, shed_quietest
from .audio.recorder import Recorder
from .errors import AudioDeviceError
from .ui import LiveView, live_hints

VOICE_LEVEL_DBFS = -45.0  # a frame louder than this counts as the user speaking (--idle-timeout)
SILENCE_DBFS = -120.0  # the level reported for digital silence
DRAIN_WINDOW_STEPS = 5  # steps a queue must stay above its margin before it is drained (400 ms)
MAX_DRAIN = FRAME_SIZE // 2  # samples drained per step at most: catching up at 1.5x, not a jump
POLL_S = 0.002  # the step thread's nap while the next frame fills
UI_PERIOD_S = 0.25  # main thread: recording flush, device check, view refresh
JOIN_TIMEOUT_S = 10.0  # a step in flight finishes within this, or the thread is left behind
RECENT_STEPS = 125  # compute times behind the live p50/p95 (10 s)


def level_dbfs(pcm: np.ndarray) -> float:
    """RMS level of `pcm` in dBFS (SILENCE_DBFS for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    return max(20.0 * np.log10(rms), SILENCE_DBFS) if rms > 0 else SILENCE_DBFS


def _ms(n_samples: float, rate: int = SAMPLE_RATE) -> float:
    return 1000.0 * n_samples / rate


def resolve_aec(aec: bool | None, output_device_name: str) -> tuple[bool, str | None]:
    """Whether a live session cancels echo, and a hint to show: `--aec/--no-aec` wins, else `aec_default`."""
    if aec is not None:
        return aec, None
    return aec_default(output_device_name)


@dataclass(frozen=True)
class LiveSnapshot:
    """The session's state at one moment, for the live view (taken by the main thread)."""

    persona: str
    elapsed_s: float  # audio captured so far, by the input device's clock
    frames: int
    words: tuple[str, ...]
    text_tail: str
    input_level_db: float
    output_level_db: float
    compute_p50_ms: float
    compute_p95_ms: float
    budget_ms: float
    input_backlog_ms: float
    input_bound_ms: float
    output_queue_ms: float
    output_bound_ms: float
    input_shed_ms: float
    output_shed_ms: float
    underruns: int
    underrun_ms: float
    aec_on: bool = False
    aec_erle_db: float | None = None  # the canceller's running estimate; None while off or before the agent spoke


@dataclass(frozen=True)
class LiveSummary:
    """How a live session went. `trace` has one (clock_s, input_backlog_ms, output_queue_ms) per step."""

    end_reason: str  # max-minutes, idle-timeout, interrupted, device-error, error
    duration_s: float
    wall_s: float
    frames: int
    compute_mean_ms: float
    compute_p99_ms: float
    compute_s: float  # device-seconds spent in the engine
    latency_p50_ms: float  # standing latency: input backlog + playback queue after each step
    latency_max_ms: float
    max_input_backlog_ms: float
    max_output_queue_ms: float
    input_bound_ms: float
    output_bound_ms: float
    input_shed_ms: float
    input_shed_events: int
    output_shed_ms: float
    output_shed_events: int
    capture_lost_ms: float  # input the capture ring could not take (step thread far behind)
    underruns: int
    underrun_ms: float
    device_xruns: int  # overflows/underflows PortAudio itself reported
    recording: Path | None
    trace: tuple[tuple[float, float, float], ...]
    aec: bool = False
    aec_erle_db: float | None = None  # the running estimate at the end (about the last second the agent spoke)
    aec_delay_ms: float | None = None  # the echo delay last measured from the streams' timestamps

    def to_json(self) -> dict[str, Any]:
        """The summary as the recording's JSON stores it (without the per-step trace)."""
        skip = {"trace", "recording"}
        return {
            k: round(v, 3) if isinstance(v, float) else v
            for k, v in self.__dict__.items()
            if k not in skip
        }


class LivePipeline:
    """The step thread's work: capture ring -> 24 kHz frames -> engine -> playback ring.

    Each step pulls what the capture callback queued, resamples it to the model's rate, holds the
    input backlog under its bound, runs the engine on the oldest frame, and queues the answer for
    playback under the playback bound (see audio/latency.py for the policy). It also keeps the
    session's counters; the main thread reads them through `snapshot` and `summary`.

    With an echo canceller, what the speaker was sent is resampled beside the capture, and the
    capture is cleaned of it in 10 ms pieces as it arrives, before anything is shed: the
    canceller sees both streams unbroken, and the engine and the recording get the cleaned audio.
    """

    def __init__(
        self,
        engine: FrameEngine,
        audio: DuplexAudio,
        config: AudioConfig = AudioConfig(),
        recorder: Recorder | None = None,
        aec: EchoCanceller | None = None,
    ) -> None:
        self.engine = engine
        self.audio = audio
        self.recorder = recorder
        self.aec = aec
        self.input_bound = config.input_backlog_frames * FRAME_SIZE
        self.output_bound = config.playback_queue_frames * FRAME_SIZE
        self._from_device = RateConverter(audio.capture_rate, SAMPLE_RATE)
        self._to_device = RateConverter(SAMPLE_RATE, audio.playback_rate)
        # Playback starts with a cushion for what arrives unevenly: one callback block of
        # scheduling jitter, plus the bursts of both resamplers (none at 24 kHz).
        in_slack = self._from_device.holdback(audio.capture_rate * BLOCK_MS // 1000)
        out_slack = self._to_device.holdback(FRAME_SIZE)
        block = SAMPLE_RATE * BLOCK_MS // 1000
        self._cushion = (block + in_slack) * audio.playback_rate // SAMPLE_RATE + out_slack  # device samples
        self._in_governor = LatencyGovernor(
            bound=self.input_bound,
            margin=min(block + in_slack, self.input_bound),
            window=DRAIN_WINDOW_STEPS,
            max_drain=MAX_DRAIN,
        )
        self._out_governor = LatencyGovernor(
            bound=self.output_bound,
            margin=min(FRAME_SIZE + self._cushion * SAMPLE_RATE // audio.playback_rate, self.output_bound),
            window=DRAIN_WINDOW_STEPS,
            max_drain=MAX_DRAIN,
        )
        self._scratch = np.zeros(audio.capture_ring.capacity, dtype=np.float32)
        staging_size = self._from_device.to_out_samples(audio.capture_ring.capacity) + self.input_bound + 2 * FRAME_SIZE
        self._staging = np.zeros(staging_size, dtype=np.float32)
        self._n_staged = 0
        self._n_in_read = 0  # device samples taken from the capture ring (the ring's overflow aside)
        self._from_speaker = RateConverter(audio.playback_rate, SAMPLE_RATE)
        self._ref_scratch = np.zeros(audio.reference_ring.capacity, dtype=np.float32)
        self._reference = np.zeros(staging_size, dtype=np.float32)  # 24 kHz, its oldest sample beside _near's
        self._n_ref = 0
        self._near = np.zeros(staging_size, dtype=np.float32)  # 24 kHz capture waiting for a whole 10 ms piece
        self._n_near = 0
        self._n_ref_read = 0  # device samples taken from the reference ring
        self._primed = False
        self.transcript = Transcript()
        self.compute_ms: list[float] = []
        self.trace: list[tuple[float, float, float]] = []
        self.input_level_db = self.output_level_db = SILENCE_DBFS
        self.last_voice_s = 0.0
        self.input_backlog = self.output_queue = 0  # samples at SAMPLE_RATE, after the last step
        self.input_shed = self.output_shed = 0
        self.input_shed_events = self.output_shed_events = 0
        self.error: Exception | None = None

    @property
    def clock_s(self) -> float:
        """Seconds of audio the input device has delivered: the session's clock."""
        return self.audio.captured / self.audio.capture_rate

    def pump(self) -> None:
        """Move everything the capture callback queued into the 24 kHz staging buffer.

        Until both streams flow, input is dropped: the conversation starts when it can be heard.
        """
        n = self.audio.capture_ring.read_into(self._scratch)
        n_ref = self.audio.reference_ring.read_into(self._ref_scratch)
        self._n_in_read += n
        self._n_ref_read += n_ref
        if not self.audio.flowing:
            return
        if self.aec is not None and n_ref:
            self._stage_reference(self._from_speaker.convert(self._ref_scratch[:n_ref]))
        if n == 0:
            return
        pcm = self._from_device.convert(self._scratch[:n])
        if self.aec is not None:
            pcm = self._cancel_echo(pcm, self.aec)
        overflow = self._n_staged + len(pcm) - len(self._staging)
        if overflow > 0:  # only after a stall longer than the capture ring: keep the newest
            self._n_staged -= overflow
            self._staging[: self._n_staged] = self._staging[overflow : overflow + self._n_staged]
            self.input_shed += overflow
            self.input_shed_events += 1
        self._staging[self._n_staged : self._n_staged + len(pcm)] = pcm
        self._n_staged += len(pcm)

    def _stage_reference(self, ref: np.ndarray) -> None:
        overflow = self._n_ref + len(ref) - len(self._reference)
        if overflow > 0:  # the microphone stopped while the speaker went on: keep the newest
            self._n_ref -= overflow
            self._reference[: self._n_ref] = self._reference[overflow : overflow + self._n_ref]
        self._reference[self._n_ref : self._n_ref + len(ref)] = ref
        self._n_ref += len(ref)

    def _cancel_echo(self, pcm: np.ndarray, aec: EchoCanceller) -> np.ndarray:
        """New 24 kHz capture, cleaned of the echo of what was played beside it, in whole 10 ms pieces.

        What does not fill a piece waits for the next call, so the output may be shorter.
        """
        self._near[self._n_near : self._n_near + len(pcm)] = pcm
        self._n_near += len(pcm)
        audio = self.audio
        cleaned = []
        while self._n_near >= SUBFRAME_SIZE:
            n = min(self._n_near // SUBFRAME_SIZE * SUBFRAME_SIZE, MAX_FRAME_SIZE)
            if self._n_ref < n:  # the speaker started after the microphone: silence before it
                missing = n - self._n_ref
                self._reference[missing : missing + self._n_ref] = self._reference[: self._n_ref]
                self._reference[:missing] = 0.0
                self._n_ref = n
            # Each stream's newest sample is timed from its callback's latest timestamp; the
            # piece and its reference are the oldest ones, n_near and n_ref samples before those.
            newest_captured = self._n_in_read + audio.capture_dropped
            captured_s = audio.capture_mark_s + (newest_captured - audio.capture_mark_index) / audio.capture_rate
            played_s = audio.render_mark_s + (self._n_ref_read - audio.render_mark_index) / audio.playback_rate
            delay_ms = 1000.0 * (played_s - captured_s) + _ms(self._n_near - self._n_ref)
            cleaned.append(aec.process(self._near[:n].copy(), self._reference[:n].copy(), delay_ms=delay_ms))
            self._n_near -= n
            self._near[: self._n_near] = self._near[n : n + self._n_near]
            self._n_ref -= n
            self._reference[: self._n_ref] = self._reference[n : n + self._n_ref]
        return np.concatenate(cleaned) if cleaned else pcm[:0]

    def step(self) -> bool:
        """Run one engine step if a whole frame is staged; returns whether it did."""
        if self._n_staged < FRAME_SIZE:
            return False
        n_shed = self._in_governor.plan(self._n_staged - FRAME_SIZE)
        if n_shed:
            kept = shed_quietest(self._staging[: self._n_staged], n_shed)
            dropped = self._n_staged - len(kept)
            self._staging[: len(kept)] = kept
            self._n_staged = len(kept)
            self._in_governor.shed(dropped)
            self.input_shed += dropped
            self.input_shed_events += 1
            if self._n_staged < FRAME_SIZE:
                return False
        frame = self._staging[:FRAME_SIZE].copy()
        self._n_staged -= FRAME_SIZE
        self._staging[: self._n_staged] = self._staging[FRAME_SIZE : FRAME_SIZE + self._n_staged]
        self.input_backlog = self._n_staged
        clock_s = self.clock_s

        started = time.perf_counter()
        out = self.engine.step(frame)
        self.compute_ms.append(1000.0 * (time.perf_counter() - started))
        agent = np.asarray(out.pcm, dtype=np.float32).reshape(-1)
        if agent.shape != (FRAME_SIZE,):
            raise ValueError(f"engine returned {agent.shape[0]} samples for a {FRAME_SIZE}-sample frame")
        if self.recorder is not None:
            self.recorder.push(frame, agent)
        self.transcript.add(out)
        self.input_level_db = level_dbfs(frame)
        self.output_level_db = level_dbfs(agent)
        if self.input_level_db > VOICE_LEVEL_DBFS:
            self.last_voice_s = clock_s

        if not self._primed:
            self.audio.playback_ring.write(np.zeros(self._cushion, dtype=np.float32))
            self._primed = True
        queued = self.audio.playback_ring.readable() * SAMPLE_RATE // self.audio.playback_rate
        pcm = agent
        n_shed = self._out_governor.plan(queued + FRAME_SIZE)
        if n_shed:
            pcm = shed_quietest(agent, n_shed)
            if queued + len(pcm) > self.output_bound:  # the device is not draining: drop it all
                pcm = pcm[:0]
            self._out_governor.shed(FRAME_SIZE - len(pcm))
            self.output_shed += FRAME_SIZE - len(pcm)
            self.output_shed_events += 1
        if len(pcm):
            to_play = self._to_device.convert(pcm)
            unplayed = len(to_play) - self.audio.playback_ring.write(to_play)
            self.output_shed += unplayed * SAMPLE_RATE // self.audio.playback_rate
        self.output_queue = queued + len(pcm)
        self.trace.append((clock_s, _ms(self.input_backlog), _ms(self.output_queue)))
        return True

    def run(self, stop: threading.Event) -> None:
        """The step thread: pump and step until `stop`; an error is kept for the main thread."""
        try:
            while not stop.is_set():
                self.pump()
                if not self.step():
                    time.sleep(POLL_S)
        except Exception as e:  # re-raised by the main thread once everything is closed
            self.error = e
            stop.set()

    def snapshot(self, persona: str) -> LiveSnapshot:
        """The counters now, for the live view."""
        recent = np.array(self.compute_ms[-RECENT_STEPS:] or [0.0])
        words = tuple(w.word for w in self.transcript.words)
        audio = self.audio
        return LiveSnapshot(
            persona=persona,
            elapsed_s=self.clock_s,
            frames=len(self.compute_ms),
            words=words,
            text_tail=" ".join(words)[-240:],
            input_level_db=self.input_level_db,
            output_level_db=self.output_level_db,
            compute_p50_ms=float(np.percentile(recent, 50)),
            compute_p95_ms=float(np.percentile(recent, 95)),
            budget_ms=FRAME_MS,
            input_backlog_ms=_ms(self.input_backlog),
            input_bound_ms=_ms(self.input_bound),
            output_queue_ms=_ms(self.output_queue),
            output_bound_ms=_ms(self.output_bound),
            input_shed_ms=_ms(self.input_shed),
            output_shed_ms=_ms(self.output_shed),
            underruns=audio.underrun_events,
            underrun_ms=_ms(audio.underrun_samples, audio.playback_rate),
            aec_on=self.aec is not None,
            aec_erle_db=self.aec.erle_db if self.aec is not None else None,
        )

    def summary(self, end_reason: str, *, wall_s: float, recording: Path | None) -> LiveSummary:
        """How the session went, once the step thread has stopped."""
        compute = np.array(self.compute_ms or [0.0])
        trace = tuple(self.trace)
        latency = np.array([i + o for _, i, o in trace] or [0.0])
        audio = self.audio
        return LiveSummary(
            end_reason=end_reason,
            duration_s=self.clock_s,
            wall_s=wall_s,
            frames=len(self.compute_ms),
            compute_mean_ms=float(compute.mean()),
            compute_p99_ms=float(np.percentile(compute, 99)),
            compute_s=float(compute.sum()) / 1000.0,
            latency_p50_ms=float(np.percentile(latency, 50)),
            latency_max_ms=float(latency.max()),
            max_input_backlog_ms=max((i for _, i, _ in trace), default=0.0),
            max_output_queue_ms=max((o for _, _, o in trace), default=0.0),
            input_bound_ms=_ms(self.input_bound),
            output_bound_ms=_ms(self.output_bound),
            input_shed_ms=_ms(self.input_shed),
            input_shed_events=self.input_shed_events,
            output_shed_ms=_ms(self.output_shed),
            output_shed_events=self.output_shed_events,
            capture_lost_ms=_ms(audio.capture_dropped, audio.capture_rate),
            underruns=audio.underrun_events,
            underrun_ms=_ms(audio.underrun_samples, audio.playback_rate),
            device_xruns=audio.device_overflows + audio.device_underflows,
            recording=recording,
            trace=trace,
            aec=self.aec is not None,
            aec_erle_db=self.aec.erle_db if self.aec is not None else None,
            aec_delay_ms=self.aec.delay_ms if self.aec is not None else None,
        )


def talk_live(
    engine: FrameEngine,
    *,
    persona_name: str,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    record: Path | None = None,
    max_minutes: float | None = None,
    idle_timeout: float | None = None,
    ui: bool = True,
    input_backlog_frames: int = 2,
    playback_queue_frames: int = 3,
    aec: bool | None = None,
    context: dict[str, Any] | None = None,
    console: Console | None = None,
) -> LiveSummary:
    """A live conversation on the microphone and speakers, until a limit, Ctrl-C or an error.

    engine: anything with `step(pcm) -> StepOut`, already conditioned on the persona.
    persona_name: shown in the view and stored in the recording.
    input_device, output_device: index or name substring (see `aimsvoice devices`); None: default.
    record: a .wav path for the stereo recording (left user, right agent) and its .json sidecar,
        written as the session goes and completed whatever ends it.
    max_minutes: end after this much audio; idle_timeout: end after this many seconds without
        the user speaking (both by the input device's clock).
    ui: a rich live view on a terminal; False (or no terminal): one plain line per second.
    input_backlog_frames, playback_queue_frames: the latency bounds, in 80 ms frames.
    aec: cancel the agent's voice, played on the speakers, from the microphone; None: decide by
        the output device's name (`resolve_aec`), and show the hint when the name does not tell.
    context: extra facts for the recording's JSON (model, voice, ...).

    Ctrl-C ends the session normally (end_reason "interrupted"). Device problems raise
    AudioDeviceError; any error propagates after the streams are closed, the step thread has
    stopped and the recording is complete.
    """
    config = AudioConfig(input_device, output_device, input_backlog_frames, playback_queue_frames)
    audio = open_duplex(config)
    aec_on, aec_hint = resolve_aec(aec, audio.output_device.name if audio.output_device else "")
    canceller = EchoCanceller() if aec_on else None
    recorder = Recorder(record) if record is not None else None
    pipeline = LivePipeline(engine, audio, config, recorder, canceller)
    view = LiveView(rich=ui, console=console, hints=live_hints(aec_on, aec_hint))
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), name="aimsvoice-step", daemon=True)
    end_reason = "error"
    started = time.monotonic()
    try:
        with view:
            audio.start()
            thread.start()
            end_reason = _supervise(pipeline, view, stop, persona_name, max_minutes, idle_timeout)
    except KeyboardInterrupt:
        end_reason = "interrupted"
    except AudioDeviceError as e:
        end_reason = "device-error"
        if recorder is None:
            raise
        raise AudioDeviceError(f"{e} The recording so far is kept in {recorder.path}.") from e
    finally:
        stop.set()
        audio.close()
        if thread.is_alive():
            thread.join(JOIN_TIMEOUT_S)
        summary = pipeline.summary(end_reason, wall_s=time.monotonic() - started, recording=record)
        if recorder is not None:
            settings = {
                "input_device": audio.input_device.name if audio.input_device else None,
                "output_device": audio.output_device.name if audio.output_device else None,
                "capture_rate": audio.capture_rate,
                "playback_rate": audio.playback_rate,
                "input_backlog_frames": input_backlog_frames,
                "playback_queue_frames": playback_queue_frames,
                "aec": aec_on,
                "max_minutes": max_minutes,
                "idle_timeout": idle_timeout,
                **(context or {}),
            }
            recorder.close(
                {
                    "persona": persona_name,
                    "settings": settings,
                    "stats": summary.to_json(),
                    "transcript": {k: v for k, v in pipeline.transcript.to_json().items() if k != "tokens"},
                }
            )
    view.summary(summary)
    return summary


def talk_on_devices(
    settings: TalkSettings,
    *,
    input_device: int | str | None = None,
    output_device: int | str | None = None,
    record: Path | None = None,
    max_minutes: float | None = None,
    idle_timeout: float | None = None,
    ui: bool = True,
    aec: bool | None = None,
) -> LiveSummary:
    """`aimsvoice talk` without --in/--out: load the model and persona, then `talk_live`.

    The devices are resolved first, so a wrong --input-device fails before the model loads.
    """
    found = list_devices()
    match_device(found, input_device, "input")
    match_device(found, output_device, "output")
    engine, conditioning, persona = open_engine(settings)
    engine.start(conditioning)
    context = settings_context(settings, engine, conditioning)
    return talk_live(
        engine,
        persona_name=persona.display_name,
        input_device=input_device,
        output_device=output_device,
        record=record,
        max_minutes=max_minutes,
        idle_timeout=idle_timeout,
        ui=ui,
        aec=aec,
        context=context,
    )


def _supervise(
    pipeline: LivePipeline,
    view: LiveView,
    stop: threading.Event,
    persona_name: str,
    max_minutes: float | None,
    idle_timeout: float | None,
) -> str:
    """The main thread's loop: flush the recording, watch the devices, refresh the view, end it."""
    while not stop.wait(UI_PERIOD_S):
        if pipeline.recorder is not None:
            pipeline.recorder.flush()
        pipeline.audio.check(time.monotonic())
        snap = pipeline.snapshot(persona_name)
        view.update(snap)
        limits = []  # (when it is due on the session clock, why)
        if max_minutes is not None:
            limits.append((60.0 * max_minutes, "max-minutes"))
        if idle_timeout is not None:
            limits.append((pipeline.last_voice_s + idle_timeout, "idle-timeout"))
        for due_s, reason in sorted(limits):
            if snap.elapsed_s >= due_s:
                return reason
    assert pipeline.error is not None, "only the step thread sets stop while the session runs"
    raise pipeline.error
# --- end live ---
