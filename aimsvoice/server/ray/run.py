"""`aimsvoice serve --ray`: check what can be checked here, start (or join) Ray, deploy, and stop cleanly.

`RayDeployment` drives a deployment from this process (the CLI and the tests use it):
`start()` connects to Ray and Serve and deploys both applications (DeploymentHealth first, so
the replicas have somewhere to report); `deploy(ray_config)` redeploys with another replica count
or autoscaling range, which restarts nothing (the code version is unchanged, config.py);
`health()` is /healthz; `close()` asks every replica to end its sessions with `end`, waits for
them, then `serve.shutdown()` and `ray.shutdown()`, always.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any, Callable

from ...errors import ServerError
from ..access import access_for
from ..config import SEND_TIMEOUT_S, ServerConfig
from .config import DEFAULT_SESSION_MINUTES, HEALTH_APP, MAIN_APP, RayConfig, actor_options, haproxy_env

INSTALL_HINT = "pip install 'aimsvoice[ray]'"
STOP_WAIT_S = 2 * SEND_TIMEOUT_S + 2.0  # sessions told to end have sent `end` and closed by then
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def check_ray_config(config: ServerConfig) -> ServerConfig:
    """The ServerConfig a deployment runs with, or a ServerError naming what --ray cannot do."""
    if config.port == 0:
        raise ServerError("--port 0 with --ray: Serve's proxies listen on one fixed port on every node; give one")
    if config.ssl is not None:
        raise ServerError("--ssl with --ray: terminate TLS in front of Ray Serve's proxy (a load balancer, Caddy or nginx; "
                          "see README, Past one GPU), then serve plain HTTP behind it")
    if config.unload_after is not None:
        raise ServerError("--unload-after with --ray: replicas leave by autoscaling instead (--autoscale MIN:MAX keeps MIN warm)")
    if config.max_sessions is None:
        raise ServerError("--ray needs --max-sessions N: Ray routes and scales by each replica's rows")
    engine = getattr(config, "engine", "auto")
    if engine not in ("auto", "personaplex"):
        raise ServerError(f"--engine {engine} with --ray: the replicas run PersonaPlex; drop --engine, or serve {engine} without --ray")
    access_for(config)  # a host beyond loopback without a token, an unreadable token file: refused here, not in every replica
    if config.session_minutes is None:
        config = replace(config, session_minutes=DEFAULT_SESSION_MINUTES)
    return config


def import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ServerError(f"--ray needs Ray Serve, which is not installed ({e.name}); {INSTALL_HINT}") from e
    return ray, serve


class RayDeployment:
    """`aimsvoice serve` deployed on Ray Serve, driven from this process."""

    def __init__(self, config: ServerConfig, ray_config: RayConfig, *, ray_init: dict[str, Any] | None = None) -> None:
        self.config = check_ray_config(config)
        self.ray_config = ray_config
        self._ray_init = ray_init or {}
        self._ray, self._serve = import_ray()
        self._connected = False

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.config.port}"

    def start(self) -> None:
        """Connect to (or start) Ray, start Serve's proxies on host:port, deploy both applications."""
        ray, serve = self._ray, self._serve
        if not ray.is_initialized():
            if self.ray_config.address is None and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
                for name, value in haproxy_env(self.config).items():  # so that HAProxy cuts no session (config.py)
                    os.environ.setdefault(name, value)
            if self.ray_config.address is None:  # a Ray instance of our own, even if another runs here
                ray.init(address="local", include_dashboard=False, **self._ray_init)
            else:
                ray.init(address=self.ray_config.address, **self._ray_init)
            self._connected = True
        # request_timeout_s stays unset: a WebSocket session lasts minutes, Serve's timeout would cut it.
        serve.start(http_options={"host": self.config.host, "port": self.config.port})
        from .deployment import health_application

        serve.run(health_application(), name=HEALTH_APP, route_prefix="/healthz")
        self.deploy(self.ray_config)

    def deploy(self, ray_config: RayConfig) -> None:
        """(Re)deploy the sessions' application with this replica count or autoscaling range; returns once it runs."""
        from .deployment import voice_application

        self.ray_config = ray_config
        gpus = self._ray.cluster_resources().get("GPU", 0.0)
        wanted = ray_config.autoscale[0] if ray_config.autoscale else ray_config.replicas
        per_replica = actor_options(self.config, ray_config, gpus).get("num_gpus", 0.0)
        if ray_config.address is None and wanted * per_replica > gpus:  # here nothing would ever make room
            raise ServerError(f"{wanted} replicas need {wanted * per_replica:g} GPUs; this machine has {gpus:g}: "
                              f"ask for fewer replicas, or join a cluster with --ray-address")
        try:
            self._serve.run(voice_application(self.config, ray_config, cluster_gpus=gpus), name=MAIN_APP, route_prefix="/")
        except RuntimeError as e:
            raise ServerError(f"the deployment failed to start: {e}; the replicas' logs are in Ray's session folder") from e

    def health(self) -> dict[str, Any]:
        """/healthz of the whole deployment."""
        return self._serve.get_app_handle(HEALTH_APP).summary.remote().result(timeout_s=30)

    def stop_sessions(self, wait_s: float = STOP_WAIT_S) -> None:
        """Every replica ends its sessions with `end`; returns when none is left (or after wait_s)."""
        handle = self._serve.get_app_handle(HEALTH_APP)
        handle.stop_sessions.remote().result(timeout_s=30)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.health()["sessions_active"] > 0:
            time.sleep(0.2)

    def close(self) -> None:
        """End every session, remove the deployment and disconnect, always: on a Ray of our own
        `serve.shutdown()` and `ray.shutdown()`; on a cluster only our two applications are deleted."""
        try:
            if self._ray.is_initialized():
                try:
                    self.stop_sessions()
                except Exception as e:  # the deployment is not up (it failed to start, say): nothing to end
                    logging.getLogger("aimsvoice.server").debug("no sessions to end: %s", e)
        finally:
            try:
                if self._ray.is_initialized():
                    if self.ray_config.address is None:
                        self._serve.shutdown()
                    else:  # a shared cluster: other applications stay
                        for app in (MAIN_APP, HEALTH_APP):
                            self._serve.delete(app)
            finally:
                if self._connected:
                    self._ray.shutdown()
                    self._connected = False

    def detach(self) -> None:
        """Leave the deployment running on the cluster and disconnect from it."""
        if self._connected:
            self._ray.shutdown()
            self._connected = False


def serve_ray(config: ServerConfig, ray_config: RayConfig, *, echo: Callable[[str], None] = print) -> None:
    """`aimsvoice serve --ray`. On a cluster (--ray-address): deploy and return, the deployment stays.
    Here: serve until Ctrl-C, then end the sessions with `end` and take everything down."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    deployment = RayDeployment(config, ray_config)
    config = deployment.config
    if ray_config.address is None:
        _check_here(config)
    echo("starting Ray and Serve ..." if ray_config.address is None else f"joining the Ray cluster at {ray_config.address} ...")
    try:
        deployment.start()
        health = deployment.health()
        running = health["replicas_running"]
        scale = (f"{ray_config.autoscale[0]}-{ray_config.autoscale[1]} replicas (autoscaling)" if ray_config.autoscale
                 else f"{running} replica{'s' if running != 1 else ''}")
        most = health["sessions_max"]
        echo(
            f"serving {most} session{'s' if most != 1 else ''} at once on {scale} of {config.max_sessions} each: "
            f"ws://{deployment.url}/api/chat, ws://{deployment.url}/ws, http://{deployment.url}/healthz"
        )
        if ray_config.address is not None:
            echo("deployed; it stays on the cluster: `serve status` shows it, `serve shutdown` removes it")
            deployment.detach()
            return
        echo("Ctrl-C stops (sessions get their `end` first)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        echo("stopping: ending every session ...")
    finally:
        deployment.close()


def _check_here(config: ServerConfig) -> None:
    """A local cluster: the model and the port can be checked before Ray starts."""
    from ...engine import check_model
    from ...session import resolve_model_dir
    from ..run import bind

    check_model(resolve_model_dir(config.model))
    bind(config.host, config.port).close()
