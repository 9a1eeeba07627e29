"""The cascade against local fake servers speaking Groq's and ElevenLabs' APIs (tests/fakecloud.py).

Offline (pace "model"): a spoken question answered end to end, the reply landing after the
user's turn plus what its requests took; barge-in; every kind of provider failure failing over
without repeated audio; a probe bringing a provider back; a bad key; live pace never waiting.
The user speaks the built-in bench suite's espeak-ng recordings, whose timestamps are exact.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE, read_wav
from aimsvoice.bench import builtin_suite_dir, load_suite
from aimsvoice.engine.cascade import CascadeEngine, CascadeKeyError, FailoverConfig, Timeouts, cascade_config
from aimsvoice.engine.cascade.worker import build_providers
from aimsvoice.engine.contract import ConversationSpec
from aimsvoice.session import run_frames
from fakecloud import GOOD_KEY, GOOD_XI_KEY, FakeCloud, Plan, closed_port_url

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

PROMPT = "You are a geography tutor. You answer in two short sentences."
REPLY = "Paris is the capital. It sits on the Seine."
QUIET = 1e-4  # below this the agent is silent
FAST = Timeouts(connect_s=0.5, stt_s=0.6, first_byte_s=0.6, idle_s=0.6)  # a hang fails over within a second


def sample(task: str, index: int = 0):
    return [s for s in load_suite(builtin_suite_dir()) if s.task == task][index]


def user_audio(task: str, tail_s: float) -> tuple[np.ndarray, object]:
    s = sample(task)
    return np.concatenate([read_wav(s.input_path), np.zeros(round(tail_s * SAMPLE_RATE), np.float32)]), s


@pytest.fixture(autouse=True)
def own_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no price table of the user's


@pytest.fixture
def fake():
    with FakeCloud(replies=[REPLY]) as cloud:
        yield cloud


class RecordingVoice:
    """The local voice, recording what it is asked to say."""

    def __init__(self, voice) -> None:
        self.voice = voice
        self.name = voice.name
        self.cloud = False
        self.said: list[str] = []

    def speak(self, text: str):
        self.said.append(text)
        return self.voice.speak(text)


def engine_for(env: dict[str, str], *, said: list[str] | None = None, **overrides) -> CascadeEngine:
    config = replace(cascade_config("cascade", env=env), probe_local_llm=False, **overrides)

    async def providers(config, http):
        built = await build_providers(config, http)
        if said is not None:
            built.tts[-1] = RecordingVoice(built.tts[-1])
            built.tts[-1].said = said
        return built

    engine = CascadeEngine(config, providers=providers, failover=FailoverConfig(probe_after_s=0.3, probe_max_s=1.0))
    engine.start(ConversationSpec(voice="", text_prompt=PROMPT))
    return engine


def first_sound(pcm: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(pcm) > QUIET)
    return int(loud[0]) if len(loud) else -1


def occurrences(haystack: np.ndarray, needle: np.ndarray) -> int:
    """How many times `needle` appears in `haystack`, sample-exact."""
    if len(needle) == 0 or len(needle) > len(haystack):
        return 0
    starts = np.flatnonzero(haystack[: len(haystack) - len(needle) + 1] == needle[0])
    return sum(np.array_equal(haystack[i : i + len(needle)], needle) for i in starts)


def test_a_spoken_question_answered_end_to_end(fake) -> None:
    fake.plan("stt", Plan(delay_s=0.3))  # speech-to-text takes 300 ms: the answer comes that much later
    pcm, s = user_audio("smooth_turn_taking", tail_s=4.0)
    turn_end_s = s.events[0][0]
    with engine_for(fake.env()) as engine:
        result = run_frames(engine, pcm)
        info = engine.describe()

    # speech-to-text got the user's turn: a 16 kHz WAV from just before their first word to just after their last
    (stt,) = fake.recorded.stt
    assert stt["rate"] == 16_000 and stt["model"] == "whisper-large-v3-turbo" and stt["response_format"] == "json"
    assert turn_end_s - 0.5 - 0.1 < len(stt["pcm"]) / 16_000 < turn_end_s - 0.5 + 0.9
    assert np.sqrt(np.mean(stt["pcm"] ** 2)) > 0.03
    # the chat model got the persona's prompt and the transcript, and streamed
    (chat,) = fake.recorded.chat
    assert chat["messages"] == [{"role": "system", "content": PROMPT}, {"role": "user", "content": fake.transcripts[0]}]
    assert chat["stream"] is True and chat["model"] == "llama-3.3-70b-versatile"
    # speech got each sentence, in order, as pcm_24000 in the default voice
    assert [t["text"] for t in fake.recorded.tts] == ["Paris is the capital.", "It sits on the Seine."]
    assert {(t["voice_id"], t["model_id"], t["output_format"]) for t in fake.recorded.tts} == {
        ("EXAVITQu4vr4xnSDxMaL", "eleven_flash_v2_5", "pcm_24000")}

    # the agent's audio is exactly what the fake sent, after the user's turn and the 300 ms
    (turn,) = info["turns"]
    start = first_sound(result.agent_pcm)
    assert start / SAMPLE_RATE > turn_end_s + 0.6  # the endpointing silence at least
    assert turn["first_audio_s"] >= (start // FRAME_SIZE) * FRAME_SIZE / SAMPLE_RATE
    decided_s = turn_end_s + 0.6
    assert start / SAMPLE_RATE - decided_s >= 0.3 - 0.1  # VAD edges aside, the request's 300 ms are in the timeline
    assert start / SAMPLE_RATE - decided_s < 0.3 + 2.0  # and the rest of the pipeline is quick (wide margin: a busy machine)
    sent = np.concatenate([t["pcm"] for t in fake.recorded.tts])
    assert np.array_equal(result.agent_pcm[start : start + len(sent)], sent)
    assert np.all(np.abs(result.agent_pcm[start + len(sent) :]) < QUIET)

    assert turn["tier"] == "cascade" and (turn["stt"], turn["llm"], turn["tts"]) == ("groq", "groq", ["elevenlabs"])
    assert turn["user_text"] == fake.transcripts[0] and turn["agent_text"] == REPLY and not turn["barged_in"]
    usage = info["usage"]
    assert usage["stt_requests"] == 1 and usage["llm_tokens_in"] == 50 and usage["tts_chars"] == len(REPLY) - 1
    assert usage["cost_usd_estimate"] > 0
    assert result.transcript.text == REPLY
    assert any("turn 1: cascade" in e for _, e in result.transcript.events)
    dumped = json.dumps(info) + json.dumps(result.transcript.to_json())
    assert GOOD_KEY not in dumped and GOOD_XI_KEY not in dumped


def test_barge_in_stops_the_agent_within_two_frames_and_keeps_what_was_heard() -> None:
    reply = ("First you mix the flour with the eggs slowly. Then you knead the dough for ten minutes. "
             "Then you let it rest for half an hour. Finally you roll it out thin and cut it.")
    pcm, s = user_audio("user_interruption", tail_s=3.0)
    barge_start, barge_end = s.events[0]
    with FakeCloud(transcripts=["How do I make pasta?", "I have no eggs."], replies=[reply, "Use water instead."]) as fake:
        fake.chat_piece_delay_s = 0.12  # the model writes slower than it is spoken: the barge-in finds sentences unwritten
        with engine_for(fake.env()) as engine:
            result = run_frames(engine, pcm)
            info = engine.describe()
    agent = result.agent_pcm
    first = first_sound(agent)
    assert 0 < first < round(barge_start * SAMPLE_RATE)  # the agent was talking when the user cut in
    stop = round((barge_start + 0.16) * SAMPLE_RATE)
    assert np.all(np.abs(agent[stop : round((barge_end + 0.6) * SAMPLE_RATE)]) < QUIET)  # silent within two frames
    assert np.any(np.abs(agent[round((barge_end + 0.6) * SAMPLE_RATE) :]) > QUIET)  # then it answers the new turn

    first_turn, second_turn = info["turns"]
    assert first_turn["barged_in"] and not second_turn["barged_in"]
    heard = first_turn["agent_text"]
    assert heard and reply.startswith(heard) and len(heard) < len(reply)
    assert fake.recorded.chat[1]["messages"] == [
        {"role": "system", "content": PROMPT}, {"role": "user", "content": "How do I make pasta?"},
        {"role": "assistant", "content": heard}, {"role": "user", "content": "I have no eggs."},
    ]
    spoken = [t["text"] for t in fake.recorded.tts]
    assert spoken[-1] == "Use water instead."
    assert len(spoken) - 1 < 4  # the rest of the first reply was cancelled, never synthesized


FAILURES = {
    # name: (what goes wrong, what serves the turn: stt, llm, tts)
    "stt 5xx": (lambda f, env: f.plan("stt", Plan(status=503)), ("pocketsphinx", "groq", ["elevenlabs"])),
    "stt 429": (lambda f, env: f.plan("stt", Plan(status=429)), ("pocketsphinx", "groq", ["elevenlabs"])),
    "stt timeout": (lambda f, env: f.plan("stt", Plan(hang=True)), ("pocketsphinx", "groq", ["elevenlabs"])),
    "groq unreachable": (lambda f, env: env.update(GROQ_BASE_URL=closed_port_url()), ("pocketsphinx", "offline", ["elevenlabs"])),
    "llm 5xx": (lambda f, env: f.plan("chat", Plan(status=500)), ("groq", "offline", ["elevenlabs"])),
    "llm cut before a sentence": (lambda f, env: f.plan("chat", Plan(cut_after=2)), ("groq", "offline", ["elevenlabs"])),
    "llm cut mid-reply": (lambda f, env: f.plan("chat", Plan(cut_after=6)), ("groq", "groq", ["elevenlabs"])),
    "tts 5xx": (lambda f, env: f.plan("tts", Plan(status=502)), ("groq", "groq", ["espeak-ng"])),
    "tts unreachable": (lambda f, env: env.update(ELEVENLABS_BASE_URL=closed_port_url()), ("groq", "groq", ["espeak-ng"])),
    "tts timeout": (lambda f, env: f.plan("tts", Plan(hang=True)), ("groq", "groq", ["espeak-ng"])),
    "tts cut mid-sentence": (lambda f, env: f.plan("tts", Plan(cut_after=3)), ("groq", "groq", ["elevenlabs", "espeak-ng"])),
}


@pytest.mark.parametrize("kind", FAILURES)
def test_failover_without_repeated_audio(fake, kind: str) -> None:
    env = fake.env()
    break_it, (stt, llm, tts) = FAILURES[kind]
    break_it(fake, env)
    pcm, s = user_audio("smooth_turn_taking", tail_s=15.0)  # room for PocketSphinx to load and decode on a busy machine
    said: list[str] = []
    with engine_for(env, said=said, timeouts=FAST) as engine:
        result = run_frames(engine, pcm)
        info = engine.describe()
    (turn,) = info["turns"]
    assert (turn["stt"], turn["llm"], turn["tts"]) == (stt, llm, tts), turn
    assert turn["user_text"]  # heard something, by whichever provider
    agent = result.agent_pcm
    assert first_sound(agent) / SAMPLE_RATE > s.events[0][0] + 0.5  # answered, after the user's turn
    assert any("failed" in e for _, e in result.transcript.events)
    # nothing the cloud voice delivered is played twice, nor re-requested
    for i, request in enumerate(fake.recorded.tts):
        if len(request["pcm"]):  # once (the first surely; later ones may run past the end of the input)
            assert occurrences(agent, request["pcm"][:480]) == (1 if i == 0 else occurrences(agent, request["pcm"][:480]) and 1)
    assert len({t["text"] for t in fake.recorded.tts}) == len(fake.recorded.tts)
    if kind == "llm cut mid-reply":
        assert turn["agent_text"] == "Paris is the capital."  # the sentence already on its way stands, cut short
    if kind == "llm cut before a sentence" or stt == "pocketsphinx" and llm == "offline":
        assert turn["agent_text"].startswith("I am offline")
    if kind == "tts cut mid-sentence":  # the local voice finishes the sentence from the first word not yet begun
        cut = fake.recorded.tts[0]
        assert cut["text"] == "Paris is the capital." and len(cut["pcm"]) == 3 * 2400
        assert said[0] in ("is the capital.", "the capital.", "capital.") and said[1] == "It sits on the Seine."
    elif tts == ["espeak-ng"]:
        assert said == ["Paris is the capital.", "It sits on the Seine."]


def test_a_probe_brings_the_provider_back(fake) -> None:
    fake.plan("stt", Plan(status=503))
    pcm, _ = user_audio("smooth_turn_taking", tail_s=4.0)
    with engine_for(fake.env()) as engine:
        run_frames(engine, pcm)
        assert engine.describe()["turns"][0]["stt"] == "pocketsphinx"
        deadline = time.monotonic() + 10.0
        while "down" in engine.describe() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "down" not in engine.describe()
        assert "/openai/v1/models" in fake.recorded.probes
        engine.start(ConversationSpec(voice="", text_prompt=PROMPT))
        run_frames(engine, pcm)
        assert engine.describe()["turns"][0]["stt"] == "groq"


@pytest.mark.parametrize("variable", ["GROQ_API_KEY", "ELEVENLABS_API_KEY"])
def test_a_rejected_key_is_one_line_naming_the_variable(fake, variable: str) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    env = {**fake.env(), variable: wrong}
    pcm, _ = user_audio("smooth_turn_taking", tail_s=3.0)
    with engine_for(env) as engine, pytest.raises(CascadeKeyError) as error:
        run_frames(engine, pcm)
    message = str(error.value)
    assert variable in message and "rejected" in message and "401" in message
    assert wrong not in message and "\n" not in message


def test_missing_keys_are_named() -> None:
    with pytest.raises(CascadeKeyError) as error:
        CascadeEngine(cascade_config("cascade", env={}))
    assert "GROQ_API_KEY and ELEVENLABS_API_KEY" in str(error.value) and "--engine local" in str(error.value)


def test_live_pace_never_waits_for_the_network(fake) -> None:
    fake.plan("stt", Plan(delay_s=0.5))
    pcm, s = user_audio("smooth_turn_taking", tail_s=1.5)
    with engine_for(fake.env(), pace="live") as engine:
        outs = [engine.step(frame) for frame in pcm[: len(pcm) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)]
        assert all(out.timings_ms["wait"] == 0.0 for out in outs)
        silence = np.zeros(FRAME_SIZE, np.float32)
        deadline = time.monotonic() + 10.0
        while not np.any(np.abs(engine.step(silence).pcm) > QUIET):  # the answer comes when the network has it
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert engine.describe()["turns"][0]["llm"] == "groq"
