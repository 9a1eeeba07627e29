"""The local tier: no network, no cost. An espeak-ng question understood by PocketSphinx and answered
by espeak-ng; a local OpenAI-compatible server for the reply; a Piper voice; and `talk` choosing
the tier by itself on a machine with no GPU, no weights and no keys."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import SAMPLE_RATE, read_wav, write_wav
from aimsvoice.engine.cascade import CascadeEngine, cascade_config
from aimsvoice.engine.cascade.local import Piper, local_speech
from aimsvoice.engine.contract import ConversationSpec
from aimsvoice.session import run_frames
from cli_run import run_main
from fakecloud import FakeCloud, closed_port_url

QUESTION = "tell me about the capital of france"  # what PocketSphinx gets right in Klatt's voice (it hears "friends" for "france" in "what is the capital of france")
LEAD_S, TAIL_S = 0.5, 8.0  # room for PocketSphinx on a busy machine


@pytest.fixture(autouse=True)
def no_keys(tmp_path, monkeypatch):
    for variable in ("GROQ_API_KEY", "ELEVENLABS_API_KEY", "AIMSVOICE_PIPER_VOICE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())  # no local server, even where one runs


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> tuple[Path, float]:
    """The user asks, in espeak-ng's Klatt voice: the WAV and when the question ends."""
    folder = tmp_path_factory.mktemp("local")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+klatt", "-s", "140", "-w", str(raw), QUESTION], check=True)
    speech = read_wav(raw)
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    speech = speech[loud[0] : loud[-1] + 1]
    path = folder / "question.wav"
    write_wav(path, np.concatenate([np.zeros(round(LEAD_S * SAMPLE_RATE), np.float32), speech,
                                    np.zeros(round(TAIL_S * SAMPLE_RATE), np.float32)]))
    return path, LEAD_S + len(speech) / SAMPLE_RATE


def local_engine(**overrides) -> CascadeEngine:
    engine = CascadeEngine(replace(cascade_config("local", env={}), probe_local_llm=False, **overrides))
    engine.start(ConversationSpec(voice="", text_prompt="You are a geography tutor."))
    return engine


def test_an_espeak_question_understood_and_answered_offline(question) -> None:
    path, question_end_s = question
    with local_engine() as engine:
        result = run_frames(engine, read_wav(path))
        info = engine.describe()
    (turn,) = info["turns"]
    assert info["engine"] == "local" and turn["tier"] == "local"
    assert (turn["stt"], turn["llm"], turn["tts"]) == ("pocketsphinx", "offline", ["espeak-ng"])
    heard = turn["user_text"].lower()
    assert "capital" in heard and "france" in heard, heard  # PocketSphinx's bundled model, on Klatt's voice
    assert turn["agent_text"].startswith("I am offline")  # says so, and what it understood: no pretend conversation
    loud = np.flatnonzero(np.abs(result.agent_pcm) > 1e-3)
    assert loud[0] / SAMPLE_RATE > question_end_s + 0.5  # it answers after the question (and the endpointing silence)
    assert info["usage"]["cost_usd_estimate"] == 0 and info["usage"]["stt_requests"] == 0


def test_a_local_llm_server_writes_the_reply(question) -> None:
    path, _ = question
    with FakeCloud(replies=["Paris, on the Seine."], groq_key=None) as server:
        with local_engine(llm_url=f"{server.url}/openai/v1", llm_model="llama3.2") as engine:
            result = run_frames(engine, read_wav(path))
            (turn,) = engine.describe()["turns"]
    assert turn["llm"] == "llm-server" and turn["agent_text"] == "Paris, on the Seine."
    (chat,) = server.recorded.chat
    assert chat["model"] == "llama3.2" and chat["messages"][-1]["content"] == turn["user_text"]
    assert server.recorded.stt == [] and server.recorded.tts == []  # speech stays local
    assert np.any(np.abs(result.agent_pcm) > 1e-3)


def test_a_piper_voice_when_one_is_installed(tmp_path, monkeypatch) -> None:
    voice = tmp_path / "en_US-test-medium.onnx"
    voice.write_bytes(b"onnx")
    (tmp_path / "en_US-test-medium.onnx.json").write_text(json.dumps({"audio": {"sample_rate": 16000}}))
    piper = tmp_path / "bin" / "piper"  # a stand-in: reads the text, writes 0.5 s of raw 16-bit audio at 16 kHz
    piper.parent.mkdir()
    piper.write_text(f"#!{sys.executable}\nimport sys\nsys.stdin.read()\nsys.stdout.buffer.write(b'\\x10\\x00' * 8000)\n")
    piper.chmod(piper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{piper.parent}:/usr/bin:/bin")
    assert local_speech(None).name == "espeak-ng"
    monkeypatch.setenv("AIMSVOICE_PIPER_VOICE", str(voice))
    speech = local_speech(None)
    assert isinstance(speech, Piper) and speech.rate == 16_000

    import asyncio

    async def speak() -> list[np.ndarray]:
        return [pcm async for pcm in speech.speak("Hello.")]

    (pcm,) = asyncio.run(speak())
    assert abs(len(pcm) - SAMPLE_RATE // 2) <= 2  # resampled to 24 kHz


def test_talk_without_gpu_weights_or_keys_runs_the_local_tier(question, tmp_path, capsys, monkeypatch) -> None:
    path, _ = question
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no pulled weights
    transcript = tmp_path / "t.json"
    code, out, err = run_main(["talk", "--in", str(path), "--out", str(tmp_path / "a.wav"), "--transcript", str(transcript)],
                              capsys, monkeypatch)
    assert code == 0, err
    assert "engine: local (no PersonaPlex weights" in err and "GROQ_API_KEY and ELEVENLABS_API_KEY are not set" in err
    assert "turn 1: local" in err
    data = json.loads(transcript.read_text())
    assert data["engine"] == "local" and data["turns"][0]["stt"] == "pocketsphinx" and data["events"]
    assert "cloud usage" not in out  # nothing in the cloud
