"""PersonaPlex step loop (work in progress; see StepOut for the frame-level contract)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepOut:
    """What one 80 ms step of the engine produced."""

    pcm: np.ndarray  # float32 [FRAME_SIZE]: the agent's audio for this frame
    text: str | None  # the text piece the agent produced this frame; None for padding
    text_token: int  # the raw text token id
    timings_ms: dict[str, float] = field(default_factory=dict)  # encode, lm, depformer, decode, total
