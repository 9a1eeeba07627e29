"""`--engine auto`: which tier runs a conversation, and why, in one line.

`choose_tier` is a pure decision over `Facts`; `gather_facts` finds them (the pulled weights
first, so torch is imported only when there are weights to run). The order is the brief's chain:

1. PersonaPlex, when `--model` names a model (the user chose it), or when the pulled weights are
   there and a CUDA GPU has the memory the model needs in its dtype or, with `--quantize auto` or
   `int8`, with int8 weights (engine/quantize.py: weights, Mimi, one conversation, a margin);
2. else the cascade, when GROQ_API_KEY and ELEVENLABS_API_KEY are set;
3. else the local tier, which needs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ELEVENLABS_KEY_VAR, GROQ_KEY_VAR, Keys

GB = 1e9


@dataclass(frozen=True)
class Facts:
    """What the choice depends on.

    model_given: --model was given (PersonaPlex, as asked).
    weights: where the pulled weights are; None: not pulled.
    cuda: a CUDA device is usable; free_bytes: its free memory; need_bytes: what PersonaPlex needs there.
    missing_keys: the cascade's key variables that are not set.
    """

    model_given: bool = False
    weights: str | None = None
    cuda: bool = False
    free_bytes: int = 0
    need_bytes: int = 0
    missing_keys: tuple[str, ...] = (GROQ_KEY_VAR, ELEVENLABS_KEY_VAR)


@dataclass(frozen=True)
class TierChoice:
    """The tier a conversation runs on, why, and whether it was auto's choice (then a failure hands over)."""

    tier: str  # personaplex, cascade or local
    reason: str
    auto: bool = True

    def line(self) -> str:
        return f"engine: {self.tier} ({self.reason})"


def choose_tier(facts: Facts) -> TierChoice:
    """auto's choice: PersonaPlex if it can run well here, else the cascade if its keys are set, else local."""
    if facts.model_given:
        return TierChoice("personaplex", "--model given")
    if facts.weights is None:
        why_not = "no PersonaPlex weights (`aimsvoice pull-weights`)"
    elif not facts.cuda:
        why_not = "no CUDA GPU for PersonaPlex"
    elif facts.free_bytes < facts.need_bytes:
        why_not = f"the GPU has {facts.free_bytes / GB:.1f} GB free, PersonaPlex needs {facts.need_bytes / GB:.1f} GB"
    else:
        return TierChoice(
            "personaplex", f"CUDA GPU with {facts.free_bytes / GB:.1f} GB free, {facts.need_bytes / GB:.1f} GB needed; weights in {facts.weights}"
        )
    return after_personaplex(facts, why_not)


def after_personaplex(facts: Facts, why_not: str) -> TierChoice:
    """The tier after PersonaPlex (it cannot run, or has failed): the cascade if its keys are set, else local."""
    if not facts.missing_keys:
        return TierChoice("cascade", f"{why_not}; {GROQ_KEY_VAR} and {ELEVENLABS_KEY_VAR} are set")
    missing = " and ".join(facts.missing_keys)
    return TierChoice("local", f"{why_not}; {missing} {'is' if len(facts.missing_keys) == 1 else 'are'} not set for the cascade")


def personaplex_need_bytes(model_dir: Path, dtype: str = "auto", quantize: str = "none") -> int:
    """Bytes PersonaPlex takes on a GPU in `dtype` (auto: bfloat16) with `quantize` ("auto" and "int8": the
    int8 weights auto falls back to where bfloat16 does not fit): engine/quantize.py's `need_bytes`, from
    the safetensors headers, nothing loaded."""
    from ..load import read_model_files
    from ..quantize import need_bytes, safetensors_shapes

    files = read_model_files(model_dir)
    mimi_params = sum(_count(shape) for _, shape in safetensors_shapes(files.mimi))
    item = "bfloat16" if dtype == "auto" else dtype
    return need_bytes(safetensors_shapes(files.lm), files.lm_kwargs, item, "none" if quantize == "none" else "int8", mimi_params)


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def gather_facts(
    model: str | None, device: str = "auto", dtype: str = "auto", quantize: str = "auto", keys: Keys | None = None,
) -> Facts:
    """The facts on this machine: pulled weights, CUDA and its free memory (only with weights), keys.

    Weights whose headers cannot be read count as needing nothing: PersonaPlex is tried, fails to
    load, and auto hands over (session.open_engine)."""
    keys = keys if keys is not None else Keys.from_env()
    missing = tuple(var for var, key in ((GROQ_KEY_VAR, keys.groq), (ELEVENLABS_KEY_VAR, keys.elevenlabs)) if not key)
    if model is not None:
        return Facts(model_given=True, missing_keys=missing)
    from ... import weights

    pulled = weights.find_pulled_model()
    if pulled is None or device == "cpu":
        return Facts(weights=str(pulled) if pulled else None, missing_keys=missing)
    cuda, free = _cuda_free()
    try:
        need = personaplex_need_bytes(pulled, dtype, quantize)
    except Exception:
        need = 0
    return Facts(weights=str(pulled), cuda=cuda, free_bytes=free, need_bytes=need, missing_keys=missing)


def _cuda_free() -> tuple[bool, int]:
    try:
        import torch

        if not torch.cuda.is_available():
            return False, 0
        free, _ = torch.cuda.mem_get_info()
        return True, int(free)
    except Exception:  # a broken driver is no GPU for this purpose
        return False, 0
