"""The PersonaPlex step loop: one 80 ms frame per step for B conversations at once, on moshi's models.

Two layers, both explicit streaming state in moshi's style, batched over conversation rows:

- `PersonaPlexGen` is the token-level loop. Its state holds a small cyclic token cache of shape
  [B, K=17, C] (text, 8 agent codebooks, 8 user codebooks) with per-codebook delays, a mask of the
  tokens that were forced rather than sampled, and each row's offset (the steps it has taken since
  it started). Each step writes a row's forced tokens of its new frame at `offset + delay`, runs
  the temporal transformer on the column at `offset - 1`, samples the text token and then the 16
  audio codebooks with the depformer, where every forced token (the user's 8 codebooks during a
  conversation; everything during the system prompt) replaces the sampled one as the next
  depformer input (teacher forcing). It returns each row's undelayed frame at `offset - 1` once
  that row's delays are filled.
- `PersonaPlexBatch` wraps it with Mimi and runs each row's script: first its system prompt
  (voice prompt, 0.5 s silence, `<system> text <system>` one token per step, 0.5 s silence), one
  step per tick, then the conversation: PCM frame in -> user codes -> step -> agent codes -> PCM
  frame out. A persona whose prompt ran before in this engine skips it: its row starts from a copy
  of what the prompt left (prompt_memory.py); while that prompt is still running in another row,
  it waits for it. `Engine` is one conversation on a batch of one.

Rows are independent: a row that does not step in a tick keeps its state (moshi's exec masks on
the LM's KV cache and Mimi's convolution states, and our offsets and cache), a row starts with a
reset of its own state only (`reset_streaming(mask)`), and each row samples with its own settings
and random generator (sampling.py). What a row produces therefore does not depend on its
neighbours nor on the tick it joined; only the batch size can change float rounding.

The order of operations (warm-up, streaming resets, the frame dropped at offset 0, the output
frame alignment) follows NVIDIA's PersonaPlex reference so that greedy decoding gives the same
tokens and samples.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from moshi.modules.streaming import State, StreamingModule
from moshi.utils.compile import CUDAGraphed

from ..audio.format import FRAME_RATE, FRAME_SIZE
from ..errors import VoiceNotFoundError
from .config import EngineConfig, SamplingConfig
from .context import CONTEXT_MODES, PinnedKVCache, pin_context, set_pinned
from .contract import ConversationSpec, SoloEngine, StepOut
from .load import AGENT_CODEBOOKS, LoadedModel
from .memory import prompt_memory_bytes
from .prompt_memory import PromptMemory, RowSnapshot, capture, restore
from .prompts import (
    SILENCE_FRAMES,
    SILENCE_TOKENS,
    SINE_TOKENS,
    TEXT_PAD,
    PromptState,
    VoicePrompt,
    check_prompt_fits,
    load_voice,
    prompt_cache_path,
    wrap_system_tags,
)
from .sampling import BatchSampling, sample_rows

logger = logging.getLogger(__name__)

TEXT = 0  # channel of the text stream in the token cache
AGENT = slice(1, 1 + AGENT_CODEBOOKS)  # channels of the agent's codebooks
USER = slice(1 + AGENT_CODEBOOKS, 1 + 2 * AGENT_CODEBOOKS)  # channels of the user's codebooks
WARMUP_FRAMES = 4
SAMPLED_WARMUP_FRAMES = 2  # then with sampling on: its CUDA graph is captured before any conversation
VOICE_MEMORY = 32  # voices kept loaded by a batch engine, most recently used

LogitsHook = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class _GenState(State):
    cache: torch.Tensor  # [B, K, C] long: tokens by codebook and cyclic position
    forced: torch.Tensor  # [B, K, C] bool: which cache entries were forced, not sampled
    initial: torch.Tensor  # [1, K, 1]: the start-of-sequence token of each codebook
    sampling: BatchSampling
    graphed_main: CUDAGraphed
    graphed_depth: dict[int, CUDAGraphed]  # by the noise's width (0: every row greedy)
    offsets: np.ndarray  # [B] int64: steps each row has taken since its reset
    lm_exec: np.ndarray | None = None  # the exec mask the LM has, when known
    pinned_caches: list[PinnedKVCache] = field(default_factory=list)  # with context "pinned"
    exit_stack: ExitStack = field(default_factory=ExitStack)
    reset_lm: Callable[[torch.Tensor], None] | None = None

    def reset(self, reset_mask: torch.Tensor) -> None:
        # The cache keeps its values, as in the reference: every entry is forced or sampled
        # before it is read again.
        super().reset(reset_mask)
        rows = reset_mask.cpu().numpy()
        self.offsets[rows] = 0
        self.forced[reset_mask] = False
        if self.reset_lm is not None:
            self.reset_lm(reset_mask)
        self.lm_exec = None  # a reset enables its rows again

    def __enter__(self) -> None:
        self.exit_stack.__enter__()

    def __exit__(self, *exc) -> None:
        self.exit_stack.__exit__(*exc)


@dataclass
class GenStep:
    """What one token-level step gave, per row."""

    frames: torch.Tensor  # [B, K, 1]: the undelayed frame of `offset - 1` (valid where `has_frame`)
    has_frame: np.ndarray  # [B] bool
    embeddings: torch.Tensor | None  # [B, 1, dim]: the input embeddings used (None if no row ran the LM)
    ran_lm: np.ndarray  # [B] bool: rows whose step ran the transformer (not their first, at offset 0)


def forcing(
    batch_size: int, device: torch.device, *,
    user: torch.Tensor | None = None, agent: torch.Tensor | None = None, text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [B, K] and mask [B, K] that force these channels on every row.

    user, agent: [B, 8] or [B, 8, 1] codes; text: [B] token ids; None leaves a channel to the model.
    """
    tokens = torch.zeros(batch_size, 1 + 2 * AGENT_CODEBOOKS, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for channels, values in ((USER, user), (AGENT, agent), (TEXT, text)):
        if values is not None:
            tokens[:, channels] = values.reshape(batch_size, -1).squeeze(-1) if channels == TEXT else values.reshape(batch_size, -1)
            mask[:, channels] = True
    return tokens, mask


class PersonaPlexGen(StreamingModule[_GenState]):
    """Token-level full-duplex generation for B rows, with forceable text, agent and user channels."""

    def __init__(self, lm: LMModel, cuda_graphs: bool = True, profile: bool = False, context: str = "pinned"):
        assert not lm.training, "generation needs an LM in eval mode"
        if context not in CONTEXT_MODES:
            raise ValueError(f"context {context!r}: use one of {', '.join(CONTEXT_MODES)}")
        self.context = context
        super().__init__()
        assert lm.dep_q == lm.n_q == 2 * AGENT_CODEBOOKS, (lm.n_q, lm.dep_q)
        self.lm = lm
        self.lm.set_streaming_detached(True)
        self.cuda_graphs = cuda_graphs
        self.profile = profile  # time the temporal transformer and the depformer (device-synchronized)
        self.stage_ms: dict[str, float] = {}  # with profile: the last step's "temporal" and "depformer"
        self.delays = np.array(lm.delays, dtype=np.int64)
        self.max_delay = int(self.delays.max())
        self.on_logits: LogitsHook | None = None  # (text [B, 1, 1, Ct], audio [B, 16, card]) per step

    def _init_streaming_state(self, batch_size: int) -> _GenState:
        lm = self.lm
        device = lm.device
        shape = (batch_size, lm.num_codebooks, self.max_delay + 3)
        state = _GenState(
            batch_size, device,
            cache=torch.full(shape, lm.ungenerated_token_id, device=device, dtype=torch.long),
            forced=torch.zeros(shape, device=device, dtype=torch.bool),
            initial=lm._get_initial_token(),
            sampling=BatchSampling(batch_size, lm.text_card, lm.card, device),
            graphed_main=CUDAGraphed(self._forward_main, disable=self._graphs_off(device)),
            graphed_depth={},
            offsets=np.zeros(batch_size, dtype=np.int64),
        )
        state.exit_stack.enter_context(lm.streaming(batch_size))
        state.reset_lm = lm.reset_streaming
        if self.context == "pinned":
            state.pinned_caches = pin_context(lm.transformer)
        return state

    def pin(self, row: int, n_steps: int) -> None:
        """Keep the row's first `n_steps` LM steps (its system prompt) in the attention window (context "pinned")."""
        set_pinned(self._state().pinned_caches, row, n_steps)

    def _graphs_off(self, device: torch.device) -> bool:
        return device.type != "cuda" or not self.cuda_graphs

    # -- model pieces -------------------------------------------------------------------------

    def embed(self, column: torch.Tensor) -> torch.Tensor:
        """Input embedding of one cache column [B, K, 1] -> [B, 1, dim] (audio sum, then text)."""
        lm = self.lm
        x = None
        for cb in range(lm.num_audio_codebooks):
            emb = lm.emb[cb](column[:, cb + lm.audio_offset])
            x = emb if x is None else x + emb
        return x + lm.text_emb(column[:, TEXT])

    def _forward_main(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.lm
        out = lm.transformer(embeddings)
        if lm.out_norm:
            out = lm.out_norm(out)
        return out, lm.text_linear(out)[:, None]

    def _depformer_step(
        self, text_token: torch.Tensor, transformer_out: torch.Tensor,
        forced_audio: torch.Tensor, is_forced: torch.Tensor, noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the 16 audio codebooks; a forced token replaces the sample as the next input.

        noise: [B, 16, W] Exp(1) noise of the sampled rows (None: every row greedy).
        """
        lm = self.lm
        stream = self._state().sampling.audio
        batch = text_token.shape[0]
        prev = text_token
        tokens, logits_all = [], []
        with lm.depformer.streaming(batch):
            for cb in range(lm.dep_q):
                logits = lm.forward_depformer(cb, prev[:, None, None], transformer_out)
                token = sample_rows(logits[:, 0, 0], stream, None if noise is None else noise[:, cb])
                prev = torch.where(is_forced[:, cb], forced_audio[:, cb], token)
                tokens.append(token)
                logits_all.append(logits[:, 0, 0])
        return torch.stack(tokens, dim=1), torch.stack(logits_all, dim=1)

    def _graphed_depth(self, width: int) -> CUDAGraphed:
        state = self._state()
        if width not in state.graphed_depth:
            state.graphed_depth[width] = CUDAGraphed(self._depformer_step, disable=self._graphs_off(state.device))
        return state.graphed_depth[width]

    def _state(self) -> _GenState:
        state = self._streaming_state
        if state is None:
            raise RuntimeError("PersonaPlexGen needs streaming mode: `with gen.streaming(batch_size): ...`")
        return state

    # -- the step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        tokens: torch.Tensor,
        forced: torch.Tensor,
        run: np.ndarray | None = None,
        embeddings: torch.Tensor | None = None,
        replay: np.ndarray | None = None,
    ) -> GenStep:
        """Advance the rows in `run` (default: all) by one frame; the other rows keep their state.

        tokens, forced: [B, K] tokens of the new frame and which of them to force (`forcing`
            builds them); the others are the model's to sample.
        embeddings, replay: [B, 1, dim] input embeddings to use instead of embedding the cache on
            the rows where `replay` [B] is set (replay of a saved voice prompt).
        """
        state = self._state()
        cache, offsets = state.cache, state.offsets
        batch, size = cache.shape[0], cache.shape[-1]
        device = cache.device
        run = np.ones(batch, dtype=bool) if run is None else np.asarray(run, dtype=bool)
        run_t = torch.from_numpy(run).to(device)

        # Forced tokens of the frame at `offset`, each at its delay; nothing real precedes a
        # delayed codebook yet where `offset <= delay`, so those columns hold the start token.
        positions = torch.from_numpy((offsets[:, None] + self.delays[None, :]) % size).to(device)
        forcing_now = forced & run_t[:, None]
        _scatter(cache, positions, tokens, forcing_now)
        _scatter(state.forced, positions, True, forcing_now)
        starting = torch.from_numpy(offsets[:, None] <= self.delays[None, :]).to(device) & run_t[:, None]
        here = torch.from_numpy(np.repeat((offsets % size)[:, None], len(self.delays), axis=1)).to(device)
        _scatter(cache, here, state.initial[:, :, 0].expand(batch, -1), starting)
        _scatter(state.forced, here, True, starting)

        # A row's first step (offset 0) stops there, as in the reference: its frame's tokens at
        # delay 0 are dropped, and the LM does not run.
        ran_lm = run & (offsets > 0)
        lm_rows = np.flatnonzero(ran_lm).tolist()
        if not lm_rows:
            offsets[run] += 1
            return GenStep(cache[:, :, :1], np.zeros(batch, dtype=bool), None, ran_lm)
        if state.lm_exec is None or not np.array_equal(state.lm_exec, ran_lm):
            self.lm.set_exec_mask(torch.from_numpy(ran_lm))
            state.lm_exec = ran_lm.copy()

        source = torch.from_numpy((offsets - 1) % size).to(device).view(batch, 1, 1).expand(-1, cache.shape[1], 1)
        target = torch.from_numpy(offsets % size).to(device).view(batch, 1, 1).expand(-1, cache.shape[1], 1)
        if self.profile:
            self._sync()
            t0 = time.perf_counter()
        replaying = replay is not None and bool(np.all(replay[ran_lm]))
        if not replaying:
            computed = self.embed(cache.gather(2, source))
            embeddings = computed if replay is None else torch.where(torch.from_numpy(replay).to(device)[:, None, None], embeddings, computed)
        assert embeddings is not None
        transformer_out, text_logits = state.graphed_main(embeddings)
        if self.profile:
            self._sync()
            t1 = time.perf_counter()

        sampling = state.sampling
        text_noise = sampling.noise(sampling.text, lm_rows, 1)
        sampled_text = sample_rows(text_logits[:, 0, 0], sampling.text, None if text_noise is None else text_noise[:, 0])
        at_target = cache.gather(2, target)[:, :, 0]  # [B, K]
        forced_at_target = state.forced.gather(2, target)[:, :, 0]
        text_in = torch.where(forced_at_target[:, TEXT], at_target[:, TEXT], sampled_text)
        audio_noise = sampling.noise(sampling.audio, lm_rows, self.lm.dep_q)
        audio, audio_logits = self._graphed_depth(0 if audio_noise is None else audio_noise.shape[-1])(
            text_in, transformer_out, at_target[:, 1:], forced_at_target[:, 1:], audio_noise)
        if self.profile:
            self._sync()
            self.stage_ms = {"temporal": (t1 - t0) * 1e3, "depformer": (time.perf_counter() - t1) * 1e3}
        if self.on_logits is not None:
            self.on_logits(text_logits, audio_logits)

        ran_t = torch.from_numpy(ran_lm).to(device)[:, None].expand_as(at_target)
        _scatter(state.forced, source[:, :, 0], False, ran_t)
        generated = torch.cat([sampled_text[:, None], audio], dim=1)
        _scatter(cache, target[:, :, 0], torch.where(forced_at_target, at_target, generated), ran_t)

        has_frame = ran_lm & (offsets > self.max_delay)
        index = torch.from_numpy((offsets[:, None] - self.max_delay + self.delays[None, :]) % size).to(device)
        offsets[run] += 1
        return GenStep(cache.gather(2, index[:, :, None]), has_frame, embeddings, ran_lm)

    def _sync(self) -> None:
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize()

    def tokens(self, ids: tuple[int, ...] | list[int]) -> torch.Tensor:
        """Token ids as a tensor on the model's device."""
        return torch.tensor(ids, dtype=torch.long, device=self.lm.device)


def _scatter(tensor: torch.Tensor, positions: torch.Tensor, values: torch.Tensor | bool, where: torch.Tensor) -> None:
    """tensor[b, k, positions[b, k]] = values[b, k] where `where` [B, K] is set (tensor [B, K, C])."""
    index = positions[:, :, None]
    old = tensor.gather(2, index)[:, :, 0]
    new = torch.full_like(old, values) if isinstance(values, bool) else values
    tensor.scatter_(2, index, torch.where(where, new, old)[:, :, None])


@dataclass
class _PromptStep:
    """One step of a row's system prompt: what to force, and what to do once it ran."""

    user: torch.Tensor  # [8] codes forced on the user's channels
    agent: torch.Tensor | None  # [8] codes forced on the agent's channels; None: Mimi's codes of `voice_pcm`
    text: int  # the forced text token
    embedding: torch.Tensor | None = None  # [1, dim]: replayed input embedding of a saved voice prompt
    voice_pcm: np.ndarray | None = None  # [FRAME_SIZE] voice audio for Mimi to encode
    restore: torch.Tensor | None = None  # [K, C]: the token cache of a replayed voice prompt, restored after
    capture: bool = False  # after it: the row's voice prompt state is complete (an audio voice)


@dataclass
class _Row:
    """One conversation in the batch."""

    spec: ConversationSpec | None  # None while recording a voice prompt state
    voice: VoicePrompt | None
    plan: list[_PromptStep]
    next_step: int = 0
    cache_path: Path | None = None  # where to save the state of an audio voice prompt, once recorded
    prompt_key: tuple[str, tuple[int, ...]] | None = None  # its persona's key in the prompt memory, to keep what it leaves
    waiting: bool = False  # another row runs the same prompt: this one waits to start from what it leaves
    recorded: list[torch.Tensor] = field(default_factory=list)  # input embeddings of the voice prompt
    prompt_state: PromptState | None = None

    @property
    def in_prompt(self) -> bool:
        return self.waiting or self.next_step < len(self.plan)


class PersonaPlexBatch:
    """PersonaPlex with Mimi for `batch_size` conversations: 80 ms of user PCM in, 80 ms of agent PCM and text out, per row.

    `open(spec)` takes a free row and queues its system prompt; each `tick` then steps every row
    in its prompt and every talking row given a frame; `close_row` frees a row.
    """

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig(), batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.model = model
        self.config = config
        self.mimi: MimiModel = model.mimi
        self.gen = PersonaPlexGen(model.lm, cuda_graphs=config.cuda_graphs, profile=config.profile, context=config.context)
        self.tokenizer = model.tokenizer
        if self.mimi.is_streaming:
            raise RuntimeError("this model already drives an engine; close() that one first")
        self._batch_size = batch_size
        self._rows: list[_Row | None] = [None] * batch_size
        self._voices: OrderedDict[str, VoicePrompt] = OrderedDict()
        self.prompt_memory = PromptMemory(prompt_memory_bytes(model))
        self._mimi_exec: np.ndarray | None = None
        self._streaming = ExitStack()
        self._streaming.enter_context(self.mimi.streaming(batch_size))
        self._streaming.enter_context(self.gen.streaming(batch_size))
        gen = self.gen
        self._sine, self._silence = gen.tokens(SINE_TOKENS), gen.tokens(SILENCE_TOKENS)
        initial = model.lm._get_initial_token()[0, :, 0]
        self._start_user, self._start_agent = initial[USER], initial[AGENT]
        self._warmup()

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def close(self) -> None:
        """Leave streaming mode, so the model can drive another engine."""
        self._streaming.close()

    def __enter__(self) -> PersonaPlexBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self, row: int | None = None) -> dict[str, Any]:
        """The engine, model, device and dtype; with a row, also its voice."""
        info: dict[str, Any] = {
            "engine": "personaplex",
            "model": str(self.model.files.directory),
            "device": self.device.type,
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }
        if row is not None and (r := self._rows[row]) is not None and r.voice is not None:
            info["voice"] = str(r.voice.source)
        return info

    @torch.inference_mode()
    def _warmup(self) -> None:
        """Zeros through encode -> step -> decode on every row, greedy then sampling: captures the CUDA graphs,
        primes streaming state. Every row is greedy after it, until a conversation sets its own sampling."""
        batch = self.batch_size
        sampling = self.gen._state().sampling
        for i in range(WARMUP_FRAMES + SAMPLED_WARMUP_FRAMES):
            if i == WARMUP_FRAMES:
                for row in range(batch):
                    sampling.set_row(row, SamplingConfig(), seed=row)
            codes = self.mimi.encode(torch.zeros(batch, 1, FRAME_SIZE, device=self.device))
            out = self.gen.step(*forcing(batch, self.device, user=codes))
            if out.has_frame.any():
                self.mimi.decode(out.frames[:, AGENT])
        for row in range(batch):
            sampling.set_row(row, SamplingConfig(greedy=True), seed=None)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # -- rows ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def open(self, spec: ConversationSpec) -> int:
        """Take a free row for a conversation and queue its system prompt (run by the next ticks)."""
        voice = self.voice(spec.voice) if spec.voice else None
        ids = self.tokenizer.encode(wrap_system_tags(spec.text_prompt)) if spec.text_prompt.strip() else []
        check_prompt_fits(voice.n_steps if voice is not None else 0, len(ids), self.model.files.lm_kwargs.get("context"))
        key = (voice.fingerprint if voice is not None else "", tuple(ids))
        state = self.gen._state()
        snapshot = self.prompt_memory.get(key)
        if snapshot is not None:  # this persona's prompt ran before: the row starts where it left off
            row = self._take_row(_Row(spec, voice, []))
            state.sampling.set_row(row, spec.sampling, spec.seed)
            self._start_from(row, snapshot)
            return row
        voice_plan = self._voice_plan(voice) if voice is not None else []
        plan = voice_plan + self._spacer() + [_PromptStep(self._sine, self._silence, token) for token in ids] + self._spacer()
        cache_path = prompt_cache_path(voice, self.prompt_cache_key) if voice is not None and voice.audio is not None else None
        waiting = self._prompt_running(key)  # in another row: this one starts from what it leaves
        row = self._take_row(_Row(spec, voice, plan, cache_path=cache_path, prompt_key=key, waiting=waiting))
        state.sampling.set_row(row, spec.sampling, spec.seed)
        self.gen.pin(row, len(plan) - 1)  # the LM runs on every prompt step but the first
        return row

    def _prompt_running(self, key: tuple[str, tuple[int, ...]]) -> bool:
        """Whether a row is running the system prompt of `key`."""
        return any(r is not None and r.prompt_key == key and not r.waiting and r.in_prompt for r in self._rows)

    def _start_from(self, row: int, snapshot: RowSnapshot) -> None:
        """Start a freshly reset row (its sampling set) from what its persona's system prompt left."""
        state = self.gen._state()
        restore(self.model.lm, state.cache, state.forced, state.offsets, row, snapshot)
        state.sampling.skip(row, snapshot.lm_steps, self.model.lm.dep_q)
        self.gen.pin(row, snapshot.lm_steps)
        r = self._row(row)
        r.waiting, r.next_step = False, len(r.plan)

    def in_prompt(self, row: int) -> bool:
        return self._row(row).in_prompt

    def waiting(self, row: int) -> bool:
        return self._row(row).waiting

    def prompt_steps_left(self, row: int) -> int:
        """Ticks the row's system prompt still needs."""
        r = self._row(row)
        return len(r.plan) - r.next_step

    def steps_taken(self, row: int) -> int:
        """Steps the row has taken since it opened, its system prompt's included."""
        self._row(row)
        return int(self.gen._state().offsets[row])

    def close_row(self, row: int) -> None:
        """End the row's conversation; the row is free for another."""
        r = self._row(row)
        self._rows[row] = None
        if r.prompt_key is not None and r.in_prompt and not r.waiting:  # a row waiting on this prompt runs it instead
            followers = self._waiting_on(r.prompt_key)
            if followers:
                self._row(followers[0]).waiting = False

    def free_rows(self) -> int:
        return sum(r is None for r in self._rows)

    def _row(self, row: int) -> _Row:
        r = self._rows[row]
        if r is None:
            raise ValueError(f"row {row} holds no conversation")
        return r

    def _take_row(self, row: _Row) -> int:
        free = [i for i, r in enumerate(self._rows) if r is None]
        if not free:
            raise RuntimeError(f"all {self.batch_size} rows hold a conversation; close one first")
        index = free[0]
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        mask[index] = True
        self.mimi.reset_streaming(mask)
        self.gen.reset_streaming(mask)
        self._mimi_exec = None  # a reset enables its row again
        self._rows[index] = row
        return index

    def voice(self, voice: str) -> VoicePrompt:
        """A voice by name or path, loaded once (the most recent VOICE_MEMORY are kept)."""
        if voice in self._voices:
            self._voices.move_to_end(voice)
            return self._voices[voice]
        loaded = load_voice(voice, self.model.files.directory)
        if loaded.state is not None:
            self._check_fits(loaded.state, str(loaded.source))
        self._voices[voice] = loaded
        if len(self._voices) > VOICE_MEMORY:
            self._voices.popitem(last=False)
        return loaded

    def _check_fits(self, state: PromptState, where: str) -> None:
        cache = self.gen._state().cache
        if state.cache.shape[1:] != cache.shape[1:] or state.embeddings.shape[-1] != self.model.lm.dim:
            raise VoiceNotFoundError(
                f"{where}: a prompt state of another model (cache {tuple(state.cache.shape)}, embeddings "
                f"{tuple(state.embeddings.shape)}); use a voice of this model (`aimsvoice voices`) or a WAV."
            )

    # -- system prompt plans ----------------------------------------------------------------

    def _voice_plan(self, voice: VoicePrompt) -> list[_PromptStep]:
        """The voice prompt: a saved state replayed, or audio encoded by Mimi (from the cache when it was before)."""
        state = voice.state
        if state is None:
            cached = prompt_cache_path(voice, self.prompt_cache_key)
            if cached.is_file():
                try:
                    state = PromptState.load(cached)
                    self._check_fits(state, str(cached))
                except Exception as e:  # a damaged cache entry is rebuilt, not fatal
                    logger.warning("ignoring prompt cache %s: %s", cached, e)
                    state = None
        if state is not None:
            return self._replay_plan(state)
        assert voice.audio is not None
        return self._audio_plan(voice.audio)

    def _replay_plan(self, state: PromptState) -> list[_PromptStep]:
        """Replay a saved state's embeddings (after the dropped first frame), then restore its token cache."""
        embeddings = state.embeddings.to(device=self.device, dtype=self.model.dtype)
        plan = [_PromptStep(self._start_user, self._start_agent, TEXT_PAD)]
        plan += [_PromptStep(self._start_user, self._start_agent, TEXT_PAD, embedding=emb[0]) for emb in embeddings]
        plan[-1].restore = state.cache[0].to(self.device)
        return plan

    def _audio_plan(self, pcm: np.ndarray) -> list[_PromptStep]:
        """Voice audio frame by frame, its Mimi codes forced on the agent's channels over the sine."""
        plan = []
        for start in range(0, len(pcm), FRAME_SIZE):
            frame = np.zeros(FRAME_SIZE, dtype=np.float32)
            piece = pcm[start : start + FRAME_SIZE]
            frame[: len(piece)] = piece
            plan.append(_PromptStep(self._sine, None, TEXT_PAD, voice_pcm=frame))
        plan[-1].capture = True
        return plan

    def _spacer(self) -> list[_PromptStep]:
        """0.5 s of silence: agent silent, text PAD, the user's channels hearing the sine."""
        return [_PromptStep(self._sine, self._silence, TEXT_PAD) for _ in range(SILENCE_FRAMES)]

    @torch.inference_mode()
    def record_voice(self, pcm: np.ndarray) -> PromptState:
        """The prompt state of a voice given as audio, recorded on a free row (the others wait)."""
        row = self._take_row(_Row(None, None, self._audio_plan(pcm)))
        try:
            while self._row(row).in_prompt:
                self.tick({})
            state = self._row(row).prompt_state
            assert state is not None
            return state
        finally:
            self.close_row(row)

    @property
    def prompt_cache_key(self) -> str:
        """Prompt states depend on the weights, their dtype and the device kind."""
        dtype = str(self.model.dtype).removeprefix("torch.")
        return f"{self.model.fingerprint}-{dtype}-{self.device.type}"

    # -- the tick -----------------------------------------------------------------------------

    def _set_mimi_exec(self, rows: np.ndarray) -> None:
        if self._mimi_exec is None or not np.array_equal(self._mimi_exec, rows):
            self.mimi.set_exec_mask(torch.from_numpy(rows))
            self._mimi_exec = rows.copy()

    @torch.inference_mode()
    def tick(self, frames: Mapping[int, np.ndarray]) -> dict[int, StepOut]:
        """One step for every row in its system prompt and every talking row in `frames` (row -> float32 [FRAME_SIZE]).

        Returns each talking row's output; rows neither in their prompt nor in `frames` wait.
        """
        batch, device = self.batch_size, self.device
        t0 = time.perf_counter()
        run = np.zeros(batch, dtype=bool)
        talking = np.zeros(batch, dtype=bool)
        voice_audio = np.zeros(batch, dtype=bool)
        replay = np.zeros(batch, dtype=bool)
        pcm = np.zeros((batch, 1, FRAME_SIZE), dtype=np.float32)
        tokens = torch.zeros(batch, 1 + 2 * AGENT_CODEBOOKS, dtype=torch.long, device=device)
        forced = torch.zeros_like(tokens, dtype=torch.bool)
        embeddings = None
        steps: dict[int, _PromptStep] = {}
        for row, frame in frames.items():
            if self._row(row).in_prompt:
                raise ValueError(f"row {row} is still running its system prompt; it takes no frames yet")
            if np.shape(frame) != (FRAME_SIZE,):
                raise ValueError(f"row {row}: expected {FRAME_SIZE} samples, got {frame.shape}")
            run[row] = talking[row] = True
            pcm[row, 0] = np.asarray(frame, dtype=np.float32)
            forced[row, USER] = True
        for row, r in enumerate(self._rows):
            if r is None or not r.in_prompt or r.waiting:
                continue
            step = steps[row] = r.plan[r.next_step]
            run[row] = True
            tokens[row, USER], tokens[row, TEXT] = step.user, step.text
            forced[row] = True
            if step.voice_pcm is not None:
                voice_audio[row] = True
                pcm[row, 0] = step.voice_pcm
            else:
                tokens[row, AGENT] = step.agent
            if step.embedding is not None:
                replay[row] = True
                if embeddings is None:
                    embeddings = torch.zeros(batch, 1, step.embedding.shape[-1], dtype=step.embedding.dtype, device=device)
                embeddings[row] = step.embedding
        if not run.any():
            return {}

        encode = talking | voice_audio
        if encode.any():
            self._set_mimi_exec(encode)
            codes = self.mimi.encode(torch.from_numpy(pcm).to(device))[:, :, 0]  # [B, 8]
            tokens[:, USER] = torch.where(torch.from_numpy(talking).to(device)[:, None], codes, tokens[:, USER])
            tokens[:, AGENT] = torch.where(torch.from_numpy(voice_audio).to(device)[:, None], codes, tokens[:, AGENT])
        self._sync()
        t1 = time.perf_counter()
        out = self.gen.step(tokens, forced, run, embeddings, replay if replay.any() else None)
        for row, step in steps.items():
            self._after_prompt_step(row, step, out)
        self._sync()
        t2 = time.perf_counter()
        if not talking.any():
            return {}

        assert out.has_frame[talking].all(), "a talking row has its delays filled"
        self._set_mimi_exec(talking)
        talking_t = torch.from_numpy(talking).to(device)[:, None, None]
        codes = torch.where(talking_t, out.frames[:, AGENT], torch.zeros_like(out.frames[:, AGENT]))  # others: no codes yet
        agent_pcm = self.mimi.decode(codes)[:, 0].float().cpu().numpy()
        text_tokens = out.frames[:, TEXT, 0].cpu().numpy()
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "lm": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        timings.update(self.gen.stage_ms)
        return {
            row: StepOut(agent_pcm[row], self.piece(int(text_tokens[row])), int(text_tokens[row]), dict(timings))
            for row in np.flatnonzero(talking).tolist()
        }

    def _after_prompt_step(self, row: int, step: _PromptStep, out: GenStep) -> None:
        """Keep what the voice prompt leaves; at the prompt's end, Mimi starts the conversation afresh."""
        r = self._row(row)
        r.next_step += 1
        if step.voice_pcm is not None and out.ran_lm[row]:
            assert out.embeddings is not None
            r.recorded.append(out.embeddings[row : row + 1].detach().clone())
        cache = self.gen._state().cache
        if step.restore is not None:
            cache[row] = step.restore
        if step.capture:
            r.prompt_state = PromptState(torch.stack(r.recorded, dim=0), cache[row : row + 1].clone())
            r.recorded = []
            if r.cache_path is not None:
                try:
                    r.prompt_state.save(r.cache_path)
                except OSError as e:
                    logger.warning("cannot cache the voice prompt state at %s: %s", r.cache_path, e)
        if not r.in_prompt and r.spec is not None:
            if r.prompt_key is not None and (r.prompt_key not in self.prompt_memory or self._waiting_on(r.prompt_key)):
                state = self.gen._state()
                snapshot = capture(self.model.lm, state.cache, state.forced, state.offsets, row, len(r.plan) - 1)
                self.prompt_memory.put(r.prompt_key, snapshot)
                for follower in self._waiting_on(r.prompt_key):
                    self._start_from(follower, snapshot)
            mask = torch.zeros(self.batch_size, dtype=torch.bool)
            mask[row] = True
            self.mimi.reset_streaming(mask)  # the voice prompt went through the encoder
            self._mimi_exec = None

    def _waiting_on(self, key: tuple[str, tuple[int, ...]]) -> list[int]:
        return [i for i, r in enumerate(self._rows) if r is not None and r.waiting and r.prompt_key == key]

    def _sync(self) -> None:
        if self.config.profile and self.device.type == "cuda":
            torch.cuda.synchronize()

    def piece(self, token: int) -> str | None:
        """The text a token stands for, with word starts as spaces; None for padding and controls."""
        if token in (0, TEXT_PAD) or token >= self.tokenizer.get_piece_size():
            return None
        if self.tokenizer.is_control(token) or self.tokenizer.is_unknown(token):
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")


class Engine(SoloEngine):
    """PersonaPlex for one conversation at a time: a `PersonaPlexBatch` of one row.

    `start(spec)` runs the system prompt; then call `step(pcm)` once per frame.
    """

    batch: PersonaPlexBatch

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()):
        super().__init__(PersonaPlexBatch(model, config, batch_size=1))

    @property
    def model(self) -> LoadedModel:
        return self.batch.model

    @property
    def gen(self) -> PersonaPlexGen:
        return self.batch.gen

    @property
    def device(self) -> torch.device:
        return self.batch.device

    @property
    def prompt_cache_key(self) -> str:
        return self.batch.prompt_cache_key

    def record_voice(self, pcm: np.ndarray) -> PromptState:
        """The prompt state of a voice given as audio (ends the conversation in progress, if any)."""
        if self.row is not None:
            self.batch.close_row(self.row)
            self.row = None
        return self.batch.record_voice(pcm)

    def __enter__(self) -> Engine:
        return self
