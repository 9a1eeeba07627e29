"""The `bench turns` instrument against scripted engines of known timing: VAD, metrics, suite, runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripted import ScriptedEngine, agent_voice, plan_interruption, plan_pause, plan_turn_taking

from aimsvoice.audio import FRAME_MS, SAMPLE_RATE, read_wav
from aimsvoice.bench import Segment, SpeechDetector, builtin_suite_dir, evaluate, load_suite, metrics, summarize
from aimsvoice.bench.suite import INTERRUPTION, PAUSE, TURN_TAKING
from aimsvoice.errors import BenchError

ONE_FRAME_S = FRAME_MS / 1000
# The issue asks for "within one frame"; the VAD's edges land within 10 ms, so hold the bench to
# 25 ms: a one-frame slip anywhere between engine, runner and metrics must fail.
TOLERANCE_S = 0.025


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return agent_voice()


@pytest.fixture(scope="module")
def suite():
    return load_suite(builtin_suite_dir())


def of_task(suite, task: str):
    return [s for s in suite if s.task == task]


def run(samples, plans, detector):
    """Run samples through scripted engines with these talk plans; scored results."""
    voice = agent_voice()
    return evaluate(samples, lambda i, _sample: ScriptedEngine(plans[i], voice), tail_s=4.0, detector=detector)


# -- the VAD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("start_s, end_s", [(0.5, 1.2), (1.013, 3.377), (0.74, 2.9), (2.0, 2.35)])
def test_vad_finds_speech_where_it_is(start_s, end_s, detector, voice) -> None:
    pcm = np.zeros(round((end_s + 1.5) * SAMPLE_RATE), dtype=np.float32)
    a, b = round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE)
    pcm[a:b] = voice[: b - a]
    (segment,) = detector(pcm)
    assert segment.start_s == pytest.approx(start_s, abs=0.02)
    assert segment.end_s == pytest.approx(end_s, abs=0.02)


def test_vad_splits_at_silences_and_ignores_noise(detector, voice) -> None:
    rng = np.random.default_rng(0)
    pcm = (0.003 * rng.standard_normal(6 * SAMPLE_RATE)).astype(np.float32)  # -50 dBFS hiss
    for start in (0.5, 3.0):
        a = round(start * SAMPLE_RATE)
        pcm[a : a + SAMPLE_RATE] += voice[:SAMPLE_RATE]
    found = detector(pcm)
    assert [(s.start_s, s.end_s) for s in found] == [pytest.approx((0.5, 1.5), abs=0.02), pytest.approx((3.0, 4.0), abs=0.02)]
    assert detector(np.zeros(3 * SAMPLE_RATE, dtype=np.float32)) == []
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    assert detector((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)) == []


def test_vad_finds_the_suites_user_speech_at_its_timestamps(detector, suite) -> None:
    for sample in suite:
        speech = detector(read_wav(sample.input_path))
        if sample.task == TURN_TAKING:
            assert speech[-1].end_s == pytest.approx(sample.events[0][0], abs=ONE_FRAME_S)
        elif sample.task == INTERRUPTION:
            assert min(abs(s.start_s - sample.events[0][0]) for s in speech) <= ONE_FRAME_S
            assert speech[-1].end_s == pytest.approx(sample.events[0][1], abs=ONE_FRAME_S)
        else:  # no speech inside the pause, speech on both sides of it
            (pause_start, pause_end), = sample.events
            assert not metrics.clip(speech, pause_start + ONE_FRAME_S, pause_end - ONE_FRAME_S)
            assert metrics.clip(speech, 0, pause_start) and metrics.clip(speech, pause_end)


# -- the metrics on segments ----------------------------------------------------------------------


def test_take_over_needs_one_second_of_speech() -> None:
    assert not metrics.takes_over([])
    assert not metrics.takes_over([Segment(1.0, 1.9)])
    assert metrics.takes_over([Segment(1.0, 2.0)])
    assert metrics.takes_over([Segment(1.0, 1.3), Segment(1.8, 2.1)])  # a span, as FD-Bench's words


def test_turn_taking_counts_speech_from_the_turn_end_on() -> None:
    greeting_then_answer = [Segment(0.2, 1.5), Segment(5.4, 7.0)]
    assert metrics.turn_taking(greeting_then_answer, 5.0) == metrics.TurnTaking(True, pytest.approx(0.4))
    assert metrics.turn_taking([Segment(4.5, 6.5)], 5.0) == metrics.TurnTaking(True, 0.0)  # overlap: 0, as FD-Bench clips
    assert metrics.turn_taking([Segment(5.2, 5.6)], 5.0) == metrics.TurnTaking(False, None)  # a backchannel


def test_interruption_stop_and_response() -> None:
    talk_through = [Segment(3.0, 12.0)]
    assert metrics.interruption(talk_through, 6.0, 8.0) == metrics.Interruption(True, 6.0, False, None)
    silent_then_answer = [Segment(8.3, 10.0)]
    assert metrics.interruption(silent_then_answer, 6.0, 8.0) == metrics.Interruption(False, None, True, pytest.approx(0.3))
    answers_during_barge_in = [Segment(3.0, 6.2), Segment(7.5, 9.5)]
    assert metrics.interruption(answers_during_barge_in, 6.0, 8.0) == metrics.Interruption(True, pytest.approx(0.2), True, 0.0)


# -- the whole bench on scripted engines ---------------------------------------------------------


@pytest.mark.parametrize("reply_after_s", [0.0, 0.16, 0.45, 1.2])
def test_turn_taking_latency_within_a_frame(reply_after_s, suite, detector) -> None:
    samples = of_task(suite, TURN_TAKING)
    results = run(samples, [plan_turn_taking(s, reply_after_s) for s in samples], detector)
    for r in results:
        assert r.turn_taking.take_over
        assert r.turn_taking.latency_s == pytest.approx(reply_after_s, abs=TOLERANCE_S)
    summary = summarize(results)[TURN_TAKING]
    assert summary["take_over_rate"] == 1.0
    assert summary["latency_s"] == pytest.approx(reply_after_s, abs=TOLERANCE_S)


def test_turn_taking_rate_counts_only_real_turns(suite, detector) -> None:
    samples = of_task(suite, TURN_TAKING)
    plans = [plan_turn_taking(samples[0], 0.3), plan_turn_taking(samples[1], 0.3, talk_s=0.5), plan_turn_taking(samples[2], None)]
    results = run(samples, plans, detector)
    assert [r.turn_taking.take_over for r in results] == [True, False, False]
    summary = summarize(results)[TURN_TAKING]
    assert summary["take_over_rate"] == pytest.approx(1 / 3, abs=0.001)
    assert summary["latency_s"] == pytest.approx(0.3, abs=TOLERANCE_S)


@pytest.mark.parametrize("stop_after_s, respond_after_s", [(0.2, 0.3), (0.64, 0.9), (1.1, 0.05)])
def test_interruption_stop_and_response_latency_within_a_frame(stop_after_s, respond_after_s, suite, detector) -> None:
    samples = of_task(suite, INTERRUPTION)
    results = run(samples, [plan_interruption(s, stop_after_s, respond_after_s) for s in samples], detector)
    for r in results:
        m = r.interruption
        assert m.talking_at_barge_in and m.take_over
        assert m.stop_latency_s == pytest.approx(stop_after_s, abs=TOLERANCE_S)
        assert m.response_latency_s == pytest.approx(respond_after_s, abs=TOLERANCE_S)
    summary = summarize(results)[INTERRUPTION]
    assert summary["take_over_rate"] == 1.0 and summary["talking_at_barge_in"] == len(samples)
    assert summary["stop_latency_s"] == pytest.approx(stop_after_s, abs=TOLERANCE_S)
    assert summary["response_latency_s"] == pytest.approx(respond_after_s, abs=TOLERANCE_S)


def test_interruption_talking_through_or_not_answering_is_no_take_over(suite, detector) -> None:
    samples = of_task(suite, INTERRUPTION)
    plans = [plan_interruption(samples[0], None, None), plan_interruption(samples[1], 0.3, None), []]
    results = run(samples, plans, detector)
    through, no_answer, silent = (r.interruption for r in results)
    barge_in_start, barge_in_end = samples[0].events[0]
    assert through.talking_at_barge_in and not through.take_over
    assert through.stop_latency_s == pytest.approx(barge_in_end + 3.0 - barge_in_start, abs=TOLERANCE_S)
    assert no_answer.stop_latency_s == pytest.approx(0.3, abs=TOLERANCE_S) and not no_answer.take_over
    assert silent == metrics.Interruption(False, None, False, None)
    assert summarize(results)[INTERRUPTION]["take_over_rate"] == 0.0


@pytest.mark.parametrize("talks_in_pauses", [True, False])
def test_pause_handling_take_over_rate(talks_in_pauses, suite, detector) -> None:
    samples = of_task(suite, PAUSE)
    user_s = [len(read_wav(s.input_path)) / SAMPLE_RATE for s in samples]
    results = run(samples, [plan_pause(s, n, talks_in_pauses) for s, n in zip(samples, user_s, strict=True)], detector)
    assert [r.pause.take_over for r in results] == [talks_in_pauses] * len(samples)
    assert summarize(results)[PAUSE]["take_over_rate"] == (1.0 if talks_in_pauses else 0.0)
    for r in results:  # the answer after the user's last word is found, and is not held against the agent
        assert any(s.start_s == pytest.approx(r.user_s + 0.5, abs=TOLERANCE_S) for s in r.agent_speech)


def test_results_carry_the_detected_speech_and_are_written_out(suite, detector, tmp_path) -> None:
    sample = of_task(suite, TURN_TAKING)[0]
    voice = agent_voice()
    results = evaluate([sample], lambda i, s: ScriptedEngine(plan_turn_taking(s, 0.5), voice), tail_s=3.0,
                       detector=detector, out=tmp_path)
    written = json.loads((tmp_path / sample.name / "result.json").read_text())
    assert written["take_over"] is True and written["latency_s"] == pytest.approx(0.5, abs=TOLERANCE_S)
    assert len(written["agent_speech"]) == 1 and written == results[0].to_json()
    agent = read_wav(tmp_path / sample.name / "output.wav")
    assert len(agent) == len(read_wav(sample.input_path)) + 3 * SAMPLE_RATE


# -- suites ----------------------------------------------------------------------------------------


def test_builtin_suite_has_three_samples_per_task_with_sane_times(suite) -> None:
    assert [s.task for s in suite] == [TURN_TAKING] * 3 + [INTERRUPTION] * 3 + [PAUSE] * 3
    for sample in suite:
        user_s = len(read_wav(sample.input_path)) / SAMPLE_RATE
        for start, end in sample.events:
            assert 0 < start <= end <= user_s + 1e-3


def test_full_duplex_bench_folders_load_at_any_level(tmp_path, suite) -> None:
    source = of_task(suite, PAUSE)[0]
    task_dir = tmp_path / "synthetic_pause_handling"
    for name in ("1", "2"):
        (task_dir / name).mkdir(parents=True)
        (task_dir / name / "input.wav").write_bytes(source.input_path.read_bytes())
        (task_dir / name / "pause.json").write_text(json.dumps([{"timestamp": [1.0, 1.5]}, {"timestamp": [2.0, 2.4]}]))
    (task_dir / "notes").mkdir()  # a folder without a sample is skipped
    assert [(s.name, s.events) for s in load_suite(tmp_path)] == [
        ("synthetic_pause_handling/1", ((1.0, 1.5), (2.0, 2.4))), ("synthetic_pause_handling/2", ((1.0, 1.5), (2.0, 2.4)))]
    assert [s.name for s in load_suite(task_dir / "1")] == ["1"]


def test_bad_suites_name_the_problem(tmp_path) -> None:
    with pytest.raises(BenchError, match="no such suite folder"):
        load_suite(tmp_path / "missing")
    with pytest.raises(BenchError, match="no sample folders"):
        load_suite(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "input.wav").write_bytes(b"")
    (tmp_path / "s" / "interrupt.json").write_text('[{"interrupt": "no times"}]')
    with pytest.raises(BenchError, match="interrupt.json: not a Full-Duplex-Bench annotation"):
        load_suite(tmp_path)


# -- through the real-time loop (--live) ------------------------------------------------------------


@pytest.mark.parametrize("compute_ms, heard_after_s", [(0.0, 0.120), (50.0, 0.160)])
def test_live_adds_the_frame_wait_compute_and_playback_block(compute_ms, heard_after_s, suite, detector) -> None:
    """Live = model time + the 80 ms input frame + the loop's 20 ms cushion + the compute rounded up to
    the next 20 ms callback (a full-duplex callback gets its input and gives its output at once)."""
    voice = agent_voice()
    turns = of_task(suite, TURN_TAKING)[:2]
    interruptions = of_task(suite, INTERRUPTION)[:2]
    plans = [plan_turn_taking(s, 0.3) for s in turns] + [plan_interruption(s, 0.4, 0.6) for s in interruptions]
    samples = turns + interruptions
    results = evaluate(samples, lambda i, _s: ScriptedEngine(plans[i], voice, compute_ms), live=True, tail_s=4.0,
                       detector=detector)
    for r in results[:2]:
        assert r.turn_taking.take_over
        assert r.turn_taking.latency_s == pytest.approx(0.3 + heard_after_s, abs=TOLERANCE_S)
    for r in results[2:]:
        assert r.interruption.take_over and r.interruption.talking_at_barge_in
        assert r.interruption.stop_latency_s == pytest.approx(0.4 + heard_after_s, abs=TOLERANCE_S)
        assert r.interruption.response_latency_s == pytest.approx(0.6 + heard_after_s, abs=TOLERANCE_S)
    for r in results:
        assert r.live.compute_mean_ms == compute_ms
        assert (r.live.input_shed_ms, r.live.output_shed_ms, r.live.underruns) == (0.0, 0.0, 0)


def test_live_on_an_engine_slower_than_real_time_sheds_and_says_so(suite, detector, tmp_path) -> None:
    sample = of_task(suite, TURN_TAKING)[0]
    voice = agent_voice()
    (slow,) = evaluate([sample], lambda i, s: ScriptedEngine(plan_turn_taking(s, 0.3), voice, compute_ms=100.0),
                       live=True, tail_s=4.0, detector=detector, out=tmp_path)
    assert slow.live.input_shed_ms > 0 and slow.live.compute_mean_ms == 100.0
    assert slow.turn_taking.latency_s > 0.3 + 0.120  # later than an engine that keeps up
    heard = read_wav(tmp_path / sample.name / "output-live.wav")
    assert len(heard) == len(read_wav(sample.input_path)) + 4 * SAMPLE_RATE
    assert json.loads((tmp_path / sample.name / "result-live.json").read_text())["live"]["compute_mean_ms"] == 100.0
