#!/usr/bin/env python
"""`aimsvoice serve` alone against `aimsvoice serve --ray` (Serve's proxy, and its HAProxy ingress) on this machine.

For each setup it starts the real command (the tiny model on CPU, one replica of 2 sessions),
and measures: the start-up (command to a warm /healthz), the memory of the whole process tree
once idle (the server; for Ray: GCS, raylet, controller, proxy, replicas, the health replica),
the round trip of a /ws `ping` answered by the session (sent after each 80 ms audio frame of a
real-time stream: the path a client's audio and the agent's take, less the model's tick), and
the stop (SIGINT to exit: every session ends with `end` first). Run it in a private network namespace so nothing binds outside:

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python scripts/serve-ray-bench.py --seconds 20'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

SAMPLE_RATE = 24_000
FRAME = 1920
FRAME_S = FRAME / SAMPLE_RATE
PORT = 8998
ROOT = Path(__file__).resolve().parent.parent
SETUPS = {  # name: (what it is, extra flags, environment)
    "single": ("`aimsvoice serve`", [], {}),
    "ray": ("`serve --ray`, Serve's proxy", ["--ray"], {"RAY_SERVE_ENABLE_HA_PROXY": "0"}),
    "ray-haproxy": ("`serve --ray`, HAProxy ingress", ["--ray"], {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MiB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def healthz() -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


async def measure(seconds: float) -> dict:
    rng = np.random.default_rng(0)
    pcm = (0.2 * np.sin(2 * np.pi * 150 * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)
           + 0.01 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    pings: dict[int, float] = {}
    rtt_ms: list[float] = []
    loop = asyncio.get_running_loop()
    async with connect(f"ws://127.0.0.1:{PORT}/ws", open_timeout=60, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "persona_config", "text_prompt": "Hi."}))
        while json.loads(await asyncio.wait_for(ws.recv(), 120))["type"] != "ready":
            pass

        async def read() -> None:
            while True:
                message = await ws.recv()
                now = loop.time()
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                if event["type"] == "pong" and event.get("id") in pings:
                    rtt_ms.append(1000 * (now - pings.pop(event["id"])))
                elif event["type"] in ("end", "error"):
                    return

        reader = asyncio.create_task(read())
        start = loop.time()
        for n, i in enumerate(range(0, len(pcm), FRAME)):
            await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
            await ws.send(np.round(pcm[i : i + FRAME] * 32767).astype("<i2").tobytes())
            pings[n] = loop.time()
            await ws.send(json.dumps({"type": "ping", "id": n}))
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(reader, 30)
    return {"ping_rtt_ms": rtt_ms}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.array(values)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2)}


def run_setup(name: str, seconds: float, log_dir: Path) -> dict:
    label, extra, env = SETUPS[name]
    command = [sys.executable, "-m", "aimsvoice", "serve", "--model", "tiny", "--device", "cpu", "--dtype", "float32",
               "--port", str(PORT), "--max-sessions", "2", "--idle-timeout", "0", *extra]
    log = (log_dir / f"{name}.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    result: dict = {"setup": label}
    try:
        while not ((h := healthz()) and h.get("model") == "warm"):
            if server.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"{name}: the server did not start (see {log.name})")
            time.sleep(0.1)
        result["startup_s"] = round(time.monotonic() - started, 1)
        time.sleep(5.0)
        result["idle_rss_mb"] = round(tree_rss_mb(server.pid))
        measured = asyncio.run(measure(seconds))
        result["ping_rtt_ms"] = percentiles(measured["ping_rtt_ms"])
    finally:
        stopping = time.monotonic()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        result["stop_s"] = round(time.monotonic() - stopping, 1)
        log.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measured session")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))
    parser.add_argument("--logs", default="out/serve-ray-bench", help="a folder for the servers' logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    results = [run_setup(name.strip(), args.seconds, log_dir) for name in args.setups.split(",")]
    if args.json:
        print(json.dumps({"load_average_at_start": load, "cpus": os.cpu_count(), "results": results}, indent=1))
        return
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} at the start; the tiny model on CPU, {args.seconds:g} s measured per setup.\n")
    print("| setup | start-up | idle memory (all processes) | /ws ping round trip p50 / p99 | stop |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        ping = r["ping_rtt_ms"]
        print(f"| {r['setup']} | {r['startup_s']} s | {r['idle_rss_mb']} MiB | {ping.get('p50')} / {ping.get('p99')} ms | {r['stop_s']} s |")


if __name__ == "__main__":
    main()
