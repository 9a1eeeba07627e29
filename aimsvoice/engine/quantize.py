"""`--quantize auto|none|int8`: which weights become 8-bit, what a model then needs, and when auto takes it.

Torch-free, so the engine choice (`--engine auto`) can ask before anything loads. The layer
itself and the loading are in int8.py.

What int8 means here: every linear layer of the temporal transformer and of the depformer
(attention projections and the gated feed-forward: 7.8 of PersonaPlex 7B's 8.4 B parameters)
keeps its weights as int8, one scale per output row (symmetric, absmax / 127); activations, the
attention caches, embeddings, norms, the text and audio heads and Mimi stay in the model's
dtype. Weight-only: the matrix products run on the activations' dtype with int8 weights.

The rule of `auto`: on a CUDA device, full precision when the model in its dtype fits the free
memory with one conversation and a margin, else int8. On the CPU auto is always full precision
(the 7B there is a benchmark, not a conversation; ask for int8 with `--quantize int8`).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Iterable

QUANTIZE_MODES = ("auto", "none", "int8")
# State-dict prefixes of the layers whose 2-D weights (their linear layers) become int8.
QUANTIZED_PREFIXES = ("transformer.layers.", "depformer.layers.")
SCALE_BYTES = 4  # at most: a float32 scale per output row (bfloat16 with bfloat16 activations)
ROW_MARGIN = 1.25  # as engine/memory.py: the rest of a conversation's state over its attention caches
MARGIN_BYTES = 2**30  # activations, CUDA graphs, the allocator's slack
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

Shapes = Iterable[tuple[str, tuple[int, ...]]]


def is_quantized(name: str, shape: tuple[int, ...]) -> bool:
    """Whether a tensor of the LM's checkpoint is stored as int8: a linear weight of a transformer layer."""
    return name.startswith(QUANTIZED_PREFIXES) and len(shape) == 2


def weights_bytes(shapes: Shapes, item_bytes: int, quantize: str) -> int:
    """Bytes of the LM's weights with `quantize` ("none" or "int8"), the rest in `item_bytes` per value."""
    total = 0
    for name, shape in shapes:
        count = math.prod(shape)
        if quantize == "int8" and is_quantized(name, shape):
            total += count + SCALE_BYTES * int(shape[0])
        else:
            total += count * item_bytes
    return total


def row_bytes(lm_kwargs: dict[str, Any], item_bytes: int) -> int:
    """One conversation's state in the LM: keys and values of every layer over the window, and a margin."""
    dim, layers, context = int(lm_kwargs["dim"]), int(lm_kwargs["num_layers"]), int(lm_kwargs.get("context") or 0)
    kv_dim = dim // int(lm_kwargs.get("kv_repeat", 1))
    return int(ROW_MARGIN * 2 * context * kv_dim * layers * item_bytes)


def need_bytes(lm_shapes: Shapes, lm_kwargs: dict[str, Any], dtype: str, quantize: str, mimi_params: int = 0) -> int:
    """What a model needs on its device: the LM's weights, Mimi in float32, one conversation, a margin."""
    item = DTYPE_BYTES[dtype]
    return weights_bytes(lm_shapes, item, quantize) + 4 * mimi_params + row_bytes(lm_kwargs, item) + MARGIN_BYTES


def choose_quantize(free_bytes: int, need_full_bytes: int) -> str:
    """auto's rule: "none" when the full-precision model fits the free memory, else "int8".

    Int8 is the better bet even when it does not fit either: it needs about half.
    """
    return "none" if need_full_bytes <= free_bytes else "int8"


def check_quantize(quantize: str) -> str:
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize {quantize!r}: use one of {', '.join(QUANTIZE_MODES)}")
    return quantize


def safetensors_shapes(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a safetensors file by name and shape, from its header: nothing is loaded."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    return [(name, tuple(int(d) for d in info["shape"])) for name, info in header.items() if name != "__metadata__"]
