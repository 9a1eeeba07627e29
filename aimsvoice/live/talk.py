"""A live conversation on the microphone and speakers: the threads, the limits, the recording."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..audio.aec import EchoCanceller, aec_default
from ..audio.devices import AudioConfig, list_devices, match_device, open_duplex
from ..audio.recorder import Recorder
from ..engine.contract import FrameEngine
from ..errors import AudioDeviceError
from ..outputs import OutputPathError, check_outputs
from ..session import TalkSettings, open_engine, settings_context, usage_line
from .pipeline import LivePipeline
from .stats import LiveObserver, LiveSummary

UI_PERIOD_S = 0.25  # main thread: recording flush, device check, view refresh
JOIN_TIMEOUT_S = 10.0  # a step in flight finishes within this, or the thread is left behind


@dataclass(frozen=True)
class LiveConfig:
    """How a live session runs: its devices and latency bounds, what it records, when it ends.

    audio: the devices (index or name substring; None: the default) and the latency bounds.
    record: a .wav path for the stereo recording (left user, right agent) and its .json sidecar,
        written as the session goes and completed whatever ends it.
    max_minutes: end after this much audio; idle_timeout: end after this many seconds without the
        user speaking (both by the input device's clock).
    aec: cancel the agent's voice, played on the speakers, from the microphone; None: decide by the
        output device's name (`resolve_aec`), with a hint when the name does not tell.
    """

    audio: AudioConfig = AudioConfig()
    record: Path | None = None
    max_minutes: float | None = None
    idle_timeout: float | None = None
    aec: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The settings as the recording's JSON stores them."""
        return {
            "input_backlog_frames": self.audio.input_backlog_frames,
            "playback_queue_frames": self.audio.playback_queue_frames,
            "max_minutes": self.max_minutes,
            "idle_timeout": self.idle_timeout,
        }


def resolve_aec(aec: bool | None, output_device_name: str) -> tuple[bool, str | None]:
    """Whether a live session cancels echo, and a hint to show: `--aec/--no-aec` wins, else `aec_default`."""
    if aec is not None:
        return aec, None
    return aec_default(output_device_name)


def talk_live(
    engine: FrameEngine,
    *,
    persona_name: str,
    config: LiveConfig = LiveConfig(),
    view: LiveObserver | None = None,
    context: dict[str, Any] | None = None,
) -> LiveSummary:
    """A live conversation on the microphone and speakers, until a limit, Ctrl-C or an error.

    engine: already started on the persona (only its `step` is called).
    persona_name: shown in the view and stored in the recording.
    view: what shows the session (ui.LiveView); None shows nothing.
    context: extra facts for the recording's JSON (model, voice, ...).

    Ctrl-C ends the session normally (end_reason "interrupted"). Device problems raise
    AudioDeviceError; any error propagates after the streams are closed, the step thread has
    stopped and the recording is complete.
    """
    audio = open_duplex(config.audio)
    aec_on, aec_hint = resolve_aec(config.aec, audio.output_device.name if audio.output_device else "")
    canceller = EchoCanceller() if aec_on else None
    recorder = Recorder(config.record) if config.record is not None else None
    pipeline = LivePipeline(engine, audio, config.audio, recorder, canceller)
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), name="aimsvoice-step", daemon=True)
    end_reason = "error"
    started = time.monotonic()
    try:
        if view is not None:
            view.open(aec_on, aec_hint)
        try:
            audio.start()
            thread.start()
            end_reason = _supervise(pipeline, view, stop, persona_name, config)
        finally:
            if view is not None:
                view.close()
    except KeyboardInterrupt:
        end_reason = "interrupted"
    except AudioDeviceError as e:
        end_reason = "device-error"
        if recorder is None:
            raise
        raise AudioDeviceError(f"{e} The recording so far is kept in {recorder.path}.") from e
    finally:
        stop.set()
        audio.close()
        if thread.is_alive():
            thread.join(JOIN_TIMEOUT_S)
        summary = pipeline.summary(end_reason, wall_s=time.monotonic() - started, recording=config.record)
        if recorder is not None:
            settings = {
                "input_device": audio.input_device.name if audio.input_device else None,
                "output_device": audio.output_device.name if audio.output_device else None,
                "capture_rate": audio.capture_rate,
                "playback_rate": audio.playback_rate,
                **config.to_json(),
                "aec": aec_on,
                **(context or {}),
                **engine.describe(),  # at the end: the cascade's turns (who served each), its usage
            }
            recorder.close(
                {
                    "persona": persona_name,
                    "settings": settings,
                    "stats": summary.to_json(),
                    "transcript": {k: v for k, v in pipeline.transcript.to_json().items() if k != "tokens"},
                }
            )
    if view is not None:
        view.summary(summary)
    return summary


def talk_on_devices(
    settings: TalkSettings, config: LiveConfig = LiveConfig(), view: LiveObserver | None = None,
    notify: Callable[[str], None] | None = None,
) -> LiveSummary:
    """`aimsvoice talk` without --in/--out: load the model and persona, then `talk_live`.

    The recording's paths and the devices are checked first, so a wrong --record or --input-device
    fails before the model loads. notify: told the tier and why (and, for the cascade, the cloud
    usage at the end).
    """
    if config.record is not None:
        check_outputs({"--record": config.record, "--record (its JSON)": config.record.with_suffix(".json")})
        if config.record.suffix.lower() != ".wav":
            raise OutputPathError(f"--record {config.record}: the recording is a stereo WAV; name it {config.record.with_suffix('.wav').name}")
    found = list_devices()
    match_device(found, config.audio.input_device, "input")
    match_device(found, config.audio.output_device, "output")
    engine, spec, persona = open_engine(settings, pace="live", notify=notify)
    try:
        engine.start(spec)
        context = settings_context(settings, engine.describe(), spec)
        return talk_live(engine, persona_name=persona.display_name, config=config, view=view, context=context)
    finally:
        if notify is not None and (line := usage_line(engine.describe())) is not None:
            notify(line)
        engine.close()


def _supervise(
    pipeline: LivePipeline, view: LiveObserver | None, stop: threading.Event, persona_name: str, config: LiveConfig,
) -> str:
    """The main thread's loop: flush the recording, watch the devices, refresh the view, end it."""
    while not stop.wait(UI_PERIOD_S):
        if pipeline.recorder is not None:
            pipeline.recorder.flush()
        pipeline.audio.check(time.monotonic())
        snap = pipeline.snapshot(persona_name)
        if view is not None:
            view.update(snap)
        limits = []  # (when it is due on the session clock, why)
        if config.max_minutes is not None:
            limits.append((60.0 * config.max_minutes, "max-minutes"))
        if config.idle_timeout is not None:
            limits.append((pipeline.last_voice_s + config.idle_timeout, "idle-timeout"))
        for due_s, reason in sorted(limits):
            if snap.elapsed_s >= due_s:
                return reason
    assert pipeline.error is not None, "only the step thread sets stop while the session runs"
    raise pipeline.error
