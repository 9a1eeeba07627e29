"""The PersonaPlex step loop: one 80 ms frame per step, on moshi's LMModel and MimiModel.

Two layers, both explicit streaming state in moshi's style:

- `PersonaPlexGen` is the token-level loop. Its state holds a small cyclic token cache of shape
  [B, K=17, C] (text, 8 agent codebooks, 8 user codebooks) with per-codebook delays, and a mask of
  the tokens that were forced rather than sampled. Each step writes the forced tokens of the new
  frame at `offset + delay`, runs the temporal transformer on the column at `offset - 1`, samples
  the text token and then the 16 audio codebooks with the depformer, where every forced token
  (the user's 8 codebooks during a conversation; everything during the system prompt) replaces
  the sampled one as the next depformer input (teacher forcing). It returns the undelayed frame
  at `offset - 1` once the delays are filled.
- `Engine` wraps it with Mimi: PCM frame in -> user codes -> step -> agent codes -> PCM frame out,
  and runs the persona's system prompt: voice prompt, 0.5 s silence, `<system> text <system>`
  one token per step, 0.5 s silence.

The order of operations (warm-up, streaming resets, the frame dropped at offset 0, the output
frame alignment) follows NVIDIA's PersonaPlex reference so that greedy decoding gives the same
tokens and samples.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from moshi.modules.streaming import State, StreamingModule
from moshi.utils.compile import CUDAGraphed
from moshi.utils.sampling import sample_token

from ..audio.format import FRAME_RATE, FRAME_SIZE
from .config import EngineConfig, SamplingConfig
from .load import AGENT_CODEBOOKS, LoadedModel
from .prompts import (
    SILENCE_SECONDS,
    SILENCE_TOKENS,
    SINE_TOKENS,
    TEXT_PAD,
    PromptState,
    VoicePrompt,
    prompt_cache_path,
    wrap_system_tags,
)

logger = logging.getLogger(__name__)

TEXT = 0  # channel of the text stream in the token cache
AGENT = slice(1, 1 + AGENT_CODEBOOKS)  # channels of the agent's codebooks
USER = slice(1 + AGENT_CODEBOOKS, 1 + 2 * AGENT_CODEBOOKS)  # channels of the user's codebooks
WARMUP_FRAMES = 4
SILENCE_FRAMES = int(SILENCE_SECONDS * FRAME_RATE)

LogitsHook = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class _GenState(State):
    cache: torch.Tensor  # [B, K, C] long: tokens by codebook and cyclic position
    forced: torch.Tensor  # [B, K, C] bool: which cache entries were forced, not sampled
    initial: torch.Tensor  # [1, K, 1]: the start-of-sequence token of each codebook
    delays: torch.Tensor  # [K] long: each codebook's delay in steps
    graphed_main: CUDAGraphed
    graphed_depth: CUDAGraphed
    offset: int = 0
    exit_stack: ExitStack = field(default_factory=ExitStack)
    reset_lm: Callable[[torch.Tensor], None] | None = None

    def reset(self, reset_mask: torch.Tensor) -> None:
        # The cache keeps its values, as in the reference: every entry is forced or sampled
        # before it is read again.
        super().reset(reset_mask)
        self.offset = 0
        self.forced.fill_(False)
        if self.reset_lm is not None:
            self.reset_lm(reset_mask)

    def __enter__(self) -> None:
        self.exit_stack.__enter__()

    def __exit__(self, *exc) -> None:
        self.exit_stack.__exit__(*exc)


class PersonaPlexGen(StreamingModule[_GenState]):
    """Token-level full-duplex generation with forceable text, agent and user channels."""

    def __init__(
        self, lm: LMModel, sampling: SamplingConfig = SamplingConfig(), cuda_graphs: bool = True, profile: bool = False,
    ):
        assert not lm.training, "generation needs an LM in eval mode"
        super().__init__()
        assert lm.dep_q == lm.n_q == 2 * AGENT_CODEBOOKS, (lm.n_q, lm.dep_q)
        self.lm = lm
        self.lm.set_streaming_detached(True)
        self.sampling = sampling
        self.cuda_graphs = cuda_graphs
        self.profile = profile  # time the temporal transformer and the depformer (device-synchronized)
        self.stage_ms: dict[str, float] = {}  # with profile: the last step's "temporal" and "depformer"
        self.delays = list(lm.delays)
        self.max_delay = max(self.delays)
        self.on_logits: LogitsHook | None = None  # (text [B, 1, 1, Ct], audio [B, 16, card]) per step

    def _init_streaming_state(self, batch_size: int) -> _GenState:
        lm = self.lm
        device = lm.device
        shape = (batch_size, lm.num_codebooks, self.max_delay + 3)
        cache = torch.full(shape, lm.ungenerated_token_id, device=device, dtype=torch.long)
        forced = torch.zeros(shape, device=device, dtype=torch.bool)
        disable = device.type != "cuda" or not self.cuda_graphs
        state = _GenState(
            batch_size, device, cache, forced, lm._get_initial_token(),
            torch.tensor(self.delays, device=device, dtype=torch.long),
            CUDAGraphed(self._forward_main, disable=disable),
            CUDAGraphed(self._depformer_step, disable=disable),
        )
        state.exit_stack.enter_context(lm.streaming(batch_size))
        state.reset_lm = lm.reset_streaming
        return state

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
        forced_audio: torch.Tensor, is_forced: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the 16 audio codebooks; a forced token replaces the sample as the next input."""
        lm, s = self.lm, self.sampling
        batch = text_token.shape[0]
        prev = text_token
        tokens, logits_all = [], []
        with lm.depformer.streaming(batch):
            for cb in range(lm.dep_q):
                logits = lm.forward_depformer(cb, prev[:, None, None], transformer_out)
                token = sample_token(logits.float(), not s.greedy, s.temp_audio, s.topk_audio)[:, 0, 0]
                prev = torch.where(is_forced[:, cb], forced_audio[:, cb], token)
                tokens.append(token)
                logits_all.append(logits[:, 0, 0])
        return torch.stack(tokens, dim=1), torch.stack(logits_all, dim=1)

    # -- the step -----------------------------------------------------------------------------

    def _force(self, state: _GenState, channels: slice | int, tokens: torch.Tensor | None) -> None:
        """Write forced tokens of the frame at `offset` into the cache, each at its delay."""
        if tokens is None:
            return
        first = channels.start if isinstance(channels, slice) else channels
        tokens = tokens.reshape(tokens.shape[0], -1)
        size = state.cache.shape[-1]
        for i in range(tokens.shape[1]):
            k = first + i
            position = (state.offset + self.delays[k]) % size
            state.cache[:, k, position] = tokens[:, i]
            state.forced[:, k, position] = True

    @torch.no_grad()
    def step(
        self,
        user: torch.Tensor | None = None,
        agent: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Advance one frame.

        user, agent: [B, 8, 1] codes to force on those channels (None: the model samples them).
        text: [B] text token to force (None: sampled).
        embeddings: [B, 1, dim] input embedding to use instead of embedding the cache (replay of
            a saved voice prompt).
        Returns (frame, embeddings): the undelayed frame [B, 17, 1] of `offset - 1` (None until
        the delays are filled) and the input embedding used at this step (None at offset 0).
        """
        state = self._streaming_state
        if state is None:
            raise RuntimeError("PersonaPlexGen.step() needs streaming mode: `with gen.streaming(1): ...`")
        cache, forced = state.cache, state.forced
        size = cache.shape[-1]
        self._force(state, USER, user)
        self._force(state, AGENT, agent)
        self._force(state, TEXT, text)
        for k, delay in enumerate(self.delays):
            if state.offset <= delay:  # nothing real precedes a delayed codebook yet
                cache[:, k, state.offset % size] = state.initial[:, k, 0]
                forced[:, k, state.offset % size] = True
        if state.offset == 0:
            # The first column is the start token everywhere; this frame's forced tokens at
            # delay 0 are dropped, as in the reference.
            cache[:, :, 0] = state.initial[:, :, 0]
            state.offset = 1
            return None, None

        source = (state.offset - 1) % size
        target = state.offset % size
        if self.profile:
            self._sync()
            t0 = time.perf_counter()
        if embeddings is None:
            embeddings = self.embed(cache[:, :, source : source + 1])
        transformer_out, text_logits = state.graphed_main(embeddings)
        if self.profile:
            self._sync()
            t1 = time.perf_counter()

        s = self.sampling
        sampled_text = sample_token(text_logits.float(), not s.greedy, s.temp_text, s.topk_text)[:, 0, 0]
        text_in = torch.where(forced[:, TEXT, target], cache[:, TEXT, target], sampled_text)
        audio, audio_logits = state.graphed_depth(
            text_in, transformer_out, cache[:, 1:, target], forced[:, 1:, target])
        if self.profile:
            self._sync()
            self.stage_ms = {"temporal": (t1 - t0) * 1e3, "depformer": (time.perf_counter() - t1) * 1e3}
        if self.on_logits is not None:
            self.on_logits(text_logits, audio_logits)

        forced[:, :, source] = False
        cache[:, TEXT, target] = torch.where(forced[:, TEXT, target], cache[:, TEXT, target], sampled_text)
        cache[:, 1:, target] = torch.where(forced[:, 1:, target], cache[:, 1:, target], audio)

        if state.offset <= self.max_delay:
            state.offset += 1
            return None, embeddings
        index = ((state.offset - self.max_delay + state.delays) % size).view(1, -1, 1).expand(cache.shape[0], -1, 1)
        state.offset += 1
        return cache.gather(dim=2, index=index), embeddings

    def _sync(self) -> None:
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize()

    # -- system prompt pieces -----------------------------------------------------------------

    def step_voice_codes(self, codes: Iterator[torch.Tensor]) -> PromptState:
        """Voice prompt from Mimi codes: agent forced to the voice, text to PAD, user to the sine.

        Returns the prompt state it leaves, to be saved and replayed instead next time.
        """
        sine = self._tokens(SINE_TOKENS)
        pad = torch.full((1,), TEXT_PAD, dtype=torch.long, device=self.lm.device)
        embeddings = []
        for frame in codes:
            _, emb = self.step(user=sine, agent=frame, text=pad)
            if emb is not None:
                embeddings.append(emb.detach().clone())
        state = self._streaming_state
        assert state is not None
        return PromptState(torch.stack(embeddings, dim=0), state.cache.clone())

    def replay_voice_state(self, prompt: PromptState) -> None:
        """Voice prompt from a saved state: replay its embeddings, then restore its token cache."""
        state = self._streaming_state
        assert state is not None
        lm = self.lm
        start = lm._get_initial_token()
        pad = torch.full((1,), TEXT_PAD, dtype=torch.long, device=lm.device)
        embeddings = prompt.embeddings.to(device=lm.device, dtype=lm.dtype)
        if state.offset == 0:  # the dropped first frame, as when the prompt was recorded
            self.step(user=start[:, USER], agent=start[:, AGENT], text=pad)
        for emb in embeddings:
            self.step(user=start[:, USER], agent=start[:, AGENT], text=pad, embeddings=emb)
        if prompt.cache.shape != state.cache.shape:
            raise ValueError(f"prompt state cache {tuple(prompt.cache.shape)} does not fit {tuple(state.cache.shape)}")
        state.cache.copy_(prompt.cache)

    def step_silence(self, n_frames: int = SILENCE_FRAMES) -> None:
        """Spacer: agent silent, text PAD, user channels hearing the sine."""
        sine, silence = self._tokens(SINE_TOKENS), self._tokens(SILENCE_TOKENS)
        pad = torch.full((1,), TEXT_PAD, dtype=torch.long, device=self.lm.device)
        for _ in range(n_frames):
            self.step(user=sine, agent=silence, text=pad)

    def step_text_prompt(self, tokens: list[int]) -> None:
        """The text prompt, one token per step, over a silent agent and the sine."""
        sine, silence = self._tokens(SINE_TOKENS), self._tokens(SILENCE_TOKENS)
        for token in tokens:
            self.step(user=sine, agent=silence, text=torch.tensor([token], device=self.lm.device))

    def _tokens(self, ids: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self.lm.device).view(1, -1, 1)


@dataclass(frozen=True)
class Conditioning:
    """A persona as the model takes it: a voice prompt and a text prompt."""

    voice: VoicePrompt
    text_prompt: str


@dataclass
class StepOut:
    """What one 80 ms step of the engine produced."""

    pcm: np.ndarray  # float32 [FRAME_SIZE]: the agent's audio for this frame
    text: str | None  # the text piece the agent produced this frame; None for padding
    text_token: int  # the raw text token id
    timings_ms: dict[str, float] = field(default_factory=dict)  # encode, lm, decode, total (+ temporal, depformer with profile)


class Engine:
    """PersonaPlex with Mimi: 80 ms of user PCM in, 80 ms of agent PCM and text out.

    `start(conditioning)` runs the system prompt; then call `step(pcm)` once per frame.
    """

    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()):
        self.model = model
        self.config = config
        self.mimi: MimiModel = model.mimi
        self.gen = PersonaPlexGen(model.lm, config.sampling, cuda_graphs=config.cuda_graphs, profile=config.profile)
        self.tokenizer = model.tokenizer
        if self.mimi.is_streaming:
            raise RuntimeError("this model already drives an Engine; close() that one first")
        if config.seed is not None:
            torch.manual_seed(config.seed)
        self._streaming = ExitStack()
        self._streaming.enter_context(self.mimi.streaming(1))
        self._streaming.enter_context(self.gen.streaming(1))
        self._warmup()

    def close(self) -> None:
        """Leave streaming mode, so the model can drive another Engine."""
        self._streaming.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _sync(self) -> None:
        if self.config.profile and self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def _warmup(self) -> None:
        """Zeros through encode -> step -> decode: captures CUDA graphs, primes streaming state."""
        for _ in range(WARMUP_FRAMES):
            codes = self.mimi.encode(torch.zeros(1, 1, FRAME_SIZE, device=self.device))
            frame, _ = self.gen.step(user=codes)
            if frame is not None:
                self.mimi.decode(frame[:, AGENT])
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def start(self, conditioning: Conditioning) -> None:
        """Reset all streaming state and run the system prompt for a persona."""
        self.mimi.reset_streaming()
        self.gen.reset_streaming()
        voice = conditioning.voice
        if voice.state is not None:
            self.gen.replay_voice_state(voice.state)
        else:
            self._step_voice_audio(voice)
        self.gen.step_silence()
        if conditioning.text_prompt.strip():
            self.gen.step_text_prompt(self.tokenizer.encode(wrap_system_tags(conditioning.text_prompt)))
        self.gen.step_silence()
        self.mimi.reset_streaming()  # the voice prompt went through the encoder

    def _step_voice_audio(self, voice: VoicePrompt) -> None:
        """Encode the voice prompt with Mimi and force it; cache the prompt state for next time."""
        cache_path = prompt_cache_path(voice, self.prompt_cache_key)
        if cache_path.is_file():
            try:
                self.gen.replay_voice_state(PromptState.load(cache_path))
                return
            except Exception as e:  # a damaged cache entry is rebuilt, not fatal
                logger.warning("ignoring prompt cache %s: %s", cache_path, e)
                self.gen.reset_streaming()
        state = self.gen.step_voice_codes(self._encode_frames(voice.audio))
        try:
            state.save(cache_path)
        except OSError as e:
            logger.warning("cannot cache the voice prompt state at %s: %s", cache_path, e)

    @torch.inference_mode()
    def record_voice(self, pcm: np.ndarray) -> PromptState:
        """The prompt state of a voice given as audio (resets the streaming state first)."""
        self.mimi.reset_streaming()
        self.gen.reset_streaming()
        return self.gen.step_voice_codes(self._encode_frames(pcm))

    def _encode_frames(self, pcm: np.ndarray) -> Iterator[torch.Tensor]:
        """Mimi codes [1, 8, 1] of each 80 ms frame of `pcm`, the last frame zero-padded."""
        for start in range(0, len(pcm), FRAME_SIZE):
            chunk = np.zeros(FRAME_SIZE, dtype=np.float64)
            piece = pcm[start : start + FRAME_SIZE]
            chunk[: len(piece)] = piece
            yield self.mimi.encode(torch.tensor(chunk, dtype=torch.float32, device=self.device).view(1, 1, -1))

    @property
    def prompt_cache_key(self) -> str:
        """Prompt states depend on the weights, their dtype and the device kind."""
        dtype = str(self.model.dtype).removeprefix("torch.")
        return f"{self.model.fingerprint}-{dtype}-{self.device.type}"

    @torch.inference_mode()
    def step(self, pcm: np.ndarray) -> StepOut:
        """One frame of user audio (float32 [FRAME_SIZE]) -> one frame of agent audio and text."""
        assert pcm.shape == (FRAME_SIZE,), f"expected {FRAME_SIZE} samples, got {pcm.shape}"
        t0 = time.perf_counter()
        codes = self.mimi.encode(torch.from_numpy(np.asarray(pcm, dtype=np.float32)).to(self.device).view(1, 1, -1))
        self._sync()
        t1 = time.perf_counter()
        frame, _ = self.gen.step(user=codes)
        assert frame is not None, "Engine.step() before start()"
        self._sync()
        t2 = time.perf_counter()
        out = self.mimi.decode(frame[:, AGENT])
        out_pcm = out[0, 0].float().cpu().numpy()
        text_token = int(frame[0, TEXT, 0].item())
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "lm": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        timings.update(self.gen.stage_ms)
        return StepOut(out_pcm, self.piece(text_token), text_token, timings)

    def piece(self, token: int) -> str | None:
        """The text a token stands for, with word starts as spaces; None for padding and controls."""
        if token in (0, TEXT_PAD) or token >= self.tokenizer.get_piece_size():
            return None
        if self.tokenizer.is_control(token) or self.tokenizer.is_unknown(token):
            return None
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")
