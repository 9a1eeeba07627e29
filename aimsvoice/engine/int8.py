"""8-bit weights for the temporal transformer and the depformer, quantized while the LM loads.

`Int8Linear` holds a linear layer's weight as int8 [out, in] with one scale per output row,
rounded up to a value of the activations' dtype, so that |w| / scale <= 127 always holds and the
scale multiplies the product exactly as stored (symmetric, absmax / 127). Its product:

- bfloat16 or float16 activations: `torch._weight_int8pack_mm`, PyTorch's own weight-only int8
  kernel (CPU and CUDA), which reads the int8 weight once and accumulates in float32. On 2 CPU
  cores it is as fast as bfloat16 on PersonaPlex's shapes (bitsandbytes' LLM.int8, moshi's
  QLinear, was 26x slower there; torchao's int8 weight-only without torch.compile 4-7x slower).
  Its CPU kernel reads rows 16 values at a time with aligned loads and checks neither: it
  needs in_features % 16 == 0 (PersonaPlex's all are) and a 64-byte aligned input, or it reads
  past the row (wrong numbers, or a crash). Its CUDA kernel (PyTorch 2.9) is a plain one, a
  thread per output accumulating in float32, reading only the int8 weight: unmeasured here;
  `make gpu-check` times it against the cast below on cuBLAS and against bitsandbytes.
- float32 activations, in_features not a multiple of 16 on the CPU, or a PyTorch without the
  kernel on the device: the weight is cast to the activations' dtype for the product (the same
  numbers, more memory traffic; the CPU's int8 kernel in float32 is scalar and 25x slower).

Loading never holds a full-precision copy beside the int8 one: the LM is built on the meta
device and given its weights piece by piece in parameter order (`pieces`): each layer of the
temporal transformer and of the depformer whole, which is quantized before the next loads,
and the largest modules around them that hold none (embeddings, heads, norms). At most one
layer exists in full precision at a time (a PersonaPlex 7B layer: 0.4 GB in bfloat16).

moshi sizes an attention layer's cache by its first input projection's weight dtype; for int8
projections `_int8_streaming_state` makes it in the activations' dtype instead (per instance,
as engine/context.py patches `forward`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention, _MHAState
from safetensors import safe_open
from torch import nn

from .quantize import QUANTIZED_PREFIXES

QMAX = 127
QUANTIZE_ROWS = 1024  # rows quantized at once: 16 MB of float32 for a 4096-wide weight
CPU_K_MULTIPLE = 16  # the CPU int8 kernel's step along in_features (see the module docstring)
CPU_ALIGN = 64  # bytes: the CPU int8 kernel's aligned loads


def _int8pack_fits(device: torch.device, in_features: int, dtype: torch.dtype) -> bool:
    """Whether `torch._weight_int8pack_mm` computes this layer right, and fast, on `device`."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    if device.type == "cuda":
        return torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", "CUDA")
    return device.type == "cpu" and in_features % CPU_K_MULTIPLE == 0 and torch._C._dispatch_has_kernel_for_dispatch_key(
        "aten::_weight_int8pack_mm", "CPU")


class Int8Linear(nn.Module):
    """y = x W^T with W as int8 [out, in] times one scale per output row; no bias (moshi's layers have none)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        assert weight.dtype == torch.int8 and weight.dim() == 2 and scale.shape == weight.shape[:1]
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)  # in the activations' dtype
        self.kernel = "int8pack" if _int8pack_fits(weight.device, self.in_features, scale.dtype) else "cast"

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.scale.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> Int8Linear:
        assert linear.bias is None, "moshi's transformer layers have no bias"
        weight, scale = quantize_weight(linear.weight.detach(), dtype or linear.weight.dtype)
        return cls(weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.kernel == "int8pack":
            flat = flat.contiguous()
            if flat.device.type == "cpu" and flat.data_ptr() % CPU_ALIGN:
                flat = flat.clone()  # a view at an offset: the CPU kernel loads aligned
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:
            y = nn.functional.linear(flat, self.weight.to(x.dtype)) * self.scale
        return y.view(*shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight as it multiplies: int8 times the row scales, in float32."""
        return self.weight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, scale {self.compute_dtype}, {self.kernel}"


def quantize_weight(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [out, in] and scales [out] in `dtype` with weight ~= int8 * scale[:, None], row by row.

    The scale is absmax / 127 rounded up to a value of `dtype`, so the kernel multiplies by
    exactly the scale the weights were rounded against and no value is clipped.
    """
    absmax = torch.cat([rows.abs().amax(dim=1).float() for rows in weight.split(QUANTIZE_ROWS)])
    scale = (absmax / QMAX).clamp(min=torch.finfo(dtype).tiny)
    stored = scale.to(dtype)
    stored = torch.where(stored.float() < scale, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    for start in range(0, weight.shape[0], QUANTIZE_ROWS):  # a block of rows at a time: small float32 temporaries
        rows = slice(start, start + QUANTIZE_ROWS)
        q[rows] = weight[rows].to(torch.float32, copy=True).div_(stored[rows].float()[:, None]).round_().clamp_(-QMAX, QMAX)
    return q, stored


def quantize_layer_(layer: nn.Module, dtype: torch.dtype) -> int:
    """Replace every nn.Linear in `layer` by an Int8Linear (activations in `dtype`), in place; returns how many."""
    count = 0
    for module in list(layer.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_linear(child, dtype))
                count += 1
    for module in layer.modules():
        if isinstance(module, StreamingMultiheadAttention) and isinstance(module.in_projs[0], Int8Linear):
            assert not module.cross_attention, "PersonaPlex has no cross-attention"
            module._init_streaming_state = _int8_streaming_state.__get__(module)  # type: ignore[method-assign]
    return count


def _int8_streaming_state(self: StreamingMultiheadAttention, batch_size: int) -> _MHAState:
    """moshi's `_init_streaming_state` for int8 projections: the cache in the activations' dtype."""
    in_proj = self.in_projs[0]
    assert isinstance(in_proj, Int8Linear)
    device = in_proj.weight.device
    capacity = self.context if self.context is not None else self.weights_per_step
    if not capacity:
        raise RuntimeError("Cannot create a streaming KVCache without a context to estimate capacity.")
    kv_cache = RingKVCache(
        batch_size, self.num_heads // self.kv_repeat, self.embed_dim // self.num_heads, capacity,
        respect_exec_mask=not self.weights_per_step, device=device, dtype=in_proj.compute_dtype,
    )
    return _MHAState(batch_size, device, kv_cache, offset=torch.zeros(batch_size, device=device, dtype=torch.long), offset_cpu=0)


def quantized_layers(lm: LMModel) -> dict[str, nn.Module]:
    """The layers whose linears become int8, by state-dict prefix: every layer of the temporal transformer and the depformer."""
    layers: dict[str, nn.Module] = {}
    for prefix in QUANTIZED_PREFIXES:
        stack = lm.get_submodule(prefix.removesuffix(".layers."))
        layers.update({f"{prefix}{i}.": layer for i, layer in enumerate(stack.layers)})
    return layers


def pieces(module: nn.Module, layers: dict[str, nn.Module], prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`module` cut into pieces to load one at a time, in parameter order: each of `layers` whole, and the
    largest sub-modules holding none of them. (prefix, piece): the piece's state-dict prefix."""
    inside = {id(layer) for layer in layers.values()}
    if prefix in layers or not any(id(m) in inside for m in module.modules()):
        yield prefix, module
        return
    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    assert not own, f"{prefix or 'the LM'} holds tensors beside its layers: {[n for n, _ in own]}"
    for name, child in module.named_children():
        yield from pieces(child, layers, f"{prefix}{name}.")


def build_lm(
    lm_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, quantize: str,
    materialize: Callable[[str, nn.Module], None],
) -> LMModel:
    """A moshi LM built on the meta device, whose pieces get their tensors from `materialize(prefix, piece)` in
    parameter order; with quantize "int8" each transformer and depformer layer is quantized as soon as it has them."""
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="meta", dtype=dtype)
    layers = quantized_layers(lm) if quantize == "int8" else {}
    with torch.no_grad():
        for prefix, piece in pieces(lm, layers):
            materialize(prefix, piece)
            if prefix in layers:
                quantize_layer_(piece, dtype)
    left = [name for name, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"Missing key(s) in state_dict: {', '.join(left[:5])}")
    return lm.eval()


def load_lm(path: Path, lm_kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype, quantize: str = "int8") -> LMModel:
    """The LM of a safetensors checkpoint, loaded piece by piece onto `device` (see the module docstring)."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = set(f.keys())
        used: set[str] = set()

        def materialize(prefix: str, piece: nn.Module) -> None:
            own = sorted(k for k in keys if k.startswith(prefix))
            state = {k[len(prefix):]: _cast(k, f.get_tensor(k), dtype) for k in own}
            piece.load_state_dict(state, strict=True, assign=True)
            used.update(own)

        lm = build_lm(lm_kwargs, device, dtype, quantize, materialize)
    unexpected = sorted(keys - used)
    if unexpected:
        raise RuntimeError(f"Unexpected key(s) in state_dict: {', '.join(unexpected[:5])}")
    return lm


def _cast(key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """As moshi's loader: floating tensors in the model's dtype, its conditioners' in float32."""
    if not value.dtype.is_floating_point:
        return value
    return value.float() if re.match(r"(condition_provider|fuser)\.", key) else value.to(dtype)


def int8_bytes(lm: nn.Module) -> tuple[int, int]:
    """(bytes held as int8 weights and their scales, bytes of everything else) of a module's tensors."""
    quantized = other = 0
    for module in lm.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            size = tensor.numel() * tensor.element_size()
            if isinstance(module, Int8Linear):
                quantized += size
            else:
                other += size
    return quantized, other
