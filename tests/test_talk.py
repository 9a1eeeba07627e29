"""`aimsvoice talk --in/--out`: offline conversations on the tiny model, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from aimsvoice.audio import read_wav
from cli_run import run_main

CLI = Path(sys.executable).with_name("aimsvoice")


def write_pcm16(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """A real 16-bit WAV file; pcm is [T] or [T, C] in [-1, 1]."""
    pcm = pcm if pcm.ndim == 2 else pcm[:, None]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def speechlike(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t))
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_output_has_the_input_duration(rate, channels, tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    seconds = 1.37
    src = write_pcm16(tmp_path / "user.wav", speechlike(seconds, rate, channels), rate)
    out = tmp_path / "agent.wav"
    code, stdout, _ = run_main(["talk", "--model", "tiny", "--persona", "headcoach", "--in", str(src), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, stdout
    with wave.open(str(out)) as f:
        assert f.getframerate() == 24_000 and f.getnchannels() == 1
        assert f.getnframes() == round(int(seconds * rate) * 24_000 / rate)
    assert f"wrote {out}" in stdout


def test_stereo_input_uses_the_first_channel_resampled_with_soxr(tmp_path) -> None:
    stereo = speechlike(0.5, 48_000, channels=2)
    stereo[:, 1] = 0.0
    src = write_pcm16(tmp_path / "s.wav", stereo, 48_000)
    pcm = read_wav(src)
    expected = soxr.resample(np.round(stereo[:, 0] * 32767) / 32768, 48_000, 24_000, quality="VHQ")
    assert pcm.dtype == np.float32 and pcm.shape == expected.shape
    np.testing.assert_allclose(pcm, expected, atol=1e-4)


def test_transcript_json_and_reproducible_seed(tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    src = write_pcm16(tmp_path / "user.wav", speechlike(3.0, 24_000), 24_000)
    results = []
    for run in range(2):
        out, transcript = tmp_path / f"a{run}.wav", tmp_path / f"t{run}.json"
        code, stdout, err = run_main([
            "talk", "--model", "tiny", "--persona", "strategist", "--voice", "VARF3", "--text-prompt", "You are terse.",
            "--seed", "7", "--in", str(src), "--out", str(out), "--transcript", str(transcript)], capsys, monkeypatch)
        assert code == 0, err
        results.append((read_wav(out), json.loads(transcript.read_text())))
    (pcm_a, doc_a), (pcm_b, doc_b) = results
    assert np.array_equal(pcm_a, pcm_b) and doc_a["tokens"] == doc_b["tokens"]
    assert doc_a["persona"] == "strategist" and doc_a["text_prompt"] == "You are terse."
    assert doc_a["voice"].endswith("VARF3.pt") and doc_a["seed"] == 7
    assert len(doc_a["tokens"]) == 38  # one text token per 80 ms frame (3 s -> 37.5 -> 38)
    words = doc_a["words"]
    assert words, "the tiny model says random words, but it says some"
    assert doc_a["text"] == " ".join(w["word"] for w in words)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] > w["start"] for w in words)
    assert all(abs(w["start"] / 0.08 - round(w["start"] / 0.08)) < 1e-6 for w in words)


def test_console_script_end_to_end(tiny_dir, tmp_path) -> None:
    """The installed `aimsvoice` script, in its own process, as a user runs it."""
    src = write_pcm16(tmp_path / "user.wav", speechlike(1.0, 44_100, channels=2), 44_100)
    env = {**os.environ, "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    done = subprocess.run(
        [str(CLI), "talk", "--model", "tiny", "--persona", "headcoach", "--in", str(src), "--out", str(tmp_path / "o.wav")],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_wav(tmp_path / "o.wav").shape == (24_000,)


# -- bad input: one line naming the problem and the fix, exit != 0, no traceback ----------------


@pytest.fixture
def broken_model(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


@pytest.fixture
def user_wav(tmp_path: Path) -> Path:
    return write_pcm16(tmp_path / "user.wav", speechlike(0.5, 24_000), 24_000)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def talk_args(user_wav: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["talk", "--in", str(user_wav), "--out", str(tmp_path / "out.wav"), *extra]


def test_no_pulled_weights(user_wav, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--engine", "personaplex"), capsys, monkeypatch)  # auto would fall back
    assert_one_line_error(code, err, "aimsvoice pull-weights", "--model tiny")


def test_missing_model_dir(user_wav, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", str(tmp_path / "nowhere")), capsys, monkeypatch)
    assert_one_line_error(code, err, "no such model directory")


def test_missing_weight_file(broken_model, user_wav, tmp_path, capsys, monkeypatch) -> None:
    (broken_model / "model.safetensors").unlink()
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", str(broken_model)), capsys, monkeypatch)
    assert_one_line_error(code, err, "missing model.safetensors", "pull-weights")


def test_truncated_safetensors(broken_model, user_wav, tmp_path, capsys, monkeypatch) -> None:
    lm = broken_model / "model.safetensors"
    os.truncate(lm, lm.stat().st_size // 2)
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", str(broken_model)), capsys, monkeypatch)
    assert_one_line_error(code, err, "corrupt or truncated", "model.safetensors")


def test_corrupt_safetensors(broken_model, user_wav, tmp_path, capsys, monkeypatch) -> None:
    mimi = broken_model / "tokenizer-e351c8d8-checkpoint125.safetensors"
    data = bytearray(mimi.read_bytes())
    data[8:64] = b"\xff" * 56  # the JSON header
    mimi.write_bytes(bytes(data))
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", str(broken_model)), capsys, monkeypatch)
    assert_one_line_error(code, err, "corrupt or truncated", "tokenizer-e351c8d8")


def test_wrong_tensor_shapes(broken_model, user_wav, tmp_path, capsys, monkeypatch) -> None:
    config = json.loads((broken_model / "config.json").read_text())
    config["dim"] = 2 * config["dim"]
    (broken_model / "config.json").write_text(json.dumps(config))
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", str(broken_model)), capsys, monkeypatch)
    assert_one_line_error(code, err, "do not fit", "model.safetensors")


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00junk that is no audio at all", None])
def test_unreadable_or_empty_wav(content, tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.wav"
    if content is None:
        write_pcm16(bad, np.zeros(0), 16_000)  # a valid header with no samples
    else:
        bad.write_bytes(content)
    code, _, err = run_main(talk_args(bad, tmp_path, "--model", "tiny"), capsys, monkeypatch)
    assert_one_line_error(code, err, str(bad))
    assert not (tmp_path / "out.wav").exists()


def test_missing_input_file(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(talk_args(tmp_path / "nope.wav", tmp_path, "--model", "tiny"), capsys, monkeypatch)
    assert_one_line_error(code, err, "no such audio file")


def test_unknown_voice(tiny_dir, user_wav, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", "tiny", "--voice", "NOBODY"), capsys, monkeypatch)
    assert_one_line_error(code, err, "NOBODY", "NATF0")


def test_unknown_persona(user_wav, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", "tiny", "--persona", "nobody"), capsys, monkeypatch)
    assert_one_line_error(code, err, "nobody", "headcoach")


def test_cuda_without_cuda(tiny_dir, user_wav, tmp_path, capsys, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is about machines without it")
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", "tiny", "--device", "cuda"), capsys, monkeypatch)
    assert_one_line_error(code, err, "--device cuda", "--device cpu")


def test_brackets_in_messages_and_file_names_are_printed_as_they_are(tiny_dir, user_wav, tmp_path, capsys, monkeypatch) -> None:
    """Rich markup never eats user text: a persona file's [sampling] error, an output called [agent].wav."""
    personas = tmp_path / "config" / "aimsvoice" / "personas"
    personas.mkdir(parents=True)
    (personas / "odd.toml").write_text('text_prompt = "You are odd."\n[sampling]\ntemp = 0.5\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code, _, err = run_main(talk_args(user_wav, tmp_path, "--model", "tiny", "--persona", "odd"), capsys, monkeypatch)
    assert_one_line_error(code, err, "unknown [sampling] key 'temp'")

    out = tmp_path / "[agent].wav"
    code, stdout, err = run_main(["talk", "--model", "tiny", "--in", str(user_wav), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert f"wrote {out} (" in stdout and out.is_file()
