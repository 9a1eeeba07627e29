"""The tick's cadence: one real-time tick every 80 ms for the talking sessions, prompt-only ticks in the slack.

Talking sessions are real-time streams: each needs one step per 80 ms of wall-clock time, and
that tick must not wait for anything else. A session that joins needs its system prompt run
first (a few hundred steps), and the sooner the better: it is waiting in silence. The engine
can step only the rows in their prompt (`tick({})`), leaving the talking rows exactly as they
were, so the slack between real-time ticks is spent on such prompt-only ticks:

- Real-time ticks are due at t0 + k x 80 ms. When one runs late (the device is slower than
  real time, or stalled), the next is due 80 ms after the last one was due, so a brief delay
  is caught up; once the schedule is more than `max_lag_s` behind it restarts from now instead
  of bursting: the input queues' governors shed what piled up, as in the live loop.
- A prompt-only tick runs only if it fits before the next real-time tick: now + safety x
  (the longest of the recent prompt-only ticks) + margin <= the deadline. The first one, with
  nothing measured yet, is judged by the last real-time tick, which costs at least as much.
- With no talking session there is no deadline: prompt-only ticks run back to back.

A pure policy on a caller's clock, tested without threads.
"""

from __future__ import annotations

from collections import deque

from .config import FRAME_S

SAFETY = 1.5  # how much longer than the longest recent prompt tick the next one may take
MARGIN_S = 0.002  # scheduler wake-up jitter
WINDOW = 16  # prompt ticks remembered


class TickPacer:
    """When the next real-time tick is due, and whether a prompt-only tick fits before it."""

    def __init__(self, period_s: float = FRAME_S, max_lag_s: float = FRAME_S, safety: float = SAFETY, margin_s: float = MARGIN_S) -> None:
        self.period_s = period_s
        self.max_lag_s = max_lag_s
        self.safety = safety
        self.margin_s = margin_s
        self.deadline: float | None = None  # None: nobody is talking
        self.restarts = 0  # times the schedule fell more than max_lag_s behind and restarted
        self._prompt_s: deque[float] = deque(maxlen=WINDOW)
        self._last_tick_s = 0.0

    @property
    def running(self) -> bool:
        return self.deadline is not None

    def start(self, now: float) -> None:
        """Someone started talking: a real-time tick is due now."""
        if self.deadline is None:
            self.deadline = now

    def stop(self) -> None:
        """Nobody is talking any more."""
        self.deadline = None

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def ticked(self, started: float, ended: float) -> None:
        """A real-time tick ran from `started` to `ended`."""
        self._last_tick_s = ended - started
        if self.deadline is None:
            return
        self.deadline += self.period_s
        if ended - self.deadline > self.max_lag_s:
            self.deadline = ended
            self.restarts += 1

    def prompt_ticked(self, started: float, ended: float) -> None:
        """A prompt-only tick ran from `started` to `ended`."""
        self._prompt_s.append(ended - started)

    def prompt_fits(self, now: float) -> bool:
        """Whether a prompt-only tick may run now without delaying the next real-time tick."""
        if self.deadline is None:
            return True
        estimate = max(self._prompt_s) if self._prompt_s else self._last_tick_s
        return now + self.safety * estimate + self.margin_s <= self.deadline

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next real-time tick (None: nobody is talking)."""
        return None if self.deadline is None else max(0.0, self.deadline - now)
