"""Voices beyond NVIDIA's eighteen: `aimsvoice voices`, `--voice` and personas take any voice of the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import write_wav
from cli_run import run_main
from test_talk import speechlike, write_pcm16


@pytest.fixture
def fine_tune(tiny_dir: Path, tmp_path: Path) -> Path:
    """The tiny model as a fine-tune might ship it: two voices of its own, one a prompt state, one audio."""
    model = Path(shutil.copytree(tiny_dir, tmp_path / "fine-tune"))
    shutil.copy(model / "voices" / "VARM1.pt", model / "voices" / "MyCoach.pt")
    t = np.arange(24_000 * 2) / 24_000
    write_wav(model / "voices" / "narrator.wav", (0.2 * np.sin(2 * np.pi * 140 * t) * (0.7 + 0.3 * np.sin(6 * t))).astype(np.float32))
    return model


@pytest.fixture
def user_wav(tmp_path: Path) -> Path:
    return write_pcm16(tmp_path / "user.wav", speechlike(0.8, 24_000), 24_000)


def test_voices_lists_every_voice_of_the_model_in_use(fine_tune, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(["voices", "--model", str(fine_tune)], capsys, monkeypatch)
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert {"NATF0", "VARM4", "MyCoach", "narrator"} <= set(rows) and len(rows) == 20
    assert "prompt state" in rows["MyCoach"] and "MyCoach.pt" in rows["MyCoach"]
    assert "audio" in rows["narrator"] and "narrator.wav" in rows["narrator"]
    assert f"voices of {fine_tune}, in voices/:" in out


def test_voices_of_a_model_without_any_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    model = Path(shutil.copytree(tiny_dir, tmp_path / "bare"))
    shutil.rmtree(model / "voices")
    code, _, err = run_main(["voices", "--model", str(model)], capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no voices" in err and "pull-weights" in err


def test_talk_takes_a_fine_tunes_voice_by_name_in_any_case(fine_tune, user_wav, tmp_path, capsys, monkeypatch) -> None:
    transcript = tmp_path / "t.json"
    code, _, err = run_main(["talk", "--model", str(fine_tune), "--voice", "mycoach", "--in", str(user_wav),
                             "--out", str(tmp_path / "a.wav"), "--transcript", str(transcript)], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(transcript.read_text())["voice"] == str(fine_tune / "voices" / "MyCoach.pt")


def test_a_persona_names_a_fine_tunes_voice(fine_tune, user_wav, tmp_path, capsys, monkeypatch) -> None:
    personas = tmp_path / "config" / "aimsvoice" / "personas"
    personas.mkdir(parents=True)
    (personas / "narrator.toml").write_text('voice = "narrator"\ntext_prompt = "You tell stories."\n')
    (personas / "ghost.toml").write_text('voice = "Nobody"\ntext_prompt = "You are not here."\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    transcript = tmp_path / "t.json"
    code, _, err = run_main(["talk", "--model", str(fine_tune), "--persona", "narrator", "--in", str(user_wav),
                             "--out", str(tmp_path / "a.wav"), "--transcript", str(transcript)], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(transcript.read_text())["voice"] == str(fine_tune / "voices" / "narrator.wav")

    code, _, err = run_main(["talk", "--model", str(fine_tune), "--persona", "ghost", "--in", str(user_wav),
                             "--out", str(tmp_path / "b.wav")], capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "voice 'Nobody'" in err and "MyCoach" in err and "narrator" in err
    assert not (tmp_path / "b.wav").exists()
