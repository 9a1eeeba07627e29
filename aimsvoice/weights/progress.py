"""The pull's progress: one bar per file plus a total on a terminal, plain lines otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .spec import RemoteFile
from .storage import human_bytes

_POLL_S = 0.25


class ProgressView:
    """One bar per file plus a total, with speed and ETA; plain lines when not on a terminal.

    huggingface_hub downloads on the calling thread, so a watcher thread reads how far the
    partial download has grown and sets the numbers; rich redraws on its own thread.
    """

    def __init__(self, console: Console | None, files: list[RemoteFile], todo: list[RemoteFile]) -> None:
        self._console = console
        self._files = files
        self._todo = todo
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._n_bytes_finished = sum(f.n_bytes for f in files if f not in todo)

    def __enter__(self) -> ProgressView:
        if self._console is not None and self._console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            for f in self._files:
                done = f.n_bytes if f not in self._todo else 0
                self._tasks[f.name] = self._progress.add_task(f.name, total=f.n_bytes, completed=done)
            total = sum(f.n_bytes for f in self._files)
            self._total = self._progress.add_task("total", total=total, completed=self._n_bytes_finished)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, text: str) -> None:
        """A line above the bars (or a plain line)."""
        if self._progress is not None:
            self._progress.console.log(text)
        elif self._console is not None:
            self._console.print(text, highlight=False, soft_wrap=True)

    @contextmanager
    def downloading(self, remote: RemoteFile, n_bytes_on_disk: Callable[[], int]) -> Iterator[None]:
        """Show `remote` growing while the body runs its download; `n_bytes_on_disk` says how far it got."""
        started = time.monotonic()
        stop = threading.Event()
        watcher = None
        if self._progress is not None:
            watcher = threading.Thread(target=self._watch, args=(remote, n_bytes_on_disk, stop), daemon=True)
            watcher.start()
        elif self._console is not None:
            resumed = f", resuming at {human_bytes(n_bytes)}" if (n_bytes := n_bytes_on_disk()) else ""
            self._console.print(
                f"downloading {remote.name} ({human_bytes(remote.n_bytes)}{resumed})", highlight=False, soft_wrap=True
            )
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        self._n_bytes_finished += remote.n_bytes
        if self._progress is not None:
            self._progress.update(self._tasks[remote.name], completed=remote.n_bytes)
            self._progress.update(self._total, completed=self._n_bytes_finished)  # type: ignore[arg-type]
        elif self._console is not None:
            seconds = max(time.monotonic() - started, 1e-6)
            speed = human_bytes(int(remote.n_bytes / seconds))
            self._console.print(f"downloaded {remote.name} in {seconds:.1f} s ({speed}/s)", highlight=False, soft_wrap=True)

    def _watch(self, remote: RemoteFile, n_bytes_on_disk: Callable[[], int], stop: threading.Event) -> None:
        assert self._progress is not None and self._total is not None
        while not stop.wait(_POLL_S):
            n_bytes = n_bytes_on_disk()
            self._progress.update(self._tasks[remote.name], completed=n_bytes)
            self._progress.update(self._total, completed=self._n_bytes_finished + n_bytes)
