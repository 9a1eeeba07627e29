"""What every engine offers the session, the live loop, the benchmarks and the server; no torch here.

An engine turns 80 ms frames of the user's audio (float32, 24 kHz, FRAME_SIZE samples) into 80 ms
frames of the agent's audio and text, one frame per step, once a conversation has started on a
`ConversationSpec` (its persona, sampling and seed). Two shapes:

- `FrameEngine`: one conversation at a time (`talk`, live or offline).
- `BatchEngine`: many conversations ("rows") stepped together, one tick for all of them; a row
  opens and closes at any tick while the others go on (`talk --batch`, `bench`, the server).
  A row first runs its system prompt, one step per tick, then takes a frame per tick.

PersonaPlex (engine/loop.py) is both; `SoloEngine` makes any `BatchEngine` a `FrameEngine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from .config import SamplingConfig


@dataclass(frozen=True)
class ConversationSpec:
    """What one conversation is conditioned on, and how it samples.

    voice: a voice of the model (`aimsvoice voices`), or a path to a WAV or a prompt-state file;
        empty: no voice prompt (the benchmarks, where the voice does not matter).
    text_prompt: the role and background, as plain text.
    seed: seeds this conversation's own random generator; None: a random seed.
    """

    voice: str
    text_prompt: str
    sampling: SamplingConfig = SamplingConfig()
    seed: int | None = None


@dataclass
class StepOut:
    """What one 80 ms step of a conversation produced."""

    pcm: np.ndarray  # float32 [FRAME_SIZE]: the agent's audio for this frame
    text: str | None  # the text piece the agent produced this frame; None for padding
    text_token: int  # the raw text token id
    timings_ms: dict[str, float] = field(default_factory=dict)  # encode, lm, decode, total (+ temporal, depformer with profile)
    event: str | None = None  # a one-line notice for the user: which tier served a turn, a failover (the cascade, `auto`)


class FrameEngine(Protocol):
    """One conversation: `start(spec)` runs its system prompt, then one `step` per 80 ms frame."""

    def start(self, spec: ConversationSpec) -> None: ...

    def step(self, pcm: np.ndarray) -> StepOut: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What the conversation runs on, for transcripts and recordings (engine, model, voice...)."""
        ...


class BatchEngine(Protocol):
    """Many conversations in one step: rows open, run their prompt, talk and close independently."""

    @property
    def batch_size(self) -> int: ...

    def open(self, spec: ConversationSpec) -> int:
        """Take a free row for a conversation and queue its system prompt; returns the row."""
        ...

    def in_prompt(self, row: int) -> bool:
        """Whether the row is still running its system prompt (it takes no frames yet)."""
        ...

    def waiting(self, row: int) -> bool:
        """Whether the row's system prompt waits for another row running the same one (it does not step)."""
        ...

    def tick(self, frames: Mapping[int, np.ndarray]) -> dict[int, StepOut]:
        """One step for every row in its prompt and every talking row given a frame; the others wait.

        Returns the output of each talking row that stepped.
        """
        ...

    def close_row(self, row: int) -> None: ...

    def close(self) -> None: ...

    def describe(self, row: int | None = None) -> dict[str, Any]:
        """The engine's description, and a row's conversation (voice...) when given."""
        ...


class SoloEngine:
    """A `FrameEngine` over a `BatchEngine`: one row, its prompt run to the end by `start`."""

    def __init__(self, batch: BatchEngine) -> None:
        self.batch = batch
        self.row: int | None = None

    def start(self, spec: ConversationSpec) -> None:
        """End the conversation in progress, if any, and run the system prompt of a new one."""
        if self.row is not None:
            self.batch.close_row(self.row)
        self.row = self.batch.open(spec)
        while self.batch.in_prompt(self.row):
            self.batch.tick({})

    def step(self, pcm: np.ndarray) -> StepOut:
        if self.row is None:
            raise RuntimeError("step() before start()")
        return self.batch.tick({self.row: pcm})[self.row]

    def close(self) -> None:
        self.batch.close()

    def describe(self) -> dict[str, Any]:
        return self.batch.describe(self.row)

    def __enter__(self) -> SoloEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
