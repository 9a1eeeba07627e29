"""Bounded latency, deterministically: the shedding policy, the governor, and the live pipeline
driven through DuplexAudio's real callbacks on a simulated clock.

The simulation calls the capture and playback callbacks every 20 ms of simulated time (480
samples each, playback 7 ms after capture) and lets the engine's compute time and stalls advance
that clock, so the step thread's logic runs exactly as live, only without wall time.
"""

from __future__ import annotations

import numpy as np
import pytest

from aimsvoice.audio.devices import AudioConfig, DuplexAudio
from aimsvoice.audio.format import FRAME_SIZE, SAMPLE_RATE
from aimsvoice.audio.latency import CROSSFADE_SIZE, SEGMENT_SIZE, LatencyGovernor, shed_quietest
from aimsvoice.live import LivePipeline
from virtual_audio import PassThroughEngine, StallingEngine

BLOCK = 480  # samples per simulated callback (20 ms)
BLOCK_MS = 20.0


class NoFlags:
    """Stand-in for sounddevice.CallbackFlags with nothing to report."""

    input_overflow = False
    output_underflow = False


class SimulatedDevices:
    """Calls DuplexAudio's callbacks on a simulated millisecond clock; records what was played."""

    def __init__(self, audio: DuplexAudio, mic: np.ndarray) -> None:
        self.audio = audio
        self.mic = mic
        self.now_ms = 0
        self._mic_pos = 0
        self._played: list[np.ndarray] = []

    def advance(self, seconds: float) -> None:
        for _ in range(round(seconds * 1000)):
            self.now_ms += 1
            if self.now_ms % 20 == 0:
                block = self.mic[self._mic_pos : self._mic_pos + BLOCK]
                block = np.pad(block, (0, BLOCK - len(block)))
                self._mic_pos += BLOCK
                self.audio.on_capture(block[:, None], BLOCK, None, NoFlags())
            if self.now_ms % 20 == 7:
                out = np.full((BLOCK, 1), np.nan, dtype=np.float32)
                self.audio.on_playback(out, BLOCK, None, NoFlags())
                self._played.append(out[:, 0])

    def played(self) -> np.ndarray:
        return np.concatenate(self._played)


def simulate(
    engine_for, mic: np.ndarray, seconds: float, config: AudioConfig = AudioConfig()
) -> tuple[LivePipeline, SimulatedDevices]:
    """Run the step loop (pump, step, else wait 1 ms) for `seconds` of simulated time.

    `engine_for(devices)` makes the engine; its sleeps should be `devices.advance`.
    """
    audio = DuplexAudio()
    devices = SimulatedDevices(audio, mic)
    pipeline = LivePipeline(engine_for(devices), audio, config)
    while devices.now_ms < seconds * 1000:
        pipeline.pump()
        if not pipeline.step():
            devices.advance(0.001)
    return pipeline, devices


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


# --- shed_quietest ---------------------------------------------------------------------------


def test_shed_takes_the_silent_gap_and_leaves_the_speech_intact() -> None:
    loud1, loud2 = noise(0.1, seed=1), noise(0.1, seed=2)
    pcm = np.concatenate([loud1, np.zeros(2400, dtype=np.float32), loud2])
    out = shed_quietest(pcm, 1200)
    assert len(out) == len(pcm) - 1200
    np.testing.assert_array_equal(out[: len(loud1)], loud1)
    np.testing.assert_array_equal(out[-len(loud2) :], loud2)


def test_shed_removes_whole_segments_at_least_as_many_as_asked() -> None:
    pcm = noise(0.2)
    for n_drop in (1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 1000):
        removed = len(pcm) - len(shed_quietest(pcm, n_drop))
        assert n_drop <= removed < n_drop + SEGMENT_SIZE


def test_shed_nothing_or_everything() -> None:
    pcm = noise(0.1)
    np.testing.assert_array_equal(shed_quietest(pcm, 0), pcm)
    everything = shed_quietest(pcm, 10 * len(pcm))
    assert len(everything) == CROSSFADE_SIZE  # only the protected head is left
    assert everything[0] == pcm[0]  # which starts where the audio before it ended


def test_shed_crossfades_so_cuts_do_not_click() -> None:
    t = np.arange(SAMPLE_RATE // 5)
    # 210 Hz: every 240-sample segment is 2.1 periods, so any cut jumps in phase
    sine = (0.8 * np.sin(2 * np.pi * 210 * t / SAMPLE_RATE)).astype(np.float32)
    out = shed_quietest(sine, 5 * SEGMENT_SIZE)
    natural_step = np.abs(np.diff(sine)).max()
    hard_cut = np.delete(sine, np.arange(CROSSFADE_SIZE, CROSSFADE_SIZE + 5 * SEGMENT_SIZE))
    assert np.abs(np.diff(hard_cut)).max() > 5 * natural_step  # what a cut without a fade would do
    assert np.abs(np.diff(out)).max() < 2 * natural_step


def test_shed_drops_stale_audio_oldest_first_even_when_loud() -> None:
    old_loud = noise(1.0, level=0.5, seed=3)
    recent = noise(1.0, level=0.01, seed=4)
    pcm = np.concatenate([old_loud, recent])
    out = shed_quietest(pcm, SAMPLE_RATE // 2)
    np.testing.assert_array_equal(out[-len(recent) :], recent)  # the quiet but recent second survives


def test_shed_needs_room_for_the_crossfade() -> None:
    with pytest.raises(ValueError, match="crossfade"):
        shed_quietest(noise(0.1), 100, protect_head=CROSSFADE_SIZE - 1)


# --- LatencyGovernor -------------------------------------------------------------------------


def test_governor_enforces_the_bound_at_once() -> None:
    gov = LatencyGovernor(bound=1000, margin=100, window=5, max_drain=50)
    assert gov.plan(1700) == 700


def test_governor_drains_standing_excess_after_a_full_window_at_a_limited_rate() -> None:
    gov = LatencyGovernor(bound=1000, margin=100, window=3, max_drain=50)
    assert [gov.plan(600), gov.plan(600)] == [0, 0]  # not a whole window yet
    assert gov.plan(600) == 50
    gov.shed(50)
    assert gov.plan(550) == 50  # the window was lowered by what was shed: no double count
    gov.shed(50)
    assert gov.plan(90) == 0  # a level under the margin in the window: nothing standing


def test_governor_ignores_a_brief_peak() -> None:
    gov = LatencyGovernor(bound=1000, margin=100, window=3, max_drain=50)
    assert [gov.plan(level) for level in (80, 900, 80, 900)] == [0, 0, 0, 0]


def test_governor_margin_must_fit_the_bound() -> None:
    with pytest.raises(ValueError, match="margin"):
        LatencyGovernor(bound=100, margin=200, window=3, max_drain=10)


# --- the pipeline on simulated devices --------------------------------------------------------


def test_pass_through_plays_the_microphone_exactly_after_the_standing_latency() -> None:
    mic = noise(8.0)
    pipeline, devices = simulate(lambda d: PassThroughEngine(sleep=d.advance, compute_s=0.005), mic, 10.0)
    played = devices.played()
    latencies = {round(i + o, 3) for _, i, o in pipeline.trace}
    assert latencies == {100.0}  # one frame + one block of cushion, the same at every step
    delay = round(100.0 * SAMPLE_RATE / 1000)
    np.testing.assert_array_equal(played[delay : delay + len(mic)], mic)
    assert not played[:delay].any()
    summary = pipeline.summary("test", wall_s=0.0, recording=None)
    assert (summary.input_shed_ms, summary.output_shed_ms, summary.underruns) == (0.0, 0.0, 0)
    assert summary.frames == len(pipeline.trace) >= 120


@pytest.mark.parametrize(("input_frames", "playback_frames"), [(2, 3), (1, 2)])
def test_stalls_keep_both_queues_within_their_bounds_and_latency_recovers_within_a_second(
    input_frames: int, playback_frames: int
) -> None:
    engines: list[StallingEngine] = []

    def engine_for(devices: SimulatedDevices) -> StallingEngine:
        engines.append(StallingEngine(every=25, stall_s=0.3, sleep=devices.advance, compute_s=0.005))
        return engines[0]

    config = AudioConfig(input_backlog_frames=input_frames, playback_queue_frames=playback_frames)
    pipeline, _ = simulate(engine_for, noise(12.0), 12.0, config)
    stalled = engines[0].stalled_steps
    assert len(stalled) >= 4
    trace = np.array(pipeline.trace)  # clock_s, input backlog ms, playback queue ms
    input_bound_ms, playback_bound_ms = 80.0 * input_frames, 80.0 * playback_frames
    assert trace[:, 1].max() <= input_bound_ms and trace[:, 2].max() <= playback_bound_ms
    assert trace[:, 1].max() >= input_bound_ms - 1000 * SEGMENT_SIZE / SAMPLE_RATE  # the bound is what held
    latency = trace[:, 1] + trace[:, 2]
    baseline = latency[: stalled[0]].max()
    checked = 0
    for k, next_k in zip(stalled, stalled[1:] + [len(trace)]):
        stall_end_s = trace[k, 0] + 0.3
        settled = (trace[:, 0] >= stall_end_s + 1.0) & (np.arange(len(trace)) < next_k)
        if not settled.any():  # the simulation ended within a second of this stall
            continue
        checked += 1
        assert latency[settled].max() <= baseline + BLOCK_MS, f"still {latency[settled].max()} ms 1 s after stall {k}"
    assert checked >= 3
    summary = pipeline.summary("test", wall_s=0.0, recording=None)
    assert summary.input_shed_ms > 0 and summary.output_shed_ms > 0
    assert summary.underruns == len(stalled)  # each stall starves playback once, and is counted


def test_an_engine_slower_than_real_time_never_drifts() -> None:
    """100 ms per 80 ms frame: a fifth of the input must go, and latency must not grow."""
    pipeline, _ = simulate(lambda d: PassThroughEngine(sleep=d.advance, compute_s=0.1), noise(20.0), 20.0)
    trace = np.array(pipeline.trace)
    assert trace[:, 1].max() <= 160.0 and trace[:, 2].max() <= 240.0
    latency = trace[:, 1] + trace[:, 2]
    half = len(latency) // 2
    assert latency[half:].max() <= latency[:half].max()
    summary = pipeline.summary("test", wall_s=0.0, recording=None)
    assert summary.input_shed_ms == pytest.approx(0.2 * 20_000, rel=0.1)


def test_after_a_long_stall_the_engine_hears_fresh_audio() -> None:
    """A 3 s stall: the next frame is at most the input bound, a frame and a block old."""
    seconds = 10.0
    mic = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE / seconds  # sample = its time

    class Listening(StallingEngine):
        def __init__(self, devices: SimulatedDevices) -> None:
            super().__init__(every=40, stall_s=3.0, sleep=devices.advance, compute_s=0.005)
            self.devices = devices
            self.heard: list[tuple[float, float]] = []  # (now_s, capture time of the frame's middle)

        def step(self, pcm: np.ndarray):
            self.heard.append((self.devices.now_ms / 1000, float(np.median(pcm)) * seconds))
            return super().step(pcm)

    engines: list[Listening] = []
    simulate(lambda d: engines.append(Listening(d)) or engines[0], mic, 8.0)
    now_s, captured_s = engines[0].heard[40]  # the first step after the stall in step 39
    assert now_s > 6.0
    oldest_allowed_s = (2 * FRAME_SIZE + FRAME_SIZE / 2) / SAMPLE_RATE + BLOCK_MS / 1000
    assert now_s - captured_s <= oldest_allowed_s


def test_the_conversation_starts_once_both_streams_flow() -> None:
    """Output still filling its own buffer (as PulseAudio's does for a second): input is dropped."""
    audio = DuplexAudio()
    audio._output_prefill = 6000  # what DuplexAudio.start() sets from the stream's latency
    devices = SimulatedDevices(audio, noise(2.0))
    pipeline = LivePipeline(PassThroughEngine(), audio)
    for _ in range(25):  # 250 ms: 12 playback callbacks = 5760 samples, still filling
        devices.advance(0.01)
        pipeline.pump()
        assert not pipeline.step()
    devices.advance(0.1)
    pipeline.pump()
    devices.advance(0.08)
    pipeline.pump()
    assert pipeline.step()
    assert pipeline.input_shed == 0  # dropped before the start, not shed
