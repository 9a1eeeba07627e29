"""The Ray Serve deployment end to end, run by tests/test_ray.py in a child process (in a private
network namespace there: `unshare -n`, loopback only). Writes what it saw as JSON; judges nothing.

    python tests/ray_scenarios.py OUT.json

The tiny model on CPU, 2 replicas x 1 session, sessions of SESSION_S live seconds:

1. deploy; /healthz: 2 replicas running, warm, 0 of 2 sessions;
2. two /ws sessions at once: each streams speech in real time and reads the agent;
3. /healthz: one session on each replica; a third client on /api/chat and on /ws is refused;
4. downscale to 1 replica (same code version: nothing restarts) while both sessions run; /healthz
   during the drain; another client is refused (capacity 1, 2 sessions); both sessions end by
   their length limit, with `end`; the leaving replica goes;
5. a client that vanishes (TCP abort, no close frame) frees its row: the next session gets it;
6. a session still running when the deployment stops (Ctrl-C) gets its `end` before the close;
7. the metrics in Ray's export, with the replica as a label;
8. `RayDeployment.close()`: `serve.shutdown()` and `ray.shutdown()`, always.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus

from aimsvoice.audio import FRAME_SIZE
from aimsvoice.server import ServerConfig
from aimsvoice.server.config import FRAME_S
from aimsvoice.server.ray import RayConfig, RayDeployment
from serve_helpers import Heard, config_message, read_to_close, recv, s16, speechlike, until, ws_connect

PORT = 8998
METRICS_PORT = 8999
SESSION_S = 14.0
SHORT = "Hi."
URL = f"ws://127.0.0.1:{PORT}"
T0 = time.monotonic()


def clock() -> float:
    return round(time.monotonic() - T0, 3)


def config() -> ServerConfig:
    return ServerConfig(
        model="tiny", device="cpu", dtype="float32", port=PORT, max_sessions=1, session_minutes=SESSION_S / 60, idle_timeout=None,
    )


async def health(deployment: RayDeployment) -> dict[str, Any]:
    return await asyncio.to_thread(deployment.health)


async def wait_health(deployment: RayDeployment, probe, timeout: float = 30.0) -> tuple[dict[str, Any], float]:
    """The first /healthz for which probe(h) holds, and when; the last one (and -1) after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        h = await health(deployment)
        if probe(h):
            return h, clock()
        if time.monotonic() > deadline:
            return h, -1.0
        await asyncio.sleep(0.1)


async def streaming(seed: int, started: asyncio.Event) -> dict[str, Any]:
    """A /ws session that speaks in real time and listens until the server ends it."""
    heard = Heard()
    audio_at: list[float] = []
    pcm = speechlike(int(3 * SESSION_S / FRAME_S), seed)
    async with ws_connect(URL + "/ws") as ws:
        await ws.send(config_message(text_prompt=SHORT))
        await until(ws, heard, "ready", timeout=60)
        ready_at = clock()
        started.set()

        async def speak() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n, i in enumerate(range(0, len(pcm), FRAME_SIZE)):
                await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
                await ws.send(s16(pcm[i : i + FRAME_SIZE]))

        speaker = asyncio.create_task(speak())
        try:
            while True:
                message = await recv(ws, heard, timeout=SESSION_S + 30)
                if isinstance(message, bytes):
                    audio_at.append(clock())
        except ConnectionClosed as e:
            heard.close_code = e.rcvd.code if e.rcvd else None
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
    gaps = [b - a for a, b in zip(audio_at, audio_at[1:])]
    return {
        "session": heard.of("ready")[0]["session"], "ready_at": ready_at, "closed_at": clock(), "end": heard.end,
        "close_code": heard.close_code, "audio_messages": len(audio_at), "last_audio_at": audio_at[-1] if audio_at else None,
        "max_audio_gap_s": max(gaps) if gaps else None, "texts": len(heard.of("text")), "errors": heard.of("error"),
    }


async def refused_chat() -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with ws_connect(URL + "/api/chat"):
            return {"accepted": True, "elapsed_s": time.monotonic() - started}
    except InvalidStatus as e:
        response = e.response
        return {"status": response.status_code, "retry_after": response.headers.get("Retry-After"),
                "body": bytes(response.body or b"").decode(errors="replace"), "elapsed_s": time.monotonic() - started}


async def refused_ws() -> dict[str, Any]:
    started = time.monotonic()
    async with ws_connect(URL + "/ws") as ws:
        heard = await read_to_close(ws, Heard(), timeout=10)
    return {"close_code": heard.close_code, "errors": [e.get("message") for e in heard.of("error")],
            "retry_after_s": [e.get("retry_after_s") for e in heard.of("error")], "elapsed_s": time.monotonic() - started}


async def vanishing() -> dict[str, Any]:
    heard = Heard()
    ws = await ws_connect(URL + "/ws")
    await ws.send(config_message(text_prompt=SHORT))
    await until(ws, heard, "ready", timeout=60)
    for seed in range(3):
        await ws.send(s16(speechlike(1, seed)))
        await asyncio.sleep(FRAME_S)
    ws.transport.abort()  # gone without a close frame
    return {"session": heard.of("ready")[0]["session"], "aborted_at": clock()}


async def short_session() -> dict[str, Any]:
    heard = Heard()
    async with ws_connect(URL + "/ws") as ws:
        await ws.send(config_message(text_prompt=SHORT))
        await until(ws, heard, "ready", timeout=60)
        await ws.send(s16(speechlike(3, 4)))
        await asyncio.sleep(0.5)
        await ws.send(json.dumps({"type": "end"}))
        await read_to_close(ws, heard, timeout=20)
    return {"end": heard.end, "close_code": heard.close_code}


def ray_metrics(names: list[str], timeout: float = 20.0) -> dict[str, list[str]]:
    """Lines of Ray's metrics export (this node's agent) naming each metric, once they are there."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
        except OSError:
            text = ""
        found = {n: [line for line in text.splitlines() if line.startswith(n + "{")] for n in names}
        if all(found.values()):
            break
        time.sleep(1.0)
    return found


async def scenario(deployment: RayDeployment, out: dict[str, Any]) -> None:
    h0 = await health(deployment)
    out["health_deployed"] = h0
    original = {r["replica"] for r in h0["replicas"]}

    started = [asyncio.Event(), asyncio.Event()]
    sessions = [asyncio.create_task(streaming(seed, event)) for seed, event in zip((1, 2), started)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 90)
    out["health_two_sessions"], _ = await wait_health(deployment, lambda h: h["sessions_active"] == 2, 10)
    out["refused_chat"] = await refused_chat()
    out["refused_ws"] = await refused_ws()

    out["downscale_at"] = clock()
    scaling = asyncio.create_task(asyncio.to_thread(deployment.deploy, RayConfig(replicas=1)))
    out["health_draining"], out["draining_seen_at"] = await wait_health(
        deployment, lambda h: h["replicas_running"] == 1 and h["replicas_draining"] == 1, 20)
    out["refused_while_draining"] = await refused_ws()
    out["a"], out["b"] = await asyncio.gather(*sessions)
    await scaling
    out["downscale_returned_at"] = clock()
    out["health_after_drain"], out["drained_at"] = await wait_health(
        deployment, lambda h: h["replicas_running"] == 1 and h["replicas_draining"] == 0 and len(h["replicas"]) == 1, 30)
    out["replicas_before"] = sorted(original)

    out["vanished"] = await vanishing()
    freed, out["vanished_freed_at"] = await wait_health(deployment, lambda h: h["sessions_active"] == 0, 60)
    out["health_after_vanish"] = freed
    out["next_session"] = await short_session()
    out["health_end"], _ = await wait_health(deployment, lambda h: h["sessions_active"] == 0, 10)

    # What Ctrl-C does before taking the deployment down: every replica ends its sessions with `end`.
    started = [asyncio.Event()]
    lingering = asyncio.create_task(streaming(3, started[0]))
    await asyncio.wait_for(started[0].wait(), 60)
    out["stop_sessions_at"] = clock()
    await asyncio.to_thread(deployment.stop_sessions)
    out["lingering"] = await lingering


def main(path: Path) -> None:
    out: dict[str, Any] = {"netns": os.readlink("/proc/self/ns/net"), "pid": os.getpid()}
    ray_dir = tempfile.mkdtemp(prefix="aimsvoice-ray-")  # Ray's sessions and sockets (short: AF_UNIX paths), removed after
    deployment = RayDeployment(
        config(), RayConfig(replicas=2),
        ray_init={"num_cpus": 4, "log_to_driver": False, "_metrics_export_port": METRICS_PORT, "_temp_dir": ray_dir},
    )
    try:
        deployment.start()
        out["deployed_at"] = clock()
        asyncio.run(asyncio.wait_for(scenario(deployment, out), 240))
        out["ray_metrics"] = ray_metrics(["ray_aimsvoice_sessions_started_total", "ray_aimsvoice_sessions_active"])
    except BaseException:
        out["error"] = traceback.format_exc()
    finally:
        closing = time.monotonic()
        try:
            deployment.close()
            out["closed"] = True
        except BaseException:
            out["close_error"] = traceback.format_exc()
        out["close_s"] = round(time.monotonic() - closing, 2)
        out["total_s"] = clock()
        import ray

        out["ray_initialized_after_close"] = ray.is_initialized()
        path.write_text(json.dumps(out, indent=1, default=str))
        shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
