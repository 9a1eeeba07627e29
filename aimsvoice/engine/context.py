"""The persona stays in the attention window: the system prompt's keys and values are pinned, the
conversation rolls past them.

PersonaPlex attends over a window of `context` steps (3000, 240 s). moshi keeps each layer's keys
and values in a ring: past the window the oldest entries go first, and the oldest are the system
prompt's (voice, silences, text), so after four minutes the agent no longer sees who it was told
to be. With `pinned` (the default; `ring` is moshi's and the reference's behaviour), a row's
first P entries, its system prompt, stay in slots 0..P-1 and the conversation rolls in the other
W = context - P slots.

Positions, StreamingLLM-style: moshi rotates queries and keys (RoPE) by their absolute step
before caching, so a conversation key and the current query are as far apart as they really
are (at most W steps, within what the model was trained on). A pinned key at step p would be
N - p steps from the query at step N, far beyond the window; instead, the query is rotated a
second time, to position min(N, context - 1), for the pinned slots only: the prompt then sits
where it would in a full window (context - 1 - p steps back) and the conversation keeps its true
distances. While a row's steps are fewer than `context` (its first window) nothing differs from
the ring: same slots, same positions, and moshi's own attention computes the step, so the
outputs are bit-identical. Memory is the ring's: one buffer of `context` slots per row, for hours.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from moshi.modules.streaming import StreamingModule
from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention, expand_repeated_kv

CONTEXT_MODES = ("pinned", "ring")


class PinnedKVCache:
    """A layer's keys and values for B rows: slots 0..P-1 hold a row's first P entries for good, the
    other slots a ring of its latest ones. P = 0 (a row not pinned yet) is moshi's ring exactly."""

    def __init__(self, ring: RingKVCache) -> None:
        self.capacity = ring.capacity
        self.cache = ring.cache  # [2, B, H, capacity, D], moshi's own buffer
        self.end_offset = ring.end_offset  # [B]: entries written per row (the row's steps)
        self.pinned = torch.zeros_like(self.end_offset)  # [B]: P per row

    def reset(self, reset_mask: torch.Tensor) -> None:
        zero = torch.zeros_like(self.end_offset)
        self.end_offset[:] = torch.where(reset_mask, zero, self.end_offset)
        self.pinned[:] = torch.where(reset_mask, zero, self.pinned)

    def slot(self, position: torch.Tensor) -> torch.Tensor:
        """Where the entry of a step lands: its own slot while pinned, else the ring after the pinned ones."""
        ring = self.capacity - self.pinned
        return torch.where(position < self.pinned, position, self.pinned + (position - self.pinned) % ring)

    def complete(self, k: torch.Tensor, v: torch.Tensor, exec_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store one step's k, v [B, H, 1, D]; return keys and values [B, H, S, D], each slot's step
        [B, S] (-1: empty) and whether it is pinned [B, S]."""
        B, H, T, D = k.shape
        assert T == 1, "one step at a time"
        slots = self.slot(self.end_offset).view(B, 1, 1, 1).expand(-1, H, 1, D)
        self.cache[0].scatter_(2, slots, k)
        self.cache[1].scatter_(2, slots, v)
        last = self.end_offset.clone()  # the step just written, per row
        index = torch.arange(self.capacity, device=last.device)[None, :]
        ring = (self.capacity - self.pinned)[:, None]
        pinned_slot = index < self.pinned[:, None]
        # A ring slot holds the latest step that maps to it: count back from the one just written.
        back = (self.slot(last)[:, None] - index) % ring
        ring_position = last[:, None] - back
        positions = torch.where(pinned_slot, index, ring_position)
        self.end_offset[:] = torch.where(exec_mask, self.end_offset + 1, self.end_offset)
        # Empty: not written yet, or a ring slot before any step beyond the pinned ones reached it.
        empty = (positions < 0) | (positions > last[:, None]) | (~pinned_slot & (positions < self.pinned[:, None]))
        positions = torch.where(empty, torch.full_like(positions, -1), positions)
        return self.cache[0], self.cache[1], positions, pinned_slot


def _pinned_forward(self: StreamingMultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """moshi's streaming self-attention step, with a pinned cache (see the module docstring)."""
    state = self._streaming_state
    cache = state.kv_cache if state is not None else None
    if not isinstance(cache, PinnedKVCache):
        return type(self).forward(self, query, key, value)
    B, T = query.shape[:2]
    offset = state.offset
    projected = self.in_projs[0](query)
    if self.kv_repeat == 1:
        q, k, v = projected.view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    else:
        head_dim = self.embed_dim // self.num_heads
        q = projected[:, :, : self.embed_dim].view(B, T, self.num_heads, head_dim).transpose(1, 2)
        k, v = projected[:, :, self.embed_dim :].view(B, T, 2, -1, head_dim).permute(2, 0, 3, 1, 4)
    q_raw = q
    q, k = self.rope(q, k, offset, time_before_heads=False)
    keys, values, pos_k, pinned_slot = cache.complete(k, v, state.exec_mask)
    if self.kv_repeat > 1:
        keys, values = expand_repeated_kv(keys, self.kv_repeat), expand_repeated_kv(values, self.kv_repeat)

    # moshi's attention, as the ring computes it: what every row in its first window gets.
    pos_q = offset.view(-1, 1, 1)
    delta = pos_q - pos_k[:, None]
    bias = ((pos_k[:, None] >= 0) & (delta >= 0) & (delta < self.context))[:, None]
    x = F.scaled_dot_product_attention(q, keys, values, bias, dropout_p=0.0)

    beyond = offset >= self.context  # rows past their first window
    if query.device.type != "cpu" or bool(beyond.any()):  # no branch on CUDA: graphs need a fixed path
        q_pinned, _ = self.rope(q_raw, q_raw, torch.clamp(offset, max=self.context - 1), time_before_heads=False)
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.where(pinned_slot[:, None, None, :], q_pinned @ keys.transpose(-1, -2), q @ keys.transpose(-1, -2)) * scale
        visible = ((pos_k >= 0) & (pos_k <= offset[:, None]))[:, None, None, :]
        weights = torch.softmax(scores.float().masked_fill(~visible, float("-inf")), dim=-1).to(values.dtype)
        x = torch.where(beyond.view(-1, 1, 1, 1), weights @ values, x)

    x = x.transpose(1, 2).reshape(B, T, self.embed_dim)
    x = self.out_projs[0](x)
    state.offset[:] = torch.where(state.exec_mask, state.offset + T, state.offset)
    state.offset_cpu += T
    return x


def pin_context(transformer: StreamingModule) -> list[PinnedKVCache]:
    """Give every self-attention layer of a streaming transformer a pinned cache (its streaming state must exist).

    Returns the caches, so the engine can set each row's pinned length (`set_pinned`).
    """
    caches = []
    for module in transformer.modules():
        if not isinstance(module, StreamingMultiheadAttention) or module.cross_attention or module.weights_per_step:
            continue
        state = module._streaming_state
        assert state is not None and isinstance(state.kv_cache, RingKVCache), "pin_context needs streaming mode"
        assert module.context is not None, "a pinned cache needs a finite context"
        cache = PinnedKVCache(state.kv_cache)
        state.kv_cache = cache
        if "forward" not in module.__dict__:  # patched once; the cache's type picks the path at each step
            module.forward = _pinned_forward.__get__(module)  # type: ignore[method-assign]
        caches.append(cache)
    return caches


def set_pinned(caches: list[PinnedKVCache], row: int, n_steps: int) -> None:
    """Pin a row's first `n_steps` entries (its system prompt) in every layer."""
    for cache in caches:
        cache.pinned[row] = min(n_steps, cache.capacity - 1)


def context_of(transformer: Any) -> int | None:
    """The attention window of a transformer's self-attention, in steps."""
    for module in transformer.modules():
        if isinstance(module, StreamingMultiheadAttention) and not module.cross_attention:
            return module.context
    return None
