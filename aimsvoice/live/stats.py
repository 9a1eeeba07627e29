"""A live session's numbers as plain data, for the view and the recording; and what a view is.

The step thread keeps counters (pipeline.py); the main thread takes a `LiveSnapshot` of them a few
times a second and, at the end, a `LiveSummary`. Anything that shows them (ui.py's rich view, a
test) is a `LiveObserver`: the live session knows nothing of terminals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..audio import SAMPLE_RATE

VOICE_LEVEL_DBFS = -45.0  # a frame louder than this counts as the user speaking (--idle-timeout)
SILENCE_DBFS = -120.0  # the level reported for digital silence


def level_dbfs(pcm: np.ndarray) -> float:
    """RMS level of `pcm` in dBFS (SILENCE_DBFS for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0
    return max(20.0 * np.log10(rms), SILENCE_DBFS) if rms > 0 else SILENCE_DBFS


def ms(n_samples: float, rate: int = SAMPLE_RATE) -> float:
    return 1000.0 * n_samples / rate


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
    notices: tuple[str, ...] = ()  # the engine's latest notices: which tier and provider served a turn, failovers


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


class LiveObserver(Protocol):
    """What shows a live session: told its echo-cancellation facts once, then snapshots, then the summary."""

    def open(self, aec_on: bool, aec_hint: str | None) -> None:
        """The session starts: echo cancellation is on or off, with a hint about --aec when the default was a guess."""
        ...

    def update(self, snap: LiveSnapshot) -> None:
        """The newest snapshot (the main thread, about 4 times a second)."""
        ...

    def close(self) -> None: ...

    def summary(self, summary: LiveSummary) -> None: ...

