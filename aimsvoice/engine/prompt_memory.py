"""A persona's system prompt runs once per engine: the row state it leaves is kept and copied into the next row.

A row's system prompt (voice, 0.5 s of silence, text, 0.5 s of silence) is a few hundred steps that
every conversation with the same persona repeats exactly: every token of it is forced, so what it
leaves (each attention layer's keys, values and positions in the temporal transformer, and the
token cache) depends on the voice and the text alone, not on the conversation's sampling, seed or
neighbours. Running it costs a joining session one tick per step, seconds when the batch is busy
(BENCHMARKS.md, `serve`); copying what it left costs a memory copy.

A copy is what the prompt would have left: the row's own slots are written in place (CUDA graphs
keep their addresses), and a sampling row's random generator is advanced by exactly the draws the
prompt's steps would have made, so the conversation samples what it would have without the copy.
A row whose persona's prompt is running in another row when it opens waits for that one and
starts from its copy (loop.py). Snapshots are kept most recently used first, within a byte budget
(by default one batch row's attention caches, which `max_batch_size` sets aside).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from moshi.modules.streaming import State, StreamingModule
from moshi.modules.transformer import _LayerState, _MHAState, _TransformerState

@dataclass
class RowSnapshot:
    """What a row's system prompt left: its token cache and offset, and each attention layer's entries."""

    lm_steps: int  # the prompt's steps that ran the transformer (all but the first): its KV entries
    token_cache: torch.Tensor  # [K, C]
    forced: torch.Tensor  # [K, C] bool
    offset: int  # the row's steps taken
    positions: list[torch.Tensor]  # the positions of each streaming state that keeps one per row (scalars)
    entries: list[torch.Tensor]  # [2, H, lm_steps, D] keys and values of each attention layer

    @property
    def nbytes(self) -> int:
        tensors = [self.token_cache, self.forced, *self.positions, *self.entries]
        return sum(t.numel() * t.element_size() for t in tensors)


def _row_states(module: StreamingModule) -> list[State]:
    """The streaming states of `module` that hold per-row tensors, in module order; an unknown one is an error.

    moshi's temporal transformer keeps positions (`_TransformerState`, `_MHAState`) and KV caches; any other
    per-row state would be silently missed by a copy, so it stops the copy instead.
    """
    states = []
    for name, sub in module.named_modules():
        state = getattr(sub, "_streaming_state", None)
        if state is None:
            continue
        if isinstance(state, (_TransformerState, _MHAState)):
            states.append(state)
            continue
        extra = [k for k, v in vars(state).items() if isinstance(v, torch.Tensor) and k != "exec_mask"]
        if extra or not (type(state) is State or isinstance(state, _LayerState)):
            raise RuntimeError(f"prompt memory cannot copy the streaming state of {name or 'the LM'} ({type(state).__name__})")
    return states


def capture(lm: StreamingModule, cache: torch.Tensor, forced: torch.Tensor, offsets: np.ndarray, row: int, lm_steps: int) -> RowSnapshot:
    """Copy what the row's just-finished system prompt left in the LM's streaming state and the token cache."""
    positions, entries = [], []
    for state in _row_states(lm):
        if isinstance(state, _TransformerState):
            positions.append(state.offsets[row].clone())
            continue
        positions.append(state.offset[row].clone())
        kv = state.kv_cache
        assert kv is not None and int(kv.end_offset[row]) == lm_steps <= kv.capacity, "a prompt fills the first slots"
        entries.append(kv.cache[:, row, :, :lm_steps].clone())
    return RowSnapshot(lm_steps, cache[row].clone(), forced[row].clone(), int(offsets[row]), positions, entries)


@torch.no_grad()
def restore(lm: StreamingModule, cache: torch.Tensor, forced: torch.Tensor, offsets: np.ndarray, row: int, snapshot: RowSnapshot) -> None:
    """Write a snapshot into a freshly reset row, in place."""
    positions, entries = iter(snapshot.positions), iter(snapshot.entries)
    for state in _row_states(lm):
        if isinstance(state, _TransformerState):
            state.offsets[row] = next(positions)
            continue
        state.offset[row] = next(positions)
        kv = state.kv_cache
        assert kv is not None
        kv.cache[:, row, :, : snapshot.lm_steps].copy_(next(entries))
        kv.end_offset[row] = snapshot.lm_steps
    cache[row].copy_(snapshot.token_cache)
    forced[row].copy_(snapshot.forced)
    offsets[row] = snapshot.offset


class PromptMemory:
    """Snapshots by persona (voice and text prompt), most recently used first, within `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._snapshots: OrderedDict[tuple[str, tuple[int, ...]], RowSnapshot] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, tuple[int, ...]]) -> RowSnapshot | None:
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            self.misses += 1
            return None
        self.hits += 1
        self._snapshots.move_to_end(key)
        return snapshot

    def __contains__(self, key: tuple[str, tuple[int, ...]]) -> bool:
        return key in self._snapshots

    def put(self, key: tuple[str, tuple[int, ...]], snapshot: RowSnapshot) -> None:
        """Keep a snapshot, dropping the least recently used beyond the budget (one larger than it is not kept)."""
        if snapshot.nbytes > self.budget_bytes:
            return
        self._snapshots[key] = snapshot
        while self.nbytes > self.budget_bytes:
            self._snapshots.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._snapshots.values())

    def __len__(self) -> int:
        return len(self._snapshots)
