"""The step thread's work in a live conversation: capture ring -> 24 kHz frames -> engine -> playback ring."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..audio import FRAME_SIZE, SAMPLE_RATE
from ..audio.aec import MAX_FRAME_SIZE, SUBFRAME_SIZE, EchoCanceller
from ..audio.devices import BLOCK_MS, AudioConfig, DuplexAudio, RateConverter
from ..audio.format import FRAME_MS
from ..audio.latency import FrameBacklog, LatencyGovernor, shed_quietest
from ..audio.recorder import Recorder
from ..engine.contract import FrameEngine
from ..session import Transcript
from .stats import SILENCE_DBFS, VOICE_LEVEL_DBFS, LiveSnapshot, LiveSummary, level_dbfs, ms

DRAIN_WINDOW_STEPS = 5  # steps a queue must stay above its margin before it is drained (400 ms)
MAX_DRAIN = FRAME_SIZE // 2  # samples drained per step at most: catching up at 1.5x, not a jump
POLL_S = 0.002  # the step thread's nap while the next frame fills
RECENT_STEPS = 125  # compute times behind the live p50/p95 (10 s)


class LivePipeline:
    """The step thread's work: capture ring -> 24 kHz frames -> engine -> playback ring.

    Each step pulls what the capture callback queued, resamples it to the model's rate, holds the
    input backlog under its bound, runs the engine on the oldest frame, and queues the answer for
    playback under the playback bound (see audio/latency.py for the policy). It also keeps the
    session's counters; the main thread reads them through `snapshot` and `summary`.

    With an echo canceller, what the speaker was sent is resampled beside the capture, and the
    capture is cleaned of it in 10 ms pieces as it arrives, before anything is shed: the
    canceller sees both streams unbroken, and the engine and the recording get the cleaned audio.
    """

    def __init__(
        self,
        engine: FrameEngine,
        audio: DuplexAudio,
        config: AudioConfig = AudioConfig(),
        recorder: Recorder | None = None,
        aec: EchoCanceller | None = None,
    ) -> None:
        self.engine = engine
        self.audio = audio
        self.recorder = recorder
        self.aec = aec
        self.input_bound = config.input_backlog_frames * FRAME_SIZE
        self.output_bound = config.playback_queue_frames * FRAME_SIZE
        self._from_device = RateConverter(audio.capture_rate, SAMPLE_RATE)
        self._to_device = RateConverter(SAMPLE_RATE, audio.playback_rate)
        # Playback starts with a cushion for what arrives unevenly: one callback block of
        # scheduling jitter, plus the bursts of both resamplers (none at 24 kHz).
        in_slack = self._from_device.holdback(audio.capture_rate * BLOCK_MS // 1000)
        out_slack = self._to_device.holdback(FRAME_SIZE)
        block = SAMPLE_RATE * BLOCK_MS // 1000
        self._cushion = (block + in_slack) * audio.playback_rate // SAMPLE_RATE + out_slack  # device samples
        self._out_governor = LatencyGovernor(
            bound=self.output_bound,
            margin=min(FRAME_SIZE + self._cushion * SAMPLE_RATE // audio.playback_rate, self.output_bound),
            window=DRAIN_WINDOW_STEPS,
            max_drain=MAX_DRAIN,
        )
        self._scratch = np.zeros(audio.capture_ring.capacity, dtype=np.float32)
        staging_size = self._from_device.to_out_samples(audio.capture_ring.capacity) + self.input_bound + 2 * FRAME_SIZE
        in_governor = LatencyGovernor(
            bound=self.input_bound, margin=min(block + in_slack, self.input_bound), window=DRAIN_WINDOW_STEPS, max_drain=MAX_DRAIN,
        )
        self._input = FrameBacklog(staging_size, in_governor, FRAME_SIZE)  # 24 kHz capture waiting for the engine
        self._n_in_read = 0  # device samples taken from the capture ring (the ring's overflow aside)
        self._from_speaker = RateConverter(audio.playback_rate, SAMPLE_RATE)
        self._ref_scratch = np.zeros(audio.reference_ring.capacity, dtype=np.float32)
        self._reference = np.zeros(staging_size, dtype=np.float32)  # 24 kHz, its oldest sample beside _near's
        self._n_ref = 0
        self._near = np.zeros(staging_size, dtype=np.float32)  # 24 kHz capture waiting for a whole 10 ms piece
        self._n_near = 0
        self._n_ref_read = 0  # device samples taken from the reference ring
        self._primed = False
        self.transcript = Transcript()
        self.compute_ms: list[float] = []
        self.trace: list[tuple[float, float, float]] = []
        self.input_level_db = self.output_level_db = SILENCE_DBFS
        self.last_voice_s = 0.0
        self.input_backlog = self.output_queue = 0  # samples at SAMPLE_RATE, after the last step
        self.output_shed = self.output_shed_events = 0
        self.error: Exception | None = None

    @property
    def input_shed(self) -> int:
        """Input samples dropped: to hold the backlog's bound, or when the staging overflowed."""
        return self._input.shed

    @property
    def input_shed_events(self) -> int:
        return self._input.shed_events

    @property
    def clock_s(self) -> float:
        """Seconds of audio the input device has delivered: the session's clock."""
        return self.audio.captured / self.audio.capture_rate

    def pump(self) -> None:
        """Move everything the capture callback queued into the 24 kHz staging buffer.

        Until both streams flow, input is dropped: the conversation starts when it can be heard.
        """
        n = self.audio.capture_ring.read_into(self._scratch)
        n_ref = self.audio.reference_ring.read_into(self._ref_scratch)
        self._n_in_read += n
        self._n_ref_read += n_ref
        if not self.audio.flowing:
            return
        if self.aec is not None and n_ref:
            self._stage_reference(self._from_speaker.convert(self._ref_scratch[:n_ref]))
        if n == 0:
            return
        pcm = self._from_device.convert(self._scratch[:n])
        if self.aec is not None:
            pcm = self._cancel_echo(pcm, self.aec)
        self._input.push(pcm)  # overflows only after a stall longer than the capture ring: the newest is kept

    def _stage_reference(self, ref: np.ndarray) -> None:
        overflow = self._n_ref + len(ref) - len(self._reference)
        if overflow > 0:  # the microphone stopped while the speaker went on: keep the newest
            self._n_ref -= overflow
            self._reference[: self._n_ref] = self._reference[overflow : overflow + self._n_ref]
        self._reference[self._n_ref : self._n_ref + len(ref)] = ref
        self._n_ref += len(ref)

    def _cancel_echo(self, pcm: np.ndarray, aec: EchoCanceller) -> np.ndarray:
        """New 24 kHz capture, cleaned of the echo of what was played beside it, in whole 10 ms pieces.

        What does not fill a piece waits for the next call, so the output may be shorter.
        """
        self._near[self._n_near : self._n_near + len(pcm)] = pcm
        self._n_near += len(pcm)
        audio = self.audio
        cleaned = []
        while self._n_near >= SUBFRAME_SIZE:
            n = min(self._n_near // SUBFRAME_SIZE * SUBFRAME_SIZE, MAX_FRAME_SIZE)
            if self._n_ref < n:  # the speaker started after the microphone: silence before it
                missing = n - self._n_ref
                self._reference[missing : missing + self._n_ref] = self._reference[: self._n_ref]
                self._reference[:missing] = 0.0
                self._n_ref = n
            # Each stream's newest sample is timed from its callback's latest timestamp; the
            # piece and its reference are the oldest ones, n_near and n_ref samples before those.
            newest_captured = self._n_in_read + audio.capture_dropped
            captured_s = audio.capture_mark_s + (newest_captured - audio.capture_mark_index) / audio.capture_rate
            played_s = audio.render_mark_s + (self._n_ref_read - audio.render_mark_index) / audio.playback_rate
            delay_ms = 1000.0 * (played_s - captured_s) + ms(self._n_near - self._n_ref)
            cleaned.append(aec.process(self._near[:n].copy(), self._reference[:n].copy(), delay_ms=delay_ms))
            self._n_near -= n
            self._near[: self._n_near] = self._near[n : n + self._n_near]
            self._n_ref -= n
            self._reference[: self._n_ref] = self._reference[n : n + self._n_ref]
        return np.concatenate(cleaned) if cleaned else pcm[:0]

    def step(self) -> bool:
        """Run one engine step if a whole frame is staged; returns whether it did."""
        frame, _ = self._input.take()
        if frame is None:
            return False
        self.input_backlog = self._input.n
        clock_s = self.clock_s

        started = time.perf_counter()
        out = self.engine.step(frame)
        self.compute_ms.append(1000.0 * (time.perf_counter() - started))
        agent = np.asarray(out.pcm, dtype=np.float32).reshape(-1)
        if agent.shape != (FRAME_SIZE,):
            raise ValueError(f"engine returned {agent.shape[0]} samples for a {FRAME_SIZE}-sample frame")
        if self.recorder is not None:
            self.recorder.push(frame, agent)
        self.transcript.add(out)
        self.input_level_db = level_dbfs(frame)
        self.output_level_db = level_dbfs(agent)
        if self.input_level_db > VOICE_LEVEL_DBFS:
            self.last_voice_s = clock_s

        if not self._primed:
            self.audio.playback_ring.write(np.zeros(self._cushion, dtype=np.float32))
            self._primed = True
        queued = self.audio.playback_ring.readable() * SAMPLE_RATE // self.audio.playback_rate
        pcm = agent
        n_shed = self._out_governor.plan(queued + FRAME_SIZE)
        if n_shed:
            pcm = shed_quietest(agent, n_shed)
            if queued + len(pcm) > self.output_bound:  # the device is not draining: drop it all
                pcm = pcm[:0]
            self._out_governor.shed(FRAME_SIZE - len(pcm))
            self.output_shed += FRAME_SIZE - len(pcm)
            self.output_shed_events += 1
        if len(pcm):
            to_play = self._to_device.convert(pcm)
            unplayed = len(to_play) - self.audio.playback_ring.write(to_play)
            self.output_shed += unplayed * SAMPLE_RATE // self.audio.playback_rate
        self.output_queue = queued + len(pcm)
        self.trace.append((clock_s, ms(self.input_backlog), ms(self.output_queue)))
        return True

    def run(self, stop: threading.Event) -> None:
        """The step thread: pump and step until `stop`; an error is kept for the main thread."""
        try:
            while not stop.is_set():
                self.pump()
                if not self.step():
                    time.sleep(POLL_S)
        except Exception as e:  # re-raised by the main thread once everything is closed
            self.error = e
            stop.set()

    def snapshot(self, persona: str) -> LiveSnapshot:
        """The counters now, for the live view."""
        recent = np.array(self.compute_ms[-RECENT_STEPS:] or [0.0])
        words = tuple(w.word for w in self.transcript.words)
        audio = self.audio
        return LiveSnapshot(
            persona=persona,
            elapsed_s=self.clock_s,
            frames=len(self.compute_ms),
            words=words,
            text_tail=" ".join(words)[-240:],
            notices=tuple(event for _, event in self.transcript.events[-3:]),
            input_level_db=self.input_level_db,
            output_level_db=self.output_level_db,
            compute_p50_ms=float(np.percentile(recent, 50)),
            compute_p95_ms=float(np.percentile(recent, 95)),
            budget_ms=FRAME_MS,
            input_backlog_ms=ms(self.input_backlog),
            input_bound_ms=ms(self.input_bound),
            output_queue_ms=ms(self.output_queue),
            output_bound_ms=ms(self.output_bound),
            input_shed_ms=ms(self.input_shed),
            output_shed_ms=ms(self.output_shed),
            underruns=audio.underrun_events,
            underrun_ms=ms(audio.underrun_samples, audio.playback_rate),
            aec_on=self.aec is not None,
            aec_erle_db=self.aec.erle_db if self.aec is not None else None,
        )

    def summary(self, end_reason: str, *, wall_s: float, recording: Path | None) -> LiveSummary:
        """How the session went, once the step thread has stopped."""
        compute = np.array(self.compute_ms or [0.0])
        trace = tuple(self.trace)
        latency = np.array([i + o for _, i, o in trace] or [0.0])
        audio = self.audio
        return LiveSummary(
            end_reason=end_reason,
            duration_s=self.clock_s,
            wall_s=wall_s,
            frames=len(self.compute_ms),
            compute_mean_ms=float(compute.mean()),
            compute_p99_ms=float(np.percentile(compute, 99)),
            compute_s=float(compute.sum()) / 1000.0,
            latency_p50_ms=float(np.percentile(latency, 50)),
            latency_max_ms=float(latency.max()),
            max_input_backlog_ms=max((i for _, i, _ in trace), default=0.0),
            max_output_queue_ms=max((o for _, _, o in trace), default=0.0),
            input_bound_ms=ms(self.input_bound),
            output_bound_ms=ms(self.output_bound),
            input_shed_ms=ms(self.input_shed),
            input_shed_events=self.input_shed_events,
            output_shed_ms=ms(self.output_shed),
            output_shed_events=self.output_shed_events,
            capture_lost_ms=ms(audio.capture_dropped, audio.capture_rate),
            underruns=audio.underrun_events,
            underrun_ms=ms(audio.underrun_samples, audio.playback_rate),
            device_xruns=audio.device_overflows + audio.device_underflows,
            recording=recording,
            trace=trace,
            aec=self.aec is not None,
            aec_erle_db=self.aec.erle_db if self.aec is not None else None,
            aec_delay_ms=self.aec.delay_ms if self.aec is not None else None,
        )
