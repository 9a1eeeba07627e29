"""The cascade behind the same commands: `talk --engine cascade|auto`, `bench turns --engine cascade` and
`serve --engine cascade`, against the fake Groq and ElevenLabs (tests/fakecloud.py) on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE, read_wav, write_wav
from aimsvoice.bench import builtin_suite_dir
from aimsvoice.engine.contract import StepOut
from aimsvoice.server import ServerConfig
from aimsvoice.server.scheduler import cascade_engine_factory
from cli_run import run_main
from fakecloud import GOOD_KEY, GOOD_XI_KEY, FakeCloud, closed_port_url
from serve_helpers import Heard, config_message, read_to_close, run, running, s16, until, ws_connect

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

TT1 = builtin_suite_dir() / "smooth_turn_taking" / "tt-1"
UI1 = builtin_suite_dir() / "user_interruption" / "ui-1"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no pulled weights
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())  # no local server, even where one runs
    with FakeCloud(replies=["Try the noodle bar on Main Street. It is open late."]) as cloud:
        for name, value in cloud.env().items():
            monkeypatch.setenv(name, value)
        yield cloud


@pytest.fixture
def question(tmp_path):
    """tt-1's question, then 4 s of silence: offline, the answer has to fit in the input's length."""
    path = tmp_path / "question.wav"
    write_wav(path, np.concatenate([read_wav(TT1 / "input.wav"), np.zeros(4 * SAMPLE_RATE, np.float32)]))
    return path


def secrets_absent(*texts: str) -> bool:
    return all(GOOD_KEY not in t and GOOD_XI_KEY not in t for t in texts)


def test_talk_through_the_cascade(fake, question, tmp_path, capsys, monkeypatch) -> None:
    transcript = tmp_path / "t.json"
    code, out, err = run_main(["talk", "--engine", "cascade", "--persona", "headcoach", "--in", str(question),
                               "--out", str(tmp_path / "a.wav"), "--transcript", str(transcript)], capsys, monkeypatch)
    assert code == 0, err
    assert "turn 1: cascade" in err and "engine:" not in err  # the tier was named: no line explains it
    assert "cloud usage: speech-to-text" in out and "$" in out
    data = json.loads(transcript.read_text())
    assert data["engine"] == "cascade" and data["turns"][0]["tts"] == ["elevenlabs"] and data["usage"]["tts_chars"] > 0
    assert data["events"][0]["event"].startswith("turn 1: cascade")
    assert {t["voice_id"] for t in fake.recorded.tts} == {"CwhRBWXzGAHq8TQ4Fs17"}  # headcoach's [cascade] voice
    assert fake.recorded.chat[0]["messages"][0]["content"].startswith("You are a head coach")
    assert secrets_absent(out, err, transcript.read_text())


def test_auto_picks_the_cascade_without_a_gpu_when_the_keys_are_set(fake, question, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(["talk", "--in", str(question), "--out", str(tmp_path / "a.wav")], capsys, monkeypatch)
    assert code == 0, err
    assert "engine: cascade (no PersonaPlex weights (`aimsvoice pull-weights`); GROQ_API_KEY and ELEVENLABS_API_KEY are set)" in err


def test_a_rejected_key_is_one_line(fake, question, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "xi-wrong-key-0000")
    code, out, err = run_main(["talk", "--engine", "cascade", "--in", str(question), "--out", str(tmp_path / "a.wav")],
                              capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "ELEVENLABS_API_KEY was rejected" in lines[0]
    assert "xi-wrong-key-0000" not in out + err and "Traceback" not in err


def test_missing_keys_are_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    code, _, err = run_main(["talk", "--engine", "cascade", "--in", str(TT1 / "input.wav"), "--out", str(tmp_path / "a.wav")],
                            capsys, monkeypatch)
    assert code == 1 and "GROQ_API_KEY and ELEVENLABS_API_KEY are not set" in err and len(err.strip().splitlines()) == 1


def test_bench_turns_measures_the_cascade(fake, tmp_path, capsys, monkeypatch) -> None:
    suite = tmp_path / "suite"
    for sample in (TT1, UI1):
        shutil.copytree(sample, suite / sample.name)
    fake.replies = ["Here is a place I like. It has good food and it is open late tonight, so you can go after work."]
    code, out, err = run_main(["bench", "turns", "--engine", "cascade", "--suite", str(suite), "--tail", "4", "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["engine"] == "cascade" and report["usage"]["stt_requests"] >= 2
    summary = report["model_time"]["summary"]
    turn = summary["smooth_turn_taking"]
    assert turn["take_over_rate"] == 1.0 and 0.6 <= turn["latency_s"] < 2.5  # the endpointing silence, then the fakes
    barge = summary["user_interruption"]
    assert barge["talking_at_barge_in"] == 1 and barge["stop_latency_s"] <= 0.16 and barge["take_over_rate"] == 1.0


def test_serve_runs_the_cascade(fake) -> None:
    config = ServerConfig(engine="cascade", max_sessions=2)
    user = read_wav(TT1 / "input.wav")[: round(5.3 * SAMPLE_RATE)]
    user = np.concatenate([user, np.zeros(round(2.0 * SAMPLE_RATE), np.float32)])

    async def client(port: int) -> Heard:
        heard = Heard()
        async with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(config_message(persona="strategist"))
            await until(ws, heard, "ready")
            for i in range(0, len(user) - FRAME_SIZE + 1, FRAME_SIZE):  # in real time
                await ws.send(s16(user[i : i + FRAME_SIZE]))
                await asyncio.sleep(0.08)
            await ws.send(json.dumps({"type": "end"}))
            return await read_to_close(ws, heard)

    with running(config, engine_factory=cascade_engine_factory(config, "cascade")) as server:
        assert server.health()["device"] == "cascade (network)"
        heard = run(client(server.port))
    agent = np.frombuffer(b"".join(heard.audio), dtype="<i2")
    assert np.any(np.abs(agent[round(5.9 * SAMPLE_RATE) :]) > 100)  # it answered after the question
    assert fake.recorded.tts and {t["voice_id"] for t in fake.recorded.tts} == {"Xb7hH8MSUJpSbSDYk0k2"}  # strategist's
    assert heard.end is not None


class FailingPersonaPlex:
    """Stands in for PersonaPlex on a GPU: silent, until a CUDA error at step `fail_at`."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.steps = fail_at, 0

    def start(self, spec) -> None:
        pass

    def step(self, pcm):
        if self.steps == self.fail_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.steps += 1
        return StepOut(np.zeros(FRAME_SIZE, np.float32), None, 0)

    def close(self) -> None:
        pass

    def describe(self):
        return {"engine": "personaplex"}


@pytest.fixture
def gpu_fits(monkeypatch):
    """auto sees pulled weights and a GPU with room for them."""
    from aimsvoice.engine.cascade import choose

    def facts(model, device="auto", dtype="auto", quantize="auto", keys=None):  # the keys: the fake's, set
        return choose.Facts(weights="/weights", cuda=device != "cpu", free_bytes=40 * 10**9, need_bytes=20 * 10**9,
                            missing_keys=())

    monkeypatch.setattr(choose, "gather_facts", facts)


def test_auto_hands_over_when_personaplex_fails_to_load(fake, gpu_fits, question, tmp_path, capsys, monkeypatch) -> None:
    from aimsvoice import session

    def oom(settings, spec):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(session, "_open_personaplex", oom)
    code, _, err = run_main(["talk", "--in", str(question), "--out", str(tmp_path / "a.wav")], capsys, monkeypatch)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("engine: personaplex (CUDA GPU with 40.0 GB free, 20.0 GB needed")
    assert lines[1] == ("engine: cascade (PersonaPlex failed to load (RuntimeError: CUDA out of memory. Tried to allocate "
                        "2.00 GiB); GROQ_API_KEY and ELEVENLABS_API_KEY are set)")
    assert fake.recorded.tts  # the cascade answered


def test_auto_hands_over_when_personaplex_fails_mid_session(fake, gpu_fits, question, tmp_path, capsys, monkeypatch) -> None:
    from aimsvoice import session

    monkeypatch.setattr(session, "_open_personaplex", lambda settings, spec: FailingPersonaPlex(fail_at=10))
    transcript = tmp_path / "t.json"
    code, _, err = run_main(["talk", "--in", str(question), "--out", str(tmp_path / "a.wav"), "--transcript", str(transcript)],
                            capsys, monkeypatch)
    assert code == 0, err
    assert "PersonaPlex failed (RuntimeError: CUDA error: an illegal memory access was encountered): the cascade tier" in err
    data = json.loads(transcript.read_text())
    assert data["handed_over"] == {"from": "PersonaPlex", "to": "cascade", "at_s": 0.8,
                                   "reason": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert data["engine"] == "cascade" and data["turns"][0]["tts"] == ["elevenlabs"]  # the user's turn, answered by the cascade
