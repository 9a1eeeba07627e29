"""Greedy decoding emits what NVIDIA's reference emits: same text tokens, same agent samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import read_wav
from aimsvoice.session import TalkSettings, talk_offline

DATA = Path(__file__).parent / "data" / "parity"
TEXT_PROMPT = "You are a head coach pushing for action. Keep it short."
SPECIAL = {0: "EPAD", 1: "BOS", 2: "EOS", 3: "PAD"}  # how the reference writes these ids


@pytest.mark.parametrize(("case", "voice", "dtype"), [
    ("builtin-voice-float32", "VARM2", "float32"),
    ("wav-voice-bfloat16", str(DATA / "voice.wav"), "bfloat16"),
])
def test_greedy_output_matches_reference(case, voice, dtype, tiny_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the WAV voice is encoded, not cached
    settings = TalkSettings(model=str(tiny_dir), voice=voice, text_prompt=TEXT_PROMPT, device="cpu", dtype=dtype, greedy=True)
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
