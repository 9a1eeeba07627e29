"""Sampling for a batch of conversations, each with its own settings and its own random generator.

moshi's `sample_token` takes one temperature and one top-k for the whole batch and draws from
torch's global generator, so a conversation's samples would depend on its neighbours and on the
ticks before it joined. Here every row has its own temperatures and top-k (text and audio), or
greedy decoding, and a `torch.Generator` seeded when the row starts, drawn from only when that
row steps, always by the same amount per step.

The draw is moshi's (an exponential race, `argmax(probs / E)` with E ~ Exp(1), over the top-k
probabilities sorted in decreasing order), so a row samples from the distribution `sample_token`
would give it. The noise is drawn before the function that samples, so a step that samples can
be captured as a CUDA graph: only fixed-shape tensors go in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import SamplingConfig


@dataclass
class StreamSampling:
    """One kind of stream's settings per row (text, or the audio codebooks), as tensors [B] and on the CPU."""

    vocab: int
    min_width: int  # noise entries a sampled step draws at least: one CUDA graph serves every top-k up to it
    greedy: torch.Tensor  # bool: argmax (sampling off, or a temperature of 0)
    temp: torch.Tensor  # float32: the temperature (1 on greedy rows, where it is unused)
    top_k: torch.Tensor  # long: candidates kept, 1..vocab
    greedy_rows: list[bool] = field(default_factory=list)  # the same, readable without a device sync
    top_k_rows: list[int] = field(default_factory=list)

    @classmethod
    def greedy_batch(cls, batch_size: int, vocab: int, default_top_k: int, device: torch.device) -> StreamSampling:
        return cls(
            vocab,
            min(default_top_k, vocab),
            torch.ones(batch_size, dtype=torch.bool, device=device),
            torch.ones(batch_size, dtype=torch.float32, device=device),
            torch.ones(batch_size, dtype=torch.long, device=device),
            [True] * batch_size,
            [1] * batch_size,
        )

    def set_row(self, row: int, greedy: bool, temp: float, top_k: int) -> None:
        greedy = greedy or temp <= 0.0
        k = self.vocab if top_k <= 0 else min(top_k, self.vocab)
        self.greedy[row], self.temp[row], self.top_k[row] = greedy, 1.0 if greedy else temp, k
        self.greedy_rows[row], self.top_k_rows[row] = greedy, k

    def width(self, rows: list[int]) -> int:
        """Noise entries per stream a step over `rows` draws: 0 when none samples, else at least `min_width`
        and the largest top-k among the sampled rows."""
        sampled = [self.top_k_rows[r] for r in rows if not self.greedy_rows[r]]
        return max(self.min_width, *sampled) if sampled else 0


class BatchSampling:
    """The sampling of every row: text and audio settings, and one random generator per row."""

    def __init__(self, batch_size: int, text_vocab: int, audio_vocab: int, device: torch.device) -> None:
        self.device = device
        default = SamplingConfig()
        self.text = StreamSampling.greedy_batch(batch_size, text_vocab, default.topk_text, device)
        self.audio = StreamSampling.greedy_batch(batch_size, audio_vocab, default.topk_audio, device)
        self.generators: list[torch.Generator | None] = [None] * batch_size

    def set_row(self, row: int, sampling: SamplingConfig, seed: int | None) -> None:
        """The settings of a row that starts; its generator starts from `seed` (None: a random seed)."""
        self.text.set_row(row, sampling.greedy, sampling.temp_text, sampling.topk_text)
        self.audio.set_row(row, sampling.greedy, sampling.temp_audio, sampling.topk_audio)
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        self.generators[row] = generator

    def noise(self, stream: StreamSampling, rows: list[int], n_streams: int) -> torch.Tensor | None:
        """Exp(1) noise [B, n_streams, width] for one step of `rows`; None when none of them samples.

        A row draws n_streams x its top-k values from its own generator, whatever the other rows
        are; the entries it does not draw are 1 (they meet probabilities of 0).
        """
        width = stream.width(rows)
        if width == 0:
            return None
        noise = torch.ones(len(self.generators), n_streams, width, dtype=torch.float32, device=self.device)
        for row in rows:
            if not stream.greedy_rows[row]:
                noise[row, :, : stream.top_k_rows[row]] = self._draw(stream, row, n_streams)
        return noise

    def skip(self, row: int, steps: int, audio_streams: int) -> None:
        """Advance the row's generator past what `steps` steps draw (text, then audio), as if it had run them."""
        for _ in range(steps):
            for stream, n_streams in ((self.text, 1), (self.audio, audio_streams)):
                if not stream.greedy_rows[row]:
                    self._draw(stream, row, n_streams)

    def _draw(self, stream: StreamSampling, row: int, n_streams: int) -> torch.Tensor:
        # Drawn into a tensor of the row's own shape: the values never depend on the batch's width.
        drawn = torch.empty(n_streams, stream.top_k_rows[row], dtype=torch.float32, device=self.device)
        return drawn.exponential_(1.0, generator=self.generators[row])


def sample_rows(logits: torch.Tensor, stream: StreamSampling, noise: torch.Tensor | None) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax on greedy rows, top-k sampling with `noise` [B, W] on the others.

    With `noise` None every row takes the argmax. Returns [B] long.
    """
    logits = logits.float()
    best = logits.argmax(dim=-1)
    if noise is None:
        return best
    probs = torch.softmax(logits / stream.temp[:, None], dim=-1)
    top, index = torch.topk(probs, noise.shape[-1], dim=-1)
    keep = torch.arange(noise.shape[-1], device=logits.device)[None, :] < stream.top_k[:, None]
    race = torch.where(keep, top / noise, torch.zeros_like(top))
    sampled = index.gather(-1, race.argmax(dim=-1, keepdim=True))[:, 0]
    return torch.where(stream.greedy, best, sampled)
