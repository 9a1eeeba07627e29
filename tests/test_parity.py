"""Greedy decoding emits what NVIDIA's reference emits: same text tokens, same agent samples.

AIMSVOICE_TEST_DEVICE=cuda runs the float32 goldens on a GPU (`make gpu-check`), with TF32 off so
float32 means float32; the bfloat16 golden is the CPU's rounding and is skipped there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import read_wav
from aimsvoice.session import TalkSettings, talk_offline

DATA = Path(__file__).parent / "data" / "parity"
TEXT_PROMPT = "You are a head coach pushing for action. Keep it short."
SPECIAL = {0: "EPAD", 1: "BOS", 2: "EOS", 3: "PAD"}  # how the reference writes these ids
DEVICE = os.environ.get("AIMSVOICE_TEST_DEVICE", "cpu")


@pytest.mark.parametrize(("case", "voice", "dtype"), [
    ("builtin-voice-float32", "VARM2", "float32"),
    ("wav-voice-bfloat16", str(DATA / "voice.wav"), "bfloat16"),
])
def test_greedy_output_matches_reference(case, voice, dtype, tiny_dir, tmp_path, monkeypatch) -> None:
    if DEVICE != "cpu":
        if dtype != "float32":
            pytest.skip(f"the {dtype} golden is the CPU's rounding; on {DEVICE} only float32 is compared")
        import torch

        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the WAV voice is encoded, not cached
    settings = TalkSettings(model=str(tiny_dir), voice=voice, text_prompt=TEXT_PROMPT, device=DEVICE, dtype=dtype, greedy=True)
    out = tmp_path / "agent.wav"
    result = talk_offline(settings, DATA / "user.wav", out)

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(str(tiny_dir / "tokenizer_spm_32k_3.model"))
    ours = [SPECIAL.get(t) or sp.id_to_piece(t).replace("\u2581", " ") for t in result.transcript.tokens]
    assert ours == json.loads((DATA / f"reference-{case}.json").read_text())
    reference_pcm = read_wav(DATA / f"reference-{case}.wav")
    agent_pcm = read_wav(out)
    assert agent_pcm.shape == reference_pcm.shape
    np.testing.assert_allclose(agent_pcm, reference_pcm, atol=1e-4, rtol=0)
