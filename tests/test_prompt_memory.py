"""A persona's system prompt runs once per engine; the next conversation with it starts from a copy.

The copy must be what the prompt would have left: a conversation that starts from it says, token for
token and code for code, what it says when its prompt runs (greedy and seeded), and in a batch of one
its audio is bit-identical.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from moshi.modules.transformer import StreamingMultiheadAttention

from aimsvoice.engine import ConversationSpec, Engine, PersonaPlexBatch, SamplingConfig, load_model
from aimsvoice.engine.prompt_memory import PromptMemory
from test_batch import CONFIG, DEVICE, Conversation, alone, batched, noise, spy_codes, wav_voice  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return load_model(tiny_dir, device=DEVICE, dtype="float32")


def test_a_second_conversation_with_a_persona_starts_at_once_and_says_what_it_would_have(model, wav_voice) -> None:
    coach = ConversationSpec("NATF2", "You are a head coach.", SamplingConfig(greedy=True))
    hot = SamplingConfig(temp_text=1.0, topk_text=40, temp_audio=1.1, topk_audio=100)
    convs = [
        Conversation(coach, noise(8, 1)),
        Conversation(ConversationSpec(wav_voice, "You are terse.", hot, seed=99), noise(8, 2)),
        # The same personas again, with other inputs and sampling: they start from the copies.
        Conversation(ConversationSpec("NATF2", "You are a head coach.", SamplingConfig(), seed=5), noise(12, 3), join_tick=60),
        Conversation(ConversationSpec(wav_voice, "You are terse.", SamplingConfig(greedy=True)), noise(10, 4), join_tick=60),
        Conversation(ConversationSpec("NATF2", "You are a head coach.", hot, seed=6), noise(9, 5), join_tick=60),
    ]
    with PersonaPlexBatch(model, CONFIG, batch_size=2) as engine:
        memory = engine.prompt_memory
        heard, _ = batched(model, convs, batch_size=2, engine=engine)
        assert (memory.hits, memory.misses, len(memory)) == (3, 2, 2)
    for conversation, got in zip(convs, heard):
        expected = alone(model, conversation)
        assert got.tokens == expected.tokens, conversation.spec
        assert got.codes == expected.codes, conversation.spec


def test_rows_opening_while_their_personas_prompt_runs_wait_for_it_and_start_from_it(model) -> None:
    coach = ("NATF2", "You are a head coach with a long and storied career.")
    convs = [
        Conversation(ConversationSpec(*coach, SamplingConfig(greedy=True)), noise(8, 1)),
        Conversation(ConversationSpec(*coach, SamplingConfig(), seed=2), noise(10, 2), join_tick=3),
        Conversation(ConversationSpec(*coach, SamplingConfig(greedy=True)), noise(6, 3), join_tick=7),
    ]
    with PersonaPlexBatch(model, CONFIG, batch_size=3) as engine:
        heard, talking = batched(model, convs, batch_size=3, engine=engine)
        assert engine.prompt_memory.hits == 0 and len(engine.prompt_memory) == 1
    assert next(n for n in talking if n) == 3, "all three started talking at the tick the first prompt ended"
    for conversation, got in zip(convs, heard):
        expected = alone(model, conversation)
        assert got.tokens == expected.tokens and got.codes == expected.codes, conversation.spec


def test_a_row_waiting_on_a_prompt_whose_row_closes_runs_the_prompt_itself(model) -> None:
    spec = ConversationSpec("NATF2", "You are a head coach.", SamplingConfig(), seed=8)
    frames = noise(8, 4)
    with PersonaPlexBatch(model, CONFIG, batch_size=2) as engine:
        leader = engine.open(ConversationSpec("NATF2", "You are a head coach.", SamplingConfig(greedy=True)))
        follower = engine.open(spec)
        for _ in range(5):
            engine.tick({})
        assert engine.in_prompt(leader) and engine.in_prompt(follower) and engine.steps_taken(follower) == 0
        engine.close_row(leader)
        ticks = 0
        while engine.in_prompt(follower):
            engine.tick({})
            ticks += 1
        assert ticks == engine.steps_taken(follower) > 5
        tokens = [engine.tick({follower: f})[follower].text_token for f in frames]
    assert tokens == alone(model, Conversation(spec, frames)).tokens


@pytest.mark.parametrize("context", ["pinned", "ring"])
def test_in_a_batch_of_one_the_copy_is_bit_identical(model, context: str) -> None:
    config = replace(CONFIG, context=context)
    spec = ConversationSpec("VARM1", "You sell boats.", SamplingConfig(), seed=12)
    frames = noise(10, 7)
    with Engine(model, config) as engine:
        engine.start(ConversationSpec("VARM1", "You sell boats.", SamplingConfig(greedy=True)))
        [engine.step(f) for f in noise(5, 8)]
        engine.start(spec)
        assert engine.batch.prompt_memory.hits == 1
        assert engine.batch.steps_taken(engine.row) > 0 and not engine.batch.in_prompt(engine.row)
        again = [engine.step(f) for f in frames]
    with Engine(model, config) as fresh:
        fresh.start(spec)
        assert fresh.batch.prompt_memory.hits == 0
        first = [fresh.step(f) for f in frames]
    assert [o.text_token for o in again] == [o.text_token for o in first]
    assert np.array_equal(np.stack([o.pcm for o in again]), np.stack([o.pcm for o in first]))


def test_another_text_or_voice_is_another_persona_and_sampling_is_not(model, wav_voice) -> None:
    """The key is what conditions the model: the voice's content and the text prompt's tokens."""
    specs_and_known = [
        (ConversationSpec("NATF1", "Hi."), False),
        (ConversationSpec("NATF1", "Hello."), False),
        (ConversationSpec(wav_voice, "Hi."), False),
        (ConversationSpec("NATF1", "Hi.", SamplingConfig(greedy=True), seed=3), True),
        (ConversationSpec(wav_voice, "Hi.", SamplingConfig(temp_text=0.3), seed=4), True),
    ]
    with PersonaPlexBatch(model, CONFIG, batch_size=1) as engine:
        for spec, known in specs_and_known:
            row = engine.open(spec)
            assert engine.in_prompt(row) != known, spec
            while engine.in_prompt(row):
                engine.tick({})
            engine.close_row(row)
        assert (engine.prompt_memory.hits, len(engine.prompt_memory)) == (2, 3)


def test_the_memory_keeps_the_most_recent_within_its_budget(model) -> None:
    with PersonaPlexBatch(model, CONFIG, batch_size=1) as engine:
        row = engine.open(ConversationSpec("NATF1", "Hi."))
        while engine.in_prompt(row):
            engine.tick({})
        engine.close_row(row)
        snapshot = next(iter(engine.prompt_memory._snapshots.values()))
    memory = PromptMemory(budget_bytes=2 * snapshot.nbytes)
    for key in ("a", "b", "c"):
        memory.put((key, ()), snapshot)
    assert ("a", ()) not in memory and ("b", ()) in memory and ("c", ()) in memory
    memory.get(("b", ()))
    memory.put(("d", ()), snapshot)
    assert ("b", ()) in memory and ("c", ()) not in memory
    small = PromptMemory(budget_bytes=snapshot.nbytes - 1)
    small.put(("a", ()), snapshot)
    assert len(small) == 0


def test_the_memory_holds_one_rows_attention_caches_and_the_batch_sets_them_aside(model, monkeypatch) -> None:
    from aimsvoice.engine import memory

    lm_kv = sum(2 * a.context * (a.embed_dim // a.kv_repeat) * 4 for a in model.lm.transformer.modules()
                if isinstance(a, StreamingMultiheadAttention) and a.context)
    with PersonaPlexBatch(model, CONFIG, batch_size=1) as engine:
        assert engine.prompt_memory.budget_bytes == memory.prompt_memory_bytes(model) == lm_kv
    row = memory.row_bytes(model)
    # Free memory for exactly 3 rows beside the prompt memory: 3 rows; without the memory's share it would be 4.
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((3.5 * row + lm_kv) / memory.SHARE_OF_FREE))
    assert memory.max_batch_size(model) == 3
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((4.0 * row + 0.5 * lm_kv) / memory.SHARE_OF_FREE))
    assert memory.max_batch_size(model) == 3
