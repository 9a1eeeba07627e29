"""`aimsvoice bench compute`: what one 80 ms tick costs, stage by stage, for B conversations at once.

The engine runs with `EngineConfig(profile=True)`: the device is synchronized between stages (on
CUDA), so the time of each stage is its own. Stages: Mimi encode, the temporal transformer, the
depformer (text sampling and the 16 audio codebooks), Mimi decode, and the whole tick. With
several batch sizes, each is measured in turn on the same loaded model: B rows talking at once,
sampling with their own seeds, so the cost per conversation (the tick over B) shows what
batching buys.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..audio.format import FRAME_MS, FRAME_SIZE
from ..engine import ConversationSpec, EngineConfig, LoadedModel, PersonaPlexBatch, SamplingConfig, StepOut, load_model
from ..errors import BenchError
from ..session import resolve_model_dir
from .machine import describe_machine, peak_memory, reset_peak_memory

STAGES = ("encode", "temporal", "depformer", "decode", "total")
DEFAULT_FRAMES = 100
DEFAULT_WARMUP = 10
PERCENTILES = (50, 95, 99)
INPUT_LEVEL = 0.03  # the frames fed: seeded noise at about -30 dBFS (the compute does not depend on it)
MAX_BATCH = 256


@dataclass(frozen=True)
class ComputeSettings:
    """What to measure.

    model: "tiny", a model folder, or None for the pulled weights; random_weights: an architecture
        ("7b", "small") built with random weights instead of any model.
    quantize: "auto", "none" or "int8" (engine/quantize.py); cuda_graphs: off to measure without them.
    batch_sizes: conversations stepped together, each measured in turn.
    frames: measured ticks per batch size; warmup: ticks run first and discarded (None:
        min(10, frames)), after the engine's own warm-up and the rows' system prompts.
    """

    model: str | None = None
    random_weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_sizes: tuple[int, ...] = (1,)
    frames: int = DEFAULT_FRAMES
    warmup: int | None = None
    seed: int = 0
    context: str = "pinned"
    quantize: str = "auto"
    cuda_graphs: bool = True


@dataclass(frozen=True)
class StageStats:
    """One stage's time per tick, in ms."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values_ms: list[float]) -> StageStats:
        p50, p95, p99 = np.percentile(values_ms, PERCENTILES)
        return cls(float(p50), float(p95), float(p99), float(np.max(values_ms)), float(np.mean(values_ms)))


@dataclass(frozen=True)
class BatchRun:
    """The ticks of B conversations at once: per-stage times and what one conversation costs."""

    batch_size: int
    stages: dict[str, StageStats]
    memory_kind: str
    peak_memory_bytes: int
    budget_ms: float = FRAME_MS

    @property
    def real_time_factor(self) -> float:
        """Mean tick time per second of audio: below 1, all B conversations keep up."""
        return self.stages["total"].mean / self.budget_ms

    @property
    def per_conversation_ms(self) -> float:
        """The mean tick shared by its B conversations: device time one conversation costs per frame."""
        return self.stages["total"].mean / self.batch_size

    @property
    def frames_per_s(self) -> float:
        """Conversation frames computed per second (B per tick)."""
        return 1000.0 * self.batch_size / self.stages["total"].mean

    @property
    def keeps_up(self) -> bool:
        """Whether even the p99 tick fits the 80 ms a frame lasts."""
        return self.stages["total"].p99 <= self.budget_ms

    def verdict(self) -> str:
        """One plain sentence on real time."""
        total, rtf = self.stages["total"], self.real_time_factor
        who = "1 conversation" if self.batch_size == 1 else f"{self.batch_size} conversations"
        if self.keeps_up:
            return (f"{who} keep{'s' if self.batch_size == 1 else ''} up with real time: p99 {total.p99:.1f} ms of the "
                    f"{self.budget_ms:.0f} ms budget ({1 / rtf:.1f}x faster than real time)")
        if total.mean <= self.budget_ms:
            return (f"{who} keep up on average ({1 / rtf:.1f}x real time) but p99 {total.p99:.1f} ms is over the "
                    f"{self.budget_ms:.0f} ms budget: expect stalls")
        return (f"{who}: {'far ' if rtf >= 10 else ''}slower than real time, {total.mean / 1000:.2f} s per 80 ms tick, "
                f"{rtf:.1f}x slower than real time")

    def to_json(self) -> dict[str, Any]:
        total = self.stages["total"]
        return {
            "batch_size": self.batch_size,
            "stages_ms": {name: {k: round(v, 3) for k, v in s.__dict__.items()} for name, s in self.stages.items()},
            "per_conversation_ms": round(self.per_conversation_ms, 3),
            "real_time_factor": round(self.real_time_factor, 4),
            "frames_per_s": round(self.frames_per_s, 3),
            "headroom_ms": {"p50": round(self.budget_ms - total.p50, 3), "p99": round(self.budget_ms - total.p99, 3)},
            "keeps_up": self.keeps_up,
            "verdict": self.verdict(),
            "peak_memory": {"kind": self.memory_kind, "bytes": self.peak_memory_bytes},
        }


@dataclass(frozen=True)
class ComputeReport:
    """Per batch size: per-stage tick times and the real-time verdict; and what it ran on."""

    model: str
    device: str
    dtype: str
    context: str
    frames: int
    warmup: int
    load_s: float
    runs: tuple[BatchRun, ...]
    machine: dict[str, Any] = field(default_factory=dict)
    budget_ms: float = FRAME_MS
    quantize: str = "none"
    cuda_graphs: bool = True

    @property
    def precision(self) -> str:
        """The dtype, with int8 weights and CUDA graphs off where so: "bfloat16, int8 weights"."""
        graphs_off = self.device == "cuda" and not self.cuda_graphs
        return self.dtype + (", int8 weights" if self.quantize == "int8" else "") + (", no CUDA graphs" if graphs_off else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "compute",
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "cuda_graphs": self.cuda_graphs,
            "context": self.context,
            "frames": self.frames,
            "warmup_frames": self.warmup,
            "load_s": round(self.load_s, 2),
            "budget_ms": self.budget_ms,
            "batches": [run.to_json() for run in self.runs],
            "machine": self.machine,
        }


def run_compute(settings: ComputeSettings, on_step: Callable[[int, int, StepOut], None] | None = None) -> ComputeReport:
    """Load (or build) the model; per batch size, start B conversations, warm up, time `frames` ticks.

    on_step(batch_size, i, out) after each tick (i < 0 while warming up).
    """
    if settings.frames < 1:
        raise BenchError(f"--frames {settings.frames}: measure at least one frame.")
    if settings.random_weights is not None and settings.model is not None:
        raise BenchError("--random-weights builds its own model; drop --model.")
    if not settings.batch_sizes or not all(1 <= b <= MAX_BATCH for b in settings.batch_sizes):
        raise BenchError(f"--batch {','.join(map(str, settings.batch_sizes))}: give sizes from 1 to {MAX_BATCH}, e.g. --batch 1,2,4,8.")
    warmup = min(DEFAULT_WARMUP, settings.frames) if settings.warmup is None else settings.warmup
    if warmup < 0:
        raise BenchError(f"--warmup {warmup}: give 0 or more frames.")

    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    if settings.random_weights is not None:
        from .randomweights import random_model

        model = random_model(settings.random_weights, settings.device, settings.dtype, settings.seed, settings.quantize)
        label = f"random weights {settings.random_weights}"
    else:
        model = load_model(resolve_model_dir(settings.model), settings.device, settings.dtype, settings.quantize)
        label = settings.model or str(model.files.directory)
    load_s = time.perf_counter() - started
    runs = tuple(_measure(model, settings, batch_size, warmup, on_step) for batch_size in settings.batch_sizes)
    return ComputeReport(
        model=label,
        device=model.device.type,
        dtype=str(model.dtype).removeprefix("torch."),
        context=settings.context,
        frames=settings.frames,
        warmup=warmup,
        load_s=load_s,
        runs=runs,
        machine=describe_machine(model.device, load_average),
        quantize=model.quantize,
        cuda_graphs=settings.cuda_graphs,
    )


def _measure(
    model: LoadedModel, settings: ComputeSettings, batch_size: int, warmup: int,
    on_step: Callable[[int, int, StepOut], None] | None,
) -> BatchRun:
    """B conversations (no voice prompt: it costs nothing per tick) sampling with their own seeds, ticked together."""
    reset_peak_memory(model.device)
    config = EngineConfig(
        device=settings.device, dtype=settings.dtype, profile=True, context=settings.context, cuda_graphs=settings.cuda_graphs,
    )
    rng = np.random.default_rng(settings.seed)
    frames = (INPUT_LEVEL * rng.standard_normal((batch_size, FRAME_SIZE))).astype(np.float32)
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with PersonaPlexBatch(model, config, batch_size) as engine:
        rows = [engine.open(ConversationSpec("", "", SamplingConfig(), seed=settings.seed + i)) for i in range(batch_size)]
        while any(engine.in_prompt(row) for row in rows):
            engine.tick({})
        for i in range(warmup + settings.frames):
            outs = engine.tick({row: frames[k] for k, row in enumerate(rows)})
            out = outs[rows[0]]  # one tick: the same timings for every row
            if i >= warmup:
                for stage in STAGES:
                    timings[stage].append(out.timings_ms[stage])
            if on_step is not None:
                on_step(batch_size, i - warmup, out)
    memory_kind, memory_bytes = peak_memory(model.device)
    return BatchRun(batch_size, {stage: StageStats.of(values) for stage, values in timings.items()}, memory_kind, memory_bytes)
