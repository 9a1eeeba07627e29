"""Engine settings: where and how the model runs; and how a conversation samples."""

from __future__ import annotations

from dataclasses import dataclass

# The reference's defaults for PersonaPlex (offline and server alike).
TEMP_TEXT = 0.7
TOPK_TEXT = 25
TEMP_AUDIO = 0.8
TOPK_AUDIO = 250


@dataclass(frozen=True)
class SamplingConfig:
    """How a conversation samples text and audio tokens; `greedy` takes the argmax everywhere.

    A temperature of 0 is greedy too; a top-k of 0 or less keeps every candidate.
    """

    greedy: bool = False
    temp_text: float = TEMP_TEXT
    topk_text: int = TOPK_TEXT
    temp_audio: float = TEMP_AUDIO
    topk_audio: int = TOPK_AUDIO


@dataclass(frozen=True)
class EngineConfig:
    """How to run the engine.

    device: "auto" (CUDA when available), "cuda" or "cpu".
    dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "bfloat16" or "float32"; Mimi always runs
        in float32, as in the reference.
    cuda_graphs: capture the LM and depformer steps as CUDA graphs (CUDA only), as moshi does.
    context: "pinned" keeps each conversation's system prompt in the attention window for good
        (engine/context.py); "ring" lets it roll out after the window, as moshi and the reference do.
    profile: synchronize the device between stages so per-stage timings are exact (slower).
    quantize: "int8" weights for the temporal transformer and the depformer, "none", or "auto"
        (int8 on a CUDA GPU whose free memory the model does not fit otherwise): engine/quantize.py.
        Applied when the model loads (`load_model(..., quantize=)`).
    """

    device: str = "auto"
    dtype: str = "auto"
    cuda_graphs: bool = True
    profile: bool = False
    context: str = "pinned"
    quantize: str = "auto"
