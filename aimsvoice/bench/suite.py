"""Conversation suites in Full-Duplex-Bench's layout: one folder per sample.

A sample folder holds input.wav (the user's side) and the annotation of its task:

    turn_taking.json  smooth turn-taking  [{"timestamp": [turn_end_s, ...], ...}]
    interrupt.json    user interruption   [{"timestamp": [start_s, end_s], "context": ..., "interrupt": ...}]
    pause.json        pause handling      [{"timestamp": [start_s, end_s], ...}, ...] one entry per pause

A suite is any folder with such sample folders anywhere below it, so a Full-Duplex-Bench task
folder, its root, or aimsvoice's built-in suite (assets/benchsuite, made by
scripts/make-bench-suite.py with exactly known timestamps) all load the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchError

TURN_TAKING = "smooth_turn_taking"
INTERRUPTION = "user_interruption"
PAUSE = "pause_handling"
TASKS = (TURN_TAKING, INTERRUPTION, PAUSE)
TASK_FILES = {TURN_TAKING: "turn_taking.json", INTERRUPTION: "interrupt.json", PAUSE: "pause.json"}
INPUT_NAME = "input.wav"


@dataclass(frozen=True)
class Sample:
    """One conversation: the user's audio and the times its task is judged at, in seconds.

    events: turn taking: ((turn_end, turn_end),); interruption: ((start, end),) of the barge-in;
        pause handling: (start, end) of each pause.
    """

    task: str
    name: str  # the folder, relative to the suite
    directory: Path
    events: tuple[tuple[float, float], ...]

    @property
    def input_path(self) -> Path:
        return self.directory / INPUT_NAME


def builtin_suite_dir() -> Path:
    """The suite that ships with aimsvoice: three samples per task, synthesized with espeak-ng."""
    return Path(__file__).resolve().parent.parent.parent / "assets" / "benchsuite"


def load_suite(root: Path) -> list[Sample]:
    """Every sample folder under `root` (or `root` itself), sorted by task then name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchError(f"{root}: no such suite folder; give --suite a Full-Duplex-Bench folder.")
    samples = [
        _load_sample(root, folder, task)
        for folder in sorted({p.parent for p in root.rglob(INPUT_NAME)} | ({root} if (root / INPUT_NAME).is_file() else set()))
        for task in TASKS
        if (folder / TASK_FILES[task]).is_file()
    ]
    if not samples:
        names = ", ".join(TASK_FILES.values())
        raise BenchError(f"{root}: no sample folders (input.wav with one of {names}); check --suite.")
    return sorted(samples, key=lambda s: (TASKS.index(s.task), s.name))


def _load_sample(root: Path, folder: Path, task: str) -> Sample:
    path = folder / TASK_FILES[task]
    try:
        entries = json.loads(path.read_text())
        if task == TURN_TAKING:  # only the turn end counts; the second value varies between datasets
            turn_end = float(entries[0]["timestamp"][0])
            events: tuple[tuple[float, float], ...] = ((turn_end, turn_end),)
        else:
            events = tuple((float(e["timestamp"][0]), float(e["timestamp"][1])) for e in entries)
            events = events[:1] if task == INTERRUPTION else events
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise BenchError(
            f"{path}: not a Full-Duplex-Bench annotation ({e!r}); expected [{{\"timestamp\": [start, end]}}, ...]."
        ) from e
    if not events:
        raise BenchError(f"{path}: no entries; expected at least one timestamp.")
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    return Sample(task, name, folder, events)
