"""The Ray Serve deployment's pure parts: routing to a free row, the whole-deployment /healthz, the
Serve options that carry the policy, the Serve config file, and the CLI's --ray rules. No cluster."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aimsvoice.server.config import ServerConfig
from aimsvoice.server.ray.config import (
    DEFAULT_SESSION_MINUTES, DRAIN_MARGIN_S, HEADROOM_REQUESTS, ROUTER_CLASS, RayConfig, code_version, configs_from_args,
    haproxy_env, parse_autoscale, voice_options,
)
from aimsvoice.server.ray.health import STALE_S, DeploymentView, replica_states
from aimsvoice.server.ray.routing import CLAIM_TTL_S, Claims, RowPolicy

ROOT = Path(__file__).parent.parent

# -- routing ----------------------------------------------------------------------------------


def test_a_session_goes_to_a_free_row_least_loaded_first_and_full_replicas_come_last() -> None:
    policy = RowPolicy(max_sessions=2, rng=random.Random(0))
    reported = {"full": 2, "busy": 1, "idle": 0, "silent": None, "over": 3}
    assert policy.rank(reported, {}) == ["idle", "busy", "silent", "full", "over"]
    assert RowPolicy(3).rank({"a": 2, "b": 1}, {"a": 1}) == ["b", "a"]  # a claim within the count changes nothing
    assert policy.rank({"a": 0, "b": 1}, {"a": 2}) == ["b", "a"]  # a's answer predates two sessions on their way


def test_ties_are_broken_at_random_so_equal_replicas_share_sessions() -> None:
    policy = RowPolicy(max_sessions=4, rng=random.Random(1))
    firsts = {policy.rank({"a": 0, "b": 0, "c": 0}, {})[0] for _ in range(60)}
    assert firsts == {"a", "b", "c"}
    with pytest.raises(ValueError):
        RowPolicy(max_sessions=0)


def test_claims_count_until_completed_and_unconfirmed_ones_lapse() -> None:
    claims = Claims()
    claims.claim("r1", "a", now=0.0)
    claims.claim("r2", "a", now=0.0)
    claims.claim("r3", "b", now=0.0)
    assert claims.counts(1.0) == {"a": 2, "b": 1}
    claims.confirm("r1", "a")
    claims.confirm("r3", "c")  # routed elsewhere in the end: counted where it went
    assert claims.counts(CLAIM_TTL_S + 1) == {"a": 1, "c": 1}  # r2 was never confirmed: it lapsed
    claims.release("r1")
    claims.release("r3")
    claims.release("never")
    assert claims.counts(CLAIM_TTL_S + 2) == {} and len(claims) == 0


# -- /healthz of the deployment ---------------------------------------------------------------


def _health(sessions: int, most: int = 2, model: str = "warm") -> dict:
    return {"status": "ok", "model": model, "loading": False, "device": "cuda:0", "sessions_active": sessions,
            "sessions_max": most, "tick_ms_p50": 20.0, "tick_ms_p99": 30.0, "tick_budget_ms": 80.0}


def test_healthz_counts_every_session_but_only_running_replicas_rows() -> None:
    view = DeploymentView()
    view.report("a", _health(2), now=0.0)
    view.report("b", _health(1), now=0.0)
    summary = view.summary({"a": "RUNNING", "b": "STOPPING", "c": "STARTING"}, now=1.0)
    assert summary["status"] == "ok" and summary["model"] == "warm"
    assert summary["sessions_active"] == 3 and summary["sessions_max"] == 2
    assert summary["replicas_running"] == 1 and summary["replicas_draining"] == 1
    states = {r["replica"]: (r["state"], r["model"], r["sessions_active"]) for r in summary["replicas"]}
    assert states == {"a": ("running", "warm", 2), "b": ("draining", "warm", 1), "c": ("starting", "loading", 0)}
    assert summary["replicas"][0]["device"] == "cuda:0" and "loading" not in summary["replicas"][0]


def test_healthz_drops_replicas_gone_or_silent_and_copes_without_the_controller() -> None:
    view = DeploymentView()
    view.report("a", _health(0, model="cold"), now=0.0)
    view.report("b", _health(1), now=0.0)
    assert view.summary({"a": "RUNNING"}, now=1.0)["sessions_active"] == 0  # b is no longer a replica of the deployment
    assert view.summary(None, now=1.0)["replicas_running"] == 2  # the controller did not answer: the reports count
    cold = view.summary({"a": "RUNNING"}, now=1.0)
    assert cold["model"] == "cold" and cold["status"] == "ok"  # cold still admits (it loads for the next session)
    view.gone("b")
    assert view.summary(None, now=STALE_S + 1)["status"] == "unavailable"  # nobody reported lately
    assert view.summary({}, now=0.0)["replicas"] == []


def test_replica_states_read_the_controllers_details() -> None:
    class State:
        value = "STOPPING"

    details = {"applications": {"aimsvoice": {"deployments": {"VoiceReplica": {"replicas": [
        {"replica_id": "a", "state": "RUNNING"}, {"replica_id": "b", "state": State()}]}}}}}
    assert replica_states(details, "aimsvoice", "VoiceReplica") == {"a": "RUNNING", "b": "STOPPING"}
    assert replica_states({"applications": {}}, "aimsvoice", "VoiceReplica") == {}


# -- the options that carry the policy --------------------------------------------------------


def _config(**overrides) -> ServerConfig:
    return ServerConfig(**{"model": "tiny", "device": "cpu", "dtype": "float32", "max_sessions": 4, "session_minutes": 10.0, **overrides})


def test_options_leave_headroom_drain_for_a_session_and_route_by_rows() -> None:
    options = voice_options(_config(), RayConfig(replicas=3))
    assert options["num_replicas"] == 3 and options["max_ongoing_requests"] == 4 + HEADROOM_REQUESTS
    assert options["graceful_shutdown_timeout_s"] == 600 + DRAIN_MARGIN_S
    assert options["request_router_config"] == {"request_router_class": ROUTER_CLASS, "request_router_kwargs": {"max_sessions": 4}}
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    scaled = voice_options(_config(device="auto"), RayConfig(autoscale=(1, 4)), cluster_gpus=8)
    assert scaled["num_replicas"] == "auto" and scaled["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    autoscaling = scaled["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["initial_replicas"], autoscaling["max_replicas"]) == (1, 1, 4)
    assert 0 < autoscaling["target_ongoing_requests"] < 4  # scale up before the last row is taken
    assert voice_options(_config(session_minutes=None), RayConfig())["graceful_shutdown_timeout_s"] == (
        60 * DEFAULT_SESSION_MINUTES + DRAIN_MARGIN_S)
    with pytest.raises(ValueError, match="max_sessions"):
        voice_options(replace(_config(), max_sessions=None), RayConfig())


def test_behind_haproxy_there_is_no_router_of_ours_and_the_drain_outlasts_a_session() -> None:
    options = voice_options(_config(), RayConfig(), haproxy=True)
    assert "request_router_config" not in options  # Serve refuses one on an ingress behind HAProxy
    env = haproxy_env(_config())
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) >= 600  # a leaving replica's sessions end first
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < options["graceful_shutdown_timeout_s"]
    assert int(env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"]) >= options["graceful_shutdown_timeout_s"]


def test_the_code_version_changes_with_the_servers_settings_only() -> None:
    config = _config()
    assert code_version(config) == code_version(_config())  # a redeploy with another replica count restarts nothing
    assert code_version(config) != code_version(_config(idle_timeout=60.0))
    assert code_version(config).startswith("aimsvoice-")


def test_autoscale_and_replica_counts_are_checked() -> None:
    assert parse_autoscale("1:4") == (1, 4) and parse_autoscale("2:2") == (2, 2)
    for bad in ("4", "4:1", "0:2", "a:b", "1:2:3", ""):
        with pytest.raises(ValueError):
            parse_autoscale(bad)
    with pytest.raises(ValueError):
        RayConfig(replicas=0)
    with pytest.raises(ValueError):
        RayConfig(autoscale=(3, 2))


# -- the Serve config file --------------------------------------------------------------------


def test_serve_config_args_become_the_same_configs_the_cli_makes() -> None:
    config, ray_config = configs_from_args({"model": "tiny", "max_sessions": 2, "token_file": "/etc/token", "allow_origins": ["*"]})
    assert config.host == "0.0.0.0" and config.token_file == Path("/etc/token") and config.allow_origins == ("*",)
    assert config.session_minutes == DEFAULT_SESSION_MINUTES and ray_config == RayConfig()
    assert configs_from_args({"max_sessions": 1, "autoscale": "1:3"})[1].autoscale == (1, 3)
    with pytest.raises(ValueError, match="unknown args"):
        configs_from_args({"max_sessions": 1, "ssl": "self-signed"})
    with pytest.raises(ValueError, match="max_sessions"):
        configs_from_args({"model": "tiny"})


def test_the_repositorys_serve_config_is_valid_for_serve_and_builds() -> None:
    pytest.importorskip("ray.serve")
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from aimsvoice.server.ray.config import HEALTH_APP, MAIN_APP, VOICE_DEPLOYMENT
    from aimsvoice.server.ray.deployment import health_app, voice_app

    document = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)
    apps = {app.name: app for app in schema.applications}
    assert apps[HEALTH_APP].route_prefix == "/healthz" and apps[MAIN_APP].route_prefix == "/"
    assert [d.name for d in apps[MAIN_APP].deployments] == [VOICE_DEPLOYMENT]
    assert schema.http_options.request_timeout_s is None  # WebSocket sessions are not cut by Serve's timeout
    assert voice_app(apps[MAIN_APP].args) is not None and health_app() is not None
    configs_from_args(apps[MAIN_APP].args)


# -- the CLI ----------------------------------------------------------------------------------


def test_the_single_node_server_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "import aimsvoice.cli, aimsvoice.server.app, aimsvoice.server.run\n"
        "import aimsvoice.server.ray.config, aimsvoice.server.ray.routing, aimsvoice.server.ray.health\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_options_need_ray_and_say_how_to_install_it(capsys, monkeypatch) -> None:
    from cli_run import run_main

    code, _, err = run_main(["serve", "--model", "tiny", "--replicas", "2"], capsys, monkeypatch)
    assert code == 2 and "--ray" in err
    code, _, err = run_main(["serve", "--ray", "--model", "tiny", "--replicas", "2", "--autoscale", "1:2"], capsys, monkeypatch)
    assert code == 2 and "not both" in err
    code, _, err = run_main(["serve", "--ray", "--model", "tiny", "--autoscale", "3"], capsys, monkeypatch)
    assert code == 2 and "MIN:MAX" in err
    code, _, err = run_main(["serve", "--ray", "--model", "tiny"], capsys, monkeypatch)
    assert code == 1 and "--max-sessions" in err and err.count("\n") == 1
    code, _, err = run_main(["serve", "--ray", "--model", "tiny", "--max-sessions", "1", "--ssl", "self-signed"], capsys, monkeypatch)
    assert code == 1 and "TLS in front" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = run_main(["serve", "--ray", "--model", "tiny", "--max-sessions", "1"], capsys, monkeypatch)
    assert code == 1 and "pip install 'aimsvoice[ray]'" in err and err.count("\n") == 1
