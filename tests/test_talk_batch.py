"""`aimsvoice talk --batch FILE.jsonl`: many offline conversations as rows of one batch, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import read_wav
from cli_run import run_main
from test_talk import speechlike, write_pcm16


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    """A folder with user recordings of different lengths, rates and channel counts."""
    folder = tmp_path / "calls"
    folder.mkdir()
    write_pcm16(folder / "a.wav", speechlike(2.1, 24_000, seed=1), 24_000)
    write_pcm16(folder / "b.wav", speechlike(1.3, 16_000, channels=2, seed=2), 16_000)
    write_pcm16(folder / "c.wav", speechlike(3.0, 48_000, seed=3), 48_000)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


GOOD = [
    {"in": "a.wav", "out": "replies/a.wav", "transcript": "replies/a.json", "persona": "headcoach", "seed": 5},
    {"in": "b.wav", "out": "replies/b.wav", "transcript": "replies/b.json", "voice": "VARF3", "greedy": True},
    {"in": "c.wav", "out": "replies/c.wav", "transcript": "replies/c.json", "persona": "strategist",
     "text_prompt": "You are terse.", "seed": 11},
]


def write_lines(path: Path, entries: list[object]) -> Path:
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return path


def test_a_batch_writes_each_conversation_as_talk_would_and_names_the_lines_that_fail(calls, tmp_path, capsys, monkeypatch) -> None:
    batch = write_lines(calls / "batch.jsonl", [
        GOOD[0],
        "{not json",
        GOOD[1],
        {"in": "a.wav", "out": "replies/x.wav", "persona": "nobody"},
        "",
        {"in": "broken.wav", "out": "replies/broken.wav"},
        {"in": "a.wav"},
        {"in": "a.wav", "out": "replies/y.wav", "voice": "NOBODY"},
        GOOD[2],
    ])
    code, out, err = run_main(["talk", "--model", "tiny", "--batch", str(batch), "--batch-size", "2"], capsys, monkeypatch)

    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5, err
    for number, needle in ((2, "not valid JSON"), (4, "unknown persona 'nobody'"), (6, "broken.wav"),
                           (7, '"out" is missing'), (8, "voice 'NOBODY'")):
        assert any(line.startswith(f"error: line {number}: ") and needle in line for line in errors), (number, err)
    assert "Traceback" not in err
    assert "3 conversations written, 5 failed (lines 2, 4, 6, 7, 8)" in err
    for name in ("a", "b", "c"):
        assert f"wrote {calls / 'replies' / name}.wav" in err
    assert not (calls / "replies" / "x.wav").exists() and not (calls / "replies" / "broken.wav").exists()

    # Each written conversation is what `talk` gives for the same line on its own.
    for entry in GOOD:
        flags = ["--persona", entry.get("persona", "assistant")]
        flags += ["--voice", entry["voice"]] if "voice" in entry else []
        flags += ["--text-prompt", entry["text_prompt"]] if "text_prompt" in entry else []
        flags += ["--seed", str(entry["seed"])] if "seed" in entry else []
        flags += ["--greedy"] if entry.get("greedy") else []
        alone = tmp_path / "alone" / Path(entry["out"]).name
        code, _, err = run_main(["talk", "--model", "tiny", "--in", str(calls / entry["in"]), "--out", str(alone),
                                 "--transcript", str(alone.with_suffix(".json")), *flags], capsys, monkeypatch)
        assert code == 0, err
        solo, batched = json.loads(alone.with_suffix(".json").read_text()), json.loads((calls / entry["transcript"]).read_text())
        assert batched["tokens"] == solo["tokens"], entry
        for key in ("persona", "voice", "text_prompt", "seed", "greedy", "input", "duration_s"):
            assert batched[key] == solo[key], key
        assert batched["batch_line"] in (1, 3, 9)
        np.testing.assert_allclose(read_wav(calls / entry["out"]), read_wav(alone), atol=1e-4)


def test_defaults_come_from_the_command_line(calls, capsys, monkeypatch) -> None:
    batch = write_lines(calls / "batch.jsonl", [
        {"in": "a.wav", "out": "one.wav", "transcript": "one.json"},
        {"in": "b.wav", "out": "two.wav", "transcript": "two.json", "seed": 4, "greedy": False},
    ])
    code, _, err = run_main(["talk", "--model", "tiny", "--batch", str(batch), "--persona", "entertainer",
                             "--voice", "NATM2", "--seed", "9", "--greedy"], capsys, monkeypatch)
    assert code == 0, err
    one, two = (json.loads((calls / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["persona"] == two["persona"] == "entertainer"
    assert one["voice"].endswith("NATM2.pt") and two["voice"].endswith("NATM2.pt")
    assert (one["seed"], one["greedy"]) == (9, True) and (two["seed"], two["greedy"]) == (4, False)
    assert "2 conversations written" in err and "failed" not in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--in", "x.wav", "--out", "y.wav"], "drop --in"),
    (["--record", "r.wav"], "drop the live options"),
])
def test_batch_refuses_flags_of_other_modes(args, needle, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(["talk", "--batch", str(tmp_path / "b.jsonl"), *args], capsys, monkeypatch)
    assert code != 0 and needle in err


def test_batch_size_needs_a_batch_and_a_missing_file_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(["talk", "--batch-size", "2", "--in", "a.wav", "--out", "b.wav"], capsys, monkeypatch)
    assert code != 0 and "--batch-size is for --batch" in err
    code, _, err = run_main(["talk", "--model", "tiny", "--batch", str(tmp_path / "none.jsonl")], capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no such batch file" in err
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    code, _, err = run_main(["talk", "--model", "tiny", "--batch", str(empty)], capsys, monkeypatch)
    assert code == 1 and "holds no conversation" in err


def test_two_lines_writing_one_file_and_an_output_over_its_input_are_refused(calls, capsys, monkeypatch) -> None:
    batch = write_lines(calls / "batch.jsonl", [
        {"in": "a.wav", "out": "same.wav"},
        {"in": "b.wav", "out": "same.wav"},
        {"in": "c.wav", "out": "c.wav"},
    ])
    code, _, err = run_main(["talk", "--model", "tiny", "--batch", str(batch)], capsys, monkeypatch)
    assert code == 1
    assert "line 2: " in err and "also written by line 1" in err
    assert "line 3: " in err and "is also an input" in err
    assert read_wav(calls / "c.wav").shape == (3 * 24_000,)  # the input is intact
    assert "1 conversation written, 2 failed (lines 2, 3)" in err
