"""Sound devices without a sound card, test engines, and a runner for audio code in a child process.

- `AlsaFileDevices`: an ALSA configuration whose `aimsvoice_mic` plays a raw float32 file as
  the microphone and whose `aimsvoice_speaker` writes what is played to a file, through ALSA's
  `file` plugin over the `null` plugin. Bit-exact both ways, but NOT paced: callbacks run as fast
  as the CPU allows, so tests using it stop by sample counts, never by wall time.
  PortAudio opens them in float32 directly: a `plug` layer in front of the file plugin makes
  the capture side skip input whenever the plug's buffer wraps (alsa-lib 1.2.8), so there is none.
  A `default` PCM is always defined: PortAudio 19.6 asserts when every listed device opens.
- `PulseServer`: a private PulseAudio daemon with two null sinks, paced in real time: the
  speaker (`aimsvoice_speaker`, recorded through its monitor) and the microphone feed
  (`aimsvoice_micfeed`, whose monitor is the default source). PortAudio reaches it through
  ALSA's `pulse` device.
- `PassThroughEngine`, `StallingEngine`: FrameEngines that answer each frame with itself.
- Child processes: PortAudio reads the ALSA configuration once per process, so every test that
  opens devices runs `python tests/virtual_audio.py <scenario> <json>` with its own environment.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 120

# --- test engines ---------------------------------------------------------------------------


class PassThroughEngine:
    """A `FrameEngine` that answers each frame with a copy of itself; every `text_every` frames also says a word."""

    def __init__(self, *, text_every: int = 0, sleep: Callable[[float], None] = time.sleep, compute_s: float = 0.0) -> None:
        self.text_every = text_every
        self.sleep = sleep
        self.compute_s = compute_s
        self.n_steps = 0

    def start(self, spec: Any) -> None:
        self.n_steps = 0

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"engine": type(self).__name__}

    def step(self, pcm: np.ndarray) -> Any:
        from aimsvoice.engine.contract import StepOut  # torch-free: the capture/play scenarios never load torch

        assert pcm.shape == (1920,) and pcm.dtype == np.float32, (pcm.shape, pcm.dtype)
        if self.compute_s:
            self.sleep(self.compute_s)
        self.n_steps += 1
        word = self.text_every and self.n_steps % self.text_every == 0
        return StepOut(pcm=pcm.copy(), text=f" w{self.n_steps}" if word else None, text_token=self.n_steps if word else 3)


class StallingEngine(PassThroughEngine):
    """A pass-through engine that stalls for `stall_s` on every `every`-th step."""

    def __init__(self, *, every: int, stall_s: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every = every
        self.stall_s = stall_s
        self.stalled_steps: list[int] = []  # 0-based indices of the steps that stalled

    def step(self, pcm: np.ndarray) -> Any:
        if (self.n_steps + 1) % self.every == 0:
            self.stalled_steps.append(self.n_steps)
            self.sleep(self.stall_s)
        return super().step(pcm)


class FailingEngine(PassThroughEngine):
    """A pass-through engine that raises on step `fail_at` (0-based)."""

    def __init__(self, *, fail_at: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_at = fail_at

    def step(self, pcm: np.ndarray) -> Any:
        if self.n_steps == self.fail_at:
            raise RuntimeError("engine blew up")
        return super().step(pcm)


# --- ALSA file-plugin devices ---------------------------------------------------------------


@dataclass
class AlsaFileDevices:
    """Virtual ALSA devices `aimsvoice_mic` (plays `mic_path`) and `aimsvoice_speaker` (writes `speaker_path`)."""

    directory: Path
    mic_path: Path
    speaker_path: Path
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.directory / "asound.conf"
        self.config_path.write_text(
            f"""# aimsvoice test devices (see tests/virtual_audio.py)
pcm.aimsvoice_mic {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{self.mic_path}"
    format "raw"
}}
pcm.aimsvoice_speaker {{
    type file
    slave.pcm {{ type null }}
    file "{self.speaker_path}"
    format "raw"
}}
pcm.default {{
    type null
}}
"""
        )

    @classmethod
    def create(cls, directory: Path, mic_pcm: np.ndarray, *, speaker_to_file: bool = True) -> AlsaFileDevices:
        """Devices whose microphone plays `mic_pcm` (float32) once; after it, stale samples repeat."""
        mic_path = directory / "mic.raw"
        np.asarray(mic_pcm, dtype="<f4").tofile(mic_path)
        speaker_path = directory / "speaker.raw" if speaker_to_file else Path(os.devnull)
        return cls(directory, mic_path, speaker_path)

    def env(self) -> dict[str, str]:
        """Environment for a child process that should see only these devices."""
        return {"ALSA_CONFIG_PATH": str(self.config_path)}

    def played(self) -> np.ndarray:
        """Everything written to the speaker so far (float32)."""
        return np.fromfile(self.speaker_path, dtype="<f4")


def alsa_without_devices(directory: Path) -> dict[str, str]:
    """Environment for a machine with no usable sound device (the one PCM listed fails to open)."""
    config = directory / "asound-empty.conf"
    config.write_text('pcm.broken {\n    type file\n    slave.pcm "missing"\n    file "/dev/null"\n}\n')
    return {"ALSA_CONFIG_PATH": str(config)}


# --- PulseAudio null sinks ------------------------------------------------------------------

SPEAKER_SINK = "aimsvoice_speaker"
MIC_SINK = "aimsvoice_micfeed"
PULSE_FORMAT = ["--rate=24000", "--channels=1", "--format=float32le", "--raw"]


class PulseServer:
    """A private PulseAudio daemon (no sound card, real-time pacing) in `directory`."""

    def __init__(self, directory: Path) -> None:
        missing = [tool for tool in ("pulseaudio", "pacat", "parec", "pactl") if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run scripts/system-deps.sh (make install)")
        self.directory = directory
        self.runtime = directory / "runtime"
        self.home = directory / "home"
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        script = directory / "default.pa"
        script.write_text(
            "load-module module-native-protocol-unix\n"
            f"load-module module-null-sink sink_name={SPEAKER_SINK} rate=24000 channels=1 format=float32le\n"
            f"load-module module-null-sink sink_name={MIC_SINK} rate=24000 channels=1 format=float32le\n"
            f"set-default-sink {SPEAKER_SINK}\n"
            f"set-default-source {MIC_SINK}.monitor\n"
        )
        self.log = directory / "pulseaudio.log"
        self._process = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes", "--use-pid-file=no",
             "--log-target=stderr", "-F", str(script)],
            env={**os.environ, **self.env()},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env={**os.environ, **self.env()}, capture_output=True).returncode != 0:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def env(self) -> dict[str, str]:
        """Environment for clients of this server (PortAudio's `pulse` device, pacat, parec)."""
        return {
            "XDG_RUNTIME_DIR": str(self.runtime),
            "HOME": str(self.home),
            "PULSE_SERVER": f"unix:{self.runtime / 'pulse' / 'native'}",
        }

    def feed_microphone(self) -> MicrophoneFeed:
        """Connect a feed to the microphone sink; it plays silence until given audio.

        Start it before the session: a stream connecting to a sink makes PulseAudio rewind that
        sink, which shifts the monitor's timing by a block under a running capture.
        """
        return MicrophoneFeed(subprocess.Popen(
            ["pacat", "-p", "-d", MIC_SINK, *PULSE_FORMAT, "--latency-msec=40"],
            env={**os.environ, **self.env()},
            stdin=subprocess.PIPE,
        ))

    def record_speaker(self, path: Path) -> subprocess.Popen[bytes]:
        """Start recording what reaches the speaker into `path` (float32); stop with `stop_recording`."""
        return subprocess.Popen(
            ["parec", "-d", f"{SPEAKER_SINK}.monitor", *PULSE_FORMAT, "--latency-msec=100", str(path)],
            env={**os.environ, **self.env()},
        )

    @staticmethod
    def stop_recording(process: subprocess.Popen[bytes]) -> None:
        """Stop a parec started by `record_speaker` (it flushes what it has on SIGINT)."""
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)

    def kill(self) -> None:
        """Kill the daemon at once, as a pulled plug would."""
        self._process.kill()
        self._process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the daemon (idempotent)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)


class MicrophoneFeed:
    """pacat fed from a thread: silence, or the audio given to `play`, block by block.

    The pipe to pacat is what paces the thread (writes block once pacat's buffer is full).
    """

    def __init__(self, pacat: subprocess.Popen[bytes]) -> None:
        self._pacat = pacat
        self._pending: queue.Queue[np.ndarray] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def play(self, pcm: np.ndarray) -> None:
        """Queue `pcm` (float32) to follow the audio already queued."""
        for start in range(0, len(pcm), 480):
            self._pending.put(np.asarray(pcm[start : start + 480], dtype="<f4"))

    def close(self) -> None:
        """Stop feeding and end pacat."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._pacat.terminate()
        self._pacat.wait(timeout=10)

    def _run(self) -> None:
        silence = np.zeros(480, dtype="<f4")
        assert self._pacat.stdin is not None
        try:
            while not self._stop.is_set():
                try:
                    block = self._pending.get_nowait()
                except queue.Empty:
                    block = silence
                self._pacat.stdin.write(block.tobytes())
                self._pacat.stdin.flush()
        except BrokenPipeError:
            pass


# --- child processes ------------------------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A child's environment: ours, the repo importable, ALSA config unset unless `extra` sets it."""
    env = {k: v for k, v in os.environ.items() if k not in ("ALSA_CONFIG_PATH", "PULSE_SERVER")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NO_TORCH_COMPILE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Child:
    """A scenario running in `python tests/virtual_audio.py scenario args` (see SCENARIOS).

    Its stderr goes to a file, not a pipe: ALSA and PortAudio write there from the audio threads,
    and a full pipe nobody reads would block them.
    """

    def __init__(self, scenario: str, args: dict[str, Any], env: dict[str, str]) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), scenario, json.dumps(args)],
            env=child_env(env),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str) -> str:
        """Read stdout up to a line matching the regex `pattern` and return it.

        The child must print such a line or end (every scenario has a session limit).
        """
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"child ended before a line matching {pattern!r}:\n{''.join(self.lines)}{self.stderr()}")

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Close stdin and wait for the end; stdout includes the lines already read."""
        stdout, _ = self.process.communicate(input=stdin, timeout=CHILD_TIMEOUT_S)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, "".join(self.lines) + stdout, self.stderr())

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()


def run_child(scenario: str, args: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a scenario to the end; returns its exit code and output."""
    return Child(scenario, args, env).finish()


def _capture(args: dict[str, Any]) -> None:
    """Capture `n_samples` from `device` at `rate` through DuplexAudio; save them to `out`."""
    from aimsvoice.audio.devices import DuplexAudio, list_devices, match_device

    devices = list_devices()
    audio = DuplexAudio(
        input_device=match_device(devices, args["device"], "input"),
        output_device=match_device(devices, args["output_device"], "output"),
        capture_rate=args["rate"],
    )
    got = np.zeros(args["n_samples"], dtype=np.float32)
    n = 0
    audio.start()
    try:
        while n < len(got):
            n += audio.capture_ring.read_into(got[n:])
    finally:
        audio.close()
    np.save(args["out"], got)


def _play(args: dict[str, Any]) -> None:
    """Queue the float32 file `pcm` for playback on `device`; stop once the device took it all."""
    from aimsvoice.audio.devices import DuplexAudio, list_devices, match_device

    pcm = np.load(args["pcm"])
    devices = list_devices()
    audio = DuplexAudio(
        input_device=match_device(devices, args["input_device"], "input"),
        output_device=match_device(devices, args["device"], "output"),
        playback_rate=args["rate"],
    )
    assert audio.playback_ring.write(pcm) == len(pcm)
    audio.start()
    try:
        while audio.played < len(pcm):
            time.sleep(0.001)
    finally:
        audio.close()
    print(json.dumps({"underrun_samples": audio.underrun_samples, "played": audio.played}))


def _live(args: dict[str, Any]) -> None:
    """Run live.talk_live with a test engine; write the summary (with trace) to `summary`.

    `device_rate` makes both streams open at that rate instead of 24 kHz (resampled); `ui` shows
    the view as the CLI does (plain lines off a terminal).
    """
    from aimsvoice.audio.devices import AudioConfig
    from aimsvoice.live import LiveConfig, talk_live
    from aimsvoice.ui import LiveView

    device_rate = args.pop("device_rate", None)
    if device_rate:  # as if the devices could not run at 24 kHz
        from aimsvoice.audio import devices

        devices.stream_format = lambda device, kind: (device_rate, 1)
    engines = {"pass": PassThroughEngine, "stall": StallingEngine, "fail": FailingEngine}
    engine = engines[args.pop("engine")](**args.pop("engine_args", {}))
    summary_path = args.pop("summary", None)
    args.setdefault("aec", False)  # "aimsvoice_speaker" would turn it on by default; AEC tests ask for it
    if args.get("record"):
        args["record"] = Path(args["record"])
    audio_keys = ("input_device", "output_device", "input_backlog_frames", "playback_queue_frames")
    audio = AudioConfig(**{key: args.pop(key) for key in audio_keys if key in args})
    view = LiveView(rich=args.pop("ui", True))
    summary = talk_live(engine, persona_name="test", config=LiveConfig(audio=audio, **args), view=view)
    if summary_path:
        document = {
            **summary.to_json(),
            "trace": summary.trace,
            "stalled_steps": getattr(engine, "stalled_steps", []),
            "steps": engine.n_steps,
        }
        Path(summary_path).write_text(json.dumps(document))


def _open_after_signal(args: dict[str, Any]) -> None:
    """List devices, wait for stdin to close, then run a live session (the device may be gone)."""
    from aimsvoice.audio.devices import list_devices

    print(json.dumps([d.name for d in list_devices()]), flush=True)
    sys.stdin.read()
    _live(args)


def _main() -> None:
    from aimsvoice.errors import AimsvoiceError

    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        SCENARIOS[scenario](args)
    except AimsvoiceError as e:  # as cli.main() reports it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


SCENARIOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "capture": _capture,
    "play": _play,
    "live": _live,
    "open-after-signal": _open_after_signal,
}

if __name__ == "__main__":
    _main()
