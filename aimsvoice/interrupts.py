"""Ctrl-C at moments of our choosing.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives, and that may be
inside native code calling back into Python (sphn's decoder building a NumPy array: a Rust panic,
not an exception). `deferred_interrupt` holds a Ctrl-C for the duration of a block: the block may
look at `requested` and stop at a safe point; whatever it did not handle is raised as
KeyboardInterrupt when the block ends. A second Ctrl-C does not wait: the process exits at once
(status 130), for a user who does not want the safe point. Blocks nest: an inner block shares the
outer one's Interrupt and leaves the raising to it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Interrupt:
    """A Ctrl-C seen while deferred; `handled()` says the block acted on it, so it is not raised again."""

    requested: bool = False
    _handled: bool = False

    def handled(self) -> None:
        self._handled = True


_active: list[Interrupt] = []  # the outermost deferral's Interrupt, while one is active


@contextmanager
def deferred_interrupt() -> Iterator[Interrupt]:
    """Hold SIGINT for the block (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield Interrupt()  # signals reach the main thread only
        return
    if _active:
        yield _active[0]
        return
    interrupt = Interrupt()

    def hold(signum: int, frame: object) -> None:
        if interrupt.requested:
            os.write(2, b"\ninterrupted\n")
            os._exit(130)
        interrupt.requested = True

    previous = signal.signal(signal.SIGINT, hold)
    _active.append(interrupt)
    try:
        yield interrupt
    finally:
        _active.clear()
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if interrupt.requested and not interrupt._handled:
        raise KeyboardInterrupt
