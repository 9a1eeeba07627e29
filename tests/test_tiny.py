"""The tiny model: real file formats, deterministic from its seed, usable as `--model tiny`."""

from __future__ import annotations

from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import load_file

from aimsvoice import layout
from aimsvoice.engine import PromptState, load_model, write_tiny_model
from aimsvoice.engine.prompts import SILENCE_TOKENS, SINE_TOKENS


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in (layout.LM_NAME, layout.MIMI_NAME):
        found.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    for voice in layout.VOICE_NAMES:
        state = PromptState.load(directory / layout.VOICES_DIR / f"{voice}.pt")
        found[f"{voice}:embeddings"], found[f"{voice}:cache"] = state.embeddings, state.cache
    return found


def test_hub_layout_and_real_formats(tiny_dir: Path) -> None:
    for name in (layout.CONFIG_NAME, layout.LM_NAME, layout.MIMI_NAME, layout.TEXT_TOKENIZER_NAME):
        assert (tiny_dir / name).is_file(), name
    assert sorted(p.stem for p in (tiny_dir / layout.VOICES_DIR).glob("*.pt")) == sorted(layout.VOICE_NAMES)
    sp = sentencepiece.SentencePieceProcessor(str(tiny_dir / layout.TEXT_TOKENIZER_NAME))
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]  # EPAD/BOS/EOS/PAD ids
    model = load_model(tiny_dir, device="cpu", dtype="float32")
    lm = model.lm
    assert (lm.n_q, lm.dep_q, lm.card, lm.text_card) == (16, 16, 2048, sp.get_piece_size())
    assert lm.delays == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert max(SILENCE_TOKENS + SINE_TOKENS) < lm.card
    assert model.mimi.sample_rate == 24_000 and model.mimi.frame_rate == 12.5 and model.mimi.num_codebooks == 8


def test_deterministic_from_seed(tiny_dir: Path, tmp_path: Path) -> None:
    again = tensors(write_tiny_model(tmp_path / "same", seed=0))
    reference = tensors(tiny_dir)
    assert again.keys() == reference.keys()
    assert all(torch.equal(again[k], reference[k]) for k in reference)
    assert (tmp_path / "same" / layout.TEXT_TOKENIZER_NAME).read_bytes() == (tiny_dir / layout.TEXT_TOKENIZER_NAME).read_bytes()

    other = tensors(write_tiny_model(tmp_path / "other", seed=1))
    assert not torch.equal(other[f"{layout.LM_NAME}:text_emb.weight"], reference[f"{layout.LM_NAME}:text_emb.weight"])


def test_it_hears_what_the_user_says_and_its_voices_differ(tiny_dir: Path) -> None:
    """Mimi's codebooks are fitted to its encoder: other sounds get other codes, so the user's audio
    changes what the agent says (a model deaf to its input would make every test of it weaker)."""
    import numpy as np

    from aimsvoice.audio import FRAME_SIZE, read_wav
    from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, SamplingConfig, load_voice

    speech = read_wav(Path(__file__).parent / "data" / "parity" / "user.wav")
    frames = len(speech) // FRAME_SIZE
    model = load_model(tiny_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        codes = model.mimi.encode(torch.from_numpy(speech[: frames * FRAME_SIZE])[None, None])[0]
    assert len(set(codes[0].tolist())) > frames // 2, "speech is not one code over and over"

    def agent_tokens(pcm: np.ndarray) -> list[int]:
        with Engine(model, EngineConfig(device="cpu", dtype="float32")) as engine:
            engine.start(ConversationSpec("NATF0", "You are a coach.", SamplingConfig(greedy=True)))
            return [engine.step(pcm[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]).text_token for i in range(frames)]

    assert agent_tokens(speech) != agent_tokens(np.zeros_like(speech))
    fingerprints = {load_voice(name, tiny_dir).fingerprint for name in layout.VOICE_NAMES}
    assert len(fingerprints) == len(layout.VOICE_NAMES)
