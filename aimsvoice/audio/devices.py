"""Sound devices through PortAudio (sounddevice): listing, choosing, and the capture/playback streams.

The streams' callbacks run on PortAudio's threads. They only copy between the device buffers and
preallocated ring buffers and bump counters: no printing, no locks, no sample allocation, no
resampling. Everything slower happens on the step thread (session.py), which converts between the
device rate and the model's 24 kHz with `RateConverter`.

sounddevice is imported on first use, not with this module: importing it starts PortAudio, which
reads the ALSA configuration once (tests point ALSA_CONFIG_PATH at virtual devices first), and a
machine without PortAudio must still be able to run offline conversations.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import soxr

from ..errors import AudioDeviceError
from .format import SAMPLE_RATE
from .ringbuffer import RingBuffer

Kind = Literal["input", "output"]

BLOCK_MS = 20  # callback period: short enough for low latency, long enough for Python callbacks
RING_SECONDS = 4.0  # ring capacity: far above any bound, so only a dead consumer can fill it
STALL_TIMEOUT_S = 2.0  # a running stream that delivers nothing this long has lost its device
START_TIMEOUT_S = 10.0  # a stream may take longer to get going (PulseAudio: 1 to 2 s)
START_MARGIN_S = 0.1  # output is flowing once it took this much beyond its own buffer
LIST_HINT = "run `aimsvoice devices` to list them"


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device, as `aimsvoice devices` shows it."""

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: Kind) -> int:
        """How many channels the device offers for `kind`."""
        return self.max_input_channels if kind == "input" else self.max_output_channels


@dataclass(frozen=True)
class AudioConfig:
    """Which devices a live session opens and how much audio each side may queue (in 80 ms frames)."""

    input_device: int | str | None = None  # index, name substring, or None for the default
    output_device: int | str | None = None
    input_backlog_frames: int = 2
    playback_queue_frames: int = 3


def sounddevice() -> ModuleType:
    """The sounddevice module, or an AudioDeviceError naming the fix when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as e:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioDeviceError(
            "PortAudio is not installed; install it with `sudo apt-get install libportaudio2` "
            "(or run `make install`)."
        ) from e
    return sd


def list_devices() -> list[DeviceInfo]:
    """All PortAudio devices with their host API, channel counts and default rate."""
    sd = sounddevice()
    hostapis = sd.query_hostapis()
    default_in, default_out = sd.default.device
    devices = []
    for info in sd.query_devices():
        devices.append(
            DeviceInfo(
                index=info["index"],
                name=info["name"],
                hostapi=hostapis[info["hostapi"]]["name"],
                max_input_channels=info["max_input_channels"],
                max_output_channels=info["max_output_channels"],
                default_samplerate=info["default_samplerate"],
                is_default_input=info["index"] == _default_index(sd, hostapis, default_in, "input"),
                is_default_output=info["index"] == _default_index(sd, hostapis, default_out, "output"),
            )
        )
    return devices


def _default_index(sd: ModuleType, hostapis: Any, configured: int, kind: Kind) -> int:
    if configured >= 0:
        return configured
    # PortAudio's own default lives on the default host API
    return hostapis[sd.default.hostapi][f"default_{kind}_device"]


def match_device(devices: list[DeviceInfo], spec: int | str | None, kind: Kind) -> DeviceInfo:
    """Pick the `kind` device that `spec` names: an index, space-separated name substrings, or None.

    Substrings match in order, case-insensitively, against "name, host API", as sounddevice does;
    when several devices match, one whose name equals `spec` wins.
    """
    usable = [d for d in devices if d.channels(kind) > 0]
    flag = f"--{kind}-device"
    if spec is None:
        for d in usable:
            if (d.is_default_input if kind == "input" else d.is_default_output):
                return d
        if not usable:
            raise AudioDeviceError(f"no {kind} device found; connect one, or check that PortAudio sees it ({LIST_HINT}).")
        return usable[0]
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for d in usable:
            if d.index == index:
                return d
        raise AudioDeviceError(f"no {kind} device with index {index}; pick one with {flag} ({LIST_HINT}).")
    query = spec.lower()
    matches = [d for d in usable if _contains_in_order(f"{d.name}, {d.hostapi}".lower(), query.split())]
    if len(matches) > 1:
        exact = [d for d in matches if query in (d.name.lower(), f"{d.name}, {d.hostapi}".lower())]
        if len(exact) == 1:
            return exact[0]
        names = "; ".join(f"[{d.index}] {d.name}" for d in matches)
        raise AudioDeviceError(f"{flag} {spec!r} matches several devices ({names}); give its index instead.")
    if not matches:
        raise AudioDeviceError(f"no {kind} device matches {spec!r}; pick one with {flag} ({LIST_HINT}).")
    return matches[0]


def _contains_in_order(text: str, words: list[str]) -> bool:
    pos = 0
    for word in words:
        pos = text.find(word, pos)
        if pos < 0:
            return False
        pos += len(word)
    return True


def stream_format(device: DeviceInfo, kind: Kind) -> tuple[int, int]:
    """(sample rate, channels) to open `device` with: 24 kHz mono when it can, else what it can.

    Tries the model's rate, then the device's default rate (the stream is then resampled), each
    with one channel, then two (some hardware opens stereo only).
    """
    sd = sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = dict.fromkeys([SAMPLE_RATE, int(device.default_samplerate)])
    channel_counts = [c for c in (1, 2) if c <= device.channels(kind)]
    errors = []
    for rate in rates:
        for channels in channel_counts:
            try:
                check(device=device.index, samplerate=rate, channels=channels, dtype="float32")
            except sd.PortAudioError as e:
                errors.append(str(e))
                continue
            return rate, channels
    raise AudioDeviceError(
        f"cannot open {kind} device {device.name!r} at {SAMPLE_RATE} Hz or its own rate "
        f"({errors[-1] if errors else 'no channels'}); pick another with --{kind}-device ({LIST_HINT})."
    )


class RateConverter:
    """Streaming resampler between two rates (soxr); the identity when they are equal.

    Low quality in soxr's terms is flat to 80% of the lower Nyquist (about 10 kHz here) with no
    audible aliasing, and holds back about 20 ms; the higher qualities hold back 40 ms, which a
    live conversation pays twice (in and out).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = self._new_stream() if in_rate != out_rate else None

    def _new_stream(self) -> Any:
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="LQ")

    def convert(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk of the stream (output lengths vary around the ratio)."""
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm)

    def to_out_samples(self, n_in: int) -> int:
        """How many output samples `n_in` input samples correspond to."""
        return n_in * self.out_rate // self.in_rate

    def holdback(self, chunk_size: int) -> int:
        """The most output samples the resampler lags behind the ratio, fed `chunk_size` at a time.

        Measured on a separate stream of silence: soxr works in its own blocks, so output comes
        in bursts; a playback queue needs this much extra cushion not to run dry between them.
        """
        if self._stream is None:
            return 0
        probe = self._new_stream()
        silence = np.zeros(chunk_size, dtype=np.float32)
        produced, worst = 0, 0
        for n_chunks in range(1, 51):
            produced += len(probe.resample_chunk(silence))
            worst = max(worst, self.to_out_samples(n_chunks * chunk_size) - produced)
        return worst


class DuplexAudio:
    """A capture stream feeding `capture_ring` and a playback stream draining `playback_ring`.

    The two streams are separate PortAudio streams, so input and output can be different devices
    at different rates; each callback runs on its own PortAudio thread. Counters are written by
    one callback each and read by anyone.

    For the echo canceller, the playback callback also copies what it sent to the speaker into
    `reference_ring`, and each callback marks where its block sits in time (PortAudio's ADC and
    DAC timestamps). A mark's two fields are stored one after the other, so a reader may pair an
    index with the previous block's time: an error of one block, which the canceller tolerates.
    """

    def __init__(
        self,
        *,
        input_device: DeviceInfo | None = None,
        output_device: DeviceInfo | None = None,
        capture_rate: int = SAMPLE_RATE,
        playback_rate: int = SAMPLE_RATE,
        capture_channels: int = 1,
        playback_channels: int = 1,
    ) -> None:
        self.input_device = input_device
        self.output_device = output_device
        self.capture_rate = capture_rate
        self.playback_rate = playback_rate
        self.capture_channels = capture_channels
        self.playback_channels = playback_channels
        self.capture_ring = RingBuffer(int(RING_SECONDS * capture_rate))
        self.playback_ring = RingBuffer(int(RING_SECONDS * playback_rate))
        self.reference_ring = RingBuffer(int(RING_SECONDS * playback_rate))  # what the speaker was sent
        # written by the capture callback
        self.captured = 0  # samples delivered by the device
        self.capture_dropped = 0  # samples lost because the ring was full
        self.device_overflows = 0  # PortAudio reported lost input
        # (index, ADC time in s) of the first sample of the newest capture block; the index counts `captured`
        self.capture_mark_index = 0
        self.capture_mark_s = 0.0
        # written by the playback callback
        self.played = 0  # samples of agent audio played
        self.underrun_samples = 0  # samples of silence played because the ring was empty
        self.underrun_events = 0  # runs of such silence
        self.device_underflows = 0  # PortAudio reported a gap in output
        self.rendered = 0  # samples asked for by the device, sound or silence
        # (index, DAC time in s) of the first sample of the newest playback block; the index counts `rendered`
        self.render_mark_index = 0
        self.render_mark_s = 0.0
        self._input_latency_s = 0.0  # the streams' own latencies, for host APIs without timestamps
        self._output_latency_s = 0.0
        self._output_prefill = 0  # samples the output takes to fill its own buffer before it plays
        self._starved = False
        self._capture_stream: Any = None
        self._playback_stream: Any = None
        self._closed = False
        self._progress: dict[str, tuple[int, float]] = {}  # kind -> (count, when it last changed)

    def on_capture(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio capture callback: copy channel 0 into the capture ring."""
        if status.input_overflow:
            self.device_overflows += 1
        written = self.capture_ring.write(indata[:, 0])
        self.capture_dropped += frames - written
        if time_info is not None:
            adc_s = time_info.inputBufferAdcTime or time_info.currentTime - self._input_latency_s
            self.capture_mark_index = self.captured
            self.capture_mark_s = adc_s
        self.captured += frames

    def on_playback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio playback callback: play from the playback ring, silence when it runs dry."""
        if status.output_underflow:
            self.device_underflows += 1
        got = self.playback_ring.read_into(outdata[:, 0])
        if got < frames:
            outdata[got:] = 0.0
            if self.played > 0:  # silence before the agent's first sound is not an underrun
                self.underrun_samples += frames - got
                if not self._starved:
                    self.underrun_events += 1
            self._starved = True
        else:
            self._starved = False
        if self.playback_channels > 1:
            outdata[:, 1:] = outdata[:, :1]
        self.reference_ring.write(outdata[:, 0])  # full only if the step thread is gone: then it is not needed
        if time_info is not None:
            dac_s = time_info.outputBufferDacTime or time_info.currentTime + self._output_latency_s
            self.render_mark_index = self.rendered
            self.render_mark_s = dac_s
        self.played += got
        self.rendered += frames

    @property
    def flowing(self) -> bool:
        """Whether input arrives and output is consumed past its start-up buffer fill.

        A stream's first callbacks fill its own buffer; some (PulseAudio's) then pause for a
        second before playing. Audio queued before that would only be shed again.
        """
        return self.captured > 0 and self.rendered > self._output_prefill

    def start(self) -> None:
        """Open and start both streams; device problems become one AudioDeviceError line."""
        sd = sounddevice()
        self._capture_stream = self._open(sd, "input", sd.InputStream)
        self._input_latency_s = self._capture_stream.latency
        self._playback_stream = self._open(sd, "output", sd.OutputStream)
        self._output_latency_s = self._playback_stream.latency
        self._output_prefill = int((self._playback_stream.latency + START_MARGIN_S) * self.playback_rate)

    def _open(self, sd: ModuleType, kind: Kind, stream_type: Any) -> Any:
        device = self.input_device if kind == "input" else self.output_device
        assert device is not None, f"no {kind} device to open"
        rate = self.capture_rate if kind == "input" else self.playback_rate
        stream = None
        try:
            stream = stream_type(
                device=device.index,
                samplerate=rate,
                channels=self.capture_channels if kind == "input" else self.playback_channels,
                dtype="float32",
                blocksize=rate * BLOCK_MS // 1000,
                latency="low",
                callback=self.on_capture if kind == "input" else self.on_playback,
            )
            stream.start()
        except sd.PortAudioError as e:
            if stream is not None:
                stream.close()
            raise AudioDeviceError(
                f"cannot open {kind} device {device.name!r} ({e}); pick another with --{kind}-device ({LIST_HINT})."
            ) from e
        return stream

    def check(self, now_s: float) -> None:
        """Raise AudioDeviceError if a started stream died or stopped calling back (device gone).

        Call it periodically from one thread; `now_s` is a monotonic clock in seconds.
        """
        watched = (
            ("input", self.input_device, self._capture_stream, self.captured, self.captured > 0),
            ("output", self.output_device, self._playback_stream, self.rendered, self.rendered > self._output_prefill),
        )
        for kind, device, stream, count, started in watched:
            if stream is None or self._closed:
                continue
            name = device.name if device else kind
            fix = f"reconnect it or pick another with --{kind}-device ({LIST_HINT})."
            if not stream.active:
                raise AudioDeviceError(f"{kind} device {name!r} stopped (disconnected?); {fix}")
            last_count, since = self._progress.get(kind, (-1, now_s))
            if count != last_count:
                self._progress[kind] = (count, now_s)
            elif now_s - since > (STALL_TIMEOUT_S if started else START_TIMEOUT_S):
                raise AudioDeviceError(f"{kind} device {name!r} stopped delivering audio (disconnected?); {fix}")

    def close(self) -> None:
        """Stop and close both streams; a device that is already gone is not an error here."""
        self._closed = True
        sd = sounddevice()
        for stream in (self._capture_stream, self._playback_stream):
            if stream is None:
                continue
            try:
                stream.abort()
                stream.close()
            except sd.PortAudioError:
                pass


def open_duplex(config: AudioConfig) -> DuplexAudio:
    """Resolve both devices of `config` and pick their formats; `DuplexAudio.start()` opens them."""
    devices = list_devices()
    input_device = match_device(devices, config.input_device, "input")
    output_device = match_device(devices, config.output_device, "output")
    capture_rate, capture_channels = stream_format(input_device, "input")
    playback_rate, playback_channels = stream_format(output_device, "output")
    return DuplexAudio(
        input_device=input_device,
        output_device=output_device,
        capture_rate=capture_rate,
        playback_rate=playback_rate,
        capture_channels=capture_channels,
        playback_channels=playback_channels,
    )
