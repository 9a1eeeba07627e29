"""`aimsvoice bench compute`: what one 80 ms frame costs, stage by stage, and whether it keeps up.

The engine runs with `EngineConfig(profile=True)`: the device is synchronized between stages (on
CUDA), so the time of each stage is its own. Stages: Mimi encode, the temporal transformer, the
depformer (text sampling and the 16 audio codebooks), Mimi decode, and the whole step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..audio.format import FRAME_MS, FRAME_SIZE
from ..engine import Engine, EngineConfig, StepOut, load_model
from ..errors import BenchError
from ..session import resolve_model_dir
from .machine import describe_machine, peak_memory

STAGES = ("encode", "temporal", "depformer", "decode", "total")
DEFAULT_FRAMES = 100
DEFAULT_WARMUP = 10
PERCENTILES = (50, 95, 99)
INPUT_LEVEL = 0.03  # the frames fed: seeded noise at about -30 dBFS (the compute does not depend on it)


@dataclass(frozen=True)
class ComputeSettings:
    """What to measure.

    model: "tiny", a model folder, or None for the pulled weights; random_weights: an architecture
        ("7b") built with random weights instead of any model.
    frames: measured steps; warmup: steps run first and discarded (None: min(10, frames)), after
        the engine's own warm-up.
    """

    model: str | None = None
    random_weights: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    frames: int = DEFAULT_FRAMES
    warmup: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class StageStats:
    """One stage's time per frame, in ms."""

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
class ComputeReport:
    """Per-stage times, the real-time verdict, memory, and what it ran on."""

    model: str
    device: str
    dtype: str
    frames: int
    warmup: int
    load_s: float
    stages: dict[str, StageStats]
    memory_kind: str
    peak_memory_bytes: int
    machine: dict[str, Any] = field(default_factory=dict)
    budget_ms: float = FRAME_MS

    @property
    def real_time_factor(self) -> float:
        """Mean compute time per second of audio: below 1 keeps up."""
        return self.stages["total"].mean / self.budget_ms

    @property
    def frames_per_s(self) -> float:
        return 1000.0 / self.stages["total"].mean

    @property
    def keeps_up(self) -> bool:
        """Whether even the p99 step fits the 80 ms a frame lasts."""
        return self.stages["total"].p99 <= self.budget_ms

    def verdict(self) -> str:
        """One plain sentence on real time."""
        total, rtf = self.stages["total"], self.real_time_factor
        if self.keeps_up:
            return (f"keeps up with real time: p99 {total.p99:.1f} ms of the {self.budget_ms:.0f} ms budget "
                    f"({1 / rtf:.1f}x faster than real time)")
        if total.mean <= self.budget_ms:
            return (f"keeps up on average ({1 / rtf:.1f}x real time) but p99 {total.p99:.1f} ms is over the "
                    f"{self.budget_ms:.0f} ms budget: expect stalls")
        return (f"{'far ' if rtf >= 10 else ''}slower than real time: {total.mean / 1000:.2f} s per 80 ms frame, "
                f"{rtf:.1f}x slower than real time")

    def to_json(self) -> dict[str, Any]:
        total = self.stages["total"]
        return {
            "benchmark": "compute",
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "frames": self.frames,
            "warmup_frames": self.warmup,
            "load_s": round(self.load_s, 2),
            "stages_ms": {name: {k: round(v, 3) for k, v in s.__dict__.items()} for name, s in self.stages.items()},
            "budget_ms": self.budget_ms,
            "real_time_factor": round(self.real_time_factor, 4),
            "frames_per_s": round(self.frames_per_s, 3),
            "headroom_ms": {"p50": round(self.budget_ms - total.p50, 3), "p99": round(self.budget_ms - total.p99, 3)},
            "keeps_up": self.keeps_up,
            "verdict": self.verdict(),
            "peak_memory": {"kind": self.memory_kind, "bytes": self.peak_memory_bytes},
            "machine": self.machine,
        }


def run_compute(settings: ComputeSettings, on_step: Callable[[int, StepOut], None] | None = None) -> ComputeReport:
    """Load (or build) the model, warm up, time `settings.frames` steps. on_step(i, out) after each."""
    if settings.frames < 1:
        raise BenchError(f"--frames {settings.frames}: measure at least one frame.")
    if settings.random_weights is not None and settings.model is not None:
        raise BenchError("--random-weights builds its own model; drop --model.")
    warmup = min(DEFAULT_WARMUP, settings.frames) if settings.warmup is None else settings.warmup
    if warmup < 0:
        raise BenchError(f"--warmup {warmup}: give 0 or more frames.")

    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    if settings.random_weights is not None:
        from .randomweights import random_model

        model = random_model(settings.random_weights, settings.device, settings.dtype, settings.seed)
        label = f"random weights {settings.random_weights}"
    else:
        model = load_model(resolve_model_dir(settings.model), settings.device, settings.dtype)
        label = settings.model or str(model.files.directory)
    engine = Engine(model, EngineConfig(device=settings.device, dtype=settings.dtype, seed=settings.seed, profile=True))
    load_s = time.perf_counter() - started

    rng = np.random.default_rng(settings.seed)
    frame = (INPUT_LEVEL * rng.standard_normal(FRAME_SIZE)).astype(np.float32)
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    try:
        for i in range(warmup + settings.frames):
            out = engine.step(frame)
            if i >= warmup:
                for stage in STAGES:
                    timings[stage].append(out.timings_ms[stage])
            if on_step is not None:
                on_step(i - warmup, out)
    finally:
        engine.close()
    memory_kind, memory_bytes = peak_memory(model.device)
    return ComputeReport(
        model=label,
        device=model.device.type,
        dtype=str(model.dtype).removeprefix("torch."),
        frames=settings.frames,
        warmup=warmup,
        load_s=load_s,
        stages={stage: StageStats.of(values) for stage, values in timings.items()},
        memory_kind=memory_kind,
        peak_memory_bytes=memory_bytes,
        machine=describe_machine(model.device, load_average),
    )
