"""`talk --batch`: many offline conversations from a JSON-lines file, as the rows of one batch.

The file holds one conversation per line, as JSON:

    {"in": "calls/a.wav", "out": "replies/a.wav", "transcript": "replies/a.json",
     "persona": "headcoach", "voice": "NATM1", "text_prompt": "...", "seed": 3, "greedy": false}

`in` and `out` are required; the other keys are optional and mean what `talk`'s flags mean, the
command line's flags being the defaults. Relative paths (in, out, transcript, and a voice given as
a file) are relative to the batch file's folder. Blank lines are skipped. A line that cannot run
(malformed, an unknown persona or voice, an unreadable WAV) is reported with its number and the
fix; the others still run, each written as soon as it ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from . import layout, personas
from .audio import read_wav, write_wav
from .engine import ModelCheck
from .audio.wavio import check_audio_suffix
from .errors import AimsvoiceError
from .outputs import check_outputs
from .session import (
    BatchJob, Interrupted, OfflineResult, TalkSettings, conversation_spec, open_batch_engine, resolve_model_dir, run_batch, voice_file,
    write_transcript,
)

KEYS = ("in", "out", "transcript", "persona", "voice", "text_prompt", "seed", "greedy")
_PATH_KEYS = ("in", "out", "transcript")
_STRING_KEYS = ("persona", "voice", "text_prompt")
_SEED_RANGE = (0, 2**63 - 1)


class BatchLineError(AimsvoiceError):
    """A line of a batch file that cannot run: its number and what to fix."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"line {number}: {message}")
        self.number = number


@dataclass(frozen=True)
class BatchLine:
    """One conversation of a batch file, its paths resolved and its settings the defaults with the line's own."""

    number: int  # 1-based line number in the file
    in_path: Path
    out_path: Path
    transcript: Path | None
    settings: TalkSettings


def read_batch_file(path: Path, defaults: TalkSettings) -> tuple[list[BatchLine], list[BatchLineError]]:
    """The file's conversations, and the lines that cannot run (bad JSON, keys, types, paths, persona).

    Raises AimsvoiceError when the file itself cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AimsvoiceError(f"{path}: no such batch file; give a .jsonl file with one conversation per line.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AimsvoiceError(f"{path}: cannot read the batch file ({e}); give a UTF-8 .jsonl file.") from None
    parsed: list[BatchLine] = []
    errors: list[BatchLineError] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            parsed.append(_parse(number, raw, path.parent, defaults))
        except BatchLineError as e:
            errors.append(e)
    if not parsed and not errors:
        raise AimsvoiceError(f"{path}: the batch file holds no conversation; write one JSON object per line with \"in\" and \"out\".")
    lines = []
    written: dict[Path, int] = {}  # every output, by the first line writing it
    read = {line.in_path.resolve(): line.number for line in parsed}
    for line in parsed:
        try:
            _check_outputs(line, written, read)
            lines.append(line)
        except BatchLineError as e:
            errors.append(e)
    return lines, sorted(errors, key=lambda e: e.number)


def _check_outputs(line: BatchLine, written: dict[Path, int], read: dict[Path, int]) -> None:
    """A line's outputs: writable, not an input of any line, not another line's output (checked before anything runs)."""
    outputs = {'"out"': line.out_path, '"transcript"': line.transcript}
    try:
        check_outputs(outputs, inputs=(line.in_path, voice_file(line.settings.voice)))
        check_audio_suffix(line.out_path, '"out"')
    except AimsvoiceError as e:
        raise BatchLineError(line.number, str(e)) from None
    for key, output in outputs.items():
        if output is None:
            continue
        identity = output.resolve()
        if identity in read:
            raise BatchLineError(line.number, f"{key} {output} is the input of line {read[identity]}; give the output another path")
        if identity in written:
            raise BatchLineError(line.number, f"{key} {output} is also written by line {written[identity]}; give each output its own path")
    for output in filter(None, outputs.values()):
        written[output.resolve()] = line.number


def _parse(number: int, raw: str, folder: Path, defaults: TalkSettings) -> BatchLine:
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BatchLineError(number, f"not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line") from None
    if not isinstance(entry, dict):
        raise BatchLineError(number, 'not a JSON object; write {"in": "user.wav", "out": "agent.wav"}')
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise BatchLineError(number, f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(KEYS)}")
    for key in ("in", "out"):
        if key not in entry:
            raise BatchLineError(number, f'"{key}" is missing; every line needs "in" (user audio) and "out" (agent audio)')
    for key in (*_PATH_KEYS, *_STRING_KEYS):
        if key in entry and not isinstance(entry[key], str):
            raise BatchLineError(number, f'"{key}" must be a string, not {json.dumps(entry[key])}')
    seed = entry.get("seed", defaults.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]):
        raise BatchLineError(number, f'"seed" must be a whole number from 0 to 2**63-1, not {json.dumps(seed)}')
    greedy = entry.get("greedy", defaults.greedy)
    if not isinstance(greedy, bool):
        raise BatchLineError(number, f'"greedy" must be true or false, not {json.dumps(greedy)}')

    in_path = _path(folder, entry["in"])
    if not in_path.is_file():
        raise BatchLineError(number, f"{in_path}: no such audio file; check \"in\" (relative to the batch file's folder)")
    out_path = _path(folder, entry["out"])
    transcript = _path(folder, entry["transcript"]) if "transcript" in entry else None
    persona = entry.get("persona", defaults.persona)
    try:
        personas.load(persona)
    except AimsvoiceError as e:
        raise BatchLineError(number, str(e)) from None
    settings = replace(
        defaults, persona=persona, voice=_voice(folder, entry.get("voice", defaults.voice)),
        text_prompt=entry.get("text_prompt", defaults.text_prompt), seed=seed, greedy=greedy,
    )
    return BatchLine(number, in_path, out_path, transcript, settings)


def _path(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _voice(folder: Path, voice: str | None) -> str | None:
    """A voice given as a file is relative to the batch file's folder; a voice name stays a name."""
    if voice is None or Path(voice).suffix.lower() not in layout.VOICE_SUFFIXES:
        return voice
    return str(_path(folder, voice))


class BatchEvents(Protocol):
    """What `talk_batch` reports as it goes (the CLI shows it)."""

    def started(self, n_conversations: int, batch_size: int) -> None: ...

    def failed(self, error: BatchLineError) -> None: ...

    def done(self, line: BatchLine, result: OfflineResult) -> None: ...

    def ticked(self, n_frames: int) -> None: ...


@dataclass
class BatchSummary:
    """How a batch went: conversations written, lines that failed, frames computed."""

    written: list[BatchLine] = field(default_factory=list)
    failed: list[BatchLineError] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0
    interrupted: str | None = None  # Ctrl-C: what was done about the conversations under way


def talk_batch(path: Path, defaults: TalkSettings, batch_size: int | None, events: BatchEvents) -> BatchSummary:
    """Run every conversation of a batch file; write each one's audio (and transcript) as it ends.

    defaults: the command line's settings (model, device, dtype, persona, voice, greedy, seed).
    batch_size: rows stepped together (None: all conversations, as the model's memory allows).
    """
    started = time.perf_counter()
    summary = BatchSummary()

    def fail(error: BatchLineError) -> None:
        summary.failed.append(error)
        events.failed(error)

    lines, errors = read_batch_file(path, defaults)
    for error in errors:
        fail(error)
    check = ModelCheck(resolve_model_dir(defaults.model)) if lines else None
    jobs: list[BatchJob] = []
    for line in lines:
        spec = conversation_spec(line.settings, personas.load(line.settings.persona))
        try:
            check.conversation(spec)
        except AimsvoiceError as e:
            fail(BatchLineError(line.number, str(e)))
            continue
        jobs.append(BatchJob(line, spec, lambda line=line: read_wav(line.in_path)))
    if not jobs:
        return summary

    engine = open_batch_engine(defaults, batch_size, most=len(jobs))
    events.started(len(jobs), engine.batch_size)

    def done(line: BatchLine, result: OfflineResult) -> None:
        write_wav(line.out_path, result.agent_pcm)
        if line.transcript is not None:
            persona = personas.load(line.settings.persona)
            write_transcript(line.transcript, result, line.settings, persona, line.in_path, batch_line=line.number)
        summary.written.append(line)
        events.done(line, result)

    def ticked(n_frames: int) -> None:
        summary.frames += n_frames
        events.ticked(n_frames)

    try:
        run_batch(engine, jobs, done, lambda line, e: fail(BatchLineError(line.number, str(e))), ticked)
    except Interrupted as e:
        summary.interrupted = str(e)
    finally:
        engine.close()
    summary.wall_s = time.perf_counter() - started
    return summary
