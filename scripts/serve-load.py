#!/usr/bin/env python
"""A bounded load run of `aimsvoice serve` over loopback: N concurrent /ws sessions streaming in real time.

Starts `aimsvoice serve` (the tiny model by default) on a free port, or uses --url; opens the
sessions a little apart, each with another persona; each streams --seconds of speech-like audio
in real time while reading everything back, then ends. Prints (markdown, or --json) the ticks'
p50/p99 from /healthz and the Prometheus histogram, drops, and every session's cost report.

    .venv/bin/python scripts/serve-load.py --sessions 8 --seconds 20
    .venv/bin/python scripts/serve-load.py --sessions 4 --seconds 10 --audio opus
    .venv/bin/python scripts/serve-load.py --url ws://gpu-box:8998 --sessions 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import sphn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SAMPLE_RATE = 24_000
FRAME = 1920
FRAME_S = FRAME / SAMPLE_RATE
PERSONAS = ("headcoach", "strategist", "entertainer", "proconsultant", "sportsinsider", "assistant")
ROOT = Path(__file__).resolve().parent.parent


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced bursts and pauses, loud enough to count as speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 110 + 80 * rng.random()
    voiced = np.sin(2 * np.pi * pitch * t) + 0.5 * np.sin(2 * np.pi * 2 * pitch * t)
    envelope = (np.sin(2 * np.pi * 0.4 * t + rng.random() * 6) > -0.3).astype(np.float64)
    return (0.15 * voiced * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


async def session(url: str, index: int, seconds: float, audio: str, started: float) -> dict:
    persona = PERSONAS[index % len(PERSONAS)]
    pcm = speech_like(seconds, index)
    writer = sphn.OpusStreamWriter(SAMPLE_RATE) if audio == "opus" else None
    reader = sphn.OpusStreamReader(SAMPLE_RATE) if audio == "opus" else None
    result: dict = {"index": index, "persona": persona}
    arrivals: list[float] = []
    out_samples = 0
    loop = asyncio.get_running_loop()
    async with connect(url + "/ws", open_timeout=60, max_size=2**24) as ws:
        opened = loop.time()
        await ws.send(json.dumps({"type": "persona_config", "persona": persona, "audio": audio}))
        while True:
            message = await asyncio.wait_for(ws.recv(), 120)
            if isinstance(message, str) and json.loads(message)["type"] == "ready":
                break
        result["ready_s"] = round(loop.time() - opened, 2)
        result["joined_at_s"] = round(opened - started, 2)

        async def read() -> None:
            nonlocal out_samples
            try:
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        arrivals.append(loop.time())
                        out_samples += len(reader.append_bytes(message)) if reader else len(message) // 2
                    else:
                        event = json.loads(message)
                        if event["type"] == "end":
                            result["end"] = event
            except ConnectionClosed:
                pass

        reading = asyncio.create_task(read())
        t0 = loop.time()
        for i in range(0, len(pcm), FRAME):
            await asyncio.sleep(max(0.0, t0 + (i // FRAME) * FRAME_S - loop.time()))
            frame = pcm[i : i + FRAME]
            await ws.send(writer.append_pcm(frame) if writer else np.round(frame * 32768).astype("<i2").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(reading, 30)
    gaps = np.diff(arrivals) * 1000 if len(arrivals) > 2 else np.zeros(1)
    result["audio_out_s"] = round(out_samples / SAMPLE_RATE, 2)
    result["arrival_gap_ms_p99"] = round(float(np.percentile(gaps, 99)), 1)
    result["arrival_gap_ms_max"] = round(float(gaps.max()), 1)
    return result


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def histogram_quantiles(metrics: str, kind: str) -> dict[str, float]:
    """p50/p99 (bucket upper bounds) of aimsvoice_tick_seconds{kind} from the Prometheus text."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("aimsvoice_tick_seconds_bucket") and f'kind="{kind}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    out = {"count": total}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_le_ms"] = next((1000 * le for le, n in buckets if n >= q * total), float("nan")) if total else float("nan")
    return out


def counter(metrics: str, name: str, label: str = "") -> float:
    for line in metrics.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def run_all(url: str, sessions: int, seconds: float, audio: str, stagger: float) -> list[dict]:
    started = asyncio.get_running_loop().time()

    async def delayed(i: int) -> dict:
        await asyncio.sleep(i * stagger)
        return await session(url, i, seconds, audio, started)

    return await asyncio.gather(*(delayed(i) for i in range(sessions)))


def start_server(args) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(args.log)
    command = [sys.executable, "-m", "aimsvoice.cli", "serve", "--model", args.model, "--port", str(port),
               "--max-sessions", str(args.max_sessions or args.sessions), "--idle-timeout", "0"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while True:
        try:
            get(f"http://127.0.0.1:{port}/healthz")
            return process, f"ws://127.0.0.1:{port}", log
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (ws://host:port); default: start one")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--max-sessions", type=int, help="the server's --max-sessions (default: --sessions)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--audio", choices=("pcm_s16le", "opus"), default="pcm_s16le")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between session starts")
    parser.add_argument("--log", default="/tmp/aimsvoice-serve-load.log", help="the started server's log")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    process = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        process, url, log = start_server(args)
    http = url.replace("ws://", "http://").replace("wss://", "https://")
    load_before = os.getloadavg()[0]
    try:
        wall = time.monotonic()
        results = asyncio.run(run_all(url, args.sessions, args.seconds, args.audio, args.stagger))
        wall = time.monotonic() - wall
        health = json.loads(get(http + "/healthz"))
        metrics = get(http + "/metrics").decode()
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    report = {
        "command": "scripts/serve-load.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load_before:.2f} before",
        "wall_s": round(wall, 1),
        "health": health,
        "realtime_ticks": histogram_quantiles(metrics, "realtime"),
        "prompt_ticks": histogram_quantiles(metrics, "prompt"),
        "dropped_frames": {k: counter(metrics, "aimsvoice_frames_dropped_total", f'kind="{k}"') for k in ("late", "input_shed", "output")},
        "schedule_restarts": counter(metrics, "aimsvoice_tick_schedule_restarts_total"),
        "sessions": results,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(markdown(report, args))


def markdown(report: dict, args) -> str:
    h, rt = report["health"], report["realtime_ticks"]
    lines = [
        f"`{report['command']}`: {args.sessions} sessions of {args.seconds:g} s ({args.audio}), started {args.stagger:g} s apart, "
        f"on {h['device']} ({report['machine']}); wall {report['wall_s']} s.",
        "",
        f"Real-time ticks: p50 {h['tick_ms_p50']} ms, p99 {h['tick_ms_p99']} ms over the last {min(int(rt['count']), 1000)} "
        f"(of {int(rt['count'])}; budget 80 ms); prompt-only ticks: {int(report['prompt_ticks']['count'])}. "
        f"Frames lost: late {report['dropped_frames']['late']:.0f}, input shed {report['dropped_frames']['input_shed']:.1f}, "
        f"output dropped {report['dropped_frames']['output']:.0f}; schedule restarts {report['schedule_restarts']:.0f}.",
        "",
        "| # | persona | joined at s | ready after s | live s | frames | device-s | prompt steps | in KB | out KB | late | shed s | out dropped | gap p99 ms | gap max ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["sessions"]:
        st = s.get("end", {}).get("stats", {})
        lines.append(
            f"| {s['index']} | {s['persona']} | {s['joined_at_s']} | {s['ready_s']} | {st.get('duration_s', '-')} | {st.get('frames', '-')} | "
            f"{st.get('gpu_s', '-')} | {st.get('prompt_steps', '-')} | {st.get('bytes_in', 0) / 1000:.0f} | {st.get('bytes_out', 0) / 1000:.0f} | "
            f"{st.get('late_frames', '-')} | {st.get('input_shed_s', '-')} | {st.get('output_dropped_frames', '-')} | "
            f"{s['arrival_gap_ms_p99']} | {s['arrival_gap_ms_max']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
