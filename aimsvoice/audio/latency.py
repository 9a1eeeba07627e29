"""Bounded latency: how much audio a queue may hold, and which audio to give up when it holds more.

A live conversation must never fall behind: when the engine is slower than real time, or stalls,
audio piles up in front of it (input backlog) or behind it (playback queue). Each queue gets a
`LatencyGovernor` that answers "how many samples to shed now", and `shed_quietest` decides which:

- A hard bound is enforced at once: nothing ever waits longer than the bound.
- Standing excess (a level that stays above the margin for a whole window, as after a stall
  where underrun silence pushed everything later) is drained at a limited rate, so latency
  returns to its baseline within a second instead of staying raised for the rest of the call.
- The quietest segments go first (pauses cost nothing to lose, words do), except audio already
  older than the stale horizon, which goes oldest first: after a long stall the old audio is no
  longer worth answering. Every cut is a short raised-cosine crossfade, so cuts do not click.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .format import SAMPLE_RATE

SEGMENT_SIZE = SAMPLE_RATE // 100  # 10 ms: the unit audio is shed in
CROSSFADE_SIZE = SAMPLE_RATE // 200  # 5 ms: long enough not to click, short enough to hide
STALE_HORIZON = SAMPLE_RATE  # 1 s: backlog older than this is shed oldest-first


def shed_quietest(
    pcm: np.ndarray,
    n_drop: int,
    *,
    protect_head: int = CROSSFADE_SIZE,
    segment_size: int = SEGMENT_SIZE,
    crossfade_size: int = CROSSFADE_SIZE,
    stale_horizon: int = STALE_HORIZON,
) -> np.ndarray:
    """Remove at least `n_drop` samples from `pcm`, quietest segments first, crossfading each cut.

    `pcm` is split, after its first `protect_head` samples, into `segment_size` pieces (the last
    may be shorter). Pieces are dropped in order of RMS level (ties: oldest first); pieces that
    start more than `stale_horizon` samples before the end count as quieter than any other.
    Whole pieces are dropped, so up to `segment_size - 1` samples more than asked may go; if the
    pieces are not enough, all of them go and the result is `protect_head` samples long.

    At each cut [s, e) the `crossfade_size` samples before s are blended into the ones before e,
    so the result is continuous at both ends of the blend. This needs `protect_head >=
    crossfade_size`: the head is the audio the first cut can fade from (audio after `pcm` ends
    just continues the last piece, so a cut may reach the end). Returns a new array.
    """
    if protect_head < crossfade_size or segment_size < crossfade_size:
        raise ValueError(f"protect_head and segment_size must cover the crossfade ({crossfade_size} samples)")
    n = len(pcm)
    if n_drop <= 0 or n <= protect_head:
        return pcm.copy()
    starts = np.arange(protect_head, n, segment_size)
    ends = np.minimum(starts + segment_size, n)
    energy = np.concatenate(([0.0], np.cumsum(np.square(pcm, dtype=np.float64))))
    rms = np.sqrt((energy[ends] - energy[starts]) / (ends - starts))
    rms[starts < n - stale_horizon] = -1.0
    order = np.lexsort((starts, rms))
    taken = np.cumsum((ends - starts)[order])
    n_pieces = min(int(np.searchsorted(taken, n_drop)) + 1, len(order))
    drop = np.zeros(len(starts), dtype=bool)
    drop[order[:n_pieces]] = True

    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, crossfade_size, dtype=np.float64))
    kept: list[np.ndarray] = []
    pos = 0  # next sample of pcm not yet in `kept`
    i = 0
    while i < len(starts):
        if not drop[i]:
            i += 1
            continue
        cut_start = int(starts[i])
        while i < len(starts) and drop[i]:
            i += 1
        cut_end = int(ends[i - 1])
        fade_from = pcm[cut_start - crossfade_size : cut_start]
        fade_to = pcm[cut_end - crossfade_size : cut_end]
        kept.append(pcm[pos : cut_start - crossfade_size])
        kept.append((fade_from * (1.0 - ramp) + fade_to * ramp).astype(np.float32))
        pos = cut_end
    kept.append(pcm[pos:])
    return np.concatenate(kept).astype(np.float32, copy=False)


class LatencyGovernor:
    """Decides, once per step, how many samples one queue should shed.

    `level` is what the queue would hold after this step if nothing were shed (samples at
    SAMPLE_RATE). The answer is the larger of the hard excess over `bound` and the standing
    excess: the lowest level seen over the last `window` steps, less `margin`, at most
    `max_drain` per step. The lowest level is the part of the queue that was never needed to
    ride out jitter in that window, i.e. pure added delay.
    """

    def __init__(self, *, bound: int, margin: int, window: int, max_drain: int) -> None:
        if not 0 <= margin <= bound:
            raise ValueError(f"margin ({margin}) must be between 0 and the bound ({bound})")
        self.bound = bound
        self.margin = margin
        self.max_drain = max_drain
        self._levels: deque[int] = deque(maxlen=window)

    def plan(self, level: int) -> int:
        """Samples to shed now, given the level this step would leave."""
        self._levels.append(level)
        hard = max(0, level - self.bound)
        soft = 0
        if len(self._levels) == self._levels.maxlen:
            soft = min(max(0, min(self._levels) - self.margin), self.max_drain)
        return max(hard, soft)

    def shed(self, n_samples: int) -> None:
        """Record that `n_samples` were shed, so the window does not count that excess again."""
        for i in range(len(self._levels)):
            self._levels[i] -= n_samples


class FrameBacklog:
    """Audio waiting to be cut into frames, held under a `LatencyGovernor`'s bound.

    `push` appends (past `capacity` the oldest audio goes at once); `take` first sheds what the
    governor asks (`shed_quietest`), then cuts the oldest whole frame. Both count what they drop
    in `shed` and `shed_events`. One thread at a time: a caller shared by threads locks around it.
    """

    def __init__(self, capacity: int, governor: LatencyGovernor, frame_size: int) -> None:
        self.capacity = capacity
        self.governor = governor
        self.frame_size = frame_size
        self._pcm = np.zeros(capacity, dtype=np.float32)
        self.n = 0  # samples waiting
        self.shed = 0  # samples dropped, for overflow or to hold the bound
        self.shed_events = 0

    def clear(self) -> None:
        self.n = 0

    def push(self, pcm: np.ndarray) -> int:
        """Append audio; returns the samples dropped to make room (the oldest)."""
        n = len(pcm)
        if n >= self.capacity:
            dropped = self.n + n - self.capacity
            self._pcm[:] = pcm[n - self.capacity :]
            self.n = self.capacity
        else:
            dropped = max(0, self.n + n - self.capacity)
            if dropped:
                self.n -= dropped
                self._pcm[: self.n] = self._pcm[dropped : dropped + self.n]
            self._pcm[self.n : self.n + n] = pcm
            self.n += n
        self._count(dropped)
        return dropped

    def take(self) -> tuple[np.ndarray | None, int]:
        """The oldest whole frame (None if there is none yet, even after shedding), and the samples shed for it."""
        if self.n < self.frame_size:
            return None, 0
        dropped = 0
        n_shed = self.governor.plan(self.n - self.frame_size)
        if n_shed:
            kept = shed_quietest(self._pcm[: self.n], n_shed)
            dropped = self.n - len(kept)
            self._pcm[: len(kept)] = kept
            self.n = len(kept)
            self.governor.shed(dropped)
            self._count(dropped)
            if self.n < self.frame_size:
                return None, dropped
        frame = self._pcm[: self.frame_size].copy()
        self.n -= self.frame_size
        self._pcm[: self.n] = self._pcm[self.frame_size : self.frame_size + self.n]
        return frame, dropped

    def _count(self, dropped: int) -> None:
        if dropped:
            self.shed += dropped
            self.shed_events += 1
