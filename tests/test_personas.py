"""Personas: the built-ins, the user folder, validation, and the `aimsvoice personas` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

from aimsvoice import personas
from aimsvoice.audio import write_wav
from aimsvoice.errors import PersonaError
from aimsvoice.layout import VOICE_NAMES

PROMPT = 'text_prompt = "You are x."\n'  # a valid start for the broken files below
BRIEF_PERSONAS = ("proconsultant", "strategist", "entertainer", "headcoach", "sportsinsider")
CLI = Path(sys.executable).with_name("aimsvoice")


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user persona folder under a private XDG_CONFIG_HOME."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "config" / "aimsvoice" / "personas"
    folder.mkdir(parents=True)
    assert personas.user_dir() == folder
    return folder


def test_builtins_load_with_builtin_voices_and_real_prompts(user_dir: Path) -> None:
    found, broken = personas.load_all()
    assert broken == []
    assert set(found) == {*BRIEF_PERSONAS, personas.DEFAULT_PERSONA}
    for name, persona in found.items():
        assert persona.name == name
        assert persona.is_builtin and persona.source == personas.builtin_dir() / f"{name}.toml"
        assert persona.voice in VOICE_NAMES
        assert persona.display_name and persona.description
        # A real prompt in PersonaPlex's style: second person, a few sentences, no <system> tags.
        assert persona.text_prompt.startswith("You ")
        assert len(persona.text_prompt.split()) >= 30
        assert "<system>" not in persona.text_prompt and "\n" not in persona.text_prompt
        for temp in (persona.temp_text, persona.temp_audio):
            assert temp is None or 0 <= temp <= 2
        for topk in (persona.topk_text, persona.topk_audio):
            assert topk is None or topk >= 1


def test_default_and_case_insensitive_names(user_dir: Path) -> None:
    assert personas.load(None).name == personas.DEFAULT_PERSONA == "assistant"
    assert personas.load("HeadCoach") == personas.load("headcoach")


def test_user_dir_ignores_a_relative_xdg_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert personas.user_dir() == tmp_path / ".config" / "aimsvoice" / "personas"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    assert personas.user_dir() == tmp_path / ".config" / "aimsvoice" / "personas"


def test_user_personas_add_and_override(user_dir: Path) -> None:
    (user_dir / "voices").mkdir()
    (user_dir / "voices" / "me.wav").write_bytes(b"RIFF")  # only its existence is checked here
    (user_dir / "HeadCoach.toml").write_text(
        'display_name = "My Coach"\n'
        'voice = "voices/me.wav"\n'
        'text_prompt = """\nYou are my running coach.\n   Keep me honest.\n"""\n'
        "[sampling]\ntemp_text = 0\ntopk_audio = 100\n"
    )
    (user_dir / "pirate.toml").write_text('text_prompt = "You are a pirate captain named Mara."\n')

    found, broken = personas.load_all()
    assert broken == []
    assert set(found) == {*BRIEF_PERSONAS, personas.DEFAULT_PERSONA, "pirate"}

    coach = found["headcoach"]
    assert not coach.is_builtin and coach.source == user_dir / "HeadCoach.toml"
    assert coach.display_name == "My Coach"
    assert coach.voice == str((user_dir / "voices" / "me.wav").resolve())
    assert coach.text_prompt == "You are my running coach. Keep me honest."
    sampling = (coach.temp_text, coach.topk_text, coach.temp_audio, coach.topk_audio)
    assert sampling == (0.0, None, None, 100)
    assert isinstance(coach.temp_text, float)

    pirate = personas.load("PIRATE")
    assert pirate.name == pirate.display_name == "pirate"
    assert pirate.voice == personas.DEFAULT_VOICE and pirate.description == ""
    assert found["strategist"].is_builtin


def test_unknown_persona_is_one_line_listing_the_choices(user_dir: Path) -> None:
    (user_dir / "pirate.toml").write_text('text_prompt = "You are a pirate."\n')
    with pytest.raises(PersonaError) as info:
        personas.load("nope")
    message = str(info.value)
    assert "\n" not in message and "'nope'" in message
    for name in (*BRIEF_PERSONAS, personas.DEFAULT_PERSONA, "pirate"):
        assert name in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('text_prompt = "You are fine."\nvoice = \n', "line 2"),
        ('voice = "NATF0"\n', "text_prompt is missing or empty"),
        ('text_prompt = """\n   \n"""\n', "text_prompt is missing or empty"),
        (PROMPT + 'voise = "NATF0"\n', "unknown key 'voise'"),
        (PROMPT + 'voice = "voices/me"\n', "voice 'voices/me' is neither a voice name"),
        (PROMPT + 'voice = ""\n', "voice '' is neither a voice name"),
        (PROMPT + 'voice = "missing.wav"\n', "missing.wav does not exist"),
        (PROMPT + 'display_name = 5\n', "display_name must be a string"),
        (PROMPT + 'sampling = 3\n', "sampling must be a table"),
        (PROMPT + '[sampling]\ntemp = 0.5\n', "unknown [sampling] key 'temp'"),
        (PROMPT + '[sampling]\ntemp_text = -0.1\n', "temp_text = -0.1 must be a number >= 0"),
        (PROMPT + '[sampling]\ntemp_audio = true\n', "temp_audio = True must be"),
        (PROMPT + '[sampling]\ntemp_audio = nan\n', "temp_audio = nan must be"),
        (PROMPT + '[sampling]\ntopk_audio = 0\n', "topk_audio = 0 must be a whole number >= 1"),
        (PROMPT + '[sampling]\ntopk_text = 2.5\n', "topk_text = 2.5 must be"),
    ],
)
def test_bad_persona_files_give_one_line_errors(
    user_dir: Path, content: str, expected: str
) -> None:
    path = user_dir / "broken.toml"
    path.write_text(content)
    with pytest.raises(PersonaError) as info:
        personas.load("broken")
    found, (error, *more) = personas.load_all()
    for message in (str(info.value), str(error)):
        assert "\n" not in message
        assert str(path) in message and expected in message
    assert not more and "broken" not in found and "headcoach" in found
    # Only the asked-for persona is parsed: a broken file elsewhere does not block it.
    assert personas.load("headcoach").is_builtin


def test_names_differing_only_in_case_are_rejected(user_dir: Path) -> None:
    (user_dir / "pirate.toml").write_text('text_prompt = "You are a pirate."\n')
    (user_dir / "Pirate.toml").write_text('text_prompt = "You are another pirate."\n')
    with pytest.raises(PersonaError, match="both define persona 'pirate'"):
        personas.load("pirate")
    assert personas.load("assistant").is_builtin  # the clash does not block other personas
    found, (clash,) = personas.load_all()
    assert "pirate" not in found and "both define persona 'pirate'" in str(clash)


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIMSVOICE_DEBUG"}
    env.update(XDG_CONFIG_HOME=str(config), COLUMNS="200", NO_TORCH_COMPILE="1")
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_lists_and_shows(user_dir: Path) -> None:
    (user_dir / "pirate.toml").write_text(
        'description = "A salty sea captain."\nvoice = "VARM4"\n'
        'text_prompt = "You are a pirate captain named Mara."\n'
    )
    listed = _cli("personas", config=user_dir.parent.parent)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for name in (*BRIEF_PERSONAS, personas.DEFAULT_PERSONA):
        row = next(line for line in lines if f" {name} " in line)
        assert "built-in" in row
    assert any("assistant (default)" in line for line in lines)
    pirate = next(line for line in lines if " pirate " in line)
    assert "VARM4" in pirate and "A salty sea captain." in pirate and "user" in pirate

    shown = _cli("personas", "show", "Strategist", config=user_dir.parent.parent)
    assert shown.returncode == 0, shown.stderr
    strategist = personas.load("strategist")
    for value in (strategist.display_name, strategist.voice, str(strategist.source)):
        assert value in shown.stdout
    assert " ".join(strategist.text_prompt.split()[:6]) in shown.stdout
    assert "text prompt" in shown.stdout


def test_cli_errors_are_one_line_without_traceback(user_dir: Path) -> None:
    unknown = _cli("personas", "show", "nope", config=user_dir.parent.parent)
    assert unknown.returncode != 0 and unknown.stdout == ""
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert "unknown persona 'nope'" in unknown.stderr and "headcoach" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    (user_dir / "broken.toml").write_text('text_prompt = "You are x."\nvoice = "a/b"\n')
    (user_dir / "[odd].toml").write_text('text_prompt = "You are x."\n[sampling]\ntemp = 1\n')
    (user_dir / "fine.toml").write_text('text_prompt = "You are [fine]."\n')
    listed = _cli("personas", config=user_dir.parent.parent)
    assert listed.returncode == 1
    errors = listed.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in listed.stderr
    assert any("broken.toml" in e and "voice 'a/b' is neither" in e for e in errors)
    assert any("[odd].toml" in e and "unknown [sampling] key 'temp'" in e for e in errors)
    assert " fine " in listed.stdout and " headcoach " in listed.stdout  # the good ones are listed
    shown = _cli("personas", "show", "fine", config=user_dir.parent.parent)
    assert "You are [fine]." in shown.stdout
    user = write_wav(user_dir / "user.wav", np.zeros(24_000, dtype=np.float32))
    talk = _cli("talk", "--persona", "broken", "--in", str(user), "--out", str(user_dir / "b.wav"), config=user_dir.parent.parent)
    assert talk.returncode == 1 and len(talk.stderr.strip().splitlines()) == 1 and "a/b" in talk.stderr
