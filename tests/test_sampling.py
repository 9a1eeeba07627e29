"""Per-row sampling: each row's own settings and generator, the distribution moshi's sampler gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimsvoice.engine import SamplingConfig
from aimsvoice.engine.sampling import BatchSampling, sample_rows

VOCAB = 12
CPU = torch.device("cpu")


def logits_of(probs: list[float], batch: int) -> torch.Tensor:
    return torch.tensor(probs).log().expand(batch, -1).clone()


def test_samples_follow_the_tempered_top_k_distribution() -> None:
    """2000 rows, each with its own seed, sample once: the frequencies are softmax(logits / T) cut to the top k."""
    rows = 2000
    probs = [0.30, 0.20, 0.15, 0.12, 0.08, 0.06, 0.04, 0.02, 0.01, 0.01, 0.005, 0.005]
    sampling = BatchSampling(rows, VOCAB, VOCAB, CPU)
    for row in range(rows):
        sampling.set_row(row, SamplingConfig(temp_text=0.5, topk_text=4), seed=row)
    noise = sampling.noise(sampling.text, list(range(rows)), 1)
    tokens = sample_rows(logits_of(probs, rows), sampling.text, noise[:, 0]).numpy()

    tempered = np.array(probs[:4]) ** (1 / 0.5)
    expected = tempered / tempered.sum()
    counts = np.bincount(tokens, minlength=VOCAB)
    assert counts[4:].sum() == 0, "nothing outside the top 4"
    np.testing.assert_allclose(counts[:4] / rows, expected, atol=0.035)


def test_greedy_rows_take_the_argmax_beside_sampled_rows() -> None:
    sampling = BatchSampling(3, VOCAB, VOCAB, CPU)
    sampling.set_row(0, SamplingConfig(greedy=True), seed=1)
    sampling.set_row(1, SamplingConfig(temp_text=0.0), seed=1)  # a temperature of 0 is greedy
    sampling.set_row(2, SamplingConfig(temp_text=5.0, topk_text=0), seed=1)  # top-k 0: the whole vocabulary
    assert sampling.text.top_k_rows[2] == VOCAB
    flat = [1.0 / VOCAB] * VOCAB
    flat[7] += 0.01
    seen = set()
    for _ in range(40):
        noise = sampling.noise(sampling.text, [0, 1, 2], 1)
        tokens = sample_rows(logits_of(flat, 3), sampling.text, noise[:, 0]).tolist()
        assert tokens[:2] == [7, 7]
        seen.add(tokens[2])
    assert len(seen) > 6, "the sampled row roams the vocabulary"
    assert sampling.noise(sampling.text, [0, 1], 1) is None, "greedy rows draw nothing"


def test_a_rows_draws_depend_on_its_seed_only() -> None:
    """The same seed gives the same noise whatever the neighbours, their top-k and the width; other seeds differ."""
    alone = BatchSampling(1, VOCAB, VOCAB, CPU)
    alone.set_row(0, SamplingConfig(topk_text=3), seed=42)
    crowd = BatchSampling(3, VOCAB, VOCAB, CPU)
    crowd.set_row(0, SamplingConfig(topk_text=10), seed=7)
    crowd.set_row(1, SamplingConfig(topk_text=3), seed=42)
    crowd.set_row(2, SamplingConfig(greedy=True), seed=42)
    for step in range(5):
        mine = alone.noise(alone.text, [0], 2)
        theirs = crowd.noise(crowd.text, [0, 1, 2] if step % 2 else [1], 2)
        assert torch.equal(mine[0, :, :3], theirs[1, :, :3])
        assert torch.all(theirs[1, :, 3:] == 1) and torch.all(theirs[2] == 1)
        if step % 2:
            assert not torch.equal(theirs[0, :, :3], theirs[1, :, :3])


@pytest.mark.parametrize("top_k", [1, 250, 2048])
def test_the_noise_is_at_least_the_default_width_so_one_graph_serves_the_usual_top_k(top_k) -> None:
    sampling = BatchSampling(2, 32, 2048, CPU)
    sampling.set_row(1, SamplingConfig(topk_audio=top_k), seed=0)
    assert sampling.noise(sampling.audio, [0, 1], 16).shape == (2, 16, max(top_k, SamplingConfig().topk_audio))
