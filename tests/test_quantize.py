"""--quantize int8: the int8 layer, quantizing while loading (no full-precision copy), auto's rule, agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from moshi.models import loaders
from torch import nn

from aimsvoice.audio import read_wav
from aimsvoice.bench.quantized import measure_agreement, user_codes
from aimsvoice.bench.randomweights import random_lm
from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, SamplingConfig, load_model
from aimsvoice.engine import int8, load, memory
from aimsvoice.engine.int8 import Int8Linear, quantize_weight, quantized_layers
from aimsvoice.engine.load import PERSONAPLEX_LM_KWARGS, read_model_files, resolve_quantize
from aimsvoice.engine.quantize import choose_quantize, is_quantized, need_bytes, safetensors_shapes, weights_bytes
from aimsvoice.engine.tiny import TINY_LM_KWARGS
from cli_run import run_main

DATA_USER = "tests/data/parity/user.wav"
GIB = 2**30


def _linears(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("dtype", "in_features", "kernel"), [
    (torch.bfloat16, 64, "int8pack"),  # PyTorch's int8 kernel
    (torch.bfloat16, 85, "cast"),  # not a multiple of 16: the CPU kernel would read past the row
    (torch.float32, 64, "cast"),
])
def test_int8_linear_multiplies_by_its_dequantized_weight(dtype, in_features, kernel) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 48, bias=False)
    q = Int8Linear.from_linear(linear, dtype)
    assert q.kernel == kernel and q.weight.dtype == torch.int8 and q.scale.dtype == dtype
    x = torch.randn(5, 3, in_features)[:, 1:2]  # a strided view, as the depformer's per-step slices
    y = q(x.to(dtype))
    assert y.shape == (5, 1, 48) and y.dtype == dtype
    expected = x @ q.dequantized().T
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the input's own rounding
    assert float((y.float() - expected).norm() / expected.norm()) < tolerance
    with torch.no_grad():
        assert float((expected - linear(x)).norm() / linear(x).norm()) < 0.01  # int8 rounding: ~0.3-0.5%


def test_scales_are_exact_in_the_activations_dtype_and_nothing_clips() -> None:
    torch.manual_seed(1)
    weight = torch.randn(64, 128) * torch.logspace(-3, 1, 64)[:, None]
    weight[3] = 0.0  # an all-zero row
    original = weight.clone()
    for dtype in (torch.bfloat16, torch.float32):
        q, scale = quantize_weight(weight, dtype)
        assert torch.equal(weight, original)  # the source is left as it was
        assert scale.dtype == dtype and q.dtype == torch.int8 and int(q.abs().max()) <= 127
        assert torch.all(scale.float() * 127 >= weight.abs().amax(dim=1))  # rounded up: |w| / scale <= 127
        assert int(q.abs().amax(dim=1)[0]) >= 126  # and barely so
        assert torch.all(q[3] == 0)
        error = (q.float() * scale.float()[:, None] - weight).abs()
        assert torch.all(error <= scale.float()[:, None] * 0.5 + 1e-12)


def test_the_tiny_model_loads_with_int8_linears_and_runs(tiny_dir) -> None:
    full = load_model(tiny_dir, "cpu", "float32", quantize="none")
    model = load_model(tiny_dir, "cpu", "float32", quantize="int8")
    assert (full.quantize, model.quantize) == ("none", "int8")
    for stack in ("transformer", "depformer"):
        assert not _linears(model.lm.get_submodule(stack)), stack
        quantized = {n for n, m in model.lm.get_submodule(stack).named_modules() if isinstance(m, Int8Linear)}
        assert quantized == set(_linears(full.lm.get_submodule(stack))), stack
    assert set(_linears(model.lm)) == set(_linears(full.lm)) - {n for n in _linears(full.lm) if n.startswith(("transformer.", "depformer."))}
    # Exactly the full model's weights, quantized, and nothing else of it changed.
    full_state = full.lm.state_dict()
    for name, module in model.lm.named_modules():
        if isinstance(module, Int8Linear):
            q, scale = quantize_weight(full_state[f"{name}.weight"], torch.float32)
            assert torch.equal(module.weight, q) and torch.equal(module.scale, scale), name
    for name, tensor in model.lm.state_dict().items():
        if name in full_state and tensor.dtype != torch.int8 and not name.endswith(".scale"):
            assert torch.equal(tensor, full_state[name]), name

    with Engine(model, EngineConfig(device="cpu")) as engine:
        engine.start(ConversationSpec("", "", SamplingConfig(greedy=True), seed=0))
        caches = [m._streaming_state.kv_cache.cache for m in model.lm.transformer.modules()
                  if hasattr(m, "in_projs") and m._streaming_state is not None]
        assert caches and all(c.dtype == torch.float32 for c in caches)  # in the activations' dtype, not int8
        pcm = read_wav(DATA_USER)
        outs = [engine.step(pcm[i * 1920:(i + 1) * 1920]) for i in range(5)]
    assert all(out.pcm.shape == (1920,) and np.isfinite(out.pcm).all() for out in outs)


def test_bfloat16_int8_runs_both_kernels(tiny_dir) -> None:
    model = load_model(tiny_dir, "cpu", "bfloat16", quantize="int8")
    kernels = {m.kernel for m in model.lm.modules() if isinstance(m, Int8Linear)}
    assert kernels == {"int8pack", "cast"}  # the tiny feed-forward's 85 inputs take the cast
    with Engine(model, EngineConfig(device="cpu")) as engine:
        engine.start(ConversationSpec("", "", SamplingConfig(greedy=True), seed=0))
        outs = [engine.step(np.zeros(1920, np.float32)) for _ in range(4)]
    assert np.isfinite(outs[-1].pcm).all()


def test_loading_holds_at_most_one_full_precision_layer(tiny_dir, monkeypatch) -> None:
    """Each layer is quantized as soon as it has its weights: when it is, every other layer is int8 or not loaded yet."""
    built: list[nn.Module] = []
    get_lm = int8.loaders.get_moshi_lm
    monkeypatch.setattr(int8.loaders, "get_moshi_lm", lambda *a, **k: built.append(get_lm(*a, **k)) or built[-1])
    quantize_layer = int8.quantize_layer_
    quantized: list[int] = []

    def spy(layer: nn.Module, dtype: torch.dtype) -> int:
        loaded = [m for m in built[-1].modules() if isinstance(m, nn.Linear) and not m.weight.is_meta]
        in_layers = [m for other in quantized_layers(built[-1]).values() for m in other.modules() if m in loaded]
        assert in_layers and all(any(m is n for n in layer.modules()) for m in in_layers)
        quantized.append(id(layer))
        return quantize_layer(layer, dtype)

    monkeypatch.setattr(int8, "quantize_layer_", spy)
    model = load_model(tiny_dir, "cpu", "float32", quantize="int8")
    n_layers = TINY_LM_KWARGS["num_layers"] + TINY_LM_KWARGS["depformer_num_layers"]
    assert len(set(quantized)) == len(quantized) == n_layers
    assert model.lm is built[-1]
    assert not any(isinstance(m, nn.Linear) for stack in (model.lm.transformer, model.lm.depformer) for m in stack.modules())


def test_random_int8_weights_are_the_random_full_weights_quantized() -> None:
    device = torch.device("cpu")
    full = random_lm(TINY_LM_KWARGS, device, torch.bfloat16, seed=5)
    quantized = random_lm(TINY_LM_KWARGS, device, torch.bfloat16, seed=5, quantize="int8")
    full_state = full.state_dict()
    n = 0
    for name, module in quantized.named_modules():
        if isinstance(module, Int8Linear):
            q, scale = quantize_weight(full_state[f"{name}.weight"], torch.bfloat16)
            assert torch.equal(module.weight, q) and torch.equal(module.scale, scale), name
            n += 1
    assert n == len([m for s in (full.transformer, full.depformer) for m in s.modules() if isinstance(m, nn.Linear)])
    for name, tensor in quantized.named_parameters():
        if tensor.dtype != torch.int8 and not name.endswith(".scale"):
            assert torch.equal(tensor, full_state[name]), name


def test_auto_takes_int8_only_on_a_gpu_the_full_model_does_not_fit(tiny_dir, monkeypatch) -> None:
    files = read_model_files(tiny_dir)
    assert resolve_quantize("auto", files, torch.device("cpu"), torch.float32) == "none"
    assert resolve_quantize("int8", files, torch.device("cpu"), torch.float32) == "int8"
    assert load_model(tiny_dir, "cpu", "float32").quantize == "none"
    cuda = torch.device("cuda")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 100 * GIB)
    assert resolve_quantize("auto", files, cuda, torch.bfloat16) == "none"
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1)
    assert resolve_quantize("auto", files, cuda, torch.bfloat16) == "int8"
    with pytest.raises(ValueError):
        resolve_quantize("int4", files, cuda, torch.bfloat16)


def test_the_rule_and_the_7b_sizes() -> None:
    assert choose_quantize(free_bytes=20 * GIB, need_full_bytes=19 * GIB) == "none"
    assert choose_quantize(free_bytes=12 * GIB, need_full_bytes=19 * GIB) == "int8"
    assert choose_quantize(free_bytes=4 * GIB, need_full_bytes=19 * GIB) == "int8"  # the better bet even so
    meta = loaders.get_moshi_lm(None, lm_kwargs=PERSONAPLEX_LM_KWARGS, device="meta", dtype=torch.bfloat16)
    shapes = [(name, tuple(p.shape)) for name, p in meta.named_parameters()]
    quantized_names = {f"{name}.weight" for name, m in meta.named_modules()
                       if isinstance(m, nn.Linear) and name.startswith(("transformer.", "depformer."))}
    assert {name for name, shape in shapes if is_quantized(name, shape)} == quantized_names
    assert weights_bytes(shapes, 2, "none") / GIB == pytest.approx(15.6, abs=0.1)  # 8.37 B parameters
    assert weights_bytes(shapes, 2, "int8") / GIB == pytest.approx(8.3, abs=0.1)
    full = need_bytes(shapes, PERSONAPLEX_LM_KWARGS, "bfloat16", "none", 80_000_000)
    small = need_bytes(shapes, PERSONAPLEX_LM_KWARGS, "bfloat16", "int8", 80_000_000)
    assert full > 18 * GIB and small < 11.5 * GIB  # a 12 GB card: with one conversation and a 1 GiB margin


def test_checkpoint_names_say_what_becomes_int8(tiny_dir) -> None:
    """On the checkpoint's own key names (stacked in_proj_weight, out_proj.weight), as the loader sees them."""
    files = read_model_files(tiny_dir)
    names = {name for name, shape in safetensors_shapes(files.lm) if is_quantized(name, shape)}
    assert names and all(n.startswith(("transformer.layers.", "depformer.layers.")) for n in names)
    assert any(n.endswith("self_attn.in_proj_weight") for n in names)
    assert any(n.endswith("gating.0.linear_in.weight") for n in names) or any("gating" in n for n in names)


def test_agreement_with_itself_is_total_and_int8_stays_close(tiny_dir) -> None:
    reference = load_model(tiny_dir, "cpu", "float32", quantize="none")
    codes = user_codes(reference, read_wav(DATA_USER))
    assert codes.shape == (38, 8)
    itself = measure_agreement(reference, reference, codes)
    assert itself.frames == 36  # offset 0 runs no LM; the last frame is never complete
    assert (itself.text_top1, itself.audio_top1, itself.audio_frames, itself.free_text, itself.free_audio_frames) == (1, 1, 1, 1, 1)
    assert itself.first_divergence is None
    int8_model = load_model(tiny_dir, "cpu", "float32", quantize="int8")
    agreement = measure_agreement(reference, int8_model, codes)
    assert agreement.frames == 36
    assert agreement.text_top1 > 0.8 and agreement.audio_top1 > 0.8, agreement  # 0.98 and 0.97 over a minute
    assert 0 <= agreement.free_audio_frames <= agreement.free_text <= 1
    assert json.dumps(agreement.to_json())


def test_cli_quantize_and_cuda_graphs_flags(tiny_dir, capsys, monkeypatch) -> None:
    args = ["bench", "compute", "--model", "tiny", "--quantize", "int8", "--no-cuda-graphs", "--frames", "3", "--warmup", "1", "--json"]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert (report["quantize"], report["cuda_graphs"], report["dtype"]) == ("int8", False, "float32")
    code, _, err = run_main(["bench", "compute", "--model", "tiny", "--quantize", "int4"], capsys, monkeypatch)
    assert code == 2 and "int4" in err


def test_row_bytes_do_not_change_with_int8(tiny_dir) -> None:
    """A conversation's caches stay in the activations' dtype: int8 leaves more rows, each as large."""
    full = load_model(tiny_dir, "cpu", "float32", quantize="none")
    quantized = load_model(tiny_dir, "cpu", "float32", quantize="int8")
    assert memory.row_bytes(full) == memory.row_bytes(quantized)
    assert load.LoadedModel is type(quantized)
