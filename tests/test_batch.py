"""The batched engine: a row's conversation is the one it would have alone, whoever its neighbours are.

Every conversation is run twice on the tiny model in float32 on CPU: alone (`Engine`, a batch of
one) and as a row of a `PersonaPlexBatch` where rows join at different ticks, run their system
prompt beside rows that talk, skip ticks, and leave while others go on. Text tokens and the
agent's audio codes must be identical, greedy and seeded alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from aimsvoice.audio import FRAME_SIZE, write_wav
from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, PersonaPlexBatch, SamplingConfig, load_model
from aimsvoice.engine.loop import AGENT

# AIMSVOICE_TEST_DEVICE=cuda runs them on a GPU, with CUDA graphs (`make gpu-check` runs the batch-of-one ones).
DEVICE = os.environ.get("AIMSVOICE_TEST_DEVICE", "cpu")
CONFIG = EngineConfig(device=DEVICE, dtype="float32")


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return load_model(tiny_dir, device=DEVICE, dtype="float32")


@dataclass
class Conversation:
    spec: ConversationSpec
    frames: list[np.ndarray]
    join_tick: int = 0  # the first tick it may take a free row
    skip: frozenset[int] = frozenset()  # frames before which the row sits out one tick


@dataclass
class Heard:
    """What a conversation produced: one text token and 8 agent codes per frame."""

    tokens: list[int]
    codes: list[list[int]]


def noise(n: int, seed: int, level: float = 0.2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(level * rng.standard_normal(FRAME_SIZE)).astype(np.float32) for _ in range(n)]


def spy_codes(engine: PersonaPlexBatch) -> list[torch.Tensor]:
    """Every decode's input codes [B, 8, 1], in order (the agent's codes of the talking rows)."""
    seen: list[torch.Tensor] = []
    real_decode = engine.mimi.decode
    engine.mimi.decode = lambda codes: seen.append(codes.clone()) or real_decode(codes)  # type: ignore[method-assign]
    return seen


def alone(model, conversation: Conversation) -> Heard:
    with Engine(model, CONFIG) as engine:
        seen = spy_codes(engine.batch)
        engine.start(conversation.spec)
        outs = [engine.step(frame) for frame in conversation.frames]
    assert len(seen) == len(outs)
    return Heard([o.text_token for o in outs], [codes[0, :, 0].tolist() for codes in seen])


def batched(model, conversations: list[Conversation], batch_size: int, engine: PersonaPlexBatch | None = None) -> tuple[list[Heard], list[int]]:
    """Run the conversations as rows (on `engine`, else a new batch); returns what each produced, and how
    many rows talked at each tick."""
    heard = [Heard([], []) for _ in conversations]
    waiting = list(range(len(conversations)))
    rows: dict[int, int] = {}  # row -> conversation
    next_frame = [0] * len(conversations)
    skipped: set[tuple[int, int]] = set()
    talking_per_tick: list[int] = []
    with engine if engine is not None else PersonaPlexBatch(model, CONFIG, batch_size) as engine:
        seen = spy_codes(engine)
        tick = 0
        while waiting or rows:
            for c in list(waiting):
                if conversations[c].join_tick <= tick and engine.free_rows():
                    rows[engine.open(conversations[c].spec)] = c
                    waiting.remove(c)
            frames = {}
            for row, c in rows.items():
                i = next_frame[c]
                if engine.in_prompt(row) or i >= len(conversations[c].frames):
                    continue
                if i in conversations[c].skip and (c, i) not in skipped:
                    skipped.add((c, i))
                    continue
                frames[row] = conversations[c].frames[i]
            n_decodes = len(seen)
            outs = engine.tick(frames)
            assert set(outs) == set(frames)
            for row, out in outs.items():
                c = rows[row]
                heard[c].tokens.append(out.text_token)
                heard[c].codes.append(seen[n_decodes][row, :, 0].tolist())
                next_frame[c] += 1
            talking_per_tick.append(len(outs))
            for row, c in list(rows.items()):
                if next_frame[c] == len(conversations[c].frames):
                    engine.close_row(row)
                    del rows[row]
            tick += 1
    return heard, talking_per_tick


@pytest.fixture
def wav_voice(tmp_path: Path, monkeypatch) -> str:
    """A voice given as audio: encoded by Mimi inside the batch (a private cache, so never replayed)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(11)
    t = np.arange(24_000 * 2) / 24_000
    pcm = 0.2 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    return str(write_wav(tmp_path / "voice.wav", pcm.astype(np.float32)))


def conversations(wav_voice: str) -> list[Conversation]:
    greedy = SamplingConfig(greedy=True)
    hot = SamplingConfig(temp_text=1.0, topk_text=40, temp_audio=1.1, topk_audio=100)
    return [
        Conversation(ConversationSpec("NATF2", "You are a head coach.", greedy), noise(30, 1)),
        Conversation(ConversationSpec("VARM2", "You are a careful strategist who asks questions.", SamplingConfig(), seed=7),
                     noise(22, 2), skip=frozenset({3, 4, 10})),
        Conversation(ConversationSpec(wav_voice, "You are terse.", hot, seed=99), noise(26, 3), join_tick=5),
        Conversation(ConversationSpec("NATM1", "", greedy), noise(12, 4, level=0.05), join_tick=9),
        Conversation(ConversationSpec("VARF3", "You welcome guests.", SamplingConfig(), seed=7), noise(18, 5)),
    ]


def test_rows_joining_pausing_and_leaving_say_what_they_say_alone(model, wav_voice) -> None:
    convs = conversations(wav_voice)
    heard, talking = batched(model, convs, batch_size=3)

    assert max(talking) == 3 and 1 in talking, "rows talked side by side, and alone at the end"
    for conversation, got in zip(convs, heard):
        expected = alone(model, conversation)
        assert got.tokens == expected.tokens, conversation.spec
        assert got.codes == expected.codes, conversation.spec
    # Two conversations with the same seed and settings but other inputs and voices differ:
    # the seed is per row, not shared.
    assert heard[1].tokens[:18] != heard[4].tokens


def test_the_same_conversation_in_every_row_of_a_full_batch(model) -> None:
    """Four copies of one seeded conversation in one batch: four identical outputs, like the one alone."""
    spec = ConversationSpec("VARF1", "You are a travel agent.", SamplingConfig(), seed=3)
    copies = [Conversation(spec, noise(15, 8), join_tick=i) for i in range(4)]
    heard, _ = batched(model, copies, batch_size=4)
    expected = alone(model, copies[0])
    assert all(h.tokens == expected.tokens and h.codes == expected.codes for h in heard)


def test_a_row_that_waits_keeps_its_state_while_others_step(model) -> None:
    """A talking row left out of many ticks (its client late) continues exactly where it was."""
    spec = ConversationSpec("NATF0", "You are patient.", SamplingConfig(greedy=True))
    frames = noise(12, 21)
    with PersonaPlexBatch(model, CONFIG, batch_size=2) as engine:
        waiting = engine.open(spec)
        other = engine.open(ConversationSpec("NATM3", "You talk a lot.", SamplingConfig(), seed=1))
        while engine.in_prompt(waiting) or engine.in_prompt(other):
            engine.tick({})
        first = [engine.tick({waiting: f})[waiting].text_token for f in frames[:6]]
        for f in noise(20, 22):  # twenty ticks of the other row alone
            assert list(engine.tick({other: f})) == [other]
        rest = [engine.tick({waiting: f})[waiting].text_token for f in frames[6:]]
    expected = alone(model, Conversation(spec, frames))
    assert first + rest == expected.tokens


def test_batch_size_one_is_the_solo_engine(model) -> None:
    """`Engine` is a batch of one: its PCM is bit-identical to a PersonaPlexBatch(1) row's."""
    spec = ConversationSpec("VARM0", "You are a coach.", SamplingConfig(), seed=4)
    frames = noise(10, 30)
    with Engine(model, CONFIG) as engine:
        engine.start(spec)
        solo = np.concatenate([engine.step(f).pcm for f in frames])
    with PersonaPlexBatch(model, CONFIG, batch_size=1) as batch:
        row = batch.open(spec)
        while batch.in_prompt(row):
            assert batch.tick({}) == {}
        rows = np.concatenate([batch.tick({row: f})[row].pcm for f in frames])
    assert np.array_equal(solo, rows)


def test_rows_are_refused_beyond_the_batch_and_frames_only_go_to_talking_rows(model) -> None:
    with PersonaPlexBatch(model, CONFIG, batch_size=1) as engine:
        row = engine.open(ConversationSpec("NATF1", "Hi."))
        with pytest.raises(RuntimeError, match="all 1 rows"):
            engine.open(ConversationSpec("NATF1", "Hi."))
        with pytest.raises(ValueError, match="system prompt"):
            engine.tick({row: np.zeros(FRAME_SIZE, dtype=np.float32)})
        engine.close_row(row)
        with pytest.raises(ValueError, match="no conversation"):
            engine.tick({row: np.zeros(FRAME_SIZE, dtype=np.float32)})
        assert engine.free_rows() == 1
