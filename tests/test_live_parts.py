"""The live session's parts without sound devices: device choice, callbacks, recording, views."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from aimsvoice.audio import devices as audio_devices
from aimsvoice.audio.devices import DeviceInfo, DuplexAudio, RateConverter, match_device, stream_format
from aimsvoice.audio.recorder import Recorder
from aimsvoice.errors import AudioDeviceError
from aimsvoice.live import LiveSnapshot, LiveSummary, level_dbfs
from aimsvoice.ui import HEADPHONE_HINT, LiveView, devices_table, plain_line, render, summary_lines

DEVICES = [
    DeviceInfo(0, "HDA Intel PCH: ALC257 Analog (hw:0,0)", "ALSA", 2, 2, 44100.0),
    DeviceInfo(1, "USB Audio Mic", "ALSA", 1, 0, 48000.0),
    DeviceInfo(2, "USB Audio Headset", "ALSA", 1, 2, 48000.0),
    DeviceInfo(3, "pulse", "ALSA", 32, 32, 44100.0),
    DeviceInfo(4, "default", "ALSA", 32, 32, 44100.0, is_default_input=True, is_default_output=True),
]


class Flags:
    def __init__(self, input_overflow: bool = False, output_underflow: bool = False) -> None:
        self.input_overflow = input_overflow
        self.output_underflow = output_underflow


# --- choosing devices ------------------------------------------------------------------------


def test_match_by_default_index_and_substring() -> None:
    assert match_device(DEVICES, None, "input").index == 4
    assert match_device(DEVICES, 2, "output").name == "USB Audio Headset"
    assert match_device(DEVICES, "3", "input").name == "pulse"
    assert match_device(DEVICES, "alc257", "output").index == 0  # case-insensitive substring
    assert match_device(DEVICES, "usb mic", "input").index == 1  # words in order
    assert match_device(DEVICES, "usb", "output").index == 2  # the mic has no output channels


def test_match_rejects_ambiguous_unknown_and_wrong_direction() -> None:
    with pytest.raises(AudioDeviceError, match=r"several devices \(\[1\] USB Audio Mic; \[2\] USB Audio Headset\)"):
        match_device(DEVICES, "usb audio", "input")
    with pytest.raises(AudioDeviceError, match="no output device matches 'webcam'.*aimsvoice devices"):
        match_device(DEVICES, "webcam", "output")
    with pytest.raises(AudioDeviceError, match="no output device with index 1"):
        match_device(DEVICES, 1, "output")
    with pytest.raises(AudioDeviceError, match="mic headset"):  # words out of order do not match
        match_device(DEVICES, "mic headset", "input")


def test_exact_name_wins_over_substring_matches() -> None:
    devices = [*DEVICES, DeviceInfo(5, "pulse monitor", "ALSA", 2, 0, 44100.0)]
    assert match_device(devices, "pulse", "input").index == 3


def test_no_input_device_names_the_problem() -> None:
    speakers_only = [DeviceInfo(0, "speakers", "ALSA", 0, 2, 48000.0, is_default_output=True)]
    with pytest.raises(AudioDeviceError, match="no input device found"):
        match_device(speakers_only, None, "input")


class FakeSoundDevice:
    """The two sounddevice calls stream_format makes; `supported` lists (rate, channels)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, supported: set[tuple[int, int]]) -> None:
        self.supported = supported

    def check_input_settings(self, *, device: int, samplerate: int, channels: int, dtype: str) -> None:
        if (samplerate, channels) not in self.supported:
            raise self.PortAudioError(f"Invalid sample rate {samplerate} / channels {channels}")

    check_output_settings = check_input_settings


@pytest.mark.parametrize(
    ("supported", "expected"),
    [
        ({(24000, 1), (48000, 1)}, (24000, 1)),  # the model's rate when the device can
        ({(48000, 1), (48000, 2)}, (48000, 1)),  # else its own rate, resampled
        ({(48000, 2)}, (48000, 2)),  # stereo-only hardware
    ],
)
def test_stream_format_prefers_24k_mono(monkeypatch: pytest.MonkeyPatch, supported, expected) -> None:
    monkeypatch.setattr(audio_devices, "sounddevice", lambda: FakeSoundDevice(supported))
    assert stream_format(DEVICES[2], "output") == expected


def test_stream_format_fails_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio_devices, "sounddevice", lambda: FakeSoundDevice(set()))
    with pytest.raises(AudioDeviceError, match="cannot open input device 'USB Audio Mic' at 24000 Hz.*--input-device"):
        stream_format(DEVICES[1], "input")


def test_rate_converter_streams_between_rates() -> None:
    to_24k = RateConverter(44100, 24000)
    t = np.arange(44100) / 44100
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    chunks = [to_24k.convert(sine[i : i + 882]) for i in range(0, len(sine), 882)]
    out = np.concatenate(chunks)
    assert 0 <= 24000 - len(out) < 480  # less the resampler's own delay (under 20 ms)
    # a clean 440 Hz sine at 24 kHz, whatever its phase: no glitches at the 20 ms chunk joints
    n = np.arange(2000, 20000)
    basis = np.stack([np.sin(2 * np.pi * 440 * n / 24000), np.cos(2 * np.pi * 440 * n / 24000)], axis=1)
    coeffs, *_ = np.linalg.lstsq(basis, out[n], rcond=None)
    assert np.hypot(*coeffs) == pytest.approx(1.0, abs=0.01)
    assert np.abs(out[n] - basis @ coeffs).max() < 1e-3
    identity = RateConverter(24000, 24000)
    assert identity.convert(sine) is sine


# --- callbacks -------------------------------------------------------------------------------


def test_playback_callback_plays_silence_on_underrun_and_counts_runs_after_the_first_sound() -> None:
    audio = DuplexAudio(playback_channels=2)
    out = np.ones((480, 2), dtype=np.float32)
    audio.on_playback(out, 480, None, Flags())
    assert not out.any() and audio.underrun_events == 0  # before the agent's first sound
    audio.playback_ring.write(np.full(600, 0.5, dtype=np.float32))
    audio.on_playback(out, 480, None, Flags())
    assert (out == 0.5).all()  # mono copied to both channels
    audio.on_playback(out, 480, None, Flags(output_underflow=True))
    assert (out[:120] == 0.5).all() and not out[120:].any()
    audio.on_playback(out, 480, None, Flags())
    assert (audio.underrun_events, audio.underrun_samples) == (1, 360 + 480)  # one run of silence
    audio.playback_ring.write(np.full(480, 0.5, dtype=np.float32))
    audio.on_playback(out, 480, None, Flags())
    audio.on_playback(out, 480, None, Flags())
    assert audio.underrun_events == 2
    assert (audio.played, audio.rendered, audio.device_underflows) == (1080, 6 * 480, 1)


def test_capture_callback_takes_channel_0_and_counts_what_did_not_fit() -> None:
    audio = DuplexAudio()
    block = np.stack([np.arange(480, dtype=np.float32), -np.ones(480, dtype=np.float32)], axis=1)
    n_blocks = audio.capture_ring.capacity // 480 + 2
    for _ in range(n_blocks):
        audio.on_capture(block, 480, None, Flags(input_overflow=True))
    assert audio.captured == n_blocks * 480
    assert audio.capture_dropped == n_blocks * 480 - audio.capture_ring.capacity
    assert audio.device_overflows == n_blocks
    got = np.zeros(480, dtype=np.float32)
    audio.capture_ring.read_into(got)
    np.testing.assert_array_equal(got, block[:, 0])


def test_a_silent_stream_is_reported_as_a_lost_device() -> None:
    audio = DuplexAudio(input_device=DEVICES[1], output_device=DEVICES[2])
    audio._capture_stream = SimpleNamespace(active=True)
    audio._playback_stream = SimpleNamespace(active=True)
    audio.check(100.0)
    audio.check(109.0)  # no callback yet: a stream may take seconds to start
    audio.on_capture(np.zeros((480, 1), dtype=np.float32), 480, None, Flags())
    audio.on_playback(np.zeros((480, 1), dtype=np.float32), 480, None, Flags())
    audio.check(110.0)
    audio.on_playback(np.zeros((480, 1), dtype=np.float32), 480, None, Flags())
    with pytest.raises(AudioDeviceError, match="input device 'USB Audio Mic' stopped delivering audio.*--input-device"):
        audio.check(112.5)
    audio._capture_stream.active = False
    with pytest.raises(AudioDeviceError, match="input device 'USB Audio Mic' stopped \\(disconnected"):
        audio.check(112.6)


# --- recording -------------------------------------------------------------------------------


def read_stereo(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 24000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def test_recorder_writes_user_left_agent_right_and_a_valid_file_at_every_flush(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.wav").write_bytes(b"an older recording")
    rec = Recorder(tmp_path / "sub" / "r.wav")
    user = np.linspace(-0.5, 0.5, 1920, dtype=np.float32)
    agent = np.full(1920, 0.25, dtype=np.float32)
    rec.push(user, agent)
    rec.flush()
    on_disk = read_stereo(rec.partial_path)  # readable while still open, beside the path
    assert on_disk.shape == (1920, 2)
    assert (tmp_path / "sub" / "r.wav").read_bytes() == b"an older recording", "replaced only once complete"
    rec.push(agent, user)
    rec.close({"persona": "test", "stats": {"frames": 2}})
    pcm = read_stereo(tmp_path / "sub" / "r.wav")
    np.testing.assert_array_equal(pcm[:1920, 0], np.round(user * 32767).astype(np.int16))
    np.testing.assert_array_equal(pcm[:1920, 1], np.full(1920, round(0.25 * 32767)))
    np.testing.assert_array_equal(pcm[1920:, 1], np.round(user * 32767).astype(np.int16))
    assert not rec.partial_path.exists()
    meta = json.loads((tmp_path / "sub" / "r.json").read_text())
    assert meta["persona"] == "test" and meta["stats"] == {"frames": 2}
    assert meta["audio"]["duration_s"] == 0.16 and meta["audio"]["lost_s"] == 0.0


def test_recorder_counts_what_it_could_not_hold(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.wav")
    frame = np.zeros(24000, dtype=np.float32)
    for _ in range(31):  # 31 s without a flush; the buffer holds 30 s
        rec.push(frame, frame)
    rec.close({})
    meta = json.loads((tmp_path / "r.json").read_text())
    assert (meta["audio"]["duration_s"], meta["audio"]["lost_s"]) == (30.0, 1.0)


def test_recorder_reports_an_unwritable_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match="cannot write the recording.*--record"):
        Recorder(tmp_path / "file" / "r.wav")


# --- views -----------------------------------------------------------------------------------


def snapshot(**changes) -> LiveSnapshot:
    fields = dict(
        persona="headcoach", elapsed_s=12.5, frames=150, words=("Hello", "there", "coa"), text_tail="Hello there coa",
        input_level_db=-32.0, output_level_db=-18.0, compute_p50_ms=41.5, compute_p95_ms=95.0, budget_ms=80.0,
        input_backlog_ms=20.0, input_bound_ms=160.0, output_queue_ms=100.0, output_bound_ms=240.0,
        input_shed_ms=250.0, output_shed_ms=70.0, underruns=3, underrun_ms=480.0,
    )
    fields.update(changes)
    return LiveSnapshot(**fields)


def test_render_shows_everything_the_issue_asks_for() -> None:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(snapshot()))
    text = console.export_text()
    for needle in ("headcoach", "Hello there coa", "-32.0 dBFS", "-18.0 dBFS", "p50  41.5 ms", "p95  95.0 ms",
                   "budget 80 ms", "input   20/160 ms", "playback  100/240 ms", "input   0.25 s", "playback   0.07 s",
                   "3   (0.48 s of silence)"):
        assert needle in text, needle


def test_rich_view_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with LiveView(rich=True, console=console) as view:
        view.update(snapshot())
    text = out.getvalue()
    assert HEADPHONE_HINT in text and "headcoach" in text and "p95  95.0 ms" in text
    assert "] frames" not in text  # no plain status line


def test_plain_view_prints_a_line_per_second_and_only_finished_words() -> None:
    console = Console(record=True, width=300, color_system=None)
    with LiveView(rich=True, console=console) as view:  # not a terminal: plain lines
        view.update(snapshot(elapsed_s=1.0, words=("Hel",)))
        view.update(snapshot(elapsed_s=1.5, words=("Hello", "th")))  # under a second later: nothing
        view.update(snapshot(elapsed_s=2.0, words=("Hello", "there", "coa")))
    lines = console.export_text().splitlines()
    assert lines[0] == HEADPHONE_HINT
    assert lines[1] == plain_line(snapshot(elapsed_s=1.0, words=("Hel",)))
    assert lines[2].startswith("[    2.0 s] frames 150 | you -32.0 dB agent -18.0 dB | compute p50 41.5 p95 95.0 ms")
    assert lines[3] == "agent: Hello there"
    assert len(lines) == 4


def test_summary_lines() -> None:
    summary = LiveSummary(
        end_reason="interrupted", duration_s=61.2, wall_s=61.5, frames=765, compute_mean_ms=42.0, compute_p99_ms=77.7,
        compute_s=32.1, latency_p50_ms=100.0, latency_max_ms=320.0, max_input_backlog_ms=160.0,
        max_output_queue_ms=240.0, input_bound_ms=160.0, output_bound_ms=240.0, input_shed_ms=265.0,
        input_shed_events=4, output_shed_ms=850.0, output_shed_events=22, capture_lost_ms=0.0, underruns=4,
        underrun_ms=1150.0, device_xruns=0, recording=Path("r.wav"), trace=(),
    )
    text = "\n".join(summary_lines(summary))
    for needle in ("ended (interrupted) after 61.2 s: 765 frames", "mean 42.0 ms, p99 77.7 ms", "32.1 device-seconds",
                   "input 265 ms (4 cuts)", "playback 850 ms (22 cuts)", "underruns 4 (1150 ms of silence)",
                   "max input backlog 160/160 ms", "recording: r.wav (+ r.json)"):
        assert needle in text, needle
    assert "trace" not in summary.to_json() and summary.to_json()["end_reason"] == "interrupted"


def test_devices_table_lists_everything_and_marks_defaults() -> None:
    console = Console(record=True, width=150, color_system=None)
    console.print(devices_table(DEVICES))
    rows = {line.split("│")[2].strip(): line for line in console.export_text().splitlines() if line.count("│") > 5}
    assert set(rows) == {d.name for d in DEVICES}
    assert "48000 Hz" in rows["USB Audio Mic"] and "input, output" in rows["default"]
    assert "input" not in rows["pulse"].split("│")[7]


def test_level_dbfs() -> None:
    assert level_dbfs(np.zeros(1920, dtype=np.float32)) == -120.0
    assert level_dbfs(np.full(1920, 0.5, dtype=np.float32)) == pytest.approx(-6.02, abs=0.01)
