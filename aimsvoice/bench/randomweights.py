"""The full PersonaPlex architecture with random weights, to measure speed and memory with no download.

The LM is built on the meta device and then given real storage of the target dtype in place
(`to_empty`), parameter by parameter filled with random values: at no point does a float32 copy
of the 7B weights exist, so bfloat16 needs ~16.7 GB, not twice that. Mimi (~80 M parameters) is
built directly with PyTorch's default initialization. The text tokenizer is the tiny model's:
the engine only uses it to print text, and random weights say nothing worth printing.
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
from ..engine.load import AGENT_CODEBOOKS, PERSONAPLEX_LM_KWARGS, ModelFiles, resolve_device, resolve_dtype
from ..errors import BenchError

logger = logging.getLogger(__name__)

ARCHITECTURES = {"7b": PERSONAPLEX_LM_KWARGS}


def random_lm(lm_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> LMModel:
    """A moshi LM of this architecture, random weights of `dtype` straight on `device` (no float32 copy)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="meta", dtype=dtype)
    lm = lm.to_empty(device=device)
    with torch.no_grad():
        for parameter in lm.parameters():
            if parameter.squeeze().dim() <= 1:  # the norms' scales
                parameter.fill_(1.0)
            else:  # unit-variance activations through every projection and embedding
                parameter.normal_(0.0, parameter.shape[-1] ** -0.5, generator=generator)
    return lm


def random_model(name: str, device: str = "auto", dtype: str = "auto", seed: int = 0) -> LoadedModel:
    """PersonaPlex `name` ("7b") with random weights on `device`, deterministic from `seed`."""
    if name not in ARCHITECTURES:
        raise BenchError(f"--random-weights {name}: unknown architecture; use one of {', '.join(ARCHITECTURES)}.")
    lm_kwargs = ARCHITECTURES[name]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer_path = ensure_tiny_model() / layout.TEXT_TOKENIZER_NAME

    logger.info("building the %s LM with random %s weights on %s", name, torch_dtype, torch_device)
    lm = random_lm(lm_kwargs, torch_device, torch_dtype, seed)
    logger.info("building Mimi with random weights")
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, device=torch_device, num_codebooks=AGENT_CODEBOOKS)
    tokenizer = sentencepiece.SentencePieceProcessor(str(tokenizer_path))  # type: ignore[call-arg]
    label = Path(f"random-weights-{name}")
    files = ModelFiles(label, label, label, tokenizer_path, None, dict(lm_kwargs))
    return LoadedModel(files, lm, mimi, tokenizer, torch_device, torch_dtype, f"random-{name}-seed{seed}")
