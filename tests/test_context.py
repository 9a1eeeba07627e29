"""The persona stays in the window (`--context pinned`), proved on the tiny model with a 64-step window.

The tiny model has one temporal layer, so a step's keys and values depend on its input alone: a
fresh run over exactly the entries the pinned cache keeps is a direct computation of what the
pinned step must give.
"""

from __future__ import annotations

import gc
import json
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aimsvoice.audio import FRAME_SIZE
from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, SamplingConfig, load_model
from aimsvoice.engine.loop import PersonaPlexGen, forcing

WINDOW = 64


@pytest.fixture(scope="module")
def short_window(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny model with a 64-step attention window (5 s)."""
    model_dir = Path(shutil.copytree(tiny_dir, tmp_path_factory.mktemp("window") / "tiny-64"))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "context": WINDOW}))
    return model_dir


@pytest.fixture(scope="module")
def model(short_window: Path):
    return load_model(short_window, device="cpu", dtype="float32")


def frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(FRAME_SIZE)).astype(np.float32) for _ in range(n)]


def conversation(model, context: str, text_prompt: str, user: list[np.ndarray]) -> tuple[list[int], np.ndarray, int]:
    """Greedy tokens and audio of a conversation, and its system prompt's length in steps."""
    with Engine(model, EngineConfig(device="cpu", context=context)) as engine:
        spec = ConversationSpec("NATF1", text_prompt, SamplingConfig(greedy=True))
        row = engine.batch.open(spec)
        prompt_steps = engine.batch.prompt_steps_left(row)
        engine.batch.close_row(row)
        engine.start(spec)
        outs = [engine.step(f) for f in user]
    return [o.text_token for o in outs], np.stack([o.pcm for o in outs]), prompt_steps


def test_the_first_window_is_the_rings_bit_for_bit_and_pinning_changes_what_comes_after(model) -> None:
    user = frames(3 * WINDOW, seed=1)
    ring_tokens, ring_pcm, prompt_steps = conversation(model, "ring", "You are a coach.", user)
    pinned_tokens, pinned_pcm, _ = conversation(model, "pinned", "You are a coach.", user)
    # Conversation frame k runs the LM at position prompt_steps - 1 + k: the first window ends there.
    first_window = WINDOW - (prompt_steps - 1)
    assert 5 < first_window < 3 * WINDOW
    assert pinned_tokens[:first_window] == ring_tokens[:first_window]
    assert np.array_equal(pinned_pcm[:first_window], ring_pcm[:first_window])
    assert not np.array_equal(pinned_pcm[first_window + 2 :], ring_pcm[first_window + 2 :]), "past the window the prompt is kept"


def forced_run(model, context: str, prompt_seeds: tuple[int, ...], n_after: int, record_from: int = 0):
    """All channels forced, one row per prompt seed, stepped together: a 20-step 'prompt' (text tokens
    from the row's seed), then `n_after` steps identical for every row. Delayed channels hold one token
    throughout, so a step's input is its own frame's. Returns each row's text logits of each step from
    `record_from` on, and the frames fed (the same on every row after the prompt)."""
    rows = len(prompt_seeds)
    gen = PersonaPlexGen(model.lm, cuda_graphs=False, context=context)
    logits: list[list[torch.Tensor]] = [[] for _ in range(rows)]

    def keep(text: torch.Tensor, _audio: torch.Tensor) -> None:
        for row in range(rows):
            logits[row].append(text[row, 0, 0].clone())

    prompts = [[int(t) for t in np.random.default_rng(seed).integers(4, 200, 20)] for seed in prompt_seeds]  # the tiny model has 228 text tokens
    after = np.random.default_rng(99)
    fed = []
    with torch.inference_mode(), gen.streaming(rows):
        for row in range(rows):
            gen.pin(row, 20 - 1)
        for step in range(20 + n_after):
            agent0, user0 = (int(x) for x in after.integers(0, 2048, 2))
            shared = int(after.integers(4, 200)) if step >= 20 else 0
            tokens = torch.full((rows, 17), 7, dtype=torch.long)
            for row in range(rows):
                tokens[row, 0] = prompts[row][step] if step < 20 else shared
            tokens[:, 1], tokens[:, 9] = agent0, user0  # the delay-0 channels vary
            fed.append(tokens[:1])
            gen.on_logits = keep if step >= record_from else None
            gen.step(tokens, torch.ones_like(tokens, dtype=torch.bool))
    return logits, fed


def test_after_ten_windows_the_text_prompt_still_matters_when_pinned_and_not_in_a_ring(model) -> None:
    """Ring: once the prompt has rolled out, two prompts give bit-identical logits (the inputs since are
    the same); pinned: they still differ. The ring's runs are alone, as bit-identity across the rows of one
    batch is not promised (rounding); the pinned runs share a batch, which changes no more than rounding."""
    n_after = 10 * WINDOW
    last = 20 + n_after - 1
    (ring_a,), _ = forced_run(model, "ring", (1,), n_after, record_from=last)
    (ring_b,), _ = forced_run(model, "ring", (2,), n_after, record_from=last)
    (pinned_a, pinned_b), _ = forced_run(model, "pinned", (1, 2), n_after, record_from=last)
    assert torch.equal(ring_a[-1], ring_b[-1])
    assert (pinned_a[-1] - pinned_b[-1]).abs().max() > 1e-3


def test_a_pinned_step_is_attention_over_the_prompt_and_the_last_window_at_the_documented_positions(model) -> None:
    """The step at LM position N attends to the pinned entries (positions 0..P-1) and the last W = 64 - P
    conversation entries; a fresh ring run fed exactly those inputs, contiguous, gives the same logits."""
    n_after = 3 * WINDOW
    (logits,), fed = forced_run(model, "pinned", (1,), n_after, record_from=20 + n_after - 1)
    pinned = 19  # gen.pin(0, 20 - 1)
    steps = len(fed)
    position = steps - 2  # the last step's LM position (its input is column steps - 2)
    window = WINDOW - pinned
    kept = fed[:pinned] + fed[position - window + 1 : position + 1]
    gen = PersonaPlexGen(model.lm, cuda_graphs=False, context="ring")
    direct: list[torch.Tensor] = []
    gen.on_logits = lambda text, _audio: direct.append(text[0, 0, 0].clone())
    with gen.streaming(1):
        for tokens in kept + [kept[-1]]:  # the LM at step t reads the frame fed at step t - 1
            gen.step(tokens, torch.ones_like(tokens, dtype=torch.bool))
    torch.testing.assert_close(logits[-1], direct[-1], atol=2e-4, rtol=0)


def state_bytes(gen: PersonaPlexGen) -> int:
    """Bytes of every tensor the streaming states hold (LM layers and the token cache)."""
    total = 0
    for state in [gen._state(), *gen.lm.get_streaming_state().values()]:
        for value in vars(state).values():
            tensors = [value] if isinstance(value, torch.Tensor) else [t for t in vars(value).values() if isinstance(t, torch.Tensor)] \
                if hasattr(value, "__dict__") and not callable(value) else []
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def test_memory_stays_flat_once_the_window_has_wrapped(model) -> None:
    """Ten windows after the first wrap: no state grows, and the process does not (an hour is in BENCHMARKS.md)."""
    gen = PersonaPlexGen(model.lm, cuda_graphs=False, context="pinned")
    tokens = torch.full((1, 17), 7, dtype=torch.long)
    forced = torch.ones_like(tokens, dtype=torch.bool)
    with torch.inference_mode(), gen.streaming(1):
        gen.pin(0, 19)
        for _ in range(2 * WINDOW):
            gen.step(tokens, forced)
        gc.collect()
        before, rss_before = state_bytes(gen), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(10 * WINDOW):
            gen.step(tokens, forced)
        gc.collect()
        after, rss_after = state_bytes(gen), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after == before > 0
    assert rss_after - rss_before < 16 * 1024  # KiB: no growth beyond allocator noise


def test_bench_context_reports_memory_and_step_time_past_the_window(short_window, capsys, monkeypatch) -> None:
    from cli_run import run_main

    code, out, err = run_main(["bench", "context", "--model", str(short_window), "--minutes", "0.3", "--device", "cpu",
                               "--text-prompt", "You are brief.", "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["window_steps"] == WINDOW and report["context"] == "pinned" and report["frames"] == 225
    assert 0 < report["prompt_steps"] < WINDOW and report["step_ms_past"] > 0
    assert report["memory_kind"] == "RSS" and abs(report["growth_bytes"]) < 32 * 2**20
