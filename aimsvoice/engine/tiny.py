"""A tiny random-weight PersonaPlex in the real file formats, for demos and tests.

Same file names as the hub repo, a real sentencepiece tokenizer, a small Mimi described by a
moshi mimi config, an LM with PersonaPlex's layout (16 codebooks in and out, the real delays,
audio card 2048 so the real silence and sine token ids are valid) and 18 voice prompt states.
Everything is deterministic from the seed. It says nothing useful, but it says it fast.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.modules.transformer import StreamingMultiheadAttention
from safetensors.torch import save_file

from .. import layout, xdg
from ..audio.format import SAMPLE_RATE
from .load import PERSONAPLEX_LM_KWARGS

logger = logging.getLogger(__name__)

TINY_VERSION = 6  # bump when the recipe changes, so cached tiny models are rebuilt
MIMI_CONFIG_NAME = "mimi_config.json"

TINY_MIMI_CONFIG = {
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        **loaders._seanet_kwargs,
        "dimension": 64,
        "n_filters": 4,
        "n_residual_layers": 0,  # the convolutions that remain keep Mimi's strides and frame size
    },
    "quantizer": {"dimension": 16, "n_q": 8, "bins": 2048, "input_dimension": 64, "output_dimension": 64},
    "transformer": {
        **loaders._transformer_kwargs,
        "d_model": 64,
        "num_heads": 2,
        "num_layers": 1,
        "dim_feedforward": 128,
        "input_dimension": 64,
        "output_dimensions": [64],
    },
}

TINY_LM_KWARGS = {
    **PERSONAPLEX_LM_KWARGS,
    "dim": 64,
    "num_heads": 4,
    "num_layers": 1,
    "hidden_scale": 2,
    # Fused layer norm instead of PersonaPlex's rms_norm_f32, whose casts were 15% of a tiny step;
    # moshi 0.2.13's RMSNorm is the reference's, line for line, so parity loses nothing by it.
    "norm": "layer_norm",
    "context": 500,
    "depformer_dim": 64,
    "depformer_dim_feedforward": 128,
    "depformer_num_heads": 4,
    "depformer_num_layers": 1,
}

# Text the tokenizer is trained on: enough words for a few hundred pieces.
_CORPUS = """\
You are a head coach pushing your team for action before the big game this weekend.
Welcome back. How was your week? Let's talk about what went well and what did not.
I hear you. That sounds hard, but we can fix it together if we start today.
You are a professional business consultant helping a client plan the next quarter.
What is the budget, who owns the project, and when do you need the first results?
You are a strategic advisor. Think about the long game and the risks on the way.
You are an engaging storyteller. Once upon a time there was a small town by the sea.
You are a sports analyst grading the performance of every player after the match.
The defense was solid, the passing was sharp, and the keeper made three great saves.
Good morning. Thank you for calling. My name is Jane. How can I help you today?
Sure, I can help with that. Could you tell me a little more about the problem?
Yes. No. Maybe. Right. Okay. Great question. Let me think about it for a second.
The weather is nice today, so we could run outside and train on the field instead.
Numbers one two three four five six seven eight nine ten eleven twelve twenty hundred.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday morning afternoon evening night.
Focus on the next play. Breathe. Communicate. Trust your teammates and finish strong.
Our goal is simple: win the day, learn from every mistake, and come back stronger.
The restaurant opens at noon and closes at ten, and the kitchen serves pasta and fish.
Please confirm your order, your address, and the time you would like it delivered.
I understand why you feel that way. Here is what I would suggest as a first step.
"""

_PIECES = 400


def default_tiny_dir() -> Path:
    """The user-cache folder of the built-in tiny model (XDG_CACHE_HOME respected)."""
    return xdg.cache_dir() / "models" / f"tiny-v{TINY_VERSION}"


def ensure_tiny_model(directory: Path | None = None, seed: int = 0) -> Path:
    """Build the tiny model once (atomically) and return its directory."""
    directory = directory or default_tiny_dir()
    if (directory / layout.CONFIG_NAME).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    try:
        write_tiny_model(staging, seed)
        try:
            os.rename(staging, directory)
        except OSError:  # built meanwhile by another process
            if not (directory / layout.CONFIG_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def write_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a tiny PersonaPlex model directory (deterministic from `seed`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vocab_size = _write_tokenizer(directory / layout.TEXT_TOKENIZER_NAME)
        lm_kwargs = {**TINY_LM_KWARGS, "text_card": vocab_size}
        (directory / MIMI_CONFIG_NAME).write_text(json.dumps(TINY_MIMI_CONFIG, indent=1))
        (directory / layout.CONFIG_NAME).write_text(json.dumps({**lm_kwargs, "mimi_config_name": MIMI_CONFIG_NAME}, indent=1))

        mimi = loaders.get_mimi(None, TINY_MIMI_CONFIG, device="cpu", num_codebooks=8)
        _fit_codebooks(mimi)
        save_file(_checkpoint_state(mimi), str(directory / layout.MIMI_NAME))

        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="cpu", dtype=torch.float32)
        for name, param in lm.named_parameters():
            if "depformer" in name and param.dim() == 2:  # moshi leaves these at PyTorch defaults
                torch.nn.init.normal_(param, std=param.shape[-1] ** -0.5)
        save_file(_checkpoint_state(lm), str(directory / layout.LM_NAME))
    finally:
        torch.random.set_rng_state(generator_state)
    _write_voices(directory)
    return directory


def _fit_codebooks(mimi: MimiModel) -> None:
    """Fit Mimi's codebooks to its random encoder's latents with moshi's own k-means initialization.

    Untrained codebooks are all zero; random ones lie far from the latents, so every input would
    quantize to the same codes and the model would hear nothing. Fitted, different sounds get
    different codes, and what the user says changes what the model does.
    """
    rng = np.random.default_rng(0)
    clips = []
    for i in range(48):  # 5 s each: voiced sounds at many pitches and levels, noise, near silence
        voiced = _voice_audio(i % 12, female=bool(i % 2), seconds=5.0) * rng.uniform(0.2, 3.0)
        noise = rng.standard_normal(len(voiced)) * rng.choice([0.0, 0.003, 0.03, 0.1])
        clips.append((voiced * (i % 3 != 2) + noise).astype(np.float32))
    audio = torch.from_numpy(np.stack(clips))[:, None]
    with torch.no_grad():
        latent = mimi._encode_to_unquantized_latent(audio)
        mimi.quantizer.train()
        mimi.quantizer(latent, int(mimi.frame_rate))  # k-means on each level's residuals (`_initialized` is 0)
        mimi.quantizer.eval()


def _checkpoint_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under the key names of the released checkpoints.

    The hub's files predate moshi's per-step attention projections: each attention layer has one
    `in_proj_weight` and one `out_proj.weight`, the steps stacked along the first dimension, which
    moshi's load hook splits again. Writing the same keys makes the tiny model exercise that path.
    """
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    for prefix, layer in module.named_modules():
        if isinstance(layer, StreamingMultiheadAttention):
            for new, old in (("in_projs", "in_proj_weight"), ("out_projs", "out_proj.weight")):
                parts = [state.pop(f"{prefix}.{new}.{i}.weight") for i in range(layer.mult)]
                state[f"{prefix}.{old}"] = torch.cat(parts, dim=0).contiguous()
    return state


def _write_tokenizer(path: Path) -> int:
    """Train a small unigram sentencepiece model with PersonaPlex's special ids; returns its size."""
    model = io.BytesIO()  # in memory, so no temporary path ends up in the model's trainer spec
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines()), model_writer=model, vocab_size=_PIECES,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        user_defined_symbols=["<system>"], hard_vocab_limit=False, num_threads=1,
        shuffle_input_sentence=False, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()  # type: ignore[call-arg]


def _voice_audio(index: int, female: bool, seconds: float = 1.0) -> np.ndarray:
    """A deterministic voiced sound: harmonics of a gliding pitch with a syllable-rate envelope."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = (190.0 if female else 110.0) * (1.0 + 0.06 * index) * (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.5 * t) ** 2
    return (0.1 * voiced * envelope).astype(np.float32)


def _write_voices(directory: Path) -> None:
    """The 18 voices as prompt states, made by running the tiny model on synthetic voices."""
    from .config import EngineConfig
    from .load import load_model
    from .loop import Engine
    from .prompts import normalize_loudness

    model = load_model(directory, device="cpu", dtype="float32")
    engine = Engine(model, EngineConfig(device="cpu"))
    voices = directory / layout.VOICES_DIR
    for i, name in enumerate(layout.VOICE_NAMES):
        pcm = normalize_loudness(_voice_audio(i, female=name[3] == "F"))
        engine.record_voice(pcm).save(voices / f"{name}.pt")
