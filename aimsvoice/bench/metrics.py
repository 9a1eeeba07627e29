"""Full-Duplex-Bench v1/v1.5 measurements from the agent's speech segments.

Full-Duplex-Bench times the agent with ASR word timestamps; here the agent's speech comes from a
VAD (vad.py), which changes three things, all stated in the report:

- Take-over: FD-Bench counts a turn when the agent's words after the reference time span at least
  1 s or number more than 3. Without words, the rule is the span alone: speech spanning >= 1 s
  (from the first onset to the last offset) takes the turn; anything shorter is a backchannel.
- Smooth turn-taking latency: FD-Bench takes the first word of the whole output (an earlier one
  gives a negative latency, clipped to 0). Here only speech at or after the end of the user's
  turn counts: speech still going at that moment gives 0, a greeting long before does not.
- Pause handling: FD-Bench looks at the whole output. Here the window runs from the first pause
  to the end of input.wav (the user's last word), so a greeting before the user's first pause is
  not counted as taking the turn.

User interruption follows v1.5's split of v1's latency: the stop latency is how long the agent
keeps talking after the barge-in starts (its speech segment running at that moment ends), and the
response is the agent's first speech after it stopped, timed from the end of the barge-in
(clipped at 0, as FD-Bench does) and a take-over if it spans >= 1 s. Talking straight through a
barge-in is not a take-over: it shows as a long stop latency and no response.
"""

from __future__ import annotations

from dataclasses import dataclass

from .vad import Segment

TAKE_OVER_MIN_S = 1.0  # FD-Bench's turn_duration_threshold


@dataclass(frozen=True)
class TurnTaking:
    """Did the agent take the turn when the user finished, and how soon."""

    take_over: bool
    latency_s: float | None  # only for a take-over


@dataclass(frozen=True)
class Interruption:
    """How the agent handled the user barging in."""

    talking_at_barge_in: bool
    stop_latency_s: float | None  # only when the agent was talking as the barge-in started
    take_over: bool
    response_latency_s: float | None  # only for a take-over


@dataclass(frozen=True)
class PauseHandling:
    """Did the agent take the turn while the user only paused (a take-over is a failure)."""

    take_over: bool


def clip(segments: list[Segment], start_s: float, end_s: float = float("inf")) -> list[Segment]:
    """The parts of `segments` inside [start_s, end_s]."""
    clipped = [Segment(max(s.start_s, start_s), min(s.end_s, end_s)) for s in segments]
    return [s for s in clipped if s.end_s > s.start_s]


def takes_over(segments: list[Segment]) -> bool:
    """FD-Bench's rule by duration: the speech spans at least TAKE_OVER_MIN_S."""
    return bool(segments) and segments[-1].end_s - segments[0].start_s >= TAKE_OVER_MIN_S


def turn_taking(agent: list[Segment], turn_end_s: float) -> TurnTaking:
    """Smooth turn-taking: the agent's speech from the end of the user's turn on."""
    after = clip(agent, turn_end_s)
    if not takes_over(after):
        return TurnTaking(False, None)
    return TurnTaking(True, after[0].start_s - turn_end_s)


def interruption(agent: list[Segment], barge_in_start_s: float, barge_in_end_s: float) -> Interruption:
    """User interruption: stop latency from the barge-in's start, response after the agent stopped."""
    talking = next((s for s in agent if s.start_s <= barge_in_start_s < s.end_s), None)
    stopped_s = talking.end_s if talking is not None else barge_in_start_s
    stop_latency = talking.end_s - barge_in_start_s if talking is not None else None
    response = clip([s for s in agent if s.start_s >= stopped_s], barge_in_end_s)
    if not takes_over(response):
        return Interruption(talking is not None, stop_latency, False, None)
    return Interruption(talking is not None, stop_latency, True, response[0].start_s - barge_in_end_s)


def pause_handling(agent: list[Segment], pauses: tuple[tuple[float, float], ...], user_end_s: float) -> PauseHandling:
    """Pause handling: the agent's speech from the first pause to the end of the user's audio."""
    first_pause_s = min(start for start, _ in pauses)
    return PauseHandling(takes_over(clip(agent, first_pause_s, user_end_s)))
