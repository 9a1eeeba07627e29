"""The agent's audio on the conversation's timeline, handed out one 80 ms frame per step.

Audio is scheduled at a sample index of the conversation (24 kHz, sample 0 is the start of the
first frame): after what is already scheduled, and never before `not_before` (the moment it
arrived, in model time offline, the frame under way live). A barge-in cuts everything from a
sample on, with a short fade so the cut does not click. Pure: no clock, no threads.
"""

from __future__ import annotations

import numpy as np

from ...audio.format import FRAME_SIZE, SAMPLE_RATE

FADE_SIZE = SAMPLE_RATE // 200  # 5 ms


class Playout:
    """Scheduled audio from `base` (the first sample not yet handed out) to `end`."""

    def __init__(self) -> None:
        self.base = 0
        self._buf = np.zeros(0, dtype=np.float32)  # samples [base, end)

    @property
    def end(self) -> int:
        """The first sample after everything scheduled."""
        return self.base + len(self._buf)

    def schedule(self, pcm: np.ndarray, not_before: int) -> int:
        """Queue `pcm` after what is scheduled and not before `not_before`; returns its first sample."""
        start = max(self.end, not_before, self.base)
        gap = start - self.end
        self._buf = np.concatenate([self._buf, np.zeros(gap, dtype=np.float32), np.asarray(pcm, dtype=np.float32)])
        return start

    def take(self, n: int = FRAME_SIZE) -> np.ndarray:
        """The next `n` samples (silence where nothing is scheduled); the timeline moves on by `n`."""
        out = np.zeros(n, dtype=np.float32)
        head = self._buf[:n]
        out[: len(head)] = head
        self._buf = self._buf[n:]
        self.base += n
        return out

    def cut(self, at: int, fade: int = FADE_SIZE) -> None:
        """Drop everything scheduled from sample `at` on, fading out over the `fade` samples from there."""
        keep = max(at - self.base, 0)
        if keep >= len(self._buf):
            return
        tail = self._buf[keep : keep + fade].copy()
        tail *= np.linspace(1.0, 0.0, len(tail), endpoint=False, dtype=np.float32)
        self._buf = np.concatenate([self._buf[:keep], tail])
