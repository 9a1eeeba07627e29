"""`aimsvoice bench compute` and `bench turns` on the tiny model (smoke tests, not timed), profiling, random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE, read_wav, write_wav
from aimsvoice.bench import builtin_suite_dir
from aimsvoice.bench.compute import STAGES
from aimsvoice.bench.randomweights import random_lm
from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, load_model
from aimsvoice.engine.tiny import TINY_LM_KWARGS
from cli_run import run_main

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)


def test_compute_json_and_dated_entries(tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## Someone else's section\n\nkept as it is\n")
    args = ["bench", "compute", "--model", "tiny", "--frames", "6", "--warmup", "2", "--batch", "1,3", "--json",
            "--append", str(benchmarks)]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert (report["model"], report["device"], report["frames"], report["warmup_frames"]) == ("tiny", "cpu", 6, 2)
    assert [run["batch_size"] for run in report["batches"]] == [1, 3]
    for run in report["batches"]:
        stages = run["stages_ms"]
        assert list(stages) == list(STAGES)
        for stats in stages.values():
            assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
        total = stages["total"]["mean"]
        assert sum(stages[s]["mean"] for s in ("encode", "temporal", "depformer", "decode")) <= total * 1.001
        assert run["real_time_factor"] == pytest.approx(total / 80.0, rel=1e-3)
        assert run["per_conversation_ms"] == pytest.approx(total / run["batch_size"], rel=1e-3)
        assert run["frames_per_s"] == pytest.approx(1000.0 * run["batch_size"] / total, rel=1e-3)
        assert run["headroom_ms"]["p99"] == pytest.approx(80.0 - stages["total"]["p99"], abs=1e-3)
        assert run["keeps_up"] == (stages["total"]["p99"] <= 80.0)
        assert run["peak_memory"]["kind"] == "peak RSS" and run["peak_memory"]["bytes"] > 100 * 2**20
    assert report["machine"]["cpu_cores"] >= 1

    code, out, _ = run_main(args[:-3] + ["--append", str(benchmarks)], capsys, monkeypatch)  # the table view
    assert code == 0 and "depformer" in out and "real time" in out and "batch sizes side by side" in out
    text = benchmarks.read_text()
    assert text.startswith("# Benchmarks\n\n## Someone else's section\n\nkept as it is\n")
    entries = text.split("\n### ")[1:]
    assert len(entries) == 2
    assert "`aimsvoice bench compute --model tiny --frames 6 --warmup 2 --batch 1,3 --json --append" in entries[0]
    for entry in entries:
        assert "Machine: " in entry and "| 3 | depformer |" in entry and "per conversation ms" in entry
        assert "real-time factor" in entry


def test_turns_json_on_a_small_suite_in_model_time_and_live(tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    suite = tmp_path / "suite"  # one short sample per task: the first 2 s of the built-in ones
    annotations = {"smooth_turn_taking/tt-3": ("turn_taking.json", [1.5, 1.5]),
                   "user_interruption/ui-2": ("interrupt.json", [1.0, 1.8]),
                   "pause_handling/ph-2": ("pause.json", [0.8, 1.2])}
    names = list(annotations)
    for name, (task_file, timestamp) in annotations.items():
        (suite / name).mkdir(parents=True)
        write_wav(suite / name / "input.wav", read_wav(builtin_suite_dir() / name / "input.wav")[: 2 * SAMPLE_RATE])
        (suite / name / task_file).write_text(json.dumps([{"timestamp": timestamp}]))
    args = ["bench", "turns", "--model", "tiny", "--suite", str(suite), "--tail", "1", "--live", "--json",
            "--out", str(tmp_path / "out")]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    for mode in ("model_time", "live"):
        summary = report[mode]["summary"]
        assert list(summary) == ["smooth_turn_taking", "user_interruption", "pause_handling"]
        for task in summary.values():
            assert task["samples"] == 1 and 0.0 <= task["take_over_rate"] <= 1.0
        assert [s["name"] for s in report[mode]["samples"]] == names
    for sample in report["live"]["samples"]:
        assert sample["live"]["compute_mean_ms"] > 0
    for name in names:
        assert (tmp_path / "out" / name / "output.wav").is_file() and (tmp_path / "out" / name / "output-live.wav").is_file()
    assert report["persona"] and report["tail_s"] == 1.0 and "silero" in report["vad"]
    assert report["reference"]["smooth_turn_taking"]["PersonaPlex (paper)"]["latency_s"] == 0.070
    assert "tt-3 (model time): " in err and "tt-3 (live): " in err  # progress on stderr, JSON alone on stdout


def test_bad_flag_combinations_are_one_line_errors(tiny_dir, capsys, monkeypatch) -> None:
    code, out, err = run_main(["bench", "compute", "--model", "tiny", "--random-weights", "7b"], capsys, monkeypatch)
    assert code == 1 and "drop --model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["bench", "compute", "--model", "tiny", "--frames", "0"], capsys, monkeypatch)
    assert code == 2 and "--frames" in err and len(err.strip().splitlines()) == 1
    for batch in ("0", "2,x", "1,,2"):
        code, _, err = run_main(["bench", "compute", "--model", "tiny", "--batch", batch], capsys, monkeypatch)
        assert code == 1 and f"--batch {batch}" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["bench", "turns", "--model", "tiny", "--suite", "/nonexistent/suite"], capsys, monkeypatch)
    assert code == 1 and "no such suite folder" in err


def test_profiled_steps_time_the_temporal_transformer_and_the_depformer(tiny_dir) -> None:
    model = load_model(tiny_dir, device="cpu", dtype="float32")
    frame = np.zeros(FRAME_SIZE, dtype=np.float32)
    spec = ConversationSpec("NATF0", "Hi.")
    with Engine(model, EngineConfig(device="cpu", profile=True)) as engine:
        engine.start(spec)
        timings = engine.step(frame).timings_ms
    assert {"encode", "temporal", "depformer", "lm", "decode", "total"} <= set(timings)
    assert 0 < timings["temporal"] and 0 < timings["depformer"]
    assert timings["temporal"] + timings["depformer"] <= timings["lm"]
    with Engine(model, EngineConfig(device="cpu")) as engine:
        engine.start(spec)
        assert set(engine.step(frame).timings_ms) == {"encode", "lm", "decode", "total"}


def test_random_weights_are_made_in_place_in_the_target_dtype() -> None:
    lm = random_lm(TINY_LM_KWARGS, torch.device("cpu"), torch.bfloat16, seed=3)
    again = random_lm(TINY_LM_KWARGS, torch.device("cpu"), torch.bfloat16, seed=3)
    other = random_lm(TINY_LM_KWARGS, torch.device("cpu"), torch.bfloat16, seed=4)
    assert not lm.training
    for (name, p), q, r in zip(lm.named_parameters(), again.parameters(), other.parameters(), strict=True):
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu", name
        assert torch.equal(p, q), name
        if p.squeeze().dim() <= 1:
            assert torch.all(p == 1), name
        else:
            assert not torch.equal(p, r), name
            assert p.float().std().item() == pytest.approx(p.shape[-1] ** -0.5, rel=0.15), name
    assert torch.isfinite(lm.text_linear(torch.ones(1, 1, TINY_LM_KWARGS["dim"], dtype=torch.bfloat16))).all()

