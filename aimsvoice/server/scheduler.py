"""The session scheduler: every live session is a row of one batched engine, stepped by one thread.

The tick thread owns the engine (all engine calls come from it) and loops:

1. Commands from the event loop (a session to open, a session to end, stop) are taken from a
   queue; the thread waits on that queue until its next duty, so a command wakes it at once.
2. Sessions waiting for a row get one (`engine.open`); with the model cold, it is loaded first,
   on this thread, while the event loop goes on (the sessions were told they wait for it).
3. When the next real-time tick is due (pacing.py: every 80 ms of wall-clock time), every live
   session gives one frame (`Inbound.take`), or silence when its client's audio is late, and one
   `engine.tick` steps them all, together with every row still in its system prompt. The agent's
   audio and text go to each session's `Outbox`, which the event loop drains.
4. Otherwise, if a row is in its prompt and a prompt-only tick fits before the next deadline,
   `engine.tick({})` advances only the prompt rows (the talking rows keep their state exactly):
   a joining session's prompt runs in the slack, several steps per 80 ms, without delaying anyone.
5. Limits (governance.py): length and idle time end live sessions; with no session for
   `--unload-after` seconds the model is unloaded.

Nothing here waits on a socket: the event loop is reached through thread-safe queues and
`call_soon_threadsafe` only. Recording files are written by one I/O thread. A failing tick
ends every session with an error and unloads the engine; the next session loads it afresh.

A session's cost is counted as it goes: each tick's duration is shared among the rows it ran
(`gpu_s`), with its frames, late frames, shed and dropped audio and (from the transport) bytes.
When both the tick thread has freed its row and the transport has let go of it, one log line
reports the cost and the recording, if any, is completed.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..audio.format import FRAME_SIZE, SAMPLE_RATE
from ..audio.recorder import Recorder
from ..engine.contract import BatchEngine, ConversationSpec
from ..errors import AimsvoiceError
from ..live.stats import level_dbfs
from .config import FRAME_S, SESSION_CAP, ServerConfig
from .governance import Admission, Decision, SessionClock, WarmTimer
from .metrics import Metrics
from .pacing import TickPacer
from .sessions import AudioOut, Ended, Inbound, Outbox, Ready, ServerSession, TextOut, Warming

logger = logging.getLogger("aimsvoice.server")

EngineFactory = Callable[[int | None], BatchEngine]  # rows (None: as many as memory allows) -> a warm engine

COLD, LOADING, WARM = "cold", "loading", "warm"
HOUSEKEEPING_S = 0.25  # recordings flushed, limits and the unload timer checked, at least this often
TICK_WINDOW = 1000  # real-time ticks behind /healthz's p50/p99 (80 s)
STOP_TIMEOUT_S = 10.0
_SILENCE = np.zeros(FRAME_SIZE, dtype=np.float32)


def pytorch_engine_factory(config: ServerConfig, model_dir: Path) -> EngineFactory:
    """PersonaPlex on `model_dir`, on the config's device and dtype; rows by default: what memory holds, up to SESSION_CAP."""

    def make(rows: int | None) -> BatchEngine:
        from ..engine import EngineConfig, PersonaPlexBatch, load_model, max_batch_size

        model = load_model(model_dir, device=config.device, dtype=config.dtype, quantize=config.quantize)
        size = rows if rows is not None else min(max_batch_size(model), SESSION_CAP)
        engine_config = EngineConfig(device=config.device, dtype=config.dtype, context=config.context, quantize=config.quantize)
        return PersonaPlexBatch(model, engine_config, size)

    return make


def cascade_engine_factory(config: ServerConfig, tier: str) -> EngineFactory:
    """The cascade or the local tier: every session its own engine (live pace), rows of a `FrameRows`.

    The keys are checked here, so `serve` fails before it listens when they are missing."""
    from ..engine.cascade import CascadeEngine, CascadeKeyError, FrameRows, cascade_config

    cascade = cascade_config(tier, pace="live", llm_url=config.llm_url, llm_model=config.llm_model)
    if missing := cascade.missing_keys():
        raise CascadeKeyError(f"{' and '.join(missing)} not set: `serve --engine cascade` needs them; set them, or use --engine local")

    def make(rows: int | None) -> BatchEngine:
        return FrameRows(lambda: CascadeEngine(cascade), rows or SESSION_CAP, {"engine": tier, "device": f"{tier} (network)" if tier == "cascade" else "cpu"})

    return make


class Scheduler:
    """Admits sessions, runs them as rows of one engine on the tick thread, ends them, reports their cost.

    Event-loop side: `admit`, `open`, `end`, `release`, `health`; `start`/`wait_ready`/`stop` around it all.
    """

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        engine_factory: EngineFactory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._factory = engine_factory
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields shared with the event loop, marked (L)
        self._state = COLD  # (L)
        self._max_sessions = config.max_sessions  # (L) known at the first load when not given
        self._sessions: dict[str, ServerSession] = {}  # (L) admitted and not yet ended
        self._tick_ms: deque[float] = deque(maxlen=TICK_WINDOW)  # (L)
        self._device = "unknown"
        self._engine: BatchEngine | None = None
        self._rows: dict[int, ServerSession] = {}
        self._queued: OrderedDict[str, tuple[ServerSession, ConversationSpec]] = OrderedDict()
        self._clocks: dict[str, SessionClock] = {}
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._pacer = TickPacer()
        self._restarts_seen = 0
        self._warm_timer = WarmTimer(config.unload_after)
        self._next_housekeeping = 0.0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aimsvoice-io")
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="aimsvoice-tick", daemon=True)

    # -- event loop side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the tick thread (once; later calls do nothing); it loads the model at once."""
        if self._thread.ident is None:
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the first load is done; raise its error if it failed."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the model did not load in time")
        if self._load_error is not None:
            raise self._load_error

    def stop(self) -> None:
        """End every session (server-shutdown), unload the model and stop the tick thread."""
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(STOP_TIMEOUT_S)
        self._io.shutdown(wait=True)

    def admit(self, protocol: str, wake: Callable[[], None], on_end: Callable[[], None] | None = None) -> ServerSession | Decision:
        """A session for a new client, or the refusal (the server is full). Never waits.

        wake: called from the tick thread when events wait in the session's outbox; on_end: when
        the session has ended (both must only hand over to the event loop)."""
        with self._lock:
            if self._max_sessions is None:
                decision = Decision(False, "the model is still loading; try again in a few seconds", 5)
            else:
                decision = Admission(self._max_sessions).decide(len(self._sessions), self._soonest_end_s())
            if not decision.admit:
                self.metrics.sessions_rejected.labels("full").inc()
                return decision
            bound = self.config.input_backlog_frames * FRAME_SIZE
            session = ServerSession(
                protocol,
                Outbox(self.config.output_queue_frames, wake, on_end=on_end, on_drop=self._dropped_output),
                Inbound(bound, on_received=self._received, on_shed=self._shed),
            )
            self._sessions[session.id] = session
            self.metrics.sessions_active.set(len(self._sessions))
        self.metrics.sessions_started.inc()
        self._commands.put(("touch",))
        return session

    def open(self, session: ServerSession, spec: ConversationSpec, info: dict[str, Any]) -> None:
        """Queue the session's conversation: a row, its system prompt, then `Ready`."""
        session.info = info
        session.opened = True
        with self._lock:
            cold = self._state != WARM
        if cold:
            session.outbox.put(Warming())
        self._commands.put(("open", session, spec))

    def end(self, session: ServerSession, reason: str) -> None:
        """End a session (its row is freed at the tick thread's next turn; `Ended` follows)."""
        self._commands.put(("end", session, reason, None))

    def release(self, session: ServerSession, reason: str = "client-closed") -> None:
        """The transport is done with the session (the socket is closed). Ends it if it was not, then
        reports its cost once its row is free too."""
        with self._lock:
            session.released = True
            ended = session.state == "ended"
            if not ended and not session.opened:
                # The tick thread never had it (refused before its conversation was queued): it ends here,
                # so its place is free before the client, told of the refusal, can come back.
                session.end_reason, session.ended_at = reason, self._clock()
                self.metrics.sessions_ended.labels(reason).inc()
                self._forget(session)
                ended = True
        if ended:
            self._report(session)
        else:
            self._commands.put(("end", session, reason, None))

    def session(self, session_id: str) -> ServerSession | None:
        """A session admitted and not yet ended, by id (for inspection: its counters, its queues)."""
        with self._lock:
            return self._sessions.get(session_id)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def health(self) -> dict[str, Any]:
        """The numbers behind /healthz."""
        with self._lock:
            ticks = np.array(self._tick_ms) if self._tick_ms else None
            state, active, most = self._state, len(self._sessions), self._max_sessions
        return {
            "status": "ok",
            "model": WARM if state == WARM else COLD,
            "loading": state == LOADING,
            "device": self._device,
            "sessions_active": active,
            "sessions_max": most,
            "tick_ms_p50": None if ticks is None else round(float(np.percentile(ticks, 50)), 2),
            "tick_ms_p99": None if ticks is None else round(float(np.percentile(ticks, 99)), 2),
            "tick_budget_ms": round(1000 * FRAME_S, 1),
        }

    def _soonest_end_s(self) -> float | None:
        now = self._clock()
        ends = [s.ends_at - now for s in self._sessions.values() if s.ends_at is not None]
        return min(ends) if ends else None

    def _received(self, n_samples: int) -> None:
        self.metrics.audio_in_seconds.inc(n_samples / SAMPLE_RATE)

    def _shed(self, n_samples: int) -> None:
        self.metrics.frames_dropped.labels("input_shed").inc(n_samples / FRAME_SIZE)

    def _dropped_output(self) -> None:
        self.metrics.frames_dropped.labels("output").inc()

    # -- the tick thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as e:  # handed to wait_ready: `serve` reports it and exits
            self._load_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                try:
                    if not self._turn():
                        break
                except Exception:
                    logger.exception("the engine failed; every session ends and the model reloads for the next")
                    self._fail_all("the server's engine failed; reconnect to start a new session")
        finally:
            for session in list(self._rows.values()) + [s for s, _ in self._queued.values()]:
                self._end(session, "server-shutdown")
            self._unload()

    def _turn(self) -> bool:
        """One turn of the loop; False once told to stop."""
        wait_s = self._wait_s(self._clock())
        try:
            command = self._commands.get(timeout=wait_s) if wait_s > 0 else self._commands.get_nowait()
        except queue.Empty:
            command = None
        while command is not None:
            if not self._handle(command):
                return False
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                command = None
        if self._queued:
            self._assign_rows()
        now = self._clock()
        if self._pacer.due(now):
            self._realtime_tick()
        elif self._in_prompt() and self._pacer.prompt_fits(now):
            self._prompt_tick()
        now = self._clock()
        if now >= self._next_housekeeping:
            self._housekeeping(now)
        return True

    def _wait_s(self, now: float) -> float:
        if self._queued or (self._in_prompt() and self._pacer.prompt_fits(now)):
            return 0.0
        waits = [self._next_housekeeping - now]
        if (pace := self._pacer.wait_s(now)) is not None:
            waits.append(pace)
        return max(0.0, min(waits))

    def _handle(self, command: tuple[Any, ...]) -> bool:
        kind = command[0]
        if kind == "stop":
            return False
        if kind == "open":
            _, session, spec = command
            if session.state == "admitted":
                session.state = "queued"
                self._queued[session.id] = (session, spec)
        elif kind == "end":
            _, session, reason, message = command
            self._end(session, reason, message)
        return True

    def _in_prompt(self) -> bool:
        return any(s.state == "prompt" for s in self._rows.values())

    def _assign_rows(self) -> None:
        if self._engine is None:
            try:
                self._load()
            except Exception as e:
                logger.error("the model could not be loaded: %s", e)
                for session, _ in list(self._queued.values()):
                    self._end(session, "error", f"the model could not be loaded ({e}); try again later")
                return
        engine = self._engine
        assert engine is not None
        while self._queued:
            _, (session, spec) = self._queued.popitem(last=False)
            try:
                row = engine.open(spec)
            except AimsvoiceError as e:  # the request cannot be served: a prompt too long for the window, say
                self._end(session, "bad-request", str(e))
                continue
            except Exception as e:  # a voice file the engine cannot use, say: this session only
                logger.exception("session %s could not start", session.id)
                self._end(session, "error", f"the conversation could not start ({type(e).__name__}: {e})")
                continue
            session.row = row
            session.info["engine"] = engine.describe(row)
            session.state = "prompt"
            self._rows[row] = session
            if not engine.in_prompt(row):  # its persona's prompt ran before: the row starts from what it left
                self._after_prompt([session], self._clock())

    def _realtime_tick(self) -> None:
        engine = self._engine
        assert engine is not None
        talking = [s for s in self._rows.values() if s.state == "live"]
        prompting = [s for s in self._rows.values() if s.state == "prompt"]
        frames: dict[int, np.ndarray] = {}
        now = self._clock()
        for session in talking:
            pcm = session.inbound.take()
            if pcm is None:
                pcm = _SILENCE
                if session.inbound.started:
                    session.stats.late_frames += 1
                    self.metrics.frames_dropped.labels("late").inc()
            else:
                self._clocks[session.id].heard(now, level_dbfs(pcm))
            frames[session.row] = pcm
        stepping = talking + [s for s in prompting if not engine.waiting(s.row)]
        started = self._clock()
        outs = engine.tick(frames)
        ended = self._clock()
        self._pacer.ticked(started, ended)
        self._account(stepping, ended - started, "realtime")
        with self._lock:
            self._tick_ms.append(1000.0 * (ended - started))
        if self._pacer.restarts > self._restarts_seen:
            self.metrics.schedule_restarts.inc(self._pacer.restarts - self._restarts_seen)
            self._restarts_seen = self._pacer.restarts
        for session in talking:
            out = outs[session.row]
            session.stats.frames += 1
            if session.recorder is not None:
                session.recorder.push(frames[session.row], out.pcm)
            session.transcript.add(out)
            if out.event:  # the cascade: which tier served a turn, a failover
                logger.info("session %s: %s", session.id, out.event)
            session.outbox.put(AudioOut(out.pcm))
            if out.text:
                session.outbox.put(TextOut(out.text))
        self._after_prompt(prompting, ended)

    def _prompt_tick(self) -> None:
        engine = self._engine
        assert engine is not None
        prompting = [s for s in self._rows.values() if s.state == "prompt"]
        stepping = [s for s in prompting if not engine.waiting(s.row)]
        started = self._clock()
        engine.tick({})
        ended = self._clock()
        self._pacer.prompt_ticked(started, ended)
        self._account(stepping, ended - started, "prompt")
        self._after_prompt(prompting, ended)

    def _account(self, sessions: list[ServerSession], seconds: float, kind: str) -> None:
        self.metrics.tick_seconds.labels(kind).observe(seconds)
        share = seconds / max(len(sessions), 1)
        for session in sessions:
            session.stats.gpu_s += share
            if session.state == "prompt":
                session.stats.prompt_steps += 1

    def _after_prompt(self, prompting: list[ServerSession], now: float) -> None:
        """Sessions whose system prompt has run go live: they take audio from now on."""
        engine = self._engine
        assert engine is not None
        for session in prompting:
            if session.state != "prompt" or engine.in_prompt(session.row):
                continue
            session.state = "live"
            session.live_at = now
            session.inbound.open()
            clock = SessionClock(now, self.config.session_s, self.config.idle_timeout)
            self._clocks[session.id] = clock
            if self.config.session_s is not None:
                session.ends_at = now + self.config.session_s
            if self.config.record is not None:
                self._start_recording(session)
            session.outbox.put(Ready())
            self._pacer.start(now)

    def _start_recording(self, session: ServerSession) -> None:
        assert self.config.record is not None
        path = self.config.record / f"{time.strftime('%Y%m%d-%H%M%S')}-{session.id}.wav"
        try:
            session.recorder = Recorder(path)
        except AimsvoiceError as e:
            logger.warning("session %s is not recorded: %s", session.id, e)

    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_S
        for session in [s for s in self._rows.values() if s.state == "live"]:
            reason = self._clocks[session.id].due(now)
            if reason is not None:
                self._end(session, reason)
        for session in self._rows.values():
            if session.recorder is not None:
                self._io.submit(session.recorder.flush)
        if self._engine is not None:
            self.metrics.gpu_memory_bytes.set(_device_memory(self._engine))
        with self._lock:
            self._warm_timer.sessions(now, len(self._sessions))
            unload = self._warm_timer.should_unload(now, self._state == WARM)
            if unload:
                self._state = COLD
        if unload:
            logger.info("no session for %g s: unloading the model (cold)", self.config.unload_after)
            self._unload()

    def _end(self, session: ServerSession, reason: str, message: str | None = None) -> None:
        """Free the session's row and tell its client; report it if the transport is done with it too."""
        if session.state == "ended":
            return
        now = self._clock()
        self._queued.pop(session.id, None)
        if session.row is not None and self._rows.get(session.row) is session:
            del self._rows[session.row]
            if self._engine is not None:
                session.info["engine"] = self._engine.describe(session.row)  # at the end: the cascade's turns and usage
                self._engine.close_row(session.row)
        self._clocks.pop(session.id, None)
        session.end_reason = reason
        session.ended_at = now
        session.outbox.put(Ended(reason, message))
        self.metrics.sessions_ended.labels(reason).inc()
        if not any(s.state == "live" for s in self._rows.values()):
            self._pacer.stop()
        with self._lock:
            self._forget(session)
            report = session.released
        if report:
            self._report(session)

    def _forget(self, session: ServerSession) -> None:
        """The session has ended: its place is free (call with the lock held)."""
        session.state = "ended"
        self._sessions.pop(session.id, None)
        self.metrics.sessions_active.set(len(self._sessions))

    def _fail_all(self, message: str) -> None:
        for session in list(self._rows.values()) + [s for s, _ in self._queued.values()]:
            self._end(session, "error", message)
        with self._lock:
            self._state = COLD
        self._unload()

    def _report(self, session: ServerSession) -> None:
        """The session's cost, in one log line; its recording completed."""
        cost = session.cost(self._clock())
        info = session.info
        logger.info(
            "session %s ended (%s): %s, persona %s, %.1f s live, %.2f GPU-s, in %d B / %.1f s, out %d B / %.1f s, "
            "late %d frames, input shed %.2f s, output dropped %d frames",
            session.id, session.end_reason, session.protocol, info.get("persona", "-"), cost["duration_s"], cost["gpu_s"],
            cost["bytes_in"], cost["audio_in_s"], cost["bytes_out"], cost["audio_out_s"],
            cost["late_frames"], cost["input_shed_s"], cost["output_dropped_frames"],
        )
        recorder, session.recorder = session.recorder, None
        if recorder is None:
            return
        metadata = {
            "session": session.id,
            "protocol": session.protocol,
            "persona": info.get("persona"),
            "settings": {
                **{k: v for k, v in info.items() if k != "persona"},
                "session_minutes": self.config.session_minutes,
                "idle_timeout": self.config.idle_timeout,
                "input_backlog_frames": self.config.input_backlog_frames,
                "output_queue_frames": self.config.output_queue_frames,
            },
            "stats": {"end_reason": session.end_reason, **cost},
            "transcript": session.transcript.to_json(),
        }
        try:
            self._io.submit(recorder.close, metadata)
        except RuntimeError:  # the I/O thread has stopped (shutdown): finish here
            recorder.close(metadata)

    # -- the model ----------------------------------------------------------------------------

    def _load(self) -> None:
        with self._lock:
            self._state = LOADING
            rows = self._max_sessions
        started = time.perf_counter()
        try:
            engine = self._factory(rows)
        except BaseException:
            with self._lock:
                self._state = COLD
            raise
        self._engine = engine
        self._device = str(getattr(engine, "device", "unknown"))
        with self._lock:
            self._max_sessions = engine.batch_size
            self._state = WARM
        self.metrics.sessions_max.set(engine.batch_size)
        self.metrics.model_loads.inc()
        self.metrics.model_warm.set(1)
        self.metrics.gpu_memory_bytes.set(_device_memory(engine))
        logger.info("model warm in %.1f s on %s: %d sessions at most", time.perf_counter() - started, self._device, engine.batch_size)

    def _unload(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        engine.close()
        del engine
        gc.collect()
        _empty_device_cache()
        self.metrics.model_warm.set(0)
        self.metrics.gpu_memory_bytes.set(0)


def _device_memory(engine: BatchEngine) -> int:
    device = getattr(engine, "device", None)
    if getattr(device, "type", None) != "cuda":
        return 0
    import torch

    return int(torch.cuda.memory_allocated(device))


def _empty_device_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
