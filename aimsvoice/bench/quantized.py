"""Int8 weights against full precision: how closely the model follows (`measure_agreement`), and what
the int8 product costs beside bfloat16's on a device (`time_kernels`).

Agreement: both run the token loop (`PersonaPlexGen`, greedy) over the same conversation: the user's Mimi
codes of a recording, forced on the user's channels. Two measures:

- teacher-forced (top-1 agreement): the candidate is fed the reference's own text and agent
  tokens, so every step both see the same history; a step agrees when the candidate's argmax is
  the reference's, for the text token and for each of the 8 agent codebooks (the depformer's
  inputs are the reference's tokens too). This is the per-step quality of the weights, with no
  divergence compounding.
- free-running: each picks its own tokens; how many steps say the same text token and the same 8
  agent codes, and the first step where they part. Greedy decoding of an autoregressive model
  parts for good at the first near-tie, so this mostly says how long they stay together.

The step at offset 0 runs no LM, and the last `max_delay` frames are never complete: `frames`
counts the steps compared. Random weights make logits with many near-ties (no training sharpened
them), so figures on random models are a floor for trained ones, not a prediction.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..audio.format import FRAME_SIZE
from ..engine import LoadedModel, PersonaPlexGen
from ..engine.int8 import Int8Linear, quantize_weight
from ..engine.loop import AGENT, TEXT, forcing

# PersonaPlex 7B's linear layers per step: (out, in) -> how many run (32 temporal layers; the
# depformer's 6 layers once per codebook, 16 codebooks, each with its own weights).
LINEARS_7B = {
    "temporal attention in": ((12288, 4096), 32),
    "temporal attention out": ((4096, 4096), 32),
    "temporal feed-forward in": ((22528, 4096), 32),
    "temporal feed-forward out": ((4096, 11264), 32),
    "depformer attention in": ((3072, 1024), 96),
    "depformer attention out": ((1024, 1024), 96),
    "depformer feed-forward in": ((5632, 1024), 96),
    "depformer feed-forward out": ((1024, 2816), 96),
}


@dataclass(frozen=True)
class Agreement:
    """A candidate against the reference over one conversation (fractions in [0, 1])."""

    frames: int  # LM steps compared
    text_top1: float  # teacher-forced: steps whose text argmax is the reference's
    audio_top1: float  # teacher-forced: agent codes (8 a step) whose argmax is the reference's
    audio_frames: float  # teacher-forced: steps whose 8 agent argmaxes are all the reference's
    semantic_top1: float  # teacher-forced: the first (semantic) agent codebook alone
    free_text: float  # free-running: steps with the reference's text token
    free_audio_frames: float  # free-running: steps with the reference's 8 agent codes
    first_divergence: int | None  # free-running: the first step that differs (None: none did)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def user_codes(model: LoadedModel, pcm: np.ndarray) -> torch.Tensor:
    """The user's Mimi codes [T, 8] of 24 kHz mono PCM, encoded frame by frame as the engine does."""
    n_frames = -(-len(pcm) // FRAME_SIZE)
    padded = np.zeros(n_frames * FRAME_SIZE, dtype=np.float32)
    padded[: len(pcm)] = pcm
    codes = []
    with torch.no_grad(), model.mimi.streaming(1):
        for i in range(n_frames):
            frame = torch.from_numpy(padded[i * FRAME_SIZE:(i + 1) * FRAME_SIZE]).to(model.device)
            codes.append(model.mimi.encode(frame[None, None])[0, :, 0])
    return torch.stack(codes)


@dataclass
class _Run:
    text: torch.Tensor  # [S] text argmax at each LM step
    audio: torch.Tensor  # [S, 8] agent-codebook argmaxes at each LM step
    frames: list[torch.Tensor]  # [K] the undelayed frames the run produced: frames[i] is frame i + 1 (frame 0 is dropped)


def reference_run(model: LoadedModel, codes: torch.Tensor) -> _Run:
    """The reference's greedy run over the user's codes, to measure several candidates against."""
    return _run(model, codes)


def _run(model: LoadedModel, codes: torch.Tensor, teacher: list[torch.Tensor] | None = None) -> _Run:
    """Greedy token loop over the user's codes; with `teacher` (frames of another run) its text and agent tokens are forced."""
    gen = PersonaPlexGen(model.lm, context="pinned")
    texts: list[torch.Tensor] = []
    audios: list[torch.Tensor] = []
    frames: list[torch.Tensor] = []

    def on_logits(text_logits: torch.Tensor, audio_logits: torch.Tensor) -> None:
        texts.append(text_logits[0, 0, 0].argmax(-1))
        audios.append(audio_logits[0, AGENT.start - 1:AGENT.stop - 1].argmax(-1))

    gen.on_logits = on_logits
    device = model.device
    n_steps = len(codes) if teacher is None else min(len(codes), len(teacher) + 1)
    with gen.streaming(1):
        for t in range(n_steps):
            # Frame t of the teacher at step t (frame 0, dropped at offset 0, has nothing to force).
            frame = teacher[t - 1] if teacher is not None and t >= 1 else None
            tokens, mask = forcing(
                1, device, user=codes[t][None],
                agent=None if frame is None else frame[AGENT][None], text=None if frame is None else frame[TEXT:TEXT + 1],
            )
            out = gen.step(tokens, mask)
            if out.has_frame[0]:
                frames.append(out.frames[0, :, 0])
    return _Run(torch.stack(texts).cpu(), torch.stack(audios).cpu(), frames)


def measure_agreement(reference: LoadedModel | _Run, candidate: LoadedModel, codes: torch.Tensor) -> Agreement:
    """The candidate's agreement with the reference over a conversation of the user's codes [T, 8] (`user_codes`).

    reference: the model, or its run over these codes (`reference_run`) when several candidates are measured.
    """
    ref = reference if isinstance(reference, _Run) else reference_run(reference, codes)
    free = _run(candidate, codes)
    taught = _run(candidate, codes, teacher=ref.frames)
    steps = min(len(taught.text), len(ref.text))
    text_ok = (taught.text[:steps] == ref.text[:steps]).numpy()
    audio_ok = (taught.audio[:steps] == ref.audio[:steps]).numpy()
    free_steps = min(len(free.text), len(ref.text))
    free_text = (free.text[:free_steps] == ref.text[:free_steps]).numpy()
    free_audio = (free.audio[:free_steps] == ref.audio[:free_steps]).numpy().all(axis=1)
    parted = np.flatnonzero(~(free_text & free_audio))
    return Agreement(
        frames=steps,
        text_top1=float(text_ok.mean()),
        audio_top1=float(audio_ok.mean()),
        audio_frames=float(audio_ok.all(axis=1).mean()),
        semantic_top1=float(audio_ok[:, 0].mean()),
        free_text=float(free_text.mean()),
        free_audio_frames=float(free_audio.mean()),
        first_divergence=int(parted[0]) if len(parted) else None,
    )


def time_kernels(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, batch_sizes: tuple[int, ...] = (1, 8),
    linears: dict[str, tuple[tuple[int, int], int]] = LINEARS_7B, repeats: int = 20,
) -> list[dict[str, Any]]:
    """Median ms of one product per layer shape, batch size and kernel: `dtype` weights (cuBLAS or the CPU's
    BLAS), int8 through PyTorch's `_weight_int8pack_mm` ("int8pack"), int8 cast to `dtype` first ("cast"),
    and on CUDA bitsandbytes' LLM.int8 as moshi's QLinear runs it ("bitsandbytes"), where it imports.

    Each row also says what the kernel costs per 7B step: the shape's time times how often it runs."""
    rows: list[dict[str, Any]] = []
    generator = torch.Generator(device=device).manual_seed(0)
    for name, ((n_out, n_in), per_step) in linears.items():
        weight = torch.randn(n_out, n_in, device=device, dtype=dtype, generator=generator) * n_in ** -0.5
        q = Int8Linear(*quantize_weight(weight, dtype))
        kernels: dict[str, Any] = {
            str(dtype).removeprefix("torch."): lambda x: torch.nn.functional.linear(x, weight),
            "int8pack": lambda x: torch._weight_int8pack_mm(x, q.weight, q.scale),
            "cast": lambda x: torch.nn.functional.linear(x, q.weight.to(dtype)) * q.scale,
        }
        bnb = _bitsandbytes(weight) if device.type == "cuda" else None
        if bnb is not None:
            kernels["bitsandbytes"] = lambda x: bnb(x)
        for batch in batch_sizes:
            x = torch.randn(batch, n_in, device=device, dtype=dtype, generator=generator)
            for kernel, run in kernels.items():
                if kernel == "int8pack" and device.type == "cpu" and n_in % 16:
                    continue
                try:
                    ms = _median_ms(run, x, device, repeats)
                except RuntimeError as e:  # a kernel this build or card lacks: said, not fatal
                    rows.append({"linear": name, "out": n_out, "in": n_in, "batch": batch, "kernel": kernel, "error": str(e)[:200]})
                    continue
                rows.append({"linear": name, "out": n_out, "in": n_in, "batch": batch, "kernel": kernel,
                             "ms": round(ms, 4), "ms_per_7b_step": round(ms * per_step, 3)})
    return rows


def _bitsandbytes(weight: torch.Tensor) -> Any:
    try:
        from moshi.utils.quantize import QLinear

        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        linear.weight.data.copy_(weight)
        return QLinear(linear)
    except Exception:  # no bitsandbytes, or no CUDA build of it
        return None


def _median_ms(run: Any, x: torch.Tensor, device: torch.device, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            run(x)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            run(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))
