#!/usr/bin/env python3
"""Figures for `--quantize int8`: agreement with full precision, and the int8 product's speed.

    .venv/bin/python scripts/int8-figures.py agreement --model tiny
    .venv/bin/python scripts/int8-figures.py agreement --model small --frames 400
    .venv/bin/python scripts/int8-figures.py kernels --device cuda --json

agreement: the reference runs in float32 on the device; the candidates are bfloat16 (no int8, for
scale), int8 weights with float32 activations (the weights' error alone) and int8 with bfloat16
activations (what `--quantize int8` runs on a GPU); the conversation is the built-in bench suite's
nine user recordings back to back (61 s), or its first --frames frames. `--model small` is the
random-weight architecture `bench compute --random-weights small` builds (dim 512, 6 layers), written
once in float32 to a model folder with the tiny model's Mimi, so every precision loads the same weights.
Prints a markdown table (or JSON), to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aimsvoice.audio import read_wav  # noqa: E402
from aimsvoice.bench import builtin_suite_dir  # noqa: E402
from aimsvoice.bench.quantized import measure_agreement, reference_run, time_kernels, user_codes  # noqa: E402
from aimsvoice.engine import ensure_tiny_model, load_model  # noqa: E402
from aimsvoice.engine.load import resolve_device  # noqa: E402

CANDIDATES = (("bfloat16", "none"), ("float32", "int8"), ("bfloat16", "int8"))


def _model_dir(name: str) -> Path:
    """The tiny model, or a model folder with the random `small` LM in float32 (and the tiny model's Mimi and
    tokenizer): every precision then loads the very same weights, as from a real checkpoint."""
    tiny = ensure_tiny_model()
    if name == "tiny":
        return tiny
    from safetensors.torch import save_file

    from aimsvoice import layout
    from aimsvoice.bench.randomweights import ARCHITECTURES, random_lm
    from aimsvoice.engine.tiny import MIMI_CONFIG_NAME, _checkpoint_state

    directory = Path(tempfile.mkdtemp(prefix=f"aimsvoice-{name}-"))
    for file in (layout.MIMI_NAME, layout.TEXT_TOKENIZER_NAME, MIMI_CONFIG_NAME):
        shutil.copy(tiny / file, directory / file)
    (directory / layout.CONFIG_NAME).write_text(json.dumps({**ARCHITECTURES[name], "mimi_config_name": MIMI_CONFIG_NAME}))
    lm = random_lm(ARCHITECTURES[name], torch.device("cpu"), torch.float32, seed=0)
    save_file(_checkpoint_state(lm), str(directory / layout.LM_NAME))
    return directory


def agreement(args: argparse.Namespace) -> dict:
    if args.device == "cpu":
        torch.set_num_threads(1)  # small ops: more threads only spin against each other (README, bench)
    suite = sorted(builtin_suite_dir().glob("*/*/input.wav"))
    pcm = np.concatenate([read_wav(path) for path in suite])
    directory = _model_dir(args.model)
    reference = load_model(directory, args.device, "float32", "none")
    codes = user_codes(reference, pcm)[: args.frames]
    ref = reference_run(reference, codes)
    rows = []
    for dtype, quantize in CANDIDATES:
        started = time.perf_counter()
        candidate = load_model(directory, args.device, dtype, quantize)
        result = measure_agreement(ref, candidate, codes)
        rows.append({"dtype": dtype, "quantize": quantize, **result.to_json(), "seconds": round(time.perf_counter() - started, 1)})
        print(f"{dtype} {quantize}: {result}", file=sys.stderr)
        del candidate
    return {"model": args.model, "device": reference.device.type, "reference": "float32", "frames": len(codes),
            "torch": torch.__version__, "rows": rows}


def agreement_markdown(report: dict) -> str:
    steps = report['rows'][0]['frames'] if report['rows'] else 0
    lines = [f"{report['model']} model on {report['device']}, a conversation of {report['frames']} frames, {steps} steps compared, "
             f"reference float32 (torch {report['torch']}).", "",
             "| candidate | text top-1 | audio top-1 | all 8 codes | semantic top-1 | free-running: text | free-running: 8 codes | first divergence |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        name = r["dtype"] + (", int8 weights" if r["quantize"] == "int8" else "")
        cells = [f"{100 * r[k]:.1f}%" for k in ("text_top1", "audio_top1", "audio_frames", "semantic_top1", "free_text", "free_audio_frames")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['first_divergence'] if r['first_divergence'] is not None else 'none'} |")
    return "\n".join(lines)


def kernels(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    rows = time_kernels(device, batch_sizes=tuple(int(b) for b in args.batch.split(",")), repeats=args.repeats)
    facts = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return {**facts, "rows": rows}


def kernels_markdown(report: dict) -> str:
    """Per batch size and kernel: the 7B step's linear layers added up, and the largest one alone."""
    totals: dict[tuple[int, str], float] = {}
    largest: dict[tuple[int, str], float] = {}
    for r in report["rows"]:
        if "error" in r:
            continue
        key = (r["batch"], r["kernel"])
        totals[key] = totals.get(key, 0.0) + r["ms_per_7b_step"]
        if r["linear"] == "temporal feed-forward in":
            largest[key] = r["ms"]
    where = report.get("gpu", report["device"])
    lines = [f"int8 products on {where} (torch {report['torch']}): the 7B step's linear layers added up, and the largest alone.", "",
             "| batch | kernel | linears of a 7B step ms | 22528x4096 product ms |", "|---:|---|---:|---:|"]
    for (batch, kernel), total in sorted(totals.items()):
        cell = f"{largest[(batch, kernel)]:.3f}" if (batch, kernel) in largest else "-"
        lines.append(f"| {batch} | {kernel} | {total:.2f} | {cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("agreement", help="int8 and bfloat16 against float32 over a conversation")
    a.add_argument("--model", default="tiny", choices=("tiny", "small"))
    a.add_argument("--device", default="cpu")
    a.add_argument("--frames", type=int, default=None, help="at most this many frames of the conversation")
    k = sub.add_parser("kernels", help="the int8 product against bfloat16 on PersonaPlex 7B's shapes")
    k.add_argument("--device", default="auto")
    k.add_argument("--batch", default="1,8")
    k.add_argument("--repeats", type=int, default=20)
    for p in (a, k):
        p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()
    report = agreement(args) if args.what == "agreement" else kernels(args)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(agreement_markdown(report) if args.what == "agreement" else kernels_markdown(report))


if __name__ == "__main__":
    main()
