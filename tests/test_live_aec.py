"""Echo cancellation in the live loop: the agent's voice, played and heard back by the microphone,
is taken out before the engine hears it.

The pipeline runs through DuplexAudio's real callbacks on a simulated clock (as in
test_live_policy.py), now with PortAudio's timestamps: capture every 20 ms with its ADC time,
playback 7 ms later with its DAC time. The microphone receives what the speaker played at those
DAC times, through an echo path (ACOUSTIC_MS late, -6 dB, a 60 ms room). The stream latencies put
the echo well beyond what AEC3 finds alone, so the timestamps have to be right for it to work
(measured: about 50 dB of reduction; with the delay forced to 0, under 6 dB).

Run with `-rP` to see the figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from aimsvoice import cli, live
from aimsvoice.audio.aec import simulate_echo, speech_like
from aimsvoice.audio.devices import DuplexAudio
from aimsvoice.audio.format import FRAME_SIZE, SAMPLE_RATE
from aimsvoice.engine.loop import StepOut
from aimsvoice.audio.aec import EchoCanceller
from aimsvoice.live import LivePipeline, resolve_aec
from aimsvoice.ui import AEC_ON_HINT, HEADPHONE_HINT, live_hints, plain_line, render
from test_live_parts import snapshot
from virtual_audio import PulseServer, child_env

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

BLOCK = 480
IN_LATENCY_MS = 150  # ADC time = callback time - block - this
OUT_LATENCY_MS = 500  # DAC time = callback time + this: 670 ms in all, past the ~500 ms AEC3 searches alone
ACOUSTIC_MS = 40  # speaker to microphone, on top of the stream latencies
SECONDS = 8.0
SETTLE_S = 3.0  # echo is measured after this: AEC3 converges within the first second or two
MIN_REDUCTION_DB = 15.0


class NoFlags:
    input_overflow = False
    output_underflow = False


class EchoDevices:
    """DuplexAudio's callbacks on a simulated clock; the microphone hears the speaker's echo.

    `timestamps=False` reports zeros for the ADC/DAC times, as some host APIs do: the pipeline
    must then fall back to the callback time and the streams' latencies.
    """

    def __init__(self, audio: DuplexAudio, *, timestamps: bool, seed: int = 0) -> None:
        self.audio = audio
        self.timestamps = timestamps
        audio._input_latency_s = IN_LATENCY_MS / 1000  # what DuplexAudio.start() reads from the streams
        audio._output_latency_s = OUT_LATENCY_MS / 1000
        impulse = np.zeros((ACOUSTIC_MS + 60) * SAMPLE_RATE // 1000, dtype=np.float32)
        impulse[0] = 1.0
        self.path = simulate_echo(impulse, delay_ms=ACOUSTIC_MS, gain_db=-6.0, rng=np.random.default_rng(seed))
        self.offset = len(self.path) + (IN_LATENCY_MS + 20) * SAMPLE_RATE // 1000  # the first capture's reach back
        self.speaker = np.zeros(self.offset + int((SECONDS + 2) * SAMPLE_RATE), dtype=np.float32)  # by DAC time
        self.now_ms = 0
        self.mic: list[np.ndarray] = []

    def _time(self, adc_ms: float, dac_ms: float) -> SimpleNamespace:
        now_s = self.now_ms / 1000
        if not self.timestamps:
            return SimpleNamespace(currentTime=now_s, inputBufferAdcTime=0.0, outputBufferDacTime=0.0)
        return SimpleNamespace(currentTime=now_s, inputBufferAdcTime=adc_ms / 1000, outputBufferDacTime=dac_ms / 1000)

    def advance(self, seconds: float) -> None:
        offset = self.offset
        for _ in range(round(seconds * 1000)):
            self.now_ms += 1
            if self.now_ms % 20 == 0:
                adc_ms = self.now_ms - 20 - IN_LATENCY_MS
                start = offset + adc_ms * SAMPLE_RATE // 1000
                heard = np.convolve(self.speaker[start - len(self.path) + 1 : start + BLOCK], self.path, mode="valid")
                block = heard.astype(np.float32)
                self.mic.append(block)
                self.audio.on_capture(block[:, None], BLOCK, self._time(adc_ms, 0.0), NoFlags())
            if self.now_ms % 20 == 7:
                dac_ms = self.now_ms + OUT_LATENCY_MS
                out = np.full((BLOCK, 1), np.nan, dtype=np.float32)
                self.audio.on_playback(out, BLOCK, self._time(0.0, dac_ms), NoFlags())
                start = offset + dac_ms * SAMPLE_RATE // 1000
                self.speaker[start : start + BLOCK] = out[:, 0]


class TalkingEngine:
    """Says `speech` frame by frame whatever it hears, and keeps what it heard; stalls 300 ms every `stall_every` steps."""

    def __init__(self, speech: np.ndarray, sleep: Callable[[float], None], stall_every: int = 0) -> None:
        self.speech = speech
        self.sleep = sleep
        self.stall_every = stall_every
        self.heard: list[np.ndarray] = []

    def step(self, pcm: np.ndarray) -> Any:
        k = len(self.heard)
        self.sleep(0.3 if self.stall_every and (k + 1) % self.stall_every == 0 else 0.005)
        self.heard.append(pcm.copy())
        return StepOut(pcm=self.speech[k * FRAME_SIZE : (k + 1) * FRAME_SIZE].copy(), text=None, text_token=3)


def converse(*, aec: bool, timestamps: bool, stall_every: int) -> tuple[np.ndarray, LivePipeline, np.ndarray]:
    """What the engine heard in a simulated conversation where only the agent speaks, and what the microphone did."""
    audio = DuplexAudio()
    devices = EchoDevices(audio, timestamps=timestamps)
    speech = speech_like(int((SECONDS + 1) * SAMPLE_RATE), np.random.default_rng(1))
    engine = TalkingEngine(speech, devices.advance, stall_every)
    pipeline = LivePipeline(engine, audio, aec=EchoCanceller() if aec else None)
    while devices.now_ms < SECONDS * 1000:
        pipeline.pump()
        if not pipeline.step():
            devices.advance(0.001)
    return np.concatenate(engine.heard), pipeline, np.concatenate(devices.mic)


def power_db(pcm: np.ndarray) -> float:
    return 10 * math.log10(float(np.dot(pcm.astype(np.float64), pcm)) / len(pcm) + 1e-20)


@pytest.mark.parametrize(
    ("timestamps", "stall_every"),
    [(True, 0), (False, 0), (True, 25)],
    ids=["timestamps", "host-api-reports-zero", "stalls-shed-input"],
)
def test_the_engine_does_not_hear_the_agent_with_aec_on(timestamps: bool, stall_every: int) -> None:
    raw, off, mic = converse(aec=False, timestamps=timestamps, stall_every=stall_every)
    cleaned, on, _ = converse(aec=True, timestamps=timestamps, stall_every=stall_every)
    # the simulation is deterministic and the agent does not listen: both runs hear the same echo
    # (with stalls, the input shed may differ by a segment: it picks the quietest, and the echo is gone)
    assert len(raw) >= (SECONDS - 2) * SAMPLE_RATE and abs(len(raw) - len(cleaned)) <= FRAME_SIZE
    assert (off.input_shed > 0) == (on.input_shed > 0) == (stall_every > 0)
    settled = int(SETTLE_S * SAMPLE_RATE)
    echo_db = power_db(raw[settled:])
    assert echo_db > -40.0  # the echo is loud: about -20 dBFS
    assert abs(echo_db - power_db(mic[settled:])) < 1.0  # with the canceller off, the engine hears all of it
    reduction_db = echo_db - power_db(cleaned[settled:])
    summary = on.summary("test", wall_s=0.0, recording=None)
    print(f"timestamps {timestamps}, stall every {stall_every}: echo reduced by {reduction_db:.1f} dB after "
          f"{SETTLE_S:.0f} s; running ERLE {summary.aec_erle_db:.1f} dB; reported delay {on.aec.delay_ms:.0f} ms")
    assert reduction_db >= MIN_REDUCTION_DB
    assert summary.aec and summary.aec_erle_db is not None and summary.aec_erle_db >= MIN_REDUCTION_DB
    assert summary.aec_delay_ms == on.aec.delay_ms
    assert on.snapshot("test").aec_on and on.snapshot("test").aec_erle_db == summary.aec_erle_db
    # the reported delay: both stream latencies and the one block each callback spans, give or take a block
    assert abs(on.aec.delay_ms - (IN_LATENCY_MS + OUT_LATENCY_MS + 20)) <= 40
    off_summary = off.summary("test", wall_s=0.0, recording=None)
    assert not off_summary.aec and off_summary.aec_erle_db is None and not off.snapshot("test").aec_on


def test_the_view_shows_echo_cancellation_and_its_erle() -> None:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(snapshot(aec_on=True, aec_erle_db=23.4)))
    assert "echo cancel  on, ERLE 23 dB" in console.export_text()
    assert plain_line(snapshot()).endswith("| aec off")
    assert plain_line(snapshot(aec_on=True)).endswith("| aec on")  # before the agent has spoken
    assert live_hints(True, None) == (AEC_ON_HINT,)
    assert live_hints(False, None) == (HEADPHONE_HINT,)
    assert live_hints(False, "add --aec")[1] == "Hint: add --aec."


# --- the --aec decision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "device", "expected"),
    [
        (None, "USB Audio Headset", (False, None)),
        (None, "MacBook Pro Speakers", (True, None)),
        (None, "pulse", (False, "add --aec")),  # the name does not tell: off, with the hint
        (True, "USB Audio Headset", (True, None)),  # the flag wins
        (False, "Built-in Speaker", (False, None)),
    ],
)
def test_aec_default_follows_the_output_device_unless_the_flag_says(flag, device, expected) -> None:
    on, hint = resolve_aec(flag, device)
    assert on == expected[0]
    assert (hint is None) if expected[1] is None else (expected[1] in hint)


@pytest.mark.parametrize(("args", "expected"), [([], None), (["--aec"], True), (["--no-aec"], False)])
def test_talk_passes_aec_to_the_live_session(monkeypatch: pytest.MonkeyPatch, args: list[str], expected) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(live, "talk_on_devices", lambda settings, config, view, notify=None: calls.append(config))
    result = CliRunner().invoke(cli.app, ["talk", "--model", "tiny", *args])
    assert result.exit_code == 0, result.output
    assert calls[0].aec is expected


def test_aec_is_for_live_conversations(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["talk", "--in", str(tmp_path / "a.wav"), "--out", str(tmp_path / "b.wav"), "--aec"])
    assert result.exit_code != 0 and "--aec/--no-aec" in result.output


# --- on the virtual PulseAudio device -------------------------------------------------------------


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    yield server
    server.stop()


def test_talk_with_aec_on_the_virtual_device(pulse: PulseServer, tiny_dir: Path, tmp_path: Path) -> None:
    """The issue's done-when command: `aimsvoice talk --aec` on the virtual device."""
    feed = pulse.feed_microphone()
    feed.play((np.random.default_rng(1).standard_normal(3 * 24000) * 0.05).astype(np.float32))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aimsvoice.cli", "talk", "--aec", "--model", "tiny", "--no-ui",
             "--record", str(tmp_path / "r.wav"), "--max-minutes", "0.05", "--input-device", "pulse",
             "--output-device", "pulse"],
            env=child_env(pulse.env()), capture_output=True, text=True, timeout=300,
        )
    finally:
        feed.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Echo cancellation is on")
    assert any("| aec on" in line for line in lines)  # shown live
    assert any(line.startswith("echo cancellation: on") for line in lines)  # and in the summary
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["settings"]["aec"] is True
    assert meta["stats"]["aec"] is True and "aec_erle_db" in meta["stats"]
    assert 0 < meta["stats"]["aec_delay_ms"] < 1000  # PulseAudio's stream latencies, from its timestamps
    assert meta["stats"]["frames"] > 0
