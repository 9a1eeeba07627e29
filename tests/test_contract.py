"""The engine contract is free of torch, and `SoloEngine` makes any batch engine a one-conversation engine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from aimsvoice.audio import FRAME_SIZE
from aimsvoice.engine.contract import ConversationSpec, SoloEngine, StepOut


def test_the_contract_and_the_cli_start_without_torch() -> None:
    code = (
        "import sys\n"
        "from aimsvoice.engine.contract import BatchEngine, ConversationSpec, FrameEngine, SoloEngine, StepOut\n"
        "from aimsvoice.engine import ConversationSpec as again\n"
        "import aimsvoice, aimsvoice.cli, aimsvoice.session, aimsvoice.live, aimsvoice.engine.cascade\n"
        "assert again is ConversationSpec\n"
        "print(sorted(m for m in ('torch', 'moshi') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class CountingBatch:
    """A batch engine of one row whose prompt takes `prompt_ticks` ticks; it echoes the frame, scaled."""

    batch_size = 1

    def __init__(self, prompt_ticks: int) -> None:
        self.prompt_ticks = prompt_ticks
        self.left: int | None = None
        self.closed_rows = 0
        self.ticks = 0

    def open(self, spec: ConversationSpec) -> int:
        assert self.left is None, "one row"
        self.left = self.prompt_ticks
        return 0

    def in_prompt(self, row: int) -> bool:
        return bool(self.left)

    def waiting(self, row: int) -> bool:
        return False

    def tick(self, frames):
        self.ticks += 1
        if self.left:
            assert not frames
            self.left -= 1
            return {}
        return {row: StepOut(0.5 * pcm, None, 0) for row, pcm in frames.items()}

    def close_row(self, row: int) -> None:
        self.left = None
        self.closed_rows += 1

    def close(self) -> None:
        pass

    def describe(self, row: int | None = None) -> dict:
        return {"engine": "counting", "row": row}


def test_solo_engine_runs_the_prompt_in_start_and_restarts_on_a_free_row() -> None:
    batch = CountingBatch(prompt_ticks=5)
    solo = SoloEngine(batch)
    solo.start(ConversationSpec("v", "t"))
    assert batch.ticks == 5 and not batch.in_prompt(0)
    frame = np.ones(FRAME_SIZE, dtype=np.float32)
    assert np.array_equal(solo.step(frame).pcm, 0.5 * frame)
    solo.start(ConversationSpec("v", "t"))  # a new conversation closes the old row first
    assert batch.closed_rows == 1 and batch.ticks == 11
    assert solo.describe() == {"engine": "counting", "row": 0}
