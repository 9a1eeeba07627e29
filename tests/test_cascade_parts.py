"""The cascade's pure decisions, without sockets or threads: sentences, what was heard, end of turn,
failover and probes, the timeline, auto's choice, keys and prices; and the engines around engines."""

from __future__ import annotations

import numpy as np
import pytest

from aimsvoice.audio import FRAME_SIZE
from aimsvoice.engine.cascade.choose import Facts, choose_tier, personaplex_need_bytes
from aimsvoice.engine.cascade.config import CascadeConfig, Keys, Prices, cascade_config, load_prices
from aimsvoice.engine.cascade.failover import Failover, FailoverConfig
from aimsvoice.engine.cascade.fallback import FallbackEngine, FrameRows
from aimsvoice.engine.cascade.playout import FADE_SIZE, Playout
from aimsvoice.engine.cascade.providers import status_kind
from aimsvoice.engine.cascade.text import SentenceSplitter, heard_fraction, heard_words, unheard_words
from aimsvoice.engine.cascade.turns import NOISE, SPEECH, TURN_END, TurnConfig, TurnTaker
from aimsvoice.engine.cascade.usage import Usage
from aimsvoice.engine.contract import ConversationSpec, StepOut
from aimsvoice.errors import AimsvoiceError
from aimsvoice.session import usage_line


def test_sentences_come_out_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(".") == []  # no space after the stop yet: it may be "3.5"
    assert splitter.feed(" How are") == ["Hello there."]
    assert splitter.feed(" you? I am Dr. Smith, it is 3.5 km") == ["How are you?"]
    assert splitter.feed(" away!\nNext") == ["I am Dr. Smith, it is 3.5 km away!"]
    assert splitter.flush() == ["Next"] and splitter.flush() == []
    long = SentenceSplitter().feed("word " * 100)
    assert long and all(len(s) <= 240 for s in long)


def test_what_was_heard_of_a_sentence() -> None:
    text = "Paris is the capital of France."
    assert heard_fraction(text, 1.0, 2.0) == 0.5
    assert heard_fraction(text, 1.0, None) == pytest.approx(14.0 / len(text))  # estimated at 14 characters a second
    assert heard_words(text, 0.5) == "Paris is the"  # words that ended by then
    assert unheard_words(text, 0.5) == "of France."  # a word under way counts as heard: skipped, never said twice
    assert heard_words(text, 1.0) == text and unheard_words(text, 0.0) == text and unheard_words(text, 1.0) == ""


def test_end_of_turn_and_barge_in_decisions() -> None:
    taker = TurnTaker(TurnConfig(), window_s=0.032)
    decisions = [taker.push(p) for p in [0.1, 0.9, 0.9, 0.8, 0.4, 0.9, 0.2, 0.9, 0.9] + [0.1] * 19]
    assert decisions[2] == SPEECH  # two windows of speech (64 ms)
    assert decisions[-1] == TURN_END and decisions.count(TURN_END) == 1  # 0.6 s of silence after the last voiced window
    assert decisions[:-1].count(None) == len(decisions) - 2  # a quiet window inside the speech ends nothing
    assert (taker.speech_start, taker.last_voiced) == (1, 8)
    short = TurnTaker(TurnConfig(min_turn_s=0.2), window_s=0.032)
    assert [short.push(p) for p in [0.9, 0.9] + [0.1] * 19][-1] == NOISE  # 64 ms of sound: a click, not a turn
    assert TurnTaker().push(0.9) is None


def test_failover_marks_down_probes_and_brings_back() -> None:
    policy = Failover({"stt": ("groq", "pocketsphinx"), "tts": ("elevenlabs", "espeak-ng")}, FailoverConfig(5.0, 2.0, 30.0))
    assert policy.order("stt") == ("groq", "pocketsphinx")
    policy.failed("stt", "groq", "timeout", now_s=100.0)
    assert policy.order("stt") == ("pocketsphinx",) and policy.order("tts") == ("elevenlabs", "espeak-ng")
    assert policy.down() == {"stt groq": "timeout"}
    assert policy.probes_due(104.9) == [] and policy.probes_due(105.0) == [("stt", "groq")]
    policy.probed("stt", "groq", ok=False, now_s=105.0)
    assert policy.probes_due(114.9) == [] and policy.probes_due(115.0) == [("stt", "groq")]  # backing off: 10 s
    policy.probed("stt", "groq", ok=False, now_s=115.0)
    policy.probed("stt", "groq", ok=False, now_s=135.0)
    assert policy.probes_due(164.9) == [] and policy.probes_due(165.0)  # at most 30 s apart
    policy.probed("stt", "groq", ok=True, now_s=165.0)
    assert policy.order("stt") == ("groq", "pocketsphinx") and policy.down() == {}
    policy.failed("tts", "espeak-ng", "cut", now_s=0.0)  # the local one is never skipped
    assert policy.order("tts") == ("elevenlabs", "espeak-ng")
    with pytest.raises(ValueError):
        policy.failed("stt", "groq", "auth", now_s=0.0)  # a rejected key is not a failover


@pytest.mark.parametrize(("status", "kind"), [(401, "auth"), (403, "auth"), (429, "rate-limit"), (500, "server"),
                                              (503, "server"), (400, "request"), (404, "request"), (422, "request")])
def test_http_status_kinds(status: int, kind: str) -> None:
    assert status_kind(status) == kind


def test_the_timeline_schedules_hands_out_and_cuts() -> None:
    playout = Playout()
    start = playout.schedule(np.ones(1000, np.float32), not_before=500)
    assert start == 500 and playout.end == 1500
    assert playout.schedule(np.full(1000, 2.0, np.float32), not_before=0) == 1500  # after what is scheduled
    frame = playout.take(FRAME_SIZE)
    assert np.all(frame[:500] == 0) and np.all(frame[500:1500] == 1) and np.all(frame[1500:] == 2)
    playout.cut(FRAME_SIZE + 100)
    frame = playout.take(FRAME_SIZE)
    assert np.all(frame[:100] == 2) and frame[100] == 2.0 and np.all(np.diff(frame[100 : 100 + FADE_SIZE]) < 0)
    assert np.all(frame[100 + FADE_SIZE :] == 0) and playout.end == playout.base
    assert playout.schedule(np.ones(10, np.float32), not_before=0) == playout.base  # never in the past


GB = 10**9


@pytest.mark.parametrize(("facts", "tier", "words"), [
    (Facts(model_given=True), "personaplex", "--model given"),
    (Facts(weights="/w", cuda=True, free_bytes=40 * GB, need_bytes=20 * GB, missing_keys=()), "personaplex", "40.0 GB free"),
    (Facts(weights="/w", cuda=True, free_bytes=10 * GB, need_bytes=20 * GB, missing_keys=()), "cascade", "10.0 GB free, PersonaPlex needs 20.0"),
    (Facts(weights="/w", cuda=False, missing_keys=()), "cascade", "no CUDA GPU"),
    (Facts(weights=None, missing_keys=()), "cascade", "GROQ_API_KEY and ELEVENLABS_API_KEY are set"),
    (Facts(weights=None, missing_keys=("ELEVENLABS_API_KEY",)), "local", "ELEVENLABS_API_KEY is not set"),
    (Facts(weights=None), "local", "GROQ_API_KEY and ELEVENLABS_API_KEY are not set"),
])
def test_auto_chooses_by_the_facts(facts: Facts, tier: str, words: str) -> None:
    choice = choose_tier(facts)
    assert choice.tier == tier and words in choice.reason
    assert choice.line().startswith(f"engine: {tier} (")


def test_personaplex_need_from_the_headers(tiny_dir) -> None:
    bf16, fp32 = personaplex_need_bytes(tiny_dir, "auto"), personaplex_need_bytes(tiny_dir, "float32")
    int8 = personaplex_need_bytes(tiny_dir, "auto", "auto")
    assert 2**30 < int8 < bf16 < fp32  # the margin at least; less with int8 weights, more in float32


def test_keys_never_show() -> None:
    keys = Keys("gsk_secret", "xi_secret")
    assert "secret" not in repr(keys) and "secret" not in repr(CascadeConfig(keys=keys))
    assert keys.redact("bad key gsk_secret and xi_secret") == "bad key *** and ***"


def test_config_from_the_environment_the_persona_and_the_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    env = {"GROQ_API_KEY": "g", "ELEVENLABS_API_KEY": "e", "GROQ_BASE_URL": "http://x/", "ELEVENLABS_BASE_URL": "http://y"}
    config = cascade_config("cascade", persona_cascade={"voice_id": "V" * 20, "llm_model": "persona-model"}, env=env)
    assert (config.groq_url, config.elevenlabs_url, config.voice_id, config.llm_model) == ("http://x", "http://y", "V" * 20, "persona-model")
    assert config.missing_keys() == () and cascade_config("cascade", env={}).missing_keys() == ("GROQ_API_KEY", "ELEVENLABS_API_KEY")
    assert cascade_config("local", env={}).missing_keys() == ()
    assert cascade_config("cascade", llm_model="flag-model", persona_cascade={"llm_model": "p"}, env=env).llm_model == "flag-model"
    assert load_prices() == Prices()
    (tmp_path / "aimsvoice").mkdir()
    (tmp_path / "aimsvoice" / "prices.toml").write_text("tts_usd_per_kchar = 0.3\n")
    assert load_prices().tts_usd_per_kchar == 0.3
    (tmp_path / "aimsvoice" / "prices.toml").write_text("tts_usd = 'x'\n")
    with pytest.raises(AimsvoiceError, match="prices.toml"):
        load_prices()


def test_usage_and_its_cost() -> None:
    usage = Usage()
    usage.stt(3.0)
    usage.llm(1000, 200, estimated=False)
    usage.tts(500)
    prices = Prices(stt_usd_per_hour=3.6, llm_usd_per_mtok_in=1.0, llm_usd_per_mtok_out=2.0, tts_usd_per_kchar=0.2)
    assert usage.stt_billed_s == 10.0  # Groq's minimum per request
    assert usage.cost_usd(prices) == pytest.approx(0.01 + 0.001 + 0.0004 + 0.1)
    assert usage.to_json(prices)["tts_chars"] == 500 and usage.to_json(prices)["cost_usd_estimate"] == pytest.approx(0.1114)
    line = usage_line({"engine": "cascade", "usage": usage.to_json(prices)})
    assert line is not None and "$0.1114" in line and usage_line({"engine": "local", "usage": {}}) is None


class Scripted:
    """A FrameEngine that counts its steps, and fails on the step `fail_at` with `error`."""

    def __init__(self, name: str, fail_at: int | None = None, error: Exception | None = None) -> None:
        self.name, self.fail_at, self.error = name, fail_at, error
        self.steps, self.started, self.closed = 0, None, False

    def start(self, spec):
        self.started = spec

    def step(self, pcm):
        if self.steps == self.fail_at:
            raise self.error
        self.steps += 1
        return StepOut(np.zeros(FRAME_SIZE, np.float32), None, 0)

    def close(self):
        self.closed = True

    def describe(self):
        return {"engine": self.name}


def test_a_failing_personaplex_hands_over_to_the_next_tier() -> None:
    primary = Scripted("personaplex", fail_at=3, error=RuntimeError("CUDA error: out of memory\nmore"))
    backup = Scripted("cascade")
    engine = FallbackEngine(primary, lambda: (backup, "cascade"))
    spec = ConversationSpec(voice="", text_prompt="p")
    engine.start(spec)
    outs = [engine.step(np.zeros(FRAME_SIZE, np.float32)) for _ in range(6)]
    assert [o.event is not None for o in outs] == [False, False, False, True, False, False]
    assert "PersonaPlex failed (RuntimeError: CUDA error: out of memory)" in outs[3].event and "cascade" in outs[3].event
    assert primary.closed and backup.started == spec and backup.steps == 3
    assert engine.describe()["engine"] == "cascade" and engine.describe()["handed_over"]["to"] == "cascade"
    user_error = FallbackEngine(Scripted("personaplex", fail_at=0, error=AimsvoiceError("fix this")), lambda: (backup, "cascade"))
    user_error.start(spec)
    with pytest.raises(AimsvoiceError):  # a problem the user can fix is not handed over
        user_error.step(np.zeros(FRAME_SIZE, np.float32))


def test_frame_engines_as_rows_of_a_batch() -> None:
    made: list[Scripted] = []
    rows = FrameRows(lambda: made.append(Scripted("cascade")) or made[-1], 2, {"engine": "cascade"})
    spec = ConversationSpec(voice="", text_prompt="p")
    a, b = rows.open(spec), rows.open(spec)
    assert (a, b) == (0, 1) and not rows.in_prompt(a)
    with pytest.raises(RuntimeError):
        rows.open(spec)
    outs = rows.tick({a: np.zeros(FRAME_SIZE, np.float32)})
    assert list(outs) == [a] and (made[0].steps, made[1].steps) == (1, 0)
    rows.close_row(a)
    assert made[0].closed and rows.open(spec) == a and rows.describe(b) == {"engine": "cascade"}
    rows.close()
    assert all(e.closed for e in made)


def test_the_live_view_shows_which_tier_served_the_turn() -> None:
    from rich.console import Console

    from aimsvoice.live.stats import LiveSnapshot
    from aimsvoice.ui import LiveView, render

    notice = "turn 1: cascade · speech-to-text groq · reply groq · speech elevenlabs · 0.74 s after you"
    snap = LiveSnapshot("Coach", 2.0, 25, (), "", -40.0, -20.0, 3.0, 5.0, 80.0, 0.0, 160.0, 0.0, 240.0, 0.0, 0.0, 0, 0.0,
                        notices=(notice,))
    console = Console(width=200, record=True)
    console.print(render(snap))
    shown = console.export_text()
    assert "serving" in shown and "speech elevenlabs" in shown
    plain = Console(width=300, record=True)
    view = LiveView(rich=False, console=plain)
    view.update(snap)
    view.update(LiveSnapshot(**{**snap.__dict__, "elapsed_s": 3.5}))
    assert plain.export_text().count(notice) == 1  # printed once, as it came
