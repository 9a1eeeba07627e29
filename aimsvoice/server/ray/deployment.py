"""The two Ray Serve deployments, and the application builders a Serve config file names.

- `VoiceReplica` (application "aimsvoice", route prefix "/"): the single-node ASGI app of
  `aimsvoice serve` (`create_app`), one per replica, with its own scheduler and batched engine,
  loaded before the replica takes traffic (Serve runs the app's lifespan). Every session's
  WebSocket is one request that stays on its replica; frames never cross a handle. Beside the app,
  a reporter task sends the scheduler's health to DeploymentHealth when it changes and at least
  every REPORT_EVERY_S, and obeys its answer (`stop`: end every session with `end`, for a
  shutdown). Its metrics are mirrored into Ray's (metrics.py).
- `DeploymentHealth` (application "aimsvoice-health", route prefix "/healthz"): one small replica
  that keeps the reports and answers /healthz for the whole deployment (health.py), with Serve's
  controller's view of which replicas run and which drain. It lives in its own application so a
  health probe never counts as a request on the replicas that hold sessions (routing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import ray
from ray import serve
from starlette.responses import JSONResponse

from ..app import create_app
from ..config import ServerConfig
from .config import (
    HEALTH_APP, HEALTH_DEPLOYMENT, MAIN_APP, VOICE_DEPLOYMENT, RayConfig, code_version, configs_from_args, health_options,
    voice_options,
)
from .health import REPORT_EVERY_S, DeploymentView, replica_states
from .metrics import mirror_to_ray

logger = logging.getLogger("aimsvoice.server")

POLL_S = 0.1  # the reporter looks at the scheduler this often, and reports at once what changed
REPORT_TIMEOUT_S = 5.0
STATES_TTL_S = 0.25  # /healthz asks the controller which replicas run at most this often
CHANGES = ("model", "loading", "sessions_active", "sessions_max")  # what a report is sent at once for


@serve.ingress()
class VoiceReplica:
    """One replica: `aimsvoice serve`'s app on one device, and its reporter."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._health = serve.get_deployment_handle(HEALTH_DEPLOYMENT, app_name=HEALTH_APP)

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.config)
        mirror_to_ray(app.state.server.metrics)
        scheduler = app.state.server.scheduler
        serve_app = app.router.lifespan_context  # the scheduler's: load, serve, stop

        @asynccontextmanager
        async def lifespan(asgi_app: Any) -> AsyncIterator[None]:
            async with serve_app(asgi_app):
                reporter = asyncio.create_task(self._report(scheduler))
                try:
                    yield
                finally:
                    reporter.cancel()
                    with contextlib.suppress(BaseException):
                        await reporter
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._health.gone.remote(self.replica_id), REPORT_TIMEOUT_S)

        app.router.lifespan_context = lifespan
        return app

    async def _report(self, scheduler: Any) -> None:
        last: tuple[Any, ...] | None = None
        sent_at = 0.0
        stopped = False
        while True:
            health = scheduler.health()
            key = tuple(health.get(k) for k in CHANGES)
            now = time.monotonic()
            if key != last or now - sent_at >= REPORT_EVERY_S:
                try:
                    reply = await asyncio.wait_for(self._health.report.remote(self.replica_id, health), REPORT_TIMEOUT_S)
                except Exception as e:  # DeploymentHealth not up yet, or restarting: try again next turn
                    logger.debug("replica %s: report failed: %s", self.replica_id, e)
                else:
                    last, sent_at = key, now
                    if reply.get("stop") and not stopped:
                        stopped = True
                        logger.info("replica %s: the deployment stops; ending every session", self.replica_id)
                        await asyncio.to_thread(scheduler.stop)
            await asyncio.sleep(POLL_S)


@serve.ingress()
class DeploymentHealth:
    """The replicas' reports, and /healthz for the whole deployment."""

    def __init__(self, app_name: str = MAIN_APP, deployment_name: str = VOICE_DEPLOYMENT) -> None:
        self._view = DeploymentView()
        self._app_name = app_name
        self._deployment_name = deployment_name
        self._stop = False
        self._states: dict[str, str] | None = None
        self._states_at = -1e9
        self._controller: Any = None

    async def report(self, replica_id: str, health: dict[str, Any]) -> dict[str, Any]:
        self._view.report(replica_id, health, time.monotonic())
        return {"stop": self._stop}

    async def gone(self, replica_id: str) -> None:
        self._view.gone(replica_id)

    async def stop_sessions(self) -> None:
        """Every replica ends its sessions (with `end`) at its next report: the deployment is shutting down."""
        self._stop = True

    async def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._states_at >= STATES_TTL_S:
            self._states = await self._replica_states()
            self._states_at = time.monotonic()
        return self._view.summary(self._states, time.monotonic())

    async def _replica_states(self) -> dict[str, str] | None:
        # Serve's controller (as `serve status` asks it): which replicas run, which drain.
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        try:
            if self._controller is None:
                self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            details = await asyncio.wait_for(self._controller.get_serve_instance_details.remote(), REPORT_TIMEOUT_S)
        except Exception as e:
            logger.warning("/healthz: Serve's controller did not answer (%s); counting the replicas that report", e)
            self._controller = None
            return None
        return replica_states(details, self._app_name, self._deployment_name)

    def __serve_build_asgi_app__(self) -> Any:
        async def healthz(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            elif scope["type"] == "http":
                summary = await self.summary()
                await JSONResponse(summary, 200 if summary["status"] == "ok" else 503)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})

        return healthz


# -- applications -------------------------------------------------------------------------------


def voice_application(config: ServerConfig, ray_config: RayConfig, *, cluster_gpus: float = 0.0) -> Any:
    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"  # as Serve reads it where the application is built
    options = voice_options(config, ray_config, cluster_gpus=cluster_gpus, haproxy=haproxy)
    deployment = serve.deployment(VoiceReplica).options(**options)
    # A stable code version: Serve 2.60 gives every `serve.run` a random one (a restart of every
    # replica) unless one is set, and sets it only through this internal flag.
    return deployment.options(version=code_version(config), _internal=True).bind(config)


def health_application() -> Any:
    from ... import __version__

    deployment = serve.deployment(DeploymentHealth).options(**health_options())
    return deployment.options(version=f"aimsvoice-{__version__}-health", _internal=True).bind()


def voice_app(args: dict[str, Any]) -> Any:
    """`import_path: aimsvoice.server.ray.deployment:voice_app` in a Serve config file (deploy/serve-config.yaml)."""
    config, ray_config = configs_from_args(dict(args or {}))
    gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    return voice_application(config, ray_config, cluster_gpus=gpus)


def health_app(args: dict[str, Any] | None = None) -> Any:
    """`import_path: aimsvoice.server.ray.deployment:health_app` in a Serve config file."""
    return health_application()
