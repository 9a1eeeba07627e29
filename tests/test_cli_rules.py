"""The command line's rules, as a newcomer meets them: outputs checked before any compute and replaced only
whole, Ctrl-C keeps what was done, limits told up front, no traceback on any input, the expected conveniences."""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sphn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimsvoice.audio import FRAME_SIZE, read_wav, write_wav
from cli_run import run_main
from test_talk import speechlike, write_pcm16

CLI = Path(sys.executable).with_name("aimsvoice")


def one_line(code: int, err: str, *needles: str, exit_code: int = 1) -> str:
    """The error contract: this exit code, one line on stderr, no traceback; returns the line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == exit_code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "panicked" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def user_wav(tmp_path: Path) -> Path:
    return write_pcm16(tmp_path / "user.wav", speechlike(0.6, 24_000), 24_000)


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=300, env=env, **kwargs)


# -- 1. check before computing; replace only whole files -------------------------------------------


@pytest.mark.parametrize(("make_args", "needles"), [
    (lambda t, u: ["--out", "/proc/aimsvoice/x.wav"], ("--out /proc/aimsvoice/x.wav", "cannot write in /proc")),
    (lambda t, u: ["--out", str(t)], ("is a folder",)),
    (lambda t, u: ["--out", str(u / "x.wav")], ("is a file, not a folder",)),
    (lambda t, u: ["--out", str(t / "." / u.name)], ("is also an input",)),
    (lambda t, u: ["--out", str(t / "a.wav"), "--transcript", str(t / "sub" / ".." / "a.wav")], ("--transcript", "writes there too")),
    (lambda t, u: ["--out", str(t / "a.mp3")], ("aimsvoice writes WAV (.wav) or Ogg Opus", "a.wav")),
])
def test_unwritable_or_clashing_outputs_fail_before_the_model_loads(make_args, needles, tmp_path, user_wav, capsys, monkeypatch) -> None:
    # The model named does not exist: an error about outputs proves they were checked first.
    args = ["talk", "--model", str(tmp_path / "no-model"), "--in", str(user_wav), *make_args(tmp_path, user_wav)]
    code, _, err = run_main(args, capsys, monkeypatch)
    one_line(code, err, *needles)
    assert read_wav(user_wav).shape == (round(0.6 * 24_000),), "the input is intact"


def test_record_is_checked_before_the_devices_and_the_model(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "taken").mkdir()
    for record, needle in ((tmp_path / "taken", "is a folder"), (tmp_path / "r.mp3", "name it r.wav"),
                           (Path("/proc/aimsvoice/r.wav"), "cannot write")):
        code, _, err = run_main(["talk", "--model", str(tmp_path / "no-model"), "--record", str(record)], capsys, monkeypatch)
        one_line(code, err, "--record", needle)


def test_a_failed_run_leaves_the_old_output_and_a_good_one_replaces_it_whole(tiny_dir, tmp_path, user_wav, capsys, monkeypatch) -> None:
    out, transcript = tmp_path / "agent.wav", tmp_path / "agent.json"
    out.write_bytes(b"yesterday's reply")
    transcript.write_text("{}")
    code, _, err = run_main(["talk", "--model", "tiny", "--persona", "nobody", "--in", str(user_wav), "--out", str(out),
                             "--transcript", str(transcript)], capsys, monkeypatch)
    one_line(code, err, "unknown persona")
    assert out.read_bytes() == b"yesterday's reply" and transcript.read_text() == "{}"
    code, _, err = run_main(["talk", "--model", "tiny", "--in", str(user_wav), "--out", str(out), "--transcript", str(transcript)],
                            capsys, monkeypatch)
    assert code == 0, err
    assert read_wav(out).shape == read_wav(user_wav).shape and json.loads(transcript.read_text())["tokens"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.json", "agent.wav", "user.wav"], "no partial files left"


# -- 2. Ctrl-C keeps what was done -------------------------------------------------------------------


def long_input(tmp_path: Path, seconds: float = 60.0) -> Path:
    return write_pcm16(tmp_path / "long.wav", speechlike(seconds, 24_000, seed=5), 24_000)


def interrupted_talk(tmp_path: Path, src: Path, when) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """Start `talk` on `src`, call when(process) to decide the moment, send SIGINT, collect the result."""
    out, transcript = tmp_path / "agent.wav", tmp_path / "agent.json"
    process = subprocess.Popen([str(CLI), "talk", "--model", "tiny", "--in", str(src), "--out", str(out), "--transcript",
                                str(transcript)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        when(process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), out, transcript


def first_word(process: subprocess.Popen) -> None:
    """Wait until the agent's first word is printed: the conversation is under way."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    assert ready and process.stdout.read(1), "the conversation started"


def test_ctrl_c_during_the_conversation_writes_what_was_computed(tiny_dir, tmp_path) -> None:
    src = long_input(tmp_path)
    done, out, transcript = interrupted_talk(tmp_path, src, first_word)
    line = one_line(done.returncode, done.stderr, "interrupted after", "of 60.00 s", str(out), exit_code=130)
    assert line.startswith("interrupted")
    pcm = read_wav(out)
    assert 0 < len(pcm) < 60 * 24_000 and len(pcm) % FRAME_SIZE == 0
    doc = json.loads(transcript.read_text())
    assert doc["partial"] is True and doc["input_duration_s"] == 60.0
    assert len(doc["tokens"]) == len(pcm) // FRAME_SIZE and doc["duration_s"] == round(len(pcm) / 24_000, 3)


@pytest.mark.parametrize("delay_s", [0.05, 0.4, 1.5, 3.0])
def test_ctrl_c_at_any_moment_is_one_line_and_never_half_a_file(delay_s, tiny_dir, tmp_path) -> None:
    src = long_input(tmp_path, seconds=20.0)
    done, out, transcript = interrupted_talk(tmp_path, src, lambda _process: time.sleep(delay_s))
    assert done.returncode in (0, 130), done.stderr
    if done.returncode == 130:
        line = one_line(done.returncode, done.stderr, "interrupted", exit_code=130)
        if out.exists():  # the conversation had started: what was computed is there, whole
            assert len(read_wav(out)) % FRAME_SIZE == 0 and json.loads(transcript.read_text())["partial"] is True
        else:
            assert not transcript.exists() and "interrupted after" not in line
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


# -- 4. limits told, progress shown --------------------------------------------------------------------


def test_a_text_prompt_beyond_the_window_is_refused_with_the_numbers(tiny_dir, tmp_path, user_wav, capsys, monkeypatch) -> None:
    prompt = "You are a coach who talks about the weather and the game. " * 850  # ~50,000 characters
    started = time.monotonic()
    code, _, err = run_main(["talk", "--model", "tiny", "--text-prompt", prompt, "--in", str(user_wav), "--out",
                             str(tmp_path / "a.wav")], capsys, monkeypatch)
    line = one_line(code, err, "the text prompt is", "tokens", "500-step attention window", "shorten the text prompt to")
    assert time.monotonic() - started < 30, "told before anything is computed"
    assert not (tmp_path / "a.wav").exists()
    numbers = [int(n.replace(",", "")) for n in line.replace("(", " ").replace(")", " ").split() if n.replace(",", "").isdigit()]
    assert numbers[0] > 10_000, line


def test_progress_on_a_terminal_and_nothing_but_words_in_a_pipe(tiny_dir, tmp_path) -> None:
    src = write_pcm16(tmp_path / "user.wav", speechlike(4.0, 24_000), 24_000)
    args = [str(CLI), "talk", "--model", "tiny", "--in", str(src), "--out", str(tmp_path / "a.wav")]
    piped = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert "wrote" in piped.stdout and "frames" not in piped.stdout

    leader, follower = pty.openpty()  # stderr on a terminal: the progress bar goes there
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, env={**os.environ, "COLUMNS": "160"})
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    stdout = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0
    assert b"frames" in seen and b"real-time factor" in seen, seen[-500:]
    assert "wrote" in stdout


# -- 6. no traceback on any input ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_models(tiny_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Copies of the tiny model, each with one defect in its folder."""
    root = tmp_path_factory.mktemp("broken")
    defects = {
        "config-list": lambda d: (d / "config.json").write_text("[1, 2]"),
        "config-types": lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "dim": "wide"})),
        "config-file-key": lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "moshi_name": 7})),
        "mimi-config-json": lambda d: (d / "mimi_config.json").write_text("{not json"),
        "mimi-config-shape": lambda d: (d / "mimi_config.json").write_text(json.dumps({"seanet": 3})),
        "tokenizer": lambda d: (d / "tokenizer_spm_32k_3.model").write_bytes(b"\x00garbage" * 50),
    }
    made = {}
    for name, damage in defects.items():
        copy = Path(shutil.copytree(tiny_dir, root / name))
        damage(copy)
        made[name] = copy
    return made


@pytest.mark.parametrize(("defect", "needle"), [
    ("config-list", "holds a JSON list"), ("config-types", "not a moshi LM config"), ("config-file-key", "moshi_name must name"),
    ("mimi-config-json", "not valid JSON"), ("mimi-config-shape", "Mimi config"), ("tokenizer", "not a sentencepiece model"),
])
def test_every_model_folder_defect_is_one_line(defect, needle, broken_models, tmp_path, user_wav, capsys, monkeypatch) -> None:
    code, _, err = run_main(["talk", "--model", str(broken_models[defect]), "--in", str(user_wav), "--out", str(tmp_path / "a.wav")],
                            capsys, monkeypatch)
    one_line(code, err, needle)


def aiff(path: Path) -> Path:
    body = b"AIFF" + b"COMM" + struct.pack(">IhIh", 18, 1, 100, 16) + b"\x40\x0d\xbb\x80" + b"\x00" * 6
    path.write_bytes(b"FORM" + struct.pack(">I", len(body)) + body)
    return path


def adpcm_wav(path: Path) -> Path:
    fmt = struct.pack("<HHIIHH", 2, 1, 16000, 8000, 256, 4) + b"\x00" * 2
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 4) + b"\x01\x02\x03\x04"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: aiff(p / "a.aiff"), "AIFF"),
    (lambda p: adpcm_wav(p / "a.wav"), "MS ADPCM"),
    (lambda p: (p / "notes.wav").write_text("not audio at all") and p / "notes.wav", "not a known audio format"),
    (lambda p: (p / "cut.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ") and p / "cut.wav", "WAV"),
    (lambda p: (p / "v.ogg").write_bytes(b"OggS" + b"\x00" * 24 + b"\x01vorbis" + b"\x00" * 40) and p / "v.ogg", "Ogg Vorbis"),
])
def test_undecodable_audio_names_its_format(make, needle, tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_main(["talk", "--model", "tiny", "--in", str(make(tmp_path)), "--out", str(tmp_path / "o.wav")], capsys, monkeypatch)
    one_line(code, err, "cannot decode it", needle, "ffmpeg")


NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "x", "1e999", "-0", "0x10", "1,2", "nan", "-inf", "²"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from([
    ("talk", "--seed"), ("talk", "--max-minutes"), ("talk", "--idle-timeout"), ("talk", "--batch-size"),
    ("bench compute", "--frames"), ("bench compute", "--warmup"), ("bench compute", "--batch"),
    ("bench turns", "--seed"), ("bench turns", "--tail"), ("bench context", "--minutes"),
    ("serve", "--port"), ("serve", "--max-sessions"), ("serve", "--session-minutes"), ("serve", "--idle-timeout"),
    ("serve", "--unload-after"),
]), value=NUMBERS)
def test_fuzzed_numbers_never_reach_a_traceback(option, value, tmp_path, capsys, monkeypatch) -> None:
    """Any value, valid or not, for any numeric option: a one-line error (here a valid one stops at the
    missing model or input right after), never a traceback."""
    command, flag = option
    missing = tmp_path / "nowhere"
    rest = {
        "talk": ["--model", str(missing), "--in", str(missing / "a.wav"), "--out", str(tmp_path / "b.wav")],
        "bench compute": ["--model", str(missing)],
        "bench turns": ["--model", str(missing), "--suite", str(missing)],
        "bench context": ["--model", str(missing)],
        "serve": ["--model", str(missing)],
    }[command]
    if flag == "--batch-size":
        rest = ["--model", str(missing), "--batch", str(missing / "b.jsonl")]
    code, out, err = run_main([*command.split(), *rest, f"{flag}={value}"], capsys, monkeypatch)
    one_line(code, err, exit_code=code)
    assert code in (1, 2), err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "abc"])
@pytest.mark.parametrize("flag", ["--seconds", "--delay-ms"])
def test_bench_aec_ranges(flag, value, capsys, monkeypatch) -> None:
    code, _, err = run_main(["bench", "aec", f"{flag}={value}"], capsys, monkeypatch)
    one_line(code, err, flag, exit_code=2)


# -- 7. conveniences -----------------------------------------------------------------------------------


def test_version_and_shell_completion() -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "aimsvoice 0.1.0"
    # Typed in bash: Typer finds the shell among the command's parents (under make it would find sh).
    completion = subprocess.run(["bash", "-c", f"{shlex.quote(str(CLI))} --show-completion; exit $?"],
                                capture_output=True, text=True, timeout=300)
    assert completion.returncode == 0, completion.stderr
    assert "complete" in completion.stdout and "aimsvoice" in completion.stdout


def test_ogg_opus_in_and_out(tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    pcm = speechlike(1.5, 24_000).astype(np.float32)
    src = tmp_path / "user.opus"
    sphn.write_opus(str(src), pcm[None], 24_000)
    code, out, err = run_main(["talk", "--model", "tiny", "--in", str(src), "--out", str(tmp_path / "agent.opus")], capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "agent.opus").read_bytes()[:4] == b"OggS"
    heard = read_wav(tmp_path / "agent.opus")
    assert abs(len(heard) - len(read_wav(src))) <= 2 * FRAME_SIZE


def test_standard_input_and_output(tiny_dir, tmp_path, user_wav) -> None:
    done = subprocess.run([str(CLI), "talk", "--model", "tiny", "--in", "-", "--out", "-"], input=user_wav.read_bytes(),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout[:4] == b"RIFF" and b"wrote standard output" in done.stderr
    (tmp_path / "piped.wav").write_bytes(done.stdout)
    assert read_wav(tmp_path / "piped.wav").shape == read_wav(user_wav).shape
    empty = subprocess.run([str(CLI), "talk", "--model", "tiny", "--in", "-", "--out", str(tmp_path / "x.wav")], input="",
                           capture_output=True, text=True, timeout=120)
    one_line(empty.returncode, empty.stderr, "standard input (--in -) is empty")


def test_written_wav_and_opus_read_back(tmp_path) -> None:
    pcm = (0.1 * np.sin(np.arange(24_000) / 7)).astype(np.float32)
    np.testing.assert_allclose(read_wav(write_wav(tmp_path / "a.wav", pcm)), pcm, atol=2 / 32768)  # 16-bit PCM
    assert read_wav(write_wav(tmp_path / "a.ogg", pcm)).shape[0] >= len(pcm) - FRAME_SIZE


@pytest.mark.parametrize("name", ["tone.flac", "tone.ogg", "tone.mp3"])
def test_flac_vorbis_and_mp3_are_read(name) -> None:
    pcm = read_wav(Path(__file__).parent / "data" / "formats" / name)
    assert 12_000 <= len(pcm) <= 12_000 + 1_500  # codecs pad (MP3 by 1248 samples here)
    assert 0.15 < float(np.max(np.abs(pcm))) < 0.25
    spectrum = np.abs(np.fft.rfft(pcm[2_000:10_000]))
    assert abs(int(np.argmax(spectrum)) * 24_000 / 8_000 - 300) <= 6  # the tone, at 300 Hz


def test_ctrl_c_in_a_batch_writes_the_conversations_under_way(tiny_dir, tmp_path) -> None:
    write_pcm16(tmp_path / "short.wav", speechlike(1.0, 24_000), 24_000)
    long_input(tmp_path, seconds=40.0)
    lines = [{"in": "short.wav", "out": "a.wav"}, {"in": "long.wav", "out": "b.wav", "transcript": "b.json"},
             {"in": "long.wav", "out": "c.wav"}]
    (tmp_path / "calls.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    process = subprocess.Popen([str(CLI), "talk", "--model", "tiny", "--batch", str(tmp_path / "calls.jsonl"), "--batch-size", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        seen = ""
        while "line 1: wrote" not in seen:  # the short one is done: the long one is under way, the third waits
            chunk = process.stderr.readline()
            assert chunk, seen
            seen += chunk
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "line 2: wrote" in rest and "(partial: " in rest and "Traceback" not in rest
    last = rest.strip().splitlines()[-1]  # the third may or may not have taken the freed row yet
    assert last.startswith("interrupted: ") and "under way written as far as computed" in last
    assert len(read_wav(tmp_path / "b.wav")) % FRAME_SIZE == 0 and json.loads((tmp_path / "b.json").read_text())["partial"]


def test_an_output_over_the_voice_file_is_refused(tmp_path, user_wav, capsys, monkeypatch) -> None:
    voice = write_pcm16(tmp_path / "me.wav", speechlike(2.0, 24_000, seed=9), 24_000)
    code, _, err = run_main(["talk", "--model", str(tmp_path / "no-model"), "--voice", str(voice), "--in", str(user_wav),
                             "--out", str(voice)], capsys, monkeypatch)
    one_line(code, err, "is also an input", "me.wav")
