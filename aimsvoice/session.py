"""The conversation loop: frames in -> engine -> frames out, with stats and recording.

Offline (`--in/--out`) and live (microphone/speakers) conversations share the same loop: the
engine is anything with `step(pcm) -> StepOut` for one FRAME_SIZE frame.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .engine.loop import StepOut


class FrameEngine(Protocol):
    """One 80 ms frame of user audio in, one frame of agent audio (and text) out."""

    def step(self, pcm: np.ndarray) -> StepOut: ...


# --- offline ---
# --- end offline ---


# --- live ---
# --- end live ---
