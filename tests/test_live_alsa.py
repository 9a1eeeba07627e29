"""Real PortAudio on virtual ALSA devices (the `file` plugin): listing, bit-exact I/O, sessions, errors.

These devices are not paced (callbacks run as fast as the CPU allows), so every test here stops
by a sample count or by the session's audio clock, never by wall time. Each test runs its audio
code in a child process that sees only the virtual devices (see virtual_audio.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from virtual_audio import AlsaFileDevices, alsa_without_devices, child_env, run_child

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

MIC, SPEAKER = "aimsvoice_mic", "aimsvoice_speaker"


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 24000)) * 0.1).astype(np.float32)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aimsvoice.cli", *args], env={**child_env(env), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120,
    )


def read_stereo(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 24000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def test_devices_command_lists_the_virtual_devices(tmp_path: Path) -> None:
    alsa = AlsaFileDevices.create(tmp_path, noise(0.1))
    result = run_cli("devices", env=alsa.env())
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "ALSA" in line]
    assert [row.split("│")[2].strip() for row in rows] == [MIC, SPEAKER, "default"]
    assert all("44100 Hz" in row for row in rows)
    assert "input, output" in rows[2]


def test_capture_is_bit_exact(tmp_path: Path) -> None:
    mic = noise(2.0)
    alsa = AlsaFileDevices.create(tmp_path, mic, speaker_to_file=False)
    out = tmp_path / "captured.npy"
    result = run_child("capture", {"device": MIC, "output_device": SPEAKER, "rate": 24000, "n_samples": len(mic), "out": str(out)}, alsa.env())
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), mic)


def test_playback_is_bit_exact(tmp_path: Path) -> None:
    signal = noise(2.0, seed=5)
    alsa = AlsaFileDevices.create(tmp_path, noise(0.1))
    np.save(tmp_path / "signal.npy", signal)
    result = run_child("play", {"device": SPEAKER, "input_device": MIC, "rate": 24000, "pcm": str(tmp_path / "signal.npy")}, alsa.env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["played"] == len(signal)
    played = alsa.played()
    start = int(np.flatnonzero(played)[0])
    assert not played[:start].any()  # the file plugin writes a couple of blocks of silence first
    np.testing.assert_array_equal(played[start : start + len(signal)], signal)


def live_args(tmp_path: Path, **changes) -> dict:
    args = {
        "engine": "pass", "input_device": MIC, "output_device": SPEAKER, "record": str(tmp_path / "r.wav"),
        "max_minutes": 0.05, "ui": False, "summary": str(tmp_path / "summary.json"),
    }
    args.update(changes)
    return args


def test_session_on_unpaced_devices_holds_the_bounds_and_records_stereo(tmp_path: Path) -> None:
    """Capture at CPU speed is the worst backlog there is: the bounds must still hold."""
    alsa = AlsaFileDevices.create(tmp_path, noise(5.0), speaker_to_file=False)
    result = run_child("live", live_args(tmp_path, idle_timeout=2.0, engine_args={"text_every": 5}), alsa.env())
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["end_reason"] == "max-minutes"  # never idle: the mic is all noise
    assert summary["duration_s"] >= 3.0  # by the device's clock
    assert summary["max_input_backlog_ms"] <= 160.0 and summary["max_output_queue_ms"] <= 240.0
    # Capture outruns the frames: the backlog is shed. Whether the capture ring also overflows depends on
    # how the threads were scheduled; it is counted either way, never hidden.
    assert summary["input_shed_ms"] > 0 and "capture_lost_ms" in summary
    pcm = read_stereo(tmp_path / "r.wav")
    meta = json.loads((tmp_path / "r.json").read_text())
    # Unpaced, the engine steps at CPU speed: if the main thread's flushes fall behind by more than the
    # recorder's 30 s of rings, the excess is lost and counted; nothing goes unaccounted.
    lost = round(meta["audio"]["lost_s"] * 24_000)
    assert len(pcm) + lost == summary["frames"] * 1920 and len(pcm) > 0
    np.testing.assert_array_equal(pcm[:, 0], pcm[:, 1])  # pass-through: the agent said what it heard
    assert meta["stats"]["frames"] == summary["frames"] and meta["stats"]["end_reason"] == "max-minutes"
    assert meta["settings"]["input_device"] == MIC and meta["settings"]["input_backlog_frames"] == 2
    words = meta["transcript"]["words"]
    assert [w["word"] for w in words[:2]] == ["w5", "w10"] and words[0]["start"] == 0.32  # frame 4 of the recording
    assert "session ended (max-minutes)" in result.stdout


def test_idle_timeout_ends_a_silent_session(tmp_path: Path) -> None:
    alsa = AlsaFileDevices.create(tmp_path, np.zeros(24000, dtype=np.float32), speaker_to_file=False)
    result = run_child("live", live_args(tmp_path, max_minutes=1.0, idle_timeout=1.0), alsa.env())
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["end_reason"] == "idle-timeout"
    assert summary["duration_s"] >= 1.0


def test_engine_error_keeps_the_recording(tmp_path: Path) -> None:
    alsa = AlsaFileDevices.create(tmp_path, noise(5.0), speaker_to_file=False)
    result = run_child("live", live_args(tmp_path, engine="fail", engine_args={"fail_at": 20}, max_minutes=10.0), alsa.env())
    assert result.returncode != 0
    assert "RuntimeError: engine blew up" in result.stderr
    assert len(read_stereo(tmp_path / "r.wav")) == 20 * 1920
    assert json.loads((tmp_path / "r.json").read_text())["stats"]["end_reason"] == "error"


def test_unknown_device_is_one_line_with_the_fix(tmp_path: Path) -> None:
    alsa = AlsaFileDevices.create(tmp_path, noise(0.1))
    result = run_child("live", live_args(tmp_path, input_device="studio mic"), alsa.env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no input device matches 'studio mic'; pick one with --input-device (run `aimsvoice devices` to list them)."
    ]


def test_no_devices_at_all(tmp_path: Path) -> None:
    env = alsa_without_devices(tmp_path)
    result = run_cli("devices", env=env)
    assert result.returncode == 1
    assert "PortAudio sees no audio devices" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_child("live", live_args(tmp_path, input_device=None, output_device=None), env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no input device found; connect one")


def test_missing_portaudio_names_the_package(tmp_path: Path) -> None:
    """A sounddevice that cannot load libportaudio raises OSError, as the real one does."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = child_env({})
    env["PYTHONPATH"] = f"{fake}:{env['PYTHONPATH']}"
    result = subprocess.run([sys.executable, "-m", "aimsvoice.cli", "devices"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: PortAudio is not installed; install it with `sudo apt-get install libportaudio2` (or run `make install`)."
    ]


def test_talk_checks_the_devices_before_loading_the_model(tmp_path: Path) -> None:
    alsa = AlsaFileDevices.create(tmp_path, noise(0.1))
    result = run_cli("talk", "--model", str(tmp_path / "no-model"), "--input-device", "studio mic", "--no-ui", env=alsa.env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no input device matches 'studio mic'; pick one with --input-device (run `aimsvoice devices` to list them)."
    ]


def test_talk_rejects_live_options_with_in_and_out(tmp_path: Path) -> None:
    result = run_cli("talk", "--in", "a.wav", "--out", "b.wav", "--record", "r.wav", env={})
    assert result.returncode == 2
    assert "are for live conversations; drop --in/--out to talk live" in " ".join(result.stderr.split())
