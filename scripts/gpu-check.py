#!/usr/bin/env python3
"""`make gpu-check`: install, then everything GPU-specific, in one unattended command with a time limit.

    python3 scripts/gpu-check.py                       # on an NVIDIA GPU: about 6-8 minutes on an H100
    python3 scripts/gpu-check.py --dry-run             # the same plumbing on the CPU with tiny sizes
    GPU_CHECK_WHEELS=wheels/ python3 scripts/gpu-check.py   # offline: the machine's own torch + these wheels

Steps, in order of what matters most; each runs under its own timeout, and one that would not fit
the budget left is skipped (said in the table), so a borrowed GPU's few minutes are enough:

 1. install      `make install` (or, with GPU_CHECK_WHEELS, a venv on the machine's own PyTorch and
                 the wheels in that folder, nothing downloaded); not counted in --budget-s
 2. gpu          the card, driver, torch and CUDA as torch sees them
 3. parity       tests/test_parity.py's float32 goldens on CUDA (AIMSVOICE_TEST_DEVICE=cuda, TF32 off)
 4. graphs       a batch of one is the solo engine, and a persona's prompt copied into a row is
                 bit-identical to running it, on CUDA with CUDA graphs (the copy writes in place)
 5. kernels      the int8 product (PyTorch's int8 kernel, int8 cast to bfloat16, bitsandbytes) against
                 bfloat16 on PersonaPlex 7B's shapes: which kernel --quantize int8 should use there
 6-9. compute    `bench compute --random-weights 7b` in bfloat16 and int8, B = 1, 2, 4, 8 with CUDA
                 graphs, and B = 1 without them (peak memory: does int8 fit a 12 GB card?)
10. agreement    int8 and bfloat16 against float32 on the small random model, on the GPU
11. live         `bench turns --model tiny --live`: the real-time loop on a paced virtual sound card
12. context      `bench context --model tiny --minutes 60`: memory flat past the window (fewer minutes
                 when the budget left is short; said in the table)

Prints one table; with --append (default BENCHMARKS.md, not in a dry run) writes it there as a
dated entry named after the card. Every step's output is kept in --out (default out/gpu-check/).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
BUDGET_S = 480.0  # the measurement steps; install has its own limit
INSTALL_TIMEOUT_S = 1500.0
RESERVE_S = 10.0  # kept back for the table
CARD_GIB = 12.0  # the small card int8 is for
CUDA_CONTEXT_GIB = 0.6  # what the driver takes on the card beside torch's allocations (not in max allocated)


@dataclass
class Step:
    """One measurement: its command, how long it may take, how to read its output."""

    name: str
    command: list[str]
    cap_s: float  # its own timeout
    need_s: float  # skipped when less than this is left
    read: Callable[[str], dict[str, Any]] = lambda out: {}
    env: dict[str, str] = field(default_factory=dict)
    status: str = "not run"
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Plan:
    device: str
    dry: bool
    arch: str  # --random-weights
    frames: int
    warmup: int
    batches: str
    context_minutes: float
    seconds_per_context_minute: float  # for fitting the context run to the budget left
    agreement_frames: int


GPU_PLAN = Plan("cuda", False, "7b", 50, 5, "1,2,4,8", 60.0, 6.0, 765)
DRY_PLAN = Plan("cpu", True, "small", 4, 1, "1,2", 1.0, 20.0, 40)


def steps(plan: Plan) -> list[Step]:
    py = str(VENV_PYTHON)
    aims = [py, "-m", "aimsvoice"]
    dev = ["--device", plan.device]
    compute = [*aims, "bench", "compute", "--random-weights", plan.arch, *dev, "--dtype", "bfloat16",
               "--frames", str(plan.frames), "--warmup", str(plan.warmup), "--json"]
    scale = 1.0 if not plan.dry else 1.5  # CPU steps are slower per frame, but fewer
    return [
        Step("gpu", [py, "-c", _GPU_FACTS], 60, 5, _read_json),
        Step("parity", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_parity.py"], 180, 30, _read_pytest,
             env={"AIMSVOICE_TEST_DEVICE": plan.device}),
        Step("graphs", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_batch.py::test_batch_size_one_is_the_solo_engine",
                        "tests/test_prompt_memory.py::test_in_a_batch_of_one_the_copy_is_bit_identical"],
             180, 30, _read_pytest, env={"AIMSVOICE_TEST_DEVICE": plan.device}),
        Step("kernels", [py, "scripts/int8-figures.py", "kernels", *dev, "--batch", "1,8", "--json",
                         *(["--repeats", "3"] if plan.dry else [])], 120, 20, _read_kernels),
        Step("compute bfloat16", [*compute, "--quantize", "none", "--batch", plan.batches], 200 * scale, 60, _read_compute),
        Step("compute int8", [*compute, "--quantize", "int8", "--batch", plan.batches], 200 * scale, 60, _read_compute),
        Step("compute bfloat16, no CUDA graphs", [*compute, "--quantize", "none", "--batch", "1", "--no-cuda-graphs"],
             120 * scale, 40, _read_compute),
        Step("compute int8, no CUDA graphs", [*compute, "--quantize", "int8", "--batch", "1", "--no-cuda-graphs"],
             120 * scale, 40, _read_compute),
        Step("agreement", [py, "scripts/int8-figures.py", "agreement", "--model", "small", *dev,
                           "--frames", str(plan.agreement_frames), "--json"], 150 * scale, 30, _read_agreement),
        Step("live", [*aims, "bench", "turns", "--model", "tiny", "--live", *dev, "--json"], 240 * scale, 40, _read_turns),
        Step("context", [*aims, "bench", "context", "--model", "tiny", *dev, "--minutes", str(plan.context_minutes), "--json"],
             plan.context_minutes * plan.seconds_per_context_minute + 60, 60, _read_context),
    ]


_GPU_FACTS = """
import json, torch
facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    facts.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
print(json.dumps(facts))
"""


def _last_json(out: str) -> Any:
    """The JSON document a command printed last on stdout (bench commands print one, indented)."""
    start = out.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.loads(out[start:])


def _read_json(out: str) -> dict[str, Any]:
    return _last_json(out)


def _read_pytest(out: str) -> dict[str, Any]:
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0),
            "skipped": counts.get("skipped", 0)}


def _read_compute(out: str) -> dict[str, Any]:
    report = _last_json(out)
    runs = {}
    for run in report["batches"]:
        total = run["stages_ms"]["total"]
        runs[run["batch_size"]] = {"p50_ms": total["p50"], "p99_ms": total["p99"], "per_conversation_ms": run["per_conversation_ms"],
                                   "rtf": run["real_time_factor"], "peak_gib": run["peak_memory"]["bytes"] / 2**30,
                                   "memory": run["peak_memory"]["kind"]}
    return {"model": report["model"], "dtype": report["dtype"], "quantize": report["quantize"],
            "cuda_graphs": report["cuda_graphs"], "load_s": report["load_s"], "runs": runs}


def _read_kernels(out: str) -> dict[str, Any]:
    report = _last_json(out)
    totals: dict[str, float] = {}
    for row in report["rows"]:
        if "error" in row:
            totals[f"B={row['batch']} {row['kernel']}"] = float("nan")
            continue
        key = f"B={row['batch']} {row['kernel']}"
        totals[key] = round(totals.get(key, 0.0) + row["ms_per_7b_step"], 2)
    return {"ms_per_7b_step": totals}


def _read_agreement(out: str) -> dict[str, Any]:
    report = _last_json(out)
    return {"frames": report["frames"], "rows": {
        r["dtype"] + (" int8" if r["quantize"] == "int8" else ""): {k: r[k] for k in ("text_top1", "audio_top1", "audio_frames")}
        for r in report["rows"]}}


def _read_turns(out: str) -> dict[str, Any]:
    report = _last_json(out)
    live = report.get("live") or {}
    return {"samples": len(live.get("samples", [])) if isinstance(live, dict) else None,
            "live": _live_summary(live)}


def _live_summary(live: Any) -> dict[str, Any]:
    """Whatever the live run's stats say about keeping up: compute per step, shed input, underruns."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (int, float)) and any(w in key for w in ("compute", "shed", "underrun", "drop")):
                    found.setdefault(key, 0.0)
                    found[key] = max(found[key], value) if "ms" in key else found[key] + value
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(live)
    return {k: round(v, 2) for k, v in found.items()}


def _read_context(out: str) -> dict[str, Any]:
    r = _last_json(out)
    mib = 2**20
    return {"frames": r["frames"], "memory": r["memory_kind"], "at_wrap_mib": round(r["memory_at_wrap"] / mib, 1),
            "growth_mib": round(r["growth_bytes"] / mib, 1), "step_ms_inside": round(r["step_ms_inside"], 2),
            "step_ms_past": round(r["step_ms_past"], 2)}


def run_step(step: Step, timeout_s: float, log_dir: Path) -> None:
    """Run one step in its own process group under `timeout_s`; keep its output; read its figures."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_TORCH_COMPILE": "1", **step.env}
    process = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
        step.status = "ok" if process.returncode == 0 else f"failed ({process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        step.status = f"timeout ({timeout_s:.0f} s)"
    step.seconds = time.monotonic() - started
    slug = re.sub(r"[^a-z0-9]+", "-", step.name.lower()).strip("-")
    (log_dir / f"{slug}.log").write_text(f"$ {shlex.join(step.command)}\n\n--- stdout\n{out}\n--- stderr\n{err}\n")
    if step.status == "ok" or step.name == "parity":
        try:
            step.figures = step.read(out)
        except (ValueError, KeyError, TypeError) as e:
            step.status, step.note = "unreadable", f"{type(e).__name__}: {e}"
        if step.name == "parity" and step.figures.get("failed"):
            step.status = "failed"
    if step.status != "ok" and not step.note:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        step.note = lines[-1][:200] if lines else ""


def install(log_dir: Path, timeout_s: float) -> Step:
    """`make install`, or offline: a venv on the machine's torch with the wheels of GPU_CHECK_WHEELS."""
    wheels = os.environ.get("GPU_CHECK_WHEELS")
    if wheels:
        python = os.environ.get("GPU_CHECK_PYTHON", "python3")
        script = (f"test -x {VENV_PYTHON} || {python} -m venv --system-site-packages .venv; "
                  f".venv/bin/pip install -q --no-index --no-deps {shlex.quote(wheels)}/*.whl && "
                  ".venv/bin/pip install -q --no-index --no-deps --no-build-isolation -e .")
        command = ["bash", "-c", script]
    else:
        command = ["make", "install", f"PYTHON={os.environ.get('GPU_CHECK_PYTHON', 'python3')}"]
    step = Step("install", command, timeout_s, 0)
    run_step(step, timeout_s, log_dir)
    return step


def table(all_steps: list[Step]) -> str:
    lines = ["| step | status | s | figures |", "|---|---|---:|---|"]
    for s in all_steps:
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {_figures_cell(s)} |")
    compute = [s for s in all_steps if s.name.startswith("compute") and s.status == "ok"]
    if compute:
        lines += ["", "| run | batch | tick p50 ms | tick p99 ms | per conversation ms | real-time factor | peak GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s in compute:
            for batch, r in s.figures["runs"].items():
                lines.append(f"| {s.name.removeprefix('compute ')} | {batch} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                             f"{r['per_conversation_ms']:.2f} | {r['rtf']:.3f} | {r['peak_gib']:.2f} |")
    return "\n".join(lines)


def _figures_cell(step: Step) -> str:
    f = step.figures
    if step.status.startswith("skipped") or not f:
        return step.note.replace("|", "/")
    if step.name == "gpu":
        card = f"{f['gpu']} ({f['gpu_memory_gib']} GiB, compute capability {f['capability']})" if "gpu" in f else "no GPU"
        return f"{card}, torch {f['torch']}, CUDA {f['cuda']}".replace("|", "/")
    if step.name in ("parity", "graphs"):
        return f"{f['passed']} passed, {f['failed']} failed, {f['skipped']} skipped"
    if step.name == "kernels":
        return "linears of one 7B step: " + ", ".join(f"{k} {v:.1f} ms" for k, v in f["ms_per_7b_step"].items())
    if step.name.startswith("compute"):
        one = f["runs"].get("1") or f["runs"].get(1) or next(iter(f["runs"].values()))
        verdict = ""
        if f["quantize"] == "int8" and one["memory"].startswith("cuda"):
            fits = one["peak_gib"] + CUDA_CONTEXT_GIB <= CARD_GIB
            verdict = f"; B=1 {'fits' if fits else 'does not fit'} a {CARD_GIB:.0f} GB card with the CUDA context"
        return f"{f['model']}, {f['dtype']}, quantize {f['quantize']}, load {f['load_s']:.0f} s, B=1 p50 {one['p50_ms']:.1f} ms, peak {one['peak_gib']:.2f} GiB{verdict}"
    if step.name == "agreement":
        return f"{f['frames']} frames vs float32: " + "; ".join(
            f"{k}: text {100 * v['text_top1']:.1f}%, audio {100 * v['audio_top1']:.1f}%" for k, v in f["rows"].items())
    if step.name == "live":
        return ", ".join(f"{k} {v}" for k, v in f["live"].items()) or "ran"
    if step.name == "context":
        return (f"{f['frames']} frames: {f['memory']} {f['at_wrap_mib']} MiB at the wrap, growth {f['growth_mib']:+} MiB; "
                f"step {f['step_ms_inside']} ms inside, {f['step_ms_past']} ms past the window")
    return json.dumps(f)[:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes (also: GPU_CHECK_DEVICE=cpu)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", BUDGET_S)),
                        help=f"seconds for the measurement steps, install excluded (default {BUDGET_S:.0f})")
    parser.add_argument("--install-timeout-s", type=float, default=INSTALL_TIMEOUT_S)
    parser.add_argument("--skip-install", action="store_true", help="use the .venv as it is")
    parser.add_argument("--only", help="comma-separated step names to run (e.g. gpu,parity)")
    parser.add_argument("--append", type=Path, default=None, help="the markdown file for the entry (default: BENCHMARKS.md, none in a dry run)")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-check", help="where each step's output is kept")
    args = parser.parse_args()
    dry = args.dry_run or os.environ.get("GPU_CHECK_DEVICE") == "cpu"
    plan = DRY_PLAN if dry else GPU_PLAN
    args.out.mkdir(parents=True, exist_ok=True)
    append = None if args.no_append else (args.append or (None if dry else ROOT / "BENCHMARKS.md"))

    done: list[Step] = []
    if not args.skip_install:
        step = install(args.out, args.install_timeout_s)
        done.append(step)
        print(f"install: {step.status} in {step.seconds:.0f} s", file=sys.stderr, flush=True)
        if step.status != "ok":
            print(table(done))
            return 1
    deadline = time.monotonic() + args.budget_s
    only = set(args.only.split(",")) if args.only else None
    for step in steps(plan):
        if only is not None and step.name not in only and step.name.split(" ")[0] not in only:
            continue
        left = deadline - time.monotonic() - RESERVE_S
        if step.name == "context" and left < step.cap_s:
            _fit_context(step, plan, left)
        if left < step.need_s:
            step.status, step.note = "skipped", f"{left:.0f} s of the budget left, needs {step.need_s:.0f}"
        else:
            print(f"{step.name}: running (at most {min(step.cap_s, left):.0f} s)", file=sys.stderr, flush=True)
            run_step(step, min(step.cap_s, left), args.out)
            print(f"{step.name}: {step.status} in {step.seconds:.0f} s", file=sys.stderr, flush=True)
        done.append(step)
        if step.name == "gpu" and step.status == "ok" and not dry and not step.figures.get("cuda_available"):
            step.status, step.note = "failed", "torch sees no CUDA GPU; use --dry-run on a machine without one"
            print(table(done))
            return 1

    result = table(done)
    print(result)
    (args.out / "table.md").write_text(result + "\n")
    if append is not None:
        gpu = next((s.figures.get("gpu") for s in done if s.name == "gpu" and s.figures), None) or "no GPU (dry run)"
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "make gpu-check" + (" (dry run)" if dry else "")
        entry = f"### {when} · `{command}` on {gpu}\n\n{result}\n"
        text = append.read_text() if append.is_file() else "# Benchmarks\n"
        append.write_text(text.rstrip("\n") + "\n\n" + entry)
        print(f"appended the table to {append}", file=sys.stderr)
    failed = [s for s in done if s.status not in ("ok",) and not s.status.startswith("skipped")]
    return 1 if failed else 0


def _fit_context(step: Step, plan: Plan, left: float) -> None:
    """Fewer minutes of conversation when the budget left is short (a few windows still show the memory flat)."""
    minutes = int(max(0.0, left - 45) / plan.seconds_per_context_minute)
    if plan.dry or minutes >= plan.context_minutes:
        return
    if minutes >= 5:
        index = step.command.index("--minutes") + 1
        step.command[index] = str(minutes)
        step.cap_s = minutes * plan.seconds_per_context_minute + 45
        step.note = f"{minutes} minutes, not {plan.context_minutes:.0f}: the budget left"
    else:
        step.need_s = float("inf")


if __name__ == "__main__":
    sys.exit(main())
