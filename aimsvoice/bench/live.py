"""`bench turns --live`: a conversation through the real-time loop, as the user would hear it.

The live session's own machinery runs it: `DuplexAudio`'s capture and playback callbacks and the
session's `LivePipeline` (frame assembly, latency bounds, shedding, playback queue). Only the
sound card is virtual, on a clock paced by the engine:

- every 20 ms of that clock (the live block, BLOCK_MS) the capture callback gets the block of the
  user's audio that just ended, then the playback callback is asked for the block heard over the
  next 20 ms, recorded at that time on the user's timeline: one full-duplex callback, input in
  and output out at once;
- each engine step moves the clock on by the compute time the engine reports
  (`StepOut.timings_ms["total"]`, aimsvoice's Engine measures its wall time; else the wall time
  of the call), with the callbacks falling due meanwhile served from the queues as they stood
  before the step's output, as a real device would be;
- while no frame is ready the clock moves on by the step thread's nap (POLL_S).

So what is heard includes the wait for a whole 80 ms input frame, the engine's compute (rounded
up to the next callback), the loop's 20 ms cushion ahead of its first answer, the input backlog
and the playback queue, and anything the latency bounds shed: figures as a user hears them on
this machine. An engine that keeps up is heard 120 ms (no compute) to 200 ms (80 ms compute)
later than in model time. Not included: a real sound card's own buffers, OS scheduling jitter,
and the time of the acoustic path. The run takes compute time, not the audio's duration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..audio.devices import BLOCK_MS, AudioConfig, DuplexAudio
from ..audio.format import SAMPLE_RATE
from ..engine.contract import FrameEngine, StepOut
from ..live import POLL_S, LivePipeline

BLOCK = SAMPLE_RATE * BLOCK_MS // 1000  # samples per callback


class _NoFlags:
    """The callbacks' status: a virtual device never over- or underflows by itself."""

    input_overflow = False
    output_underflow = False


@dataclass(frozen=True)
class LiveStats:
    """How the live loop coped with one conversation."""

    compute_mean_ms: float  # per engine step
    input_shed_ms: float  # user audio dropped to hold the input backlog bound
    output_shed_ms: float  # agent audio dropped to hold the playback queue bound
    underruns: int  # times playback ran dry after the agent's first sound


class PacedDevice:
    """The virtual duplex sound card: `advance` moves its clock and fires the callbacks due."""

    def __init__(self, audio: DuplexAudio, user_pcm: np.ndarray) -> None:
        self.audio = audio
        self.user = np.concatenate([user_pcm, np.zeros(-len(user_pcm) % BLOCK, dtype=np.float32)])
        self.heard = np.zeros(len(self.user) + BLOCK, dtype=np.float32)
        self.now = 0  # the clock, in samples
        self._in = np.zeros((BLOCK, 1), dtype=np.float32)
        self._out = np.zeros((BLOCK, 1), dtype=np.float32)
        self._tick(0)

    @property
    def done(self) -> bool:
        return self.now >= len(self.user)

    def advance(self, seconds: float) -> None:
        """Move the clock on; at each block boundary passed, capture the block that just ended,
        then play the next one."""
        target = self.now + max(1, round(seconds * SAMPLE_RATE))
        for boundary in range((self.now // BLOCK + 1) * BLOCK, min(target, len(self.user)) + 1, BLOCK):
            self._tick(boundary)
        self.now = target

    def _tick(self, boundary: int) -> None:
        if boundary > 0:
            self._in[:, 0] = self.user[boundary - BLOCK : boundary]
            self.audio.on_capture(self._in, BLOCK, None, _NoFlags())
        self.audio.on_playback(self._out, BLOCK, None, _NoFlags())
        self.heard[boundary : boundary + BLOCK] = self._out[:, 0]


class _Clocked:
    """The engine, moving the device's clock on by each step's compute time."""

    def __init__(self, engine: FrameEngine, device: PacedDevice) -> None:
        self.engine = engine
        self.device = device
        self.compute_ms: list[float] = []

    def step(self, pcm: np.ndarray) -> StepOut:
        started = time.perf_counter()
        out = self.engine.step(pcm)
        compute_ms = out.timings_ms.get("total", 1000.0 * (time.perf_counter() - started))
        self.compute_ms.append(compute_ms)
        self.device.advance(compute_ms / 1000.0)
        return out


def run_live(engine: FrameEngine, user_pcm: np.ndarray, config: AudioConfig = AudioConfig()) -> tuple[np.ndarray, LiveStats]:
    """Play `user_pcm` into the live loop on the paced virtual device, with the live session's bounds.

    Returns what the user heard, aligned with `user_pcm` and as long, and how the loop coped.
    """
    audio = DuplexAudio(capture_rate=SAMPLE_RATE, playback_rate=SAMPLE_RATE)
    device = PacedDevice(audio, np.asarray(user_pcm, dtype=np.float32))
    clocked = _Clocked(engine, device)
    pipeline = LivePipeline(clocked, audio, config)
    while not device.done:
        pipeline.pump()
        if not pipeline.step():
            device.advance(POLL_S)
    summary = pipeline.summary("bench", wall_s=0.0, recording=None)
    stats = LiveStats(
        compute_mean_ms=float(np.mean(clocked.compute_ms)) if clocked.compute_ms else 0.0,
        input_shed_ms=summary.input_shed_ms,
        output_shed_ms=summary.output_shed_ms,
        underruns=summary.underruns,
    )
    return device.heard[: len(user_pcm)], stats
