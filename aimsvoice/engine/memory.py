"""How many conversations fit beside the weights: what a batch row holds, against the memory free.

A row's state is dominated by the attention KV caches: each self-attention layer keeps keys and
values for its context (3000 steps of 4096 values in 32 layers for PersonaPlex 7B: 1.5 GiB a row
in bfloat16), Mimi's transformers theirs. The depformer's cache lives one step, and the token
cache and convolution states are small; a margin covers them and the step's activations. The
personas' system prompt states, kept to start the next conversation at once, take up to one row's
LM caches more.
"""

from __future__ import annotations

import torch
from moshi.modules.transformer import StreamingMultiheadAttention

from .load import LoadedModel

ROW_MARGIN = 1.25  # the rest of a row's state and its activations, over its KV caches
SHARE_OF_FREE = 0.8  # of the free memory, what rows may take (the rest: allocator slack, other work)
MAX_ROWS = 64  # beyond this a tick is compute-bound anyway


def _kv_bytes(module: torch.nn.Module, dtype_bytes: int) -> int:
    """Bytes of the keys and values one row keeps in a module's self-attention layers."""
    total = 0
    for layer in module.modules():
        if isinstance(layer, StreamingMultiheadAttention) and not layer.cross_attention and layer.context:
            total += 2 * layer.context * (layer.embed_dim // layer.kv_repeat) * dtype_bytes
    return total


def row_bytes(model: LoadedModel) -> int:
    """Bytes one batch row holds on the model's device (estimated from the attention caches)."""
    total = _kv_bytes(model.lm.transformer, model.dtype.itemsize) + _kv_bytes(model.mimi, 4)  # Mimi runs in float32
    return int(total * ROW_MARGIN)


def prompt_memory_bytes(model: LoadedModel) -> int:
    """What the personas' system prompt states may take (prompt_memory.py): one row's LM attention caches."""
    return _kv_bytes(model.lm.transformer, model.dtype.itemsize)


def free_bytes(device: torch.device) -> int:
    """Memory free for new rows: on CUDA what the driver reports free, on CPU the kernel's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # no /proc: assume a modest machine


def max_batch_size(model: LoadedModel) -> int:
    """The most rows a batch on this model should hold: what fits in a share of the free memory, 1 to MAX_ROWS."""
    fits = (int(SHARE_OF_FREE * free_bytes(model.device)) - prompt_memory_bytes(model)) // max(row_bytes(model), 1)
    return max(1, min(MAX_ROWS, fits))
