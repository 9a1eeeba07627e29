"""What a conversation shows: a rich view on a terminal, plain lines for logs and pipes.

Everything here renders from plain data (a `LiveSnapshot` or `LiveSummary` taken by the main
thread, a list of `DeviceInfo`, what `talk --batch` reports); nothing is ever called from an audio callback
or the step thread.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .audio import FRAME_MS, SAMPLE_RATE
from .audio.devices import DeviceInfo
from .batch import BatchLine, BatchLineError, BatchSummary
from .live.stats import LiveSnapshot, LiveSummary
from .engine.contract import StepOut
from .session import OfflineResult

REFRESH_HZ = 4
PLAIN_PERIOD_S = 1.0  # one status line per second of conversation with --no-ui
METER_WIDTH = 24
METER_FLOOR_DB = -60.0
HEADPHONE_HINT = (
    "Use headphones: full duplex through laptop speakers feeds the agent its own voice. Ctrl-C ends the call."
)
AEC_ON_HINT = "Echo cancellation is on: the agent does not hear itself on speakers (--no-aec turns it off). Ctrl-C ends the call."


def live_hints(aec_on: bool, aec_hint: str | None) -> tuple[str, ...]:
    """The lines a live session opens with: headphones or echo cancellation, and the --aec hint if any."""
    if aec_on:
        return (AEC_ON_HINT,)
    return (HEADPHONE_HINT,) if aec_hint is None else (HEADPHONE_HINT, f"Hint: {aec_hint}.")


def aec_text(on: bool, erle_db: float | None) -> str:
    """Echo cancellation as the view and summary show it: off, on, or on with its ERLE."""
    if not on:
        return "off"
    return "on" if erle_db is None else f"on, ERLE {erle_db:.0f} dB"


def level_meter(level_db: float) -> Text:
    """A bar for a level in dBFS, from METER_FLOOR_DB (empty) to 0 (full)."""
    filled = round(METER_WIDTH * min(max(1.0 - level_db / METER_FLOOR_DB, 0.0), 1.0))
    style = "red" if level_db > -3.0 else "yellow" if level_db > -12.0 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("·" * (METER_WIDTH - filled), style="dim")
    bar.append(f" {level_db:6.1f} dBFS")
    return bar


def render(snap: LiveSnapshot) -> RenderableType:
    """The live view of one snapshot."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", style="bold")
    grid.add_column()
    grid.add_row("persona", f"{snap.persona}   {snap.elapsed_s:7.1f} s   {snap.frames} frames")
    grid.add_row("agent", Text(snap.text_tail or "…", overflow="fold"))
    grid.add_row("you", level_meter(snap.input_level_db))
    grid.add_row("agent audio", level_meter(snap.output_level_db))
    over = snap.compute_p95_ms > snap.budget_ms
    grid.add_row(
        "compute",
        Text(
            f"p50 {snap.compute_p50_ms:5.1f} ms   p95 {snap.compute_p95_ms:5.1f} ms   budget {snap.budget_ms:.0f} ms",
            style="red" if over else "",
        ),
    )
    grid.add_row(
        "queues",
        f"input {snap.input_backlog_ms:4.0f}/{snap.input_bound_ms:.0f} ms   "
        f"playback {snap.output_queue_ms:4.0f}/{snap.output_bound_ms:.0f} ms",
    )
    grid.add_row("dropped", f"input {snap.input_shed_ms / 1000:6.2f} s   playback {snap.output_shed_ms / 1000:6.2f} s")
    grid.add_row("underruns", f"{snap.underruns}   ({snap.underrun_ms / 1000:.2f} s of silence)")
    grid.add_row("echo cancel", aec_text(snap.aec_on, snap.aec_erle_db))
    if snap.notices:  # the cascade: the tier and providers of the last turn, failovers
        grid.add_row("serving", Text(snap.notices[-1], overflow="fold"))
    return Panel(grid, title="aimsvoice talk", subtitle="Ctrl-C to end")  # full width: steady as words stream


def plain_line(snap: LiveSnapshot) -> str:
    """One status line for --no-ui."""
    return (
        f"[{snap.elapsed_s:7.1f} s] frames {snap.frames} | you {snap.input_level_db:5.1f} dB "
        f"agent {snap.output_level_db:5.1f} dB | compute p50 {snap.compute_p50_ms:.1f} p95 {snap.compute_p95_ms:.1f} "
        f"ms (budget {snap.budget_ms:.0f}) | queue in {snap.input_backlog_ms:.0f}/{snap.input_bound_ms:.0f} "
        f"out {snap.output_queue_ms:.0f}/{snap.output_bound_ms:.0f} ms | dropped in {snap.input_shed_ms:.0f} "
        f"out {snap.output_shed_ms:.0f} ms | underruns {snap.underruns} | aec {aec_text(snap.aec_on, snap.aec_erle_db)}"
    )


def summary_lines(summary: LiveSummary) -> list[str]:
    """The end-of-session summary, as lines."""
    lines = [
        f"session ended ({summary.end_reason}) after {summary.duration_s:.1f} s: {summary.frames} frames",
        f"compute: mean {summary.compute_mean_ms:.1f} ms, p99 {summary.compute_p99_ms:.1f} ms per 80 ms frame; "
        f"{summary.compute_s:.1f} device-seconds",
        f"latency: standing p50 {summary.latency_p50_ms:.0f} ms, max {summary.latency_max_ms:.0f} ms; "
        f"max input backlog {summary.max_input_backlog_ms:.0f}/{summary.input_bound_ms:.0f} ms, "
        f"max playback queue {summary.max_output_queue_ms:.0f}/{summary.output_bound_ms:.0f} ms",
        f"dropped: input {summary.input_shed_ms:.0f} ms ({summary.input_shed_events} cuts), "
        f"playback {summary.output_shed_ms:.0f} ms ({summary.output_shed_events} cuts), "
        f"capture overflow {summary.capture_lost_ms:.0f} ms; underruns {summary.underruns} "
        f"({summary.underrun_ms:.0f} ms of silence)",
        f"echo cancellation: {aec_text(summary.aec, summary.aec_erle_db)}",
    ]
    if summary.recording is not None:
        lines.append(f"recording: {summary.recording} (+ {summary.recording.with_suffix('.json').name})")
    return lines


class LiveView:
    """Shows a live session (a `LiveObserver`): a rich Live panel at 4 Hz on a terminal, else a plain line per second.

    `open` prints the session's hints (headphones or echo cancellation, see `live_hints`) above the view.
    """

    def __init__(self, *, rich: bool, console: Console | None = None) -> None:
        self.console = console or Console()
        self.rich = rich and self.console.is_terminal
        self._live: Live | None = None
        self._last_plain_s = -PLAIN_PERIOD_S
        self._n_words_printed = 0
        self._notices_printed: deque[str] = deque(maxlen=8)

    def open(self, aec_on: bool = False, aec_hint: str | None = None) -> None:
        for hint in live_hints(aec_on, aec_hint):
            self.console.print(hint, style="yellow" if self.rich else None, markup=False, highlight=False, soft_wrap=True)
        if self.rich:
            self._live = Live(console=self.console, refresh_per_second=REFRESH_HZ, transient=False)
            self._live.__enter__()

    def close(self) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def __enter__(self) -> LiveView:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, snap: LiveSnapshot) -> None:
        """Show the newest snapshot (called by the main thread, about 4 times a second)."""
        if self._live is not None:
            self._live.update(render(snap))
            return
        if snap.elapsed_s - self._last_plain_s < PLAIN_PERIOD_S:
            return
        self._last_plain_s = snap.elapsed_s
        self.console.print(plain_line(snap), highlight=False, soft_wrap=True)
        for notice in snap.notices:
            if notice not in self._notices_printed:
                self.console.print(notice, highlight=False, soft_wrap=True)
                self._notices_printed.append(notice)
        complete = snap.words[:-1]  # the last word may still grow by a piece
        if len(complete) > self._n_words_printed:
            self.console.print("agent: " + " ".join(complete[self._n_words_printed :]), highlight=False, soft_wrap=True)
            self._n_words_printed = len(complete)

    def summary(self, summary: LiveSummary) -> None:
        """Print the end-of-session summary."""
        for line in summary_lines(summary):
            self.console.print(line, highlight=False, soft_wrap=True)


def devices_table(devices: list[DeviceInfo]) -> Table:
    """`aimsvoice devices`: index, name, host API, channels, default rate, and the defaults."""
    table = Table(title="audio devices", title_justify="left")
    table.add_column("index", justify="right")
    table.add_column("name")
    table.add_column("host API")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("default rate", justify="right")
    table.add_column("default for")
    for d in devices:
        defaults = (("input", d.is_default_input), ("output", d.is_default_output))
        default_for = [kind for kind, is_default in defaults if is_default]
        table.add_row(
            str(d.index),
            d.name,
            d.hostapi,
            str(d.max_input_channels),
            str(d.max_output_channels),
            f"{d.default_samplerate:.0f} Hz",
            ", ".join(default_for),
        )
    return table


class BatchProgress:
    """`talk --batch` as it goes (a `BatchEvents`): a progress bar of conversations and frames/s on a terminal,
    a line per conversation written or failed, and a summary."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("talk --batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("conversations · {task.fields[fps]} frames/s · batch {task.fields[rows]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None
        self._frames = 0
        self._started = time.perf_counter()

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def started(self, n_conversations: int, batch_size: int) -> None:
        self._started = time.perf_counter()
        self._task = self._progress.add_task("batch", total=n_conversations, fps="-", rows=batch_size)

    def failed(self, error: BatchLineError) -> None:
        self._print(f"error: {error}", style="red")

    def done(self, line: BatchLine, result: OfflineResult) -> None:
        seconds = len(result.agent_pcm) / SAMPLE_RATE
        also = f" and {line.transcript}" if line.transcript is not None else ""
        partial = f" (partial: {seconds:.2f} s of {result.input_s:.2f} s)" if result.partial else f" ({seconds:.2f} s)"
        self._print(f"line {line.number}: wrote {line.out_path}{partial}{also}")
        if self._task is not None:
            self._progress.advance(self._task)

    def ticked(self, n_frames: int) -> None:
        self._frames += n_frames
        if self._task is not None:
            fps = self._frames / max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(self._task, fps=f"{fps:.1f}")

    def summary(self, summary: BatchSummary) -> None:
        """The last lines: conversations written, lines failed, frames per second."""
        failed = ""
        if summary.failed:
            failed = f", {len(summary.failed)} failed (line{'s' if len(summary.failed) > 1 else ''} {', '.join(str(n) for n in sorted(e.number for e in summary.failed))})"
        rate = f"; {summary.frames} frames in {summary.wall_s:.1f} s ({summary.frames / summary.wall_s:.1f} frames/s)" if summary.wall_s else ""
        self._print(f"{len(summary.written)} conversation{'s' if len(summary.written) != 1 else ''} written{failed}{rate}")

    def _print(self, text: str, style: str | None = None) -> None:
        self._progress.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def voices_table(voices: list[tuple[str, Path]]) -> Table:
    """`aimsvoice voices`: each voice's name, what its file holds, and the file."""
    table = Table()
    table.add_column("voice")
    table.add_column("kind")
    table.add_column("file")
    for name, path in voices:
        kind = "prompt state, replayed as is" if path.suffix == ".pt" else "audio, encoded once and cached"
        table.add_row(Text(name), kind, Text(path.name))
    return table


class OfflineProgress:
    """`talk --in/--out` as it goes: on a terminal a progress bar on `console` (frames, real-time
    factor, time left, the latest words); off a terminal the agent's words as plain text on `words`
    (None: nothing), so a pipe gets the text and no bar."""

    def __init__(self, console: Console, words: Console | None) -> None:
        self.console = console
        self.words = words
        self.live = console.is_terminal
        self._progress = Progress(
            TextColumn("talk"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames · real-time factor {task.fields[rtf]} ·"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[said]}", markup=False),
            console=console,
            disable=not self.live,
            transient=True,
        )
        self._task: TaskID | None = None
        self._said = ""
        self._compute_ms = 0.0
        self._printed_words = False

    def __enter__(self) -> OfflineProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
        if self._printed_words and self.words is not None:
            self.words.print()

    def step(self, out: StepOut, done: int, total: int) -> None:
        """One frame computed (`talk_offline`'s on_step)."""
        self._compute_ms += out.timings_ms.get("total", 0.0)
        if out.event:  # which tier served a turn, a failover: above the bar, on the progress console
            self.console.print(out.event, highlight=False, soft_wrap=True)
        if not self.live:
            if out.text and self.words is not None:
                self.words.print(out.text, end="", soft_wrap=True)
                self._printed_words = True
            return
        if self._task is None:
            self._task = self._progress.add_task("talk", total=total, rtf="-", said="")
        if out.text:
            self._said = (self._said + out.text)[-40:]
        rtf = self._compute_ms / (done * FRAME_MS)
        self._progress.update(self._task, completed=done, rtf=f"{rtf:.2f}", said=self._said.strip())
