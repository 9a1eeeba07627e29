"""The full PersonaPlex architecture with random weights, to measure speed and memory with no download.

The LM is built on the meta device and then given real storage of the target dtype in place
(`to_empty`), parameter by parameter filled with random values: at no point does a float32 copy
of the 7B weights exist, so bfloat16 needs ~16.7 GB, not twice that. With int8 weights the same
values are made piece by piece and each transformer layer is quantized before the next exists
(engine/int8.py), so no full bfloat16 copy exists either. Mimi (~80 M parameters) is built
directly with PyTorch's default initialization. The text tokenizer is the tiny model's: the
engine only uses it to print text, and random weights say nothing worth printing.

Architectures: "7b", PersonaPlex 7B; "small", PersonaPlex's layout (16 codebooks, delays, vocabularies,
3000-step window) at dim 512 with 6 layers and a 2-layer depformer of dim 256 (~0.13 B parameters), fast
enough on a CPU to compare precisions over a whole conversation. The values drawn depend on the dtype:
to compare precisions on the same weights, load one float32 checkpoint in each (scripts/int8-figures.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel

from .. import layout
from ..engine import LoadedModel, ensure_tiny_model
from ..engine.int8 import build_lm
from ..engine.load import AGENT_CODEBOOKS, PERSONAPLEX_LM_KWARGS, ModelFiles, resolve_device, resolve_dtype
from ..engine.quantize import check_quantize, choose_quantize, need_bytes
from ..errors import BenchError

logger = logging.getLogger(__name__)

SMALL_LM_KWARGS: dict[str, Any] = {
    **PERSONAPLEX_LM_KWARGS,
    "dim": 512,
    "num_heads": 8,
    "num_layers": 6,
    "depformer_dim": 256,
    "depformer_dim_feedforward": int(4.125 * 256),
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
}
ARCHITECTURES = {"7b": PERSONAPLEX_LM_KWARGS, "small": SMALL_LM_KWARGS}
MIMI_PARAMS = 80_000_000  # about: for auto's memory estimate


def random_lm(lm_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0, quantize: str = "none") -> LMModel:
    """A moshi LM of this architecture, random weights of `dtype` straight on `device` (no float32 copy).

    quantize "int8": the same weights, each transformer and depformer layer quantized as soon as it is made.
    """
    generator = torch.Generator(device=device).manual_seed(seed)

    def fill(prefix: str, piece: torch.nn.Module) -> None:
        piece.to_empty(device=device)
        for parameter in piece.parameters():
            if parameter.squeeze().dim() <= 1:  # the norms' scales
                parameter.fill_(1.0)
            else:  # unit-variance activations through every projection and embedding
                parameter.normal_(0.0, parameter.shape[-1] ** -0.5, generator=generator)

    return build_lm(lm_kwargs, device, dtype, quantize, fill)


def random_model(name: str, device: str = "auto", dtype: str = "auto", seed: int = 0, quantize: str = "none") -> LoadedModel:
    """PersonaPlex `name` ("7b", "small") with random weights on `device`, deterministic from `seed`.

    quantize: "none", "int8", or "auto" (int8 on a CUDA device the model does not fit in full precision).
    """
    if name not in ARCHITECTURES:
        raise BenchError(f"--random-weights {name}: unknown architecture; use one of {', '.join(ARCHITECTURES)}.")
    lm_kwargs = ARCHITECTURES[name]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer_path = ensure_tiny_model() / layout.TEXT_TOKENIZER_NAME
    if check_quantize(quantize) == "auto":
        quantize = _auto_quantize(lm_kwargs, torch_device, torch_dtype)

    logger.info("building the %s LM with random %s weights on %s (quantize %s)", name, torch_dtype, torch_device, quantize)
    lm = random_lm(lm_kwargs, torch_device, torch_dtype, seed, quantize)
    logger.info("building Mimi with random weights")
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, device=torch_device, num_codebooks=AGENT_CODEBOOKS)
    tokenizer = sentencepiece.SentencePieceProcessor(str(tokenizer_path))  # type: ignore[call-arg]
    label = Path(f"random-weights-{name}")
    files = ModelFiles(label, label, label, tokenizer_path, None, dict(lm_kwargs))
    return LoadedModel(files, lm, mimi, tokenizer, torch_device, torch_dtype, f"random-{name}-seed{seed}", quantize)


def _auto_quantize(lm_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> str:
    """As `engine.load.resolve_quantize`, with the architecture's shapes from a model on the meta device."""
    if device.type != "cuda":
        return "none"
    from ..engine.memory import free_bytes

    meta = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="meta", dtype=dtype)
    shapes = [(name, tuple(p.shape)) for name, p in meta.named_parameters()]
    need = need_bytes(shapes, lm_kwargs, str(dtype).removeprefix("torch."), "none", MIMI_PARAMS)
    return choose_quantize(free_bytes(device), need)
