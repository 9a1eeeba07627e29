"""Echo cancellation on real speech through a simulated loudspeaker-to-microphone path.

The agent's speech and the user's are synthesised with espeak-ng (two different voices) into the
test's tmp dir; where espeak-ng is missing, `speech_like` signals stand in. The agent's speech is
played through `simulate_echo` (delay, -6 dB, a 60 ms decaying-noise room) into the microphone
over a -65 dBFS noise floor, with and without the user talking over it.

Thresholds, from the measured figures in BENCHMARKS.md (espeak-ng, 4 delays, 2 rooms):
- single talk: ERLE >= 20 dB after 2 s (measured 40-43 dB; 30 dB already in the second second).
- double talk at 0 dB signal-to-echo ratio (the user as loud at the microphone as the echo):
  correlation of the output with the clean user >= 0.70 (measured 0.75-0.82; the raw microphone
  gives 0.71), and with the echo <= 0.10 (measured <= 0.02). 0.8 is reached only once the user
  is 6 dB louder than the echo (0.82-0.87): in double talk AEC3's residual-echo suppressor trades
  some of the user's fidelity for removing the echo, as it does in Chrome. The pair of
  bounds says what matters to the model: the user is kept, the agent's voice is not.

Run with `-rP` to see the figures each test measured.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE, read_wav
from aimsvoice.audio.aec import (
    AecConfig,
    EchoCanceller,
    aec_default,
    erle_db,
    measure_aec,
    output_kind,
    simulate_echo,
    speech_like,
)

AGENT_TEXT = (
    "Hello, I am your assistant. I can help you plan a trip, answer questions about science, "
    "or just chat for a while. Tell me what you would like to do today, and I will do my best to help."
)
USER_TEXT = (
    "Wait, stop for a moment. I want to ask something different. What will the weather be like tomorrow in Paris?"
)
AGENT_VOICE = "en-us+f3"
USER_VOICE = "en-gb+m3"
NOISE_DBFS = -65.0
SETTLE_S = 2.0  # ERLE is measured after this: AEC3 converges within the first second or two
USER_START_S = 3.0  # the user talks over the agent from here, once the canceller has converged
MIN_ERLE_DB = 20.0
MIN_USER_CORR = 0.70
MAX_ECHO_CORR = 0.10
MAX_LAG = SAMPLE_RATE // 50  # 20 ms: the output lags the input by the APM's resampling (~9 ms)


def _say(text: str, voice: str, path: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    return read_wav(path)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """(agent, user) speech at 24 kHz; the agent's cut to whole frames."""
    if shutil.which("espeak-ng"):
        folder = tmp_path_factory.mktemp("voices")
        agent = _say(AGENT_TEXT, AGENT_VOICE, folder / "agent.wav")
        user = _say(USER_TEXT, USER_VOICE, folder / "user.wav")
    else:  # scripts/system-deps.sh installs espeak-ng; elsewhere the measurement still runs
        agent = speech_like(12 * SAMPLE_RATE, np.random.default_rng(1))
        user = speech_like(7 * SAMPLE_RATE, np.random.default_rng(2))
    return agent[: len(agent) // FRAME_SIZE * FRAME_SIZE], user


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return (10.0 ** (NOISE_DBFS / 20.0) * rng.standard_normal(n)).astype(np.float32)


def _cancel(
    near: np.ndarray,
    far: np.ndarray,
    reported_delay_ms: float | None,
    *,
    jitter_ms: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, EchoCanceller]:
    """Run the canceller frame by frame, as the step thread does."""
    aec = EchoCanceller(AecConfig())
    out = np.empty_like(near)
    for start in range(0, len(near), FRAME_SIZE):
        frame = slice(start, start + FRAME_SIZE)
        delay = reported_delay_ms
        if delay is not None and jitter_ms:
            assert rng is not None
            delay += rng.uniform(-jitter_ms, jitter_ms)
        out[frame] = aec.process(near[frame], far[frame], delay_ms=delay)
    return out, aec


def _best_corr(out: np.ndarray, ref: np.ndarray, span: slice) -> float:
    """Largest |correlation| of `ref[span]` with `out` shifted later by 0..MAX_LAG samples."""
    target = ref[span] - ref[span].mean()
    target /= np.linalg.norm(target)
    best = 0.0
    for lag in range(MAX_LAG + 1):
        seg = out[span.start + lag : span.stop + lag]
        seg = seg - seg.mean()
        best = max(best, abs(float(np.dot(seg, target))) / max(float(np.linalg.norm(seg)), 1e-12))
    return best


@pytest.mark.parametrize("delay_ms", [30, 60, 90, 120])
def test_single_talk_erle(voices: tuple[np.ndarray, np.ndarray], delay_ms: int) -> None:
    agent, _ = voices
    rng = np.random.default_rng(delay_ms)
    echo = simulate_echo(agent, delay_ms=delay_ms, rng=rng)
    out, aec = _cancel(echo + _noise(len(agent), rng), agent, delay_ms)
    settled = int(SETTLE_S * SAMPLE_RATE)
    erle = erle_db(echo[settled:], out[settled:])
    print(f"single talk, echo delay {delay_ms} ms: ERLE {erle:.1f} dB (running estimate {aec.erle_db:.1f} dB)")
    assert erle >= MIN_ERLE_DB
    assert aec.erle_db is not None and aec.erle_db >= MIN_ERLE_DB, "the live view's estimate must see it too"


@pytest.mark.parametrize("delay_ms", [30, 60, 90, 120])
def test_double_talk_keeps_the_user(voices: tuple[np.ndarray, np.ndarray], delay_ms: int) -> None:
    agent, user = voices
    rng = np.random.default_rng(100 + delay_ms)
    echo = simulate_echo(agent, delay_ms=delay_ms, rng=rng)
    start = int(USER_START_S * SAMPLE_RATE)
    span = slice(start, min(start + len(user), len(agent) - MAX_LAG))
    talk = np.zeros_like(agent)
    talk[span] = user[: span.stop - span.start]
    talk *= np.sqrt(np.sum(echo[span] ** 2) / np.sum(talk[span] ** 2))  # 0 dB signal-to-echo ratio
    mic = echo + talk + _noise(len(agent), rng)

    out, _ = _cancel(mic, agent, delay_ms)

    user_corr = _best_corr(out, talk, span)
    echo_corr = _best_corr(out, echo, span)
    raw_corr = _best_corr(mic, talk, span)
    print(
        f"double talk, echo delay {delay_ms} ms: user corr {user_corr:.3f} (mic {raw_corr:.3f}), "
        f"echo corr {echo_corr:.3f}"
    )
    assert user_corr >= MIN_USER_CORR
    assert echo_corr <= MAX_ECHO_CORR


@pytest.mark.parametrize(
    ("echo_delay_ms", "reported_ms", "jitter_ms"),
    [
        (300, 350, 0.0),  # the reported delay 50 ms too long: within the headroom
        (300, 200, 0.0),  # 100 ms too short: AEC3 finds the rest
        (90, None, 0.0),  # not reported: AEC3 finds it alone, within its reach
        (300, 300, 15.0),  # jittering timestamps must not make the far end jump
        (600, 600, 15.0),  # Bluetooth-like: beyond AEC3's own reach, the delay line brings it in
    ],
)
def test_alignment(
    voices: tuple[np.ndarray, np.ndarray], echo_delay_ms: int, reported_ms: float | None, jitter_ms: float
) -> None:
    agent, _ = voices
    rng = np.random.default_rng(7)
    echo = simulate_echo(agent, delay_ms=echo_delay_ms, rng=rng)
    out, _ = _cancel(echo + _noise(len(agent), rng), agent, reported_ms, jitter_ms=jitter_ms, rng=rng)
    settled = int(SETTLE_S * SAMPLE_RATE)
    erle = erle_db(echo[settled:], out[settled:])
    print(f"echo delay {echo_delay_ms} ms, reported {reported_ms} ms ±{jitter_ms} ms: ERLE {erle:.1f} dB")
    assert erle >= MIN_ERLE_DB


def test_off_passes_the_capture_through(voices: tuple[np.ndarray, np.ndarray]) -> None:
    agent, _ = voices
    echo = simulate_echo(agent, delay_ms=60, rng=np.random.default_rng(3))
    aec = EchoCanceller(AecConfig(), enabled=False)
    frames = [(echo[i : i + FRAME_SIZE], agent[i : i + FRAME_SIZE]) for i in range(0, len(agent), FRAME_SIZE)]
    for near, far in frames[:40]:
        assert aec.process(near, far) is near
    assert aec.stats().enabled is False and aec.erle_db is None

    aec.enabled = True
    out = np.concatenate([aec.process(near, far) for near, far in frames[40:]])
    settled = int(SETTLE_S * SAMPLE_RATE)
    assert erle_db(echo[40 * FRAME_SIZE :][settled:], out[settled:]) >= MIN_ERLE_DB
    assert aec.stats().frames == len(frames) - 40


def test_frames_must_be_whole_10ms_pieces() -> None:
    aec = EchoCanceller()
    with pytest.raises(AssertionError, match="10 ms"):
        aec.process(np.zeros(1000, np.float32), np.zeros(1000, np.float32))
    with pytest.raises(AssertionError, match="equal 1-D"):
        aec.process(np.zeros(FRAME_SIZE, np.float32), np.zeros(FRAME_SIZE // 2, np.float32))


@pytest.mark.parametrize(
    ("name", "kind", "on"),
    [
        ("MacBook Pro Speakers", "speakers", True),
        ("Speakers (Realtek(R) Audio)", "speakers", True),
        ("Jabra Evolve2 65 Headset", "headset", False),
        ("Headphones (Realtek(R) Audio)", "headset", False),
        ("AirPods Pro", "headset", False),
        ("Galaxy Buds2", "headset", False),
        ("Headset Speaker (Logitech)", "headset", False),
        ("pulse", "unknown", False),
        ("HDA Intel PCH: ALC257 Analog (hw:0,0)", "unknown", False),
    ],
)
def test_aec_default_from_the_output_name(name: str, kind: str, on: bool) -> None:
    assert output_kind(name) == kind
    default, hint = aec_default(name)
    assert default is on
    assert (hint is not None) == (kind == "unknown")


def test_measure_aec_reports_cost_and_erle() -> None:
    result = measure_aec(seconds=4.0)
    assert result["frames"] == 50 and result["frame_ms"] == 80.0
    assert result["ms_per_frame_median"] > 0.0 and result["cpu_ms_per_frame_median"] >= 0.0
    assert result["erle_db"] >= MIN_ERLE_DB


def test_bench_aec_reports_cost_and_erle(capsys, monkeypatch) -> None:
    """`aimsvoice bench aec --json`: the canceller's cost and ERLE, measured (not timed here)."""
    import json

    from cli_run import run_main

    code, out, _ = run_main(["bench", "aec", "--seconds", "6", "--json"], capsys, monkeypatch)
    assert code == 0
    report = json.loads(out)
    assert report["frames"] == 75 and report["delay_ms"] == 80.0
    assert 0 < report["ms_per_frame_median"] <= report["ms_per_frame_max"]
    assert report["erle_db"] >= 20.0
