"""Acoustic echo cancellation: take the agent's own voice, played on speakers, out of the microphone.

The canceller is WebRTC's AEC3 (the one in Chrome) through pywebrtc-audio, run at the model's
24 kHz on the step thread, one 80 ms frame per call (the library works in 10 ms pieces inside,
with the GIL released). Each call takes the near end (the captured frame) and the far end (what
was sent to the speaker at the same stream position) and returns the near end without the echo.

Alignment is split in two. AEC3 finds the echo delay by itself, but only up to about 500 ms, and
it must see the far end no later than its echo. The caller knows the bulk of the delay from
PortAudio's timestamps (`delay_ms`), so the canceller delays the far end by that much less a
headroom, in its own preallocated delay line, and AEC3 is left a residual of about the headroom.
So the reported delay may be too long by up to `headroom_ms` (100 ms) or too short by about
400 ms; AEC3 ignores the delay hint itself, which is why the delay line exists.

`measure_aec` is the benchmark (`aimsvoice bench` calls it); `simulate_echo` and `speech_like`
build its signals, and the tests' echo paths.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import AimsvoiceError
from .format import FRAME_SIZE, SAMPLE_RATE

SUBFRAME_SIZE = SAMPLE_RATE // 100  # 240 samples: the APM's 10 ms unit; frames are whole multiples
MAX_FRAME_SIZE = 4 * FRAME_SIZE  # longest frame one call takes (320 ms)
HEADROOM_MS = 100.0  # residual delay left to AEC3: tolerance for a wrong reported delay
REALIGN_MS = 40.0  # the delay line moves only when the reported delay moves more than this
MAX_DELAY_MS = 1000.0  # longest bulk delay the delay line covers (Bluetooth is ~200-300 ms)
ERLE_TIME_CONSTANT_S = 1.0  # smoothing of the live ERLE estimate
FAR_ACTIVE_DBFS = -50.0  # far end louder than this counts as the agent speaking (ERLE gate)
SILENT_POWER = 1e-12  # floor for the ERLE ratio's denominator, so a muted output is not a division by zero

OutputKind = Literal["headset", "speakers", "unknown"]
HEADSET_WORDS = ("headset", "headphone", "earphone", "earbud", "earpod", "airpods", "buds", "hands-free", "handsfree")
SPEAKER_WORDS = ("speaker", "built-in output", "internal")
AEC_HINT = "if the agent plays on speakers (not headphones), add --aec so it does not hear itself"


@dataclass(frozen=True)
class AecConfig:
    """How the echo canceller processes the capture."""

    noise_suppression: bool = False  # WebRTC NS after the AEC; Mimi copes with noise, so off
    ns_level: int = 1  # 0-3: 6, 12, 18 or 21 dB of suppression
    high_pass: bool = True  # removes DC and rumble; the library applies it with AEC3 anyway
    headroom_ms: float = HEADROOM_MS
    realign_ms: float = REALIGN_MS
    max_delay_ms: float = MAX_DELAY_MS


@dataclass(frozen=True)
class AecStats:
    """The canceller's state for the live view."""

    enabled: bool
    erle_db: float | None  # running echo return loss enhancement; None while off or before the agent spoke
    delay_ms: float  # the bulk delay last reported by the caller
    frames: int  # frames processed with the canceller on


class EchoCanceller:
    """WebRTC AEC3 on the model's 24 kHz stream, fed one frame of near end and far end per call.

    Not thread-safe: one thread (the step thread) calls `process`; `enabled` may be flipped from
    another thread between calls. When off, `process` returns the capture untouched and costs
    only the copy of the far end into the delay line, so turning it back on finds recent history.
    """

    def __init__(self, config: AecConfig = AecConfig(), *, enabled: bool = True, delay_ms: float = 0.0) -> None:
        try:
            from pywebrtc_audio import AudioProcessor
        except ImportError as e:
            raise AimsvoiceError(
                "echo cancellation needs pywebrtc-audio, which is not installed; run `make install` "
                "(or `pip install pywebrtc-audio`)."
            ) from e
        if not 0 <= config.ns_level <= 3:
            raise ValueError(f"ns_level must be 0-3, not {config.ns_level}")
        self.config = config
        self.enabled = enabled
        self._apm = AudioProcessor(
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            echo_cancellation=True,
            noise_suppression=config.noise_suppression,
            high_pass_filter=config.high_pass,
            ns_level=config.ns_level,
        )
        max_predelay = _samples(max(0.0, config.max_delay_ms - config.headroom_ms))
        self._max_predelay = max_predelay
        self._ring = np.zeros(max_predelay + MAX_FRAME_SIZE, dtype=np.float32)
        self._far = np.zeros(MAX_FRAME_SIZE, dtype=np.float32)  # the aligned far end handed to the APM
        self._written = 0  # far-end samples written since the start (absolute stream position)
        self._predelay = 0  # samples the far end is held back before the APM sees it
        self._delay_ms = 0.0
        self._alpha_per_sample = 1.0 / (ERLE_TIME_CONSTANT_S * SAMPLE_RATE)
        self._far_active_power = 10.0 ** (FAR_ACTIVE_DBFS / 10.0)
        self._near_power = 0.0
        self._out_power = 0.0
        self._erle_ready = False
        self._frames = 0
        self.set_delay(delay_ms)

    @property
    def delay_ms(self) -> float:
        """The bulk delay last reported (ms): how much later the far end reaches the capture."""
        return self._delay_ms

    def set_delay(self, delay_ms: float) -> None:
        """Report the bulk echo delay: time the far end is played minus time the near end is captured.

        For a near and a far frame at the same stream position, `delay_ms` is how much later the
        far frame's first sample leaves the speaker than the near frame's first sample entered the
        microphone (see the module docstring). The delay line follows it only when it moves by
        more than `realign_ms`, so timestamp jitter does not make the far end jump.
        """
        self._delay_ms = float(delay_ms)
        target = min(max(0, _samples(delay_ms - self.config.headroom_ms)), self._max_predelay)
        if abs(target - self._predelay) > _samples(self.config.realign_ms):
            self._predelay = target
        residual_ms = max(0.0, delay_ms - 1000.0 * self._predelay / SAMPLE_RATE)
        self._apm.stream_delay_ms = int(round(residual_ms))  # a hint only: AEC3 estimates it

    def process(self, near: np.ndarray, far: np.ndarray, *, delay_ms: float | None = None) -> np.ndarray:
        """Cancel the echo of `far` in `near`; returns the cleaned capture (a new array when on).

        near: float32 [n] captured at 24 kHz; far: float32 [n], what was sent to the speaker at
        the same stream position (zeros where nothing played). n is a multiple of 240 (10 ms),
        normally FRAME_SIZE, at most MAX_FRAME_SIZE. delay_ms: the current bulk delay (see
        `set_delay`); None keeps the last one. The output lags the input by about 9 ms (the
        APM's internal resampling and band split at 24 kHz).
        """
        n = near.shape[0]
        assert near.shape == (n,) and far.shape == (n,), f"near {near.shape} and far {far.shape} must be equal 1-D"
        assert n % SUBFRAME_SIZE == 0 and 0 < n <= MAX_FRAME_SIZE, (
            f"frames must be 1 to {MAX_FRAME_SIZE // SUBFRAME_SIZE} whole 10 ms pieces ({SUBFRAME_SIZE} samples), not {n}"
        )
        if delay_ms is not None:
            self.set_delay(delay_ms)
        self._write_far(far)
        if not self.enabled:
            return near
        aligned = self._far[:n]
        self._read_far(self._written - n - self._predelay, aligned)
        near32 = np.ascontiguousarray(near, dtype=np.float32)
        out = self._apm.process(near32, aligned)
        self._update_erle(near32, aligned, out)
        self._frames += 1
        return out

    @property
    def erle_db(self) -> float | None:
        """Running ERLE estimate (dB): capture power over output power while the agent speaks.

        It is the apparent ERLE: when the user talks over the agent, their voice is in both
        powers and the estimate drops, as it should on a meter. None while off or before the
        agent has spoken.
        """
        if not self.enabled or not self._erle_ready:
            return None
        return 10.0 * math.log10(max(self._near_power, SILENT_POWER) / max(self._out_power, SILENT_POWER))

    def stats(self) -> AecStats:
        """A snapshot for the live view."""
        return AecStats(enabled=self.enabled, erle_db=self.erle_db, delay_ms=self._delay_ms, frames=self._frames)

    def reset(self) -> None:
        """Forget the echo path, the far-end history and the ERLE estimate; keep config and delay."""
        self._apm.reset()
        self._ring.fill(0.0)
        self._written = 0
        self._near_power = self._out_power = 0.0
        self._erle_ready = False
        self._frames = 0

    def _write_far(self, far: np.ndarray) -> None:
        size = self._ring.shape[0]
        start = self._written % size
        first = min(far.shape[0], size - start)
        self._ring[start : start + first] = far[:first]
        self._ring[: far.shape[0] - first] = far[first:]
        self._written += far.shape[0]

    def _read_far(self, position: int, out: np.ndarray) -> None:
        # positions before the first write read the ring's initial zeros: silence before the start
        size = self._ring.shape[0]
        start = position % size
        first = min(out.shape[0], size - start)
        out[:first] = self._ring[start : start + first]
        out[first:] = self._ring[: out.shape[0] - first]

    def _update_erle(self, near: np.ndarray, far: np.ndarray, out: np.ndarray) -> None:
        n = near.shape[0]
        if float(np.dot(far, far)) / n < self._far_active_power:
            return
        alpha = 1.0 - math.exp(-self._alpha_per_sample * n)
        self._near_power += alpha * (float(np.dot(near, near)) / n - self._near_power)
        self._out_power += alpha * (float(np.dot(out, out)) / n - self._out_power)
        self._erle_ready = True


def output_kind(device_name: str) -> OutputKind:
    """Whether an output device's name says headset, speakers, or neither."""
    name = device_name.lower()
    if any(word in name for word in HEADSET_WORDS):
        return "headset"
    if any(word in name for word in SPEAKER_WORDS):
        return "speakers"
    return "unknown"


def aec_default(output_device_name: str) -> tuple[bool, str | None]:
    """The `--aec` default for an output device: (on, hint to show or None).

    On for speakers, off for a headset (there is no echo to cancel, and AEC3 would still duck the
    user a little while the agent speaks), off with `AEC_HINT` when the name does not tell.
    """
    kind = output_kind(output_device_name)
    if kind == "speakers":
        return True, None
    if kind == "headset":
        return False, None
    return False, AEC_HINT


def speech_like(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllabic test signal at 24 kHz: harmonics of a gliding pitch in 150-350 ms bursts.

    Stands in for speech where no synthesiser is at hand: speech-like spectrum, level changes
    and pauses, which is what the echo canceller's adaptation and double-talk logic react to.
    """
    t = np.arange(n_samples) / SAMPLE_RATE
    envelope = np.zeros(n_samples)
    f0 = np.full(n_samples, 120.0)
    pos = 0
    while pos < n_samples:
        length = int(rng.uniform(0.15, 0.35) * SAMPLE_RATE)
        end = min(pos + length, n_samples)
        envelope[pos:end] = np.sin(np.linspace(0.0, np.pi, end - pos)) ** 0.5
        f0[pos:end] = np.linspace(rng.uniform(100, 220), rng.uniform(100, 220), end - pos)
        pos = end + int(rng.choice([0.03, 0.06, 0.4], p=[0.5, 0.35, 0.15]) * SAMPLE_RATE)
    phase = 2.0 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = rng.uniform([400, 1000, 2200], [900, 2000, 3200])
    coarse = np.arange(0, n_samples, SUBFRAME_SIZE)  # harmonic gains vary slowly: compute them per 10 ms
    signal = np.zeros(n_samples)
    for k in range(1, 40):
        freq = k * f0[coarse]
        gain = np.exp(-(((freq[:, None] - formants) / 150.0) ** 2)).sum(axis=1) + 0.05 / k
        signal += np.interp(np.arange(n_samples), coarse, gain) * np.sin(k * phase)
    signal += 0.05 * rng.standard_normal(n_samples)  # breath and fricative noise
    signal *= envelope * (0.8 + 0.2 * np.sin(2 * np.pi * 3.0 * t))
    return (0.3 * signal / np.max(np.abs(signal))).astype(np.float32)


def simulate_echo(
    far: np.ndarray,
    *,
    delay_ms: float,
    gain_db: float = -6.0,
    rir_ms: float = 60.0,
    rt60_ms: float = 120.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """The echo of `far` at the microphone: delayed, attenuated, and through a small room.

    The room is exponentially decaying noise (`rt60_ms` to fall 60 dB) behind a direct path,
    cut at `rir_ms` and normalised to unit energy, so `gain_db` is the echo's level against
    the far end. Returns float32, as long as `far`.
    """
    n_rir = _samples(rir_ms)
    decay = np.exp(-math.log(1000.0) * np.arange(n_rir) / _samples(rt60_ms))
    rir = rng.standard_normal(n_rir) * decay
    rir[0] = 3.0 * np.max(np.abs(rir))  # the direct path dominates, as on a laptop
    rir /= np.sqrt(np.sum(rir**2))
    echo = np.convolve(far.astype(np.float64), rir)[: far.shape[0]] * 10.0 ** (gain_db / 20.0)
    delay = _samples(delay_ms)
    out = np.zeros(far.shape[0], dtype=np.float32)
    out[delay:] = echo[: far.shape[0] - delay]
    return out


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    """Echo return loss enhancement (dB) of a canceller whose output is `residual` for `echo` alone."""
    echo_energy = float(np.dot(echo.astype(np.float64), echo))
    residual_energy = float(np.dot(residual.astype(np.float64), residual))
    return 10.0 * math.log10(echo_energy / max(residual_energy, SILENT_POWER))


def measure_aec(
    *,
    seconds: float = 20.0,
    delay_ms: float = 80.0,
    noise_suppression: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Cost per 80 ms frame and ERLE of the echo canceller on a simulated echo path.

    The far end is `speech_like` audio; the capture is its echo (`simulate_echo`, `delay_ms`
    late) over a -65 dBFS noise floor; the canceller runs frame by frame as on the step thread.
    Returns ms per frame (wall clock: median, p90, max; and CPU time of the calling thread,
    which other processes on a busy machine do not inflate: median, p90), the share of the
    80 ms frame budget that the wall-clock median takes, and the ERLE after the first 3 s.
    """
    rng = np.random.default_rng(seed)
    n_frames = max(int(seconds * SAMPLE_RATE) // FRAME_SIZE, 50)
    far = speech_like(n_frames * FRAME_SIZE, rng)
    echo = simulate_echo(far, delay_ms=delay_ms, rng=rng)
    near = echo + (10.0 ** (-65.0 / 20.0) * rng.standard_normal(far.shape[0])).astype(np.float32)
    aec = EchoCanceller(AecConfig(noise_suppression=noise_suppression), delay_ms=delay_ms)
    out = np.empty_like(near)
    wall_ms = np.empty(n_frames)
    cpu_ms = np.empty(n_frames)
    for i in range(n_frames):
        frame = slice(i * FRAME_SIZE, (i + 1) * FRAME_SIZE)
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        out[frame] = aec.process(near[frame], far[frame])
        cpu_ms[i] = 1000.0 * (time.thread_time() - cpu0)
        wall_ms[i] = 1000.0 * (time.perf_counter() - wall0)
    settled = _samples(3000.0)
    median = float(np.median(wall_ms))
    return {
        "frames": n_frames,
        "sample_rate": SAMPLE_RATE,
        "frame_ms": 1000.0 * FRAME_SIZE / SAMPLE_RATE,
        "delay_ms": delay_ms,
        "noise_suppression": noise_suppression,
        "ms_per_frame_median": median,
        "ms_per_frame_p90": float(np.percentile(wall_ms, 90)),
        "ms_per_frame_max": float(wall_ms.max()),
        "cpu_ms_per_frame_median": float(np.median(cpu_ms)),
        "cpu_ms_per_frame_p90": float(np.percentile(cpu_ms, 90)),
        "budget_share": median / (1000.0 * FRAME_SIZE / SAMPLE_RATE),
        "erle_db": erle_db(echo[settled:], out[settled:]),
        "erle_estimate_db": aec.erle_db,
    }


def _samples(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE / 1000.0))
