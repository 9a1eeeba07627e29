"""`aimsvoice serve` as a Ray Serve deployment, end to end: tests/ray_scenarios.py in a child process.

The child runs in a private network namespace (`unshare -n`, only loopback up), so Ray, Serve's
proxy and the replicas bind nothing outside it; where unshare is impossible (no CAP_SYS_ADMIN)
it runs on loopback here, and the test says so. The child writes what it saw as JSON; this file
judges it, then checks that no process of the child's namespace outlives it (Ray cleaned up).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'aimsvoice[ray]'")

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

HERE = Path(__file__).parent
CHILD_TIMEOUT_S = 300
SESSION_S = 14.0  # as in ray_scenarios.py


def _netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _processes_in(netns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") == netns:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def scenario(tiny_dir: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ray") / "scenario.json"
    command = [sys.executable, str(HERE / "ray_scenarios.py"), str(out)]
    isolated = _netns_works()
    if isolated:
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    else:
        warnings.warn("unshare -n is not possible here: the Ray scenario runs on this machine's loopback instead")
    env = {
        **os.environ, "XDG_CACHE_HOME": str(session_cache), "PYTHONPATH": str(HERE), "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # Ray's token auth on, without writing ~/.ray/auth_token
    }
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = child.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own process group, nothing else
        log, _ = child.communicate()
        pytest.fail(f"the Ray scenario ran past {CHILD_TIMEOUT_S} s:\n{log.decode(errors='replace')[-4000:]}")
    assert out.exists(), f"the Ray scenario wrote nothing (exit {child.returncode}):\n{log.decode(errors='replace')[-4000:]}"
    result = json.loads(out.read_text())
    result["isolated"] = isolated
    result["log_tail"] = log.decode(errors="replace")[-4000:]
    # Nothing of the child's outlives it: Ray's processes were shut down, not orphaned.
    if isolated:
        deadline = time.monotonic() + 15
        while (left := _processes_in(result["netns"])) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # only processes of the child's private namespace: ours
            os.kill(pid, signal.SIGKILL)
        result["left_behind"] = left
    return result


def _ran(scenario: dict) -> dict:
    """The scenario's findings; fails with the child's traceback and log when it broke off."""
    assert "error" not in scenario, scenario["error"] + "\n" + scenario["log_tail"]
    return scenario


def test_the_deployment_starts_and_shuts_down_cleanly(scenario: dict) -> None:
    _ran(scenario)
    assert scenario.get("closed") and not scenario["ray_initialized_after_close"], scenario.get("close_error")
    assert scenario.get("left_behind", []) == [], "Ray processes outlived serve.shutdown() and ray.shutdown()"
    h = scenario["health_deployed"]
    assert h["status"] == "ok" and h["model"] == "warm" and h["replicas_running"] == 2
    assert h["sessions_active"] == 0 and h["sessions_max"] == 2
    assert [r["model"] for r in h["replicas"]] == ["warm", "warm"] and {r["sessions_max"] for r in h["replicas"]} == {1}


def test_two_sessions_land_on_different_replicas_and_both_converse(scenario: dict) -> None:
    _ran(scenario)
    h = scenario["health_two_sessions"]
    assert h["sessions_active"] == 2 and h["sessions_max"] == 2
    assert [r["sessions_active"] for r in h["replicas"]] == [1, 1], h
    for name in ("a", "b"):
        session = scenario[name]
        assert session["errors"] == [] and session["audio_messages"] >= 0.6 * SESSION_S / 0.08, session
        assert session["max_audio_gap_s"] < 1.0, "the agent's audio kept coming"


def test_a_third_session_is_refused_at_once_with_the_servers_own_refusal(scenario: dict) -> None:
    _ran(scenario)
    chat, ws = scenario["refused_chat"], scenario["refused_ws"]
    assert chat.get("status") == 503 and "full" in chat["body"] and int(chat["retry_after"]) >= 1, chat
    assert chat["elapsed_s"] < 2.0, "refused at once, never queued"
    assert ws["close_code"] == 1013 and "full" in ws["errors"][0] and ws["elapsed_s"] < 2.0, ws


def test_a_downscale_ends_no_session_early(scenario: dict) -> None:
    _ran(scenario)
    draining = scenario["health_draining"]
    assert scenario["draining_seen_at"] > 0, draining
    assert draining["replicas_running"] == 1 and draining["replicas_draining"] == 1
    assert draining["sessions_active"] == 2 and draining["sessions_max"] == 1, "the leaving replica's session is still served"
    assert scenario["refused_while_draining"]["close_code"] == 1013, "the leaving replica takes no new session"
    for name in ("a", "b"):
        session = scenario[name]
        end = session["end"]
        assert end is not None and end["reason"] == "session-limit" and session["close_code"] == 1000, session
        assert SESSION_S - 0.5 <= end["stats"]["duration_s"] <= SESSION_S + 2.0, "its natural end, not before"
        assert session["closed_at"] > scenario["downscale_at"] + 5.0, "it ran on well past the downscale"
    after = scenario["health_after_drain"]
    assert scenario["drained_at"] > 0 and after["replicas_running"] == 1 and len(after["replicas"]) == 1, after
    assert after["replicas"][0]["replica"] in scenario["replicas_before"], "the staying replica was not restarted"


def test_a_vanished_client_frees_its_row(scenario: dict) -> None:
    _ran(scenario)
    assert scenario["vanished_freed_at"] > 0, scenario["health_after_vanish"]
    assert scenario["vanished_freed_at"] - scenario["vanished"]["aborted_at"] < 45, "found by the close or by pings"
    following = scenario["next_session"]
    assert following["end"]["reason"] == "client-ended" and following["close_code"] == 1000, "the row was free for the next"
    assert scenario["health_end"]["sessions_active"] == 0


def test_stopping_the_deployment_ends_a_running_session_with_end(scenario: dict) -> None:
    _ran(scenario)
    session = scenario["lingering"]
    assert session["end"] is not None and session["end"]["reason"] == "server-shutdown", session
    assert session["close_code"] == 1001 and session["closed_at"] - scenario["stop_sessions_at"] < 5.0, session


def test_the_metrics_reach_rays_export_with_the_replica_as_a_label(scenario: dict) -> None:
    _ran(scenario)
    lines = scenario["ray_metrics"]
    for name in ("ray_aimsvoice_sessions_started_total", "ray_aimsvoice_sessions_active"):
        assert lines.get(name), f"{name} missing from Ray's metrics export"
        assert all('replica="' in line and 'deployment="VoiceReplica"' in line for line in lines[name])
