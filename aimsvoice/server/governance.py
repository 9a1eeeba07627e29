"""Governance: who gets a session, when a session ends, when the model leaves memory. Pure decisions.

Each policy is a small class that is told the time (seconds on any monotonic clock) and the
facts, and answers; none reads a clock, a socket or a thread, so each is tested on a fake clock.
The scheduler asks them once per loop turn.

- `Admission`: a session more than `max_sessions` is refused at once, with a reason and a
  Retry-After: never left waiting in silence. The estimate is when the first live session
  reaches its length limit, else a fixed guess.
- `SessionClock`: a live session ends at its length limit (`--session-minutes`) or after
  `--idle-timeout` seconds without the user's voice. "Voice" is a frame louder than the live
  loop's VOICE_LEVEL_DBFS, so line noise does not keep a forgotten session alive, and audio
  that never comes (a client that stopped sending) counts as silence.
- `WarmTimer`: with no session for `--unload-after` seconds the model is unloaded (cold); any
  session, even one only admitted, keeps it warm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..live.stats import VOICE_LEVEL_DBFS

DEFAULT_RETRY_S = 30  # Retry-After when no session has a length limit to end by
MAX_RETRY_S = 3600


@dataclass(frozen=True)
class Decision:
    """Whether a new session may start; if not, why and when to try again (whole seconds)."""

    admit: bool
    reason: str = ""
    retry_after_s: int = 0


class Admission:
    """Admits sessions up to `max_sessions` (each is a row of the batch)."""

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.max_sessions = max_sessions

    def decide(self, active: int, soonest_end_s: float | None = None) -> Decision:
        """active: sessions admitted and not yet ended; soonest_end_s: seconds until the first of
        them reaches its length limit (None: none has one)."""
        if active < self.max_sessions:
            return Decision(True)
        retry = DEFAULT_RETRY_S if soonest_end_s is None else math.ceil(max(soonest_end_s, 1.0))
        retry = min(retry, MAX_RETRY_S)
        noun = "session" if self.max_sessions == 1 else "sessions"
        return Decision(False, f"the server is full ({self.max_sessions} {noun} at once); try again in {retry} s", retry)


class SessionClock:
    """When a live session ends: `session_s` after it went live, or `idle_s` after the user's voice was last heard."""

    def __init__(self, live_since: float, session_s: float | None, idle_s: float | None) -> None:
        self.live_since = live_since
        self.session_s = session_s
        self.idle_s = idle_s
        self.last_voice = live_since  # a session that never hears a voice is idle from its start

    def heard(self, now: float, level_db: float) -> None:
        """One frame of the user's audio, at this level (dBFS), reached the model."""
        if level_db > VOICE_LEVEL_DBFS:
            self.last_voice = now

    def remaining_s(self, now: float) -> float | None:
        """Seconds until the length limit (None: no limit)."""
        return None if self.session_s is None else self.live_since + self.session_s - now

    def due(self, now: float) -> str | None:
        """"session-limit" or "idle-timeout" once one is reached (the length limit first), else None."""
        if self.session_s is not None and now >= self.live_since + self.session_s:
            return "session-limit"
        if self.idle_s is not None and now >= self.last_voice + self.idle_s:
            return "idle-timeout"
        return None

    def next_due_s(self, now: float) -> float | None:
        """Seconds until the earliest limit could be reached (None: no limit)."""
        times = []
        if self.session_s is not None:
            times.append(self.live_since + self.session_s)
        if self.idle_s is not None:
            times.append(self.last_voice + self.idle_s)
        return None if not times else max(0.0, min(times) - now)


class WarmTimer:
    """Unload the model after `unload_after_s` seconds without any session (None: keep it warm)."""

    def __init__(self, unload_after_s: float | None) -> None:
        self.unload_after_s = unload_after_s
        self.idle_since: float | None = None

    def sessions(self, now: float, count: int) -> None:
        """How many sessions there are now (admitted, live or ending)."""
        if count > 0:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now

    def should_unload(self, now: float, warm: bool) -> bool:
        return warm and self.unload_after_s is not None and self.idle_since is not None and now - self.idle_since >= self.unload_after_s

    def wait_s(self, now: float, warm: bool) -> float | None:
        """Seconds until `should_unload` may turn true (None: it will not without a change)."""
        if not warm or self.unload_after_s is None or self.idle_since is None:
            return None
        return max(0.0, self.idle_since + self.unload_after_s - now)
