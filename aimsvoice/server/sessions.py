"""One served session as both threads see it: the user's audio in, the agent's events out, the counters.

The event loop (app.py) and the tick thread (scheduler.py) meet only here, and never wait for
each other:

- `Inbound`: the event loop pushes decoded 24 kHz audio; the tick thread takes one frame per
  real-time tick, or none (the client is late: the row hears silence for that frame). The
  backlog is held under its bound by the live loop's policy (audio/latency.py): the hard bound
  at once, standing excess drained, quietest audio first, crossfaded. Audio that comes before
  the session is live is dropped, not queued.
- `Outbox`: the tick thread puts events (warming, ready, the agent's audio and text, the end);
  the event loop's sender takes them one at a time. A client that does not read cannot make it
  grow: past `max_audio` frames the oldest audio goes (counted), past `max_text` the oldest text.
  The tick thread wakes the sender through `loop.call_soon_threadsafe`, once per batch of events.

Both are guarded by a plain lock held for a copy, never across I/O or a model step.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..audio.format import FRAME_SIZE, SAMPLE_RATE
from ..audio.latency import FrameBacklog, LatencyGovernor
from ..session import Transcript
from .config import FRAME_S, INPUT_MARGIN_FRAMES, TEXT_QUEUE

DRAIN_WINDOW_TICKS = 5  # as the live loop: a backlog above the margin for 400 ms is drained
MAX_DRAIN = FRAME_SIZE // 2  # at most half a frame per tick: catching up at 1.5x, not a jump


# -- events, tick thread -> event loop ---------------------------------------------------------


@dataclass(frozen=True)
class Warming:
    """The model is cold and loads now (seconds, not milliseconds)."""


@dataclass(frozen=True)
class Ready:
    """The system prompt has run: the session is live and takes audio."""


@dataclass(frozen=True)
class AudioOut:
    pcm: np.ndarray  # float32 [FRAME_SIZE] at 24 kHz


@dataclass(frozen=True)
class TextOut:
    text: str


@dataclass(frozen=True)
class Ended:
    """The session is over and its row is free. reason: a word (idle-timeout, session-limit,
    client-closed, server-shutdown, error...); message: for the client, on an error."""

    reason: str
    message: str | None = None


@dataclass(frozen=True)
class Pong:
    """The answer to a /ws client's ping, queued behind the audio before it (event loop -> itself)."""

    id: int | float | str | None


Event = Warming | Ready | AudioOut | TextOut | Ended | Pong


class Outbox:
    """Events for one client, bounded: the oldest audio (and text) goes when the client does not keep up."""

    def __init__(
        self,
        max_audio: int,
        wake: Callable[[], None],
        *,
        max_text: int = TEXT_QUEUE,
        on_end: Callable[[], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.max_audio = max_audio
        self.max_text = max_text
        self._wake = wake  # called (outside the lock) when events wait and the reader was not told yet
        self._on_end = on_end  # called when Ended is put, even while the reader is busy (a stuck send)
        self._on_drop = on_drop  # called for each audio frame dropped
        self._events: deque[Event] = deque()
        self._n_audio = 0
        self._n_text = 0
        self._wake_pending = False
        self._lock = threading.Lock()
        self.audio_dropped = 0  # frames
        self.text_dropped = 0

    def put(self, event: Event) -> None:
        """Tick thread (and the event loop, for its own events): never blocks."""
        with self._lock:
            self._events.append(event)
            if isinstance(event, AudioOut):
                self._n_audio += 1
            elif isinstance(event, TextOut):
                self._n_text += 1
                if self._n_text > self.max_text:
                    self._drop_oldest(TextOut)
                    self._n_text -= 1
                    self.text_dropped += 1
            dropped = self._n_audio > self.max_audio
            if dropped:
                self._drop_oldest(AudioOut)
                self._n_audio -= 1
                self.audio_dropped += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if dropped and self._on_drop is not None:
            self._on_drop()
        if wake:
            self._wake()
        if isinstance(event, Ended) and self._on_end is not None:
            self._on_end()

    def _drop_oldest(self, kind: type) -> None:
        for i, event in enumerate(self._events):
            if isinstance(event, kind):
                del self._events[i]
                return

    def pop(self) -> Event | None:
        """Event loop: the oldest event, or None (then the next `put` wakes it)."""
        with self._lock:
            if not self._events:
                self._wake_pending = False
                return None
            event = self._events.popleft()
            if isinstance(event, AudioOut):
                self._n_audio -= 1
            elif isinstance(event, TextOut):
                self._n_text -= 1
            return event

    @property
    def audio_queued(self) -> int:
        return self._n_audio


class Inbound:
    """The user's 24 kHz audio waiting for ticks, bounded by the live loop's latency policy."""

    def __init__(
        self,
        bound: int,
        margin: int = INPUT_MARGIN_FRAMES * FRAME_SIZE,
        on_received: Callable[[int], None] | None = None,
        on_shed: Callable[[int], None] | None = None,
    ) -> None:
        self.bound = bound
        self._on_received = on_received  # called (outside the lock) with the samples taken in while live
        self._on_shed = on_shed  # likewise with the samples shed
        governor = LatencyGovernor(bound=bound, margin=min(margin, bound), window=DRAIN_WINDOW_TICKS, max_drain=MAX_DRAIN)
        self._backlog = FrameBacklog(bound + 2 * FRAME_SIZE, governor, FRAME_SIZE)  # room for a burst before the next tick
        self._lock = threading.Lock()
        self.accepting = False  # until the session is live, audio is dropped
        self.started = False  # audio came since the session went live: from now on a missing frame is late
        self.received = 0  # samples pushed while live
        self.dropped_early = 0  # samples that came before the session was live
        self.max_backlog = 0  # samples, after a take

    def open(self) -> None:
        """Tick thread: the session is live; audio from now on is heard."""
        with self._lock:
            self._backlog.clear()
            self.accepting = True

    def push(self, pcm: np.ndarray) -> None:
        """Event loop: new audio. Beyond the staging capacity the oldest goes at once."""
        n = len(pcm)
        if n == 0:
            return
        with self._lock:
            if not self.accepting:
                self.dropped_early += n
                return
            self.started = True
            self.received += n
            shed = self._backlog.push(pcm)
        if self._on_received is not None:
            self._on_received(n)
        if shed and self._on_shed is not None:
            self._on_shed(shed)

    def take(self) -> np.ndarray | None:
        """Tick thread: the next frame, the backlog held under its bound; None when a whole frame is not there."""
        with self._lock:
            frame, dropped = self._backlog.take()
            if frame is not None:
                self.max_backlog = max(self.max_backlog, self._backlog.n)
        if dropped and self._on_shed is not None:
            self._on_shed(dropped)
        return frame

    @property
    def capacity(self) -> int:
        return self._backlog.capacity

    @property
    def shed(self) -> int:
        """Samples dropped: to hold the bound, or past the staging's capacity."""
        return self._backlog.shed

    @property
    def shed_events(self) -> int:
        return self._backlog.shed_events

    @property
    def backlog(self) -> int:
        return self._backlog.n


# -- the session -------------------------------------------------------------------------------

_numbers = itertools.count(1)


@dataclass
class SessionStats:
    """A session's counters: the tick thread's, then the transport's."""

    frames: int = 0  # real-time ticks the session talked in (80 ms each)
    late_frames: int = 0  # ticks where the client's audio had not come: silence was heard
    prompt_steps: int = 0
    gpu_s: float = 0.0  # its share of every tick it ran in (the tick's time over the rows in it)
    bytes_in: int = 0  # message bytes, as sent on the wire
    bytes_out: int = 0
    frames_sent: int = 0  # audio frames handed to the transport


@dataclass
class ServerSession:
    """One client's session, from admission to its cost report."""

    protocol: str  # "chat" (the reference's /api/chat) or "ws" (the brief's /ws)
    outbox: Outbox
    inbound: Inbound
    admitted_at: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: f"s{next(_numbers)}-{uuid.uuid4().hex[:6]}")
    state: str = "admitted"  # admitted -> queued -> prompt -> live -> ended
    stats: SessionStats = field(default_factory=SessionStats)
    transcript: Transcript = field(default_factory=Transcript)
    info: dict[str, Any] = field(default_factory=dict)  # persona, voice, settings, engine: for logs and the recording
    row: int | None = None  # its row of the batch, from its first prompt step to its end (tick thread)
    recorder: Any = None  # its `Recorder` while recorded (tick thread), then the reporter's to close
    live_at: float | None = None
    ends_at: float | None = None  # when its length limit ends it (None: no limit)
    ended_at: float | None = None
    end_reason: str | None = None
    released: bool = False
    opened: bool = False  # its conversation went to the tick thread (`Scheduler.open`)

    @property
    def live(self) -> bool:
        return self.state == "live"

    def duration_s(self, now: float) -> float:
        """Seconds live (0 before)."""
        if self.live_at is None:
            return 0.0
        return (self.ended_at or now) - self.live_at

    def cost(self, now: float) -> dict[str, Any]:
        """The cost report: what the session took of the device and the network, and what it lost."""
        s, inbound = self.stats, self.inbound
        return {
            "duration_s": round(self.duration_s(now), 3),
            "frames": s.frames,
            "gpu_s": round(s.gpu_s, 4),
            "prompt_steps": s.prompt_steps,
            "audio_in_s": round(inbound.received / SAMPLE_RATE, 3),
            "audio_out_s": round(s.frames_sent * FRAME_S, 3),
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "late_frames": s.late_frames,
            "input_shed_s": round(inbound.shed / SAMPLE_RATE, 3),
            "input_backlog_max_s": round(inbound.max_backlog / SAMPLE_RATE, 3),
            "input_dropped_before_ready_s": round(inbound.dropped_early / SAMPLE_RATE, 3),
            "output_dropped_frames": self.outbox.audio_dropped,
            "text_dropped": self.outbox.text_dropped,
        }
