"""Scripted engines: agents of exactly known timing, to hold `aimsvoice bench` to the truth.

A ScriptedEngine talks (plays tests/data/agent-voice.wav, speech at every instant) during fixed
intervals of its own timeline: step i covers [i, i+1) x 80 ms, as for a real engine fed by
`run_frames`; through the live loop, that timeline reaches the user later by the loop's delay.
The `plan_*` functions turn a sample's annotation and a behaviour ("starts N ms after the user
stops", "stops M ms after a barge-in", "talks during pauses") into intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE, read_wav
from aimsvoice.bench import Sample
from aimsvoice.engine import ConversationSpec, StepOut

AGENT_VOICE = Path(__file__).parent / "data" / "agent-voice.wav"

Intervals = list[tuple[float, float]]


class ScriptedEngine:
    """A `FrameEngine` that speaks during `talk` (seconds on its own timeline); silent otherwise. Never looks at the input.

    compute_ms: the compute time each step reports (the live bench's clock moves on by it).
    """

    def __init__(self, talk: Intervals, voice: np.ndarray, compute_ms: float = 0.0) -> None:
        self.talk = [(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)) for a, b in talk]
        self.voice = voice
        self.compute_ms = compute_ms
        self.n_steps = 0

    def start(self, spec: ConversationSpec) -> None:
        self.n_steps = 0

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, str]:
        return {"engine": "scripted"}

    def step(self, pcm: np.ndarray) -> StepOut:
        assert pcm.shape == (FRAME_SIZE,)
        t = np.arange(self.n_steps * FRAME_SIZE, (self.n_steps + 1) * FRAME_SIZE)
        self.n_steps += 1
        out = np.zeros(FRAME_SIZE, dtype=np.float32)
        for start, end in self.talk:
            inside = (t >= start) & (t < end)
            out[inside] = self.voice[(t[inside] - start) % len(self.voice)]  # each turn starts the voice afresh
        return StepOut(out, None, 0, {"total": self.compute_ms})


def agent_voice() -> np.ndarray:
    return read_wav(AGENT_VOICE)


def plan_turn_taking(sample: Sample, reply_after_s: float | None, talk_s: float = 2.0) -> Intervals:
    """Start talking `reply_after_s` after the user's turn ends (None: stay silent)."""
    if reply_after_s is None:
        return []
    start = sample.events[0][0] + reply_after_s
    return [(start, start + talk_s)]


def plan_interruption(
    sample: Sample, stop_after_s: float | None, respond_after_s: float | None,
    talking_before_s: float = 1.5, respond_s: float = 2.0,
) -> Intervals:
    """Talk for `talking_before_s` up to the barge-in, stop `stop_after_s` into it (None: never stop),
    and answer `respond_after_s` after the barge-in ends (None: no answer)."""
    barge_in_start, barge_in_end = sample.events[0]
    if stop_after_s is None:
        return [(barge_in_start - talking_before_s, barge_in_end + 3.0)]
    talk = [(barge_in_start - talking_before_s, barge_in_start + stop_after_s)]
    if respond_after_s is not None:
        talk.append((barge_in_end + respond_after_s, barge_in_end + respond_after_s + respond_s))
    return talk


def plan_pause(sample: Sample, user_s: float, talks_in_pauses: bool, after_pause_start_s: float = 0.3) -> Intervals:
    """Take the turn in every pause (or not); either way answer 0.5 s after the user's last word."""
    talk = [(start + after_pause_start_s, start + after_pause_start_s + 1.5) for start, _ in sample.events]
    return [*(talk if talks_in_pauses else []), (user_s + 0.5, user_s + 2.5)]
