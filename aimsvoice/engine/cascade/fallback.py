"""Engines around engines: `auto`'s hand-over when PersonaPlex fails mid-session, and FrameEngines as a
BatchEngine (the cascade under `serve`, where every session is a row)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import AimsvoiceError
from ..contract import ConversationSpec, FrameEngine, StepOut


def failure_line(error: BaseException) -> str:
    """An exception as a short line: its type and the first line of its message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message[:160]}" if message else type(error).__name__


class FallbackEngine:
    """A FrameEngine that hands the conversation to the next tier when its engine fails on the device.

    PersonaPlex under `--engine auto`: a step that raises a RuntimeError (CUDA out of memory, a
    CUDA or driver error; torch raises them all as RuntimeError) closes it, starts the next tier
    (`next_tier()` -> (engine, its name)) on the same conversation spec and gives it this frame,
    so the user's next turn is answered by the next tier; the step's `event` says so. An
    AimsvoiceError (a problem the user can fix) is raised as it is. Hands over once.
    """

    def __init__(self, engine: FrameEngine, next_tier: Callable[[], tuple[FrameEngine, str]], name: str = "PersonaPlex") -> None:
        self.engine = engine
        self.name = name
        self._next_tier = next_tier
        self._spec: ConversationSpec | None = None
        self.handed_over: dict[str, Any] | None = None
        self._frames = 0

    def start(self, spec: ConversationSpec) -> None:
        self._spec = spec
        self._frames = 0
        self.engine.start(spec)

    def step(self, pcm: np.ndarray) -> StepOut:
        try:
            out = self.engine.step(pcm)
        except AimsvoiceError:
            raise
        except RuntimeError as e:
            if self.handed_over is not None or self._spec is None:
                raise
            out = self._hand_over(e, pcm)
        self._frames += 1
        return out

    def _hand_over(self, error: RuntimeError, pcm: np.ndarray) -> StepOut:
        assert self._spec is not None
        try:
            self.engine.close()
        except Exception:
            pass
        engine, tier = self._next_tier()
        engine.start(self._spec)
        self.engine = engine
        reason = failure_line(error)
        self.handed_over = {"from": self.name, "to": tier, "at_s": round(self._frames * 0.08, 2), "reason": reason}
        out = engine.step(pcm)
        out.event = f"{self.name} failed ({reason}): the {tier} tier takes the conversation from your next turn"
        return out

    def close(self) -> None:
        self.engine.close()

    def describe(self) -> dict[str, Any]:
        info = dict(self.engine.describe())
        if self.handed_over is not None:
            info["handed_over"] = self.handed_over
        return info

    def __enter__(self) -> FallbackEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameRows:
    """A BatchEngine of independent FrameEngines, one per row, stepped one after the other.

    For engines whose conversations share nothing (the cascade: each row its own VAD, worker and
    network requests; stepping never waits in live pace): `serve` runs on it unchanged. A row
    has no system prompt to run: it talks from the tick after it opens.
    """

    def __init__(self, make: Callable[[], FrameEngine], batch_size: int, info: dict[str, Any] | None = None) -> None:
        self._make = make
        self._rows: list[FrameEngine | None] = [None] * batch_size
        self.info = dict(info or {})
        self.device = self.info.get("device", "network")

    @property
    def batch_size(self) -> int:
        return len(self._rows)

    def open(self, spec: ConversationSpec) -> int:
        row = next((i for i, engine in enumerate(self._rows) if engine is None), None)
        if row is None:
            raise RuntimeError(f"all {self.batch_size} rows are taken")
        engine = self._make()
        try:
            engine.start(spec)
        except BaseException:
            engine.close()
            raise
        self._rows[row] = engine
        return row

    def in_prompt(self, row: int) -> bool:
        return False

    def waiting(self, row: int) -> bool:
        return False

    def tick(self, frames: dict[int, np.ndarray]) -> dict[int, StepOut]:
        outs = {}
        for row, pcm in frames.items():
            engine = self._rows[row]
            if engine is None:
                raise KeyError(f"row {row} is not open")
            outs[row] = engine.step(pcm)
        return outs

    def close_row(self, row: int) -> None:
        engine, self._rows[row] = self._rows[row], None
        if engine is not None:
            engine.close()

    def close(self) -> None:
        for row in range(len(self._rows)):
            self.close_row(row)

    def describe(self, row: int | None = None) -> dict[str, Any]:
        engine = self._rows[row] if row is not None else None
        return {**self.info, **(engine.describe() if engine is not None else {})}
