"""`aimsvoice bench context`: a long conversation through the attention window, its memory and step time.

One conversation (the default persona, greedy, seeded noise as the user) runs for `minutes` of
audio, far past the window (240 s on PersonaPlex 7B). Every `sample_every` frames the process's
memory is read (CUDA allocated, or the resident set); the report compares it at the first wrap of
the window with everything after, and the step time inside the first window with the step time
past it, where `pinned` attends over the prompt with a second query rotation.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..audio.format import FRAME_MS, FRAME_SIZE
from ..engine import Engine, load_model
from ..engine.context import context_of
from ..errors import BenchError
from ..session import TalkSettings, conversation_spec, resolve_model_dir
from .. import personas
from .machine import describe_machine

SAMPLE_EVERY = 250  # frames between memory readings (20 s of audio)
INPUT_LEVEL = 0.03


@dataclass(frozen=True)
class ContextSettings:
    model: str | None = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    context: str = "pinned"
    quantize: str = "auto"  # int8 weights, as for `talk`
    minutes: float = 60.0
    seed: int = 0
    persona: str | None = None
    text_prompt: str | None = None  # overrides the persona's


@dataclass(frozen=True)
class ContextReport:
    """Memory and step time of one long conversation, inside and past its first window."""

    model: str
    device: str
    dtype: str
    context: str
    window_steps: int
    prompt_steps: int
    frames: int
    memory_kind: str
    memory_at_wrap: int  # bytes when the window first filled
    memory_after_min: int
    memory_after_max: int
    step_ms_inside: float  # mean, frames inside the first window
    step_ms_past: float  # mean, frames past it
    wall_s: float
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def growth_bytes(self) -> int:
        return self.memory_after_max - self.memory_at_wrap

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": "context", **{k: v for k, v in self.__dict__.items()}, "growth_bytes": self.growth_bytes}


def _memory(device: torch.device) -> tuple[str, int]:
    if device.type == "cuda":
        return "cuda allocated", int(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as f:  # the current resident set (ru_maxrss is a high-water mark)
        return "RSS", int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_context(settings: ContextSettings, on_progress: Callable[[int, int], None] | None = None) -> ContextReport:
    """Run one conversation for `settings.minutes` of audio and measure memory and step time."""
    if not 0 < settings.minutes <= 24 * 60:
        raise BenchError(f"--minutes {settings.minutes}: give 0 to 1440 minutes.")
    load_average = os.getloadavg()[0]
    talk = TalkSettings(
        model=settings.model, persona=settings.persona, text_prompt=settings.text_prompt, device=settings.device,
        dtype=settings.dtype, context=settings.context, quantize=settings.quantize, greedy=True,
    )
    model = load_model(resolve_model_dir(settings.model), settings.device, settings.dtype, settings.quantize)
    window = context_of(model.lm.transformer)
    if window is None:
        raise BenchError(f"{model.files.directory}: the model's attention has no window; nothing to measure.")
    n_frames = round(settings.minutes * 60_000 / FRAME_MS)
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()
    inside, past, readings = [], [], []
    with Engine(model, talk.engine_config) as engine:
        spec = conversation_spec(talk, personas.load(settings.persona))
        engine.start(spec)
        assert engine.row is not None
        prompt_steps = engine.batch.steps_taken(engine.row)
        wrap_frame = max(window - (prompt_steps - 1), 0)  # the LM does not run on a row's first step
        memory_kind, at_wrap = _memory(model.device)
        for i in range(n_frames):
            frame = (INPUT_LEVEL * rng.standard_normal(FRAME_SIZE)).astype(np.float32)
            t0 = time.perf_counter()
            engine.step(frame)
            (inside if i < wrap_frame else past).append(time.perf_counter() - t0)
            if i == wrap_frame:
                at_wrap = _memory(model.device)[1]
            elif i > wrap_frame and (i - wrap_frame) % SAMPLE_EVERY == 0:
                readings.append(_memory(model.device)[1])
            if on_progress is not None and i % SAMPLE_EVERY == 0:
                on_progress(i, n_frames)
    readings = readings or [at_wrap]
    return ContextReport(
        model=settings.model or str(model.files.directory), device=model.device.type,
        dtype=str(model.dtype).removeprefix("torch."), context=settings.context, window_steps=window,
        prompt_steps=int(prompt_steps), frames=n_frames, memory_kind=memory_kind, memory_at_wrap=at_wrap,
        memory_after_min=min(readings), memory_after_max=max(readings),
        step_ms_inside=1000 * float(np.mean(inside)) if inside else float("nan"),
        step_ms_past=1000 * float(np.mean(past)) if past else float("nan"),
        wall_s=time.perf_counter() - started, machine=describe_machine(model.device, load_average),
    )


def context_line(report: ContextReport) -> str:
    """The report in two sentences."""
    mib = 2**20
    return (
        f"{report.frames} frames ({report.frames * FRAME_MS / 60_000:.0f} min) with context {report.context}, window "
        f"{report.window_steps} steps, system prompt {report.prompt_steps}: {report.memory_kind} {report.memory_at_wrap / mib:.1f} MiB "
        f"at the first wrap, {report.memory_after_min / mib:.1f}-{report.memory_after_max / mib:.1f} MiB after "
        f"(growth {report.growth_bytes / mib:+.1f} MiB). Step {report.step_ms_inside:.2f} ms inside the first window, "
        f"{report.step_ms_past:.2f} ms past it; {report.wall_s:.0f} s in all."
    )
