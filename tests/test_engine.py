"""The PersonaPlex step loop on the tiny model: streaming equals full forward, forcing, seeds, prompt states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aimsvoice.audio import FRAME_SIZE, write_wav
from aimsvoice.engine import (
    ConversationSpec, Engine, EngineConfig, PersonaPlexGen, PromptState, SamplingConfig, load_model, load_voice,
)
from aimsvoice.engine.loop import AGENT, SAMPLED_WARMUP_FRAMES, TEXT, USER, WARMUP_FRAMES, forcing
from aimsvoice.engine.prompts import SILENCE_TOKENS, SINE_TOKENS, prompt_cache_path

GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return load_model(tiny_dir, device="cpu", dtype="float32")


def user_codes(n: int, seed: int = 0) -> torch.Tensor:
    """n frames of random user codes, [n, 1, 8, 1]."""
    return torch.randint(0, 2048, (n, 1, 8, 1), generator=torch.Generator().manual_seed(seed))


def noise_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(FRAME_SIZE)).astype(np.float32) for _ in range(n)]


def test_streaming_logits_equal_full_sequence_forward(model) -> None:
    """(a) Step-by-step logits == one forward of the LMModel over the same delayed sequence."""
    gen = PersonaPlexGen(model.lm, cuda_graphs=False)
    logged: list[tuple[torch.Tensor, torch.Tensor]] = []
    gen.on_logits = lambda text, audio: logged.append((text.clone(), audio.clone()))
    n_steps = 24
    user = user_codes(n_steps)
    frames = []
    with gen.streaming(1):
        gen._state().sampling.set_row(0, SamplingConfig(), seed=0)  # sampling: arbitrary tokens
        for t in range(n_steps):
            text = torch.tensor([7]) if t in (5, 6) else None  # some forced text in the mix
            out = gen.step(*forcing(1, model.device, user=user[t], text=text))
            if out.has_frame[0]:
                frames.append(out.frames)
    codes = torch.cat(frames, dim=2)  # frames 1..n of the conversation: [1, 17, n]
    n = codes.shape[-1]
    assert n == n_steps - 2 and len(logged) == n_steps - 1

    with torch.no_grad():
        full = model.lm.forward(codes)
    delays = model.lm.delays
    checked = 0
    for i, (text_logits, audio_logits) in enumerate(logged[:n]):
        # The step at offset i+1 predicts cache column i+1: frame i+1 - delay, i.e. codes index i - delay.
        torch.testing.assert_close(text_logits[0, 0, 0], full.text_logits[0, 0, i], atol=1e-4, rtol=0)
        for cb in range(model.lm.dep_q):
            index = i - delays[cb + 1]
            if 0 <= index < n:
                torch.testing.assert_close(audio_logits[0, cb], full.logits[0, cb, index], atol=1e-4, rtol=0)
                checked += 1
    assert checked > 16 * (n - 2)


def test_forced_tokens_land_where_forced_and_user_tokens_teacher_force_the_depformer(model) -> None:
    """(b) Forced text/agent/user tokens come out as forced; the depformer is fed the user's tokens."""
    gen = PersonaPlexGen(model.lm, cuda_graphs=False)
    fed: dict[int, list[int]] = {k: [] for k in range(1, 17)}
    hooks = [
        model.lm.depformer_emb[k - 1].register_forward_hook(
            lambda _m, inputs, _o, k=k: fed[k].append(int(inputs[0].flatten()[0])))
        for k in range(1, 16)  # depformer_emb[k-1] embeds channel k's token as the next input
    ]
    n_steps = 16
    user = user_codes(n_steps, seed=1)
    agent = user_codes(n_steps, seed=2)
    forced_text = {t: 10 + t for t in range(2, 9)}
    frames = {}
    try:
        with gen.streaming(1):
            gen._state().sampling.set_row(0, SamplingConfig(), seed=0)
            for t in range(n_steps):
                text = torch.tensor([forced_text[t]]) if t in forced_text else None
                out = gen.step(*forcing(1, model.device, user=user[t], agent=agent[t] if t < 8 else None, text=text))
                if out.has_frame[0]:
                    frames[t - 1] = out.frames[0, :, 0]  # the frame fed at step t-1
    finally:
        for hook in hooks:
            hook.remove()

    for t, frame in frames.items():
        assert frame[USER].tolist() == user[t, 0, :, 0].tolist(), f"user channels of frame {t}"
        if t in forced_text:
            assert int(frame[TEXT]) == forced_text[t]
        if t < 8:
            assert frame[AGENT].tolist() == agent[t, 0, :, 0].tolist(), f"agent channels of frame {t}"
    sampled_agent = torch.stack([frames[t][AGENT] for t in frames if t >= 9])
    assert not torch.equal(sampled_agent, agent[9 : 9 + len(sampled_agent), 0, :, 0])

    # At the step of offset p the depformer input of a user channel k is the user's token of the
    # frame fed at step p - delay(k): the teacher-forced token, whatever the model sampled.
    delays = model.lm.delays
    for k in range(9, 16):
        for p in range(2, n_steps):
            step_index = p - 1  # fed[] has no entry for offset 0
            assert fed[k][step_index] == int(user[p - delays[k], 0, k - 9, 0]), (k, p)


def run_engine(model, seed: int | None, frames: list[np.ndarray], greedy: bool = False, voice: str = "NATF2"):
    with Engine(model, EngineConfig(device="cpu")) as engine:
        engine.start(ConversationSpec(voice, "You are a coach.", SamplingConfig(greedy=greedy), seed))
        outs = [engine.step(f) for f in frames]
    return [o.text_token for o in outs], np.concatenate([o.pcm for o in outs])


def test_same_seed_same_output_other_seed_other_output(model) -> None:
    """(c) Sampling is reproducible from --seed, and the seed matters."""
    frames = noise_frames(20)
    tokens_a, pcm_a = run_engine(model, 1, frames)
    tokens_b, pcm_b = run_engine(model, 1, frames)
    tokens_c, pcm_c = run_engine(model, 2, frames)
    assert tokens_a == tokens_b and np.array_equal(pcm_a, pcm_b)
    assert tokens_a != tokens_c and not np.array_equal(pcm_a, pcm_c)


def test_prompt_state_round_trip_continues_identically(model, tmp_path: Path, monkeypatch) -> None:
    """(d) A saved prompt state, loaded back, continues exactly like the original."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    voice_wav = write_wav(tmp_path / "voice.wav", (0.3 * rng.standard_normal(24_000 * 2)).astype(np.float32))
    frames = noise_frames(12, seed=4)

    voice = load_voice(str(voice_wav), model.files.directory)
    assert voice.audio is not None and voice.state is None
    first = run_engine(model, 5, frames, voice=str(voice_wav))  # encodes the audio, caches its state

    with Engine(model, EngineConfig(device="cpu")) as engine:
        cached = prompt_cache_path(voice, engine.prompt_cache_key)
    assert cached.is_file()
    state = PromptState.load(cached)  # weights_only: tensors and nothing else
    assert state.embeddings.shape[1:] == (1, 1, model.lm.dim)

    encodes = []
    real_encode = model.mimi.encode
    monkeypatch.setattr(model.mimi, "encode", lambda x: encodes.append(1) or real_encode(x))
    second = run_engine(model, 5, frames, voice=str(voice_wav))  # replays the cached state
    warmup = WARMUP_FRAMES + SAMPLED_WARMUP_FRAMES
    assert len(encodes) == warmup + len(frames), "warm-up and conversation only: the voice came from the cache"
    monkeypatch.undo()

    from_pt = run_engine(model, 5, frames, voice=str(cached))
    assert first[0] == second[0] == from_pt[0]
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[1], from_pt[1])


def test_system_prompt_forces_voice_sine_silence_and_text(model) -> None:
    """The prompt phase: voice frames, 0.5 s silence, <system> text </system>, 0.5 s silence."""
    engine = Engine(model, EngineConfig(device="cpu"))
    request_close = engine.close
    seen: list[tuple[list[int], list[int], int]] = []
    real_step = engine.gen.step

    def spy(tokens, forced, run=None, embeddings=None, replay=None):
        assert bool(forced[0].all()), "the system prompt forces every channel"
        seen.append((tokens[0, USER].tolist(), tokens[0, AGENT].tolist(), int(tokens[0, TEXT])))
        return real_step(tokens, forced, run, embeddings, replay)

    engine.gen.step = spy  # type: ignore[method-assign]
    voice = load_voice("NATM1", model.files.directory)
    engine.start(ConversationSpec("NATM1", "Be brief.", GREEDY))
    request_close()
    n_voice = voice.state.embeddings.shape[0] + 1
    text_ids = model.tokenizer.encode("<system> Be brief. <system>")
    assert len(seen) == n_voice + 6 + len(text_ids) + 6
    sine, silence = list(SINE_TOKENS), list(SILENCE_TOKENS)
    assert all(user == [2048] * 8 and text == 3 for user, _, text in seen[:n_voice])  # replayed voice
    spacer = seen[n_voice : n_voice + 6] + seen[-6:]
    assert all(s == (sine, silence, 3) for s in spacer)
    prompt = seen[n_voice + 6 : -6]
    assert [text for _, _, text in prompt] == text_ids
    assert all(user == sine and agent == silence for user, agent, _ in prompt)
    assert [model.tokenizer.id_to_piece(t) for t in text_ids].count("<system>") == 2
