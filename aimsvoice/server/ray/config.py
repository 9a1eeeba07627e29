"""What `aimsvoice serve --ray` deploys: one frozen config, and the Ray Serve options that follow from it. No Ray here.

The options encode the policy of the deployment (see the package docstring):

- `max_ongoing_requests` is the replica's session limit plus HEADROOM_REQUESTS, so Ray never
  queues a WebSocket in front of a replica: a session past the deployment's capacity reaches a
  replica and is refused by its own governance (503 / 1013), at once. The request router
  (routing.py) sends a session to a replica with a free row whenever one has.
- `graceful_shutdown_timeout_s` is the session length plus DRAIN_MARGIN_S: a replica chosen to
  leave (downscale, update) keeps its sessions until they end by their own limits, then leaves.
- `code_version` is a hash of everything a replica is built from (aimsvoice's version and the
  ServerConfig): a redeploy that changes only the replica count or autoscaling restarts nothing;
  one that changes the server's settings replaces the replicas one by one, each drained first.
  (`serve deploy` with a config file gets the same from Serve itself, which versions an
  application by its import path and args.)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ServerConfig

MAIN_APP = "aimsvoice"  # the sessions: /api/chat, /ws, /metrics (route prefix "/")
HEALTH_APP = "aimsvoice-health"  # /healthz for the whole deployment, and the replicas' reports
VOICE_DEPLOYMENT = "VoiceReplica"
HEALTH_DEPLOYMENT = "DeploymentHealth"
ROUTER_CLASS = "aimsvoice.server.ray.router:RowRouter"

HEADROOM_REQUESTS = 4  # requests a replica takes beyond its sessions: a refusal, /metrics, a bad request, in flight
DRAIN_MARGIN_S = 60.0  # a leaving replica's wait beyond the session length: a late prompt, the end message, the close
DRAIN_POLL_S = 1.0  # how often a leaving replica checks whether its sessions have ended
DEFAULT_SESSION_MINUTES = 30.0  # --ray without --session-minutes: what bounds a replica's drain
AUTOSCALE_TARGET = 0.7  # autoscaling keeps sessions per replica near this share of its rows: a row stays free
UPSCALE_DELAY_S = 5.0
DOWNSCALE_DELAY_S = 120.0
CPUS_WITH_GPU = 1.0  # per replica: the tick thread, the codecs, the event loop
CPUS_WITHOUT_GPU = 0.5  # per replica on CPU (the tiny model): fractional, so small machines hold several


@dataclass(frozen=True)
class RayConfig:
    """How the deployment runs on Ray.

    replicas: a fixed number of replicas (ignored with autoscale).
    autoscale: (min, max) replicas, scaled by sessions; the model stays warm on `min`.
    address: a Ray cluster to join ("auto" on one of its machines, or "10.0.0.1:6379"); None starts one here.
    gpus_per_replica: None: 1 when the device is cuda, or auto and the cluster has GPUs; else 0.
    cpus_per_replica: None: CPUS_WITH_GPU or CPUS_WITHOUT_GPU.
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    address: str | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 1 <= low <= high:
                raise ValueError(f"autoscale must be MIN:MAX with 1 <= MIN <= MAX, not {low}:{high}")


def parse_autoscale(text: str) -> tuple[int, int]:
    """"1:4" -> (1, 4); ValueError naming the form otherwise."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not MIN:MAX, e.g. 1:4")
    low, high = int(parts[0]), int(parts[1])
    if not 1 <= low <= high:
        raise ValueError(f"{text!r}: need 1 <= MIN <= MAX, e.g. 1:4")
    return low, high


def drain_s(config: ServerConfig) -> float:
    """How long a leaving replica may wait for its sessions: the session length and a margin."""
    session_s = config.session_s if config.session_s is not None else 60.0 * DEFAULT_SESSION_MINUTES
    return session_s + DRAIN_MARGIN_S


def haproxy_env(config: ServerConfig) -> dict[str, str]:
    """What Serve's HAProxy ingress needs so that it cuts no session (set on every node before Ray starts).

    Behind HAProxy a leaving replica closes its HTTP server after RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
    (30 s by default), and uvicorn then closes every WebSocket with 1012, no `end`; HAProxy drops a
    reloaded-out process's connections RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S (120 s) after a reload. Both
    must outlast a session. The cost: a leaving replica stays that long even once its sessions have ended."""
    session_s = config.session_s if config.session_s is not None else 60.0 * DEFAULT_SESSION_MINUTES
    return {
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(math.ceil(session_s + DRAIN_MARGIN_S / 2)),
        "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(math.ceil(drain_s(config))),
    }


def code_version(config: ServerConfig) -> str:
    """A stable version for the replicas' code and settings: same inputs, same version, no restart."""
    from ... import __version__

    fields = {k: str(v) for k, v in sorted(asdict(config).items())}
    digest = hashlib.sha256(repr((__version__, fields)).encode()).hexdigest()[:16]
    return f"aimsvoice-{__version__}-{digest}"


def uses_gpu(config: ServerConfig, ray_config: RayConfig, cluster_gpus: float) -> bool:
    if ray_config.gpus_per_replica is not None:
        return ray_config.gpus_per_replica > 0
    if config.device == "cuda":
        return True
    return config.device == "auto" and cluster_gpus > 0


def actor_options(config: ServerConfig, ray_config: RayConfig, cluster_gpus: float) -> dict[str, Any]:
    """Each replica's Ray resources: one GPU where there are GPUs (one replica per GPU), fractional CPUs otherwise."""
    gpu = uses_gpu(config, ray_config, cluster_gpus)
    gpus = ray_config.gpus_per_replica if ray_config.gpus_per_replica is not None else (1.0 if gpu else 0.0)
    cpus = ray_config.cpus_per_replica if ray_config.cpus_per_replica is not None else (CPUS_WITH_GPU if gpu else CPUS_WITHOUT_GPU)
    options: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    return options


def autoscaling_options(max_sessions: int, low: int, high: int) -> dict[str, Any]:
    """Scale on sessions (Serve's ongoing requests per replica), keeping about a row in three free."""
    return {
        "min_replicas": low,
        "initial_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": max(0.5, AUTOSCALE_TARGET * max_sessions),
        "upscale_delay_s": UPSCALE_DELAY_S,
        "downscale_delay_s": DOWNSCALE_DELAY_S,
    }


def voice_options(config: ServerConfig, ray_config: RayConfig, *, cluster_gpus: float = 0.0, haproxy: bool = False) -> dict[str, Any]:
    """The VoiceReplica deployment's options (`Deployment.options(**these)`), plain values only.

    haproxy: Serve's HAProxy ingress is on (RAY_SERVE_ENABLE_HA_PROXY=1). HAProxy then balances the
    WebSockets itself (least connections) and Serve refuses a request router of our own."""
    if config.max_sessions is None:
        raise ValueError("the deployment needs max_sessions: Ray routes and scales by each replica's rows")
    options: dict[str, Any] = {
        "name": VOICE_DEPLOYMENT,
        "max_ongoing_requests": config.max_sessions + HEADROOM_REQUESTS,
        "graceful_shutdown_timeout_s": drain_s(config),
        "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
        "ray_actor_options": actor_options(config, ray_config, cluster_gpus),
    }
    if not haproxy:
        options["request_router_config"] = {
            "request_router_class": ROUTER_CLASS,
            "request_router_kwargs": {"max_sessions": config.max_sessions},
        }
    if ray_config.autoscale is not None:
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = autoscaling_options(config.max_sessions, *ray_config.autoscale)
    else:
        options["num_replicas"] = ray_config.replicas
    return options


def health_options() -> dict[str, Any]:
    """The DeploymentHealth deployment: one small replica, no GPU, many concurrent reports and probes."""
    return {
        "name": HEALTH_DEPLOYMENT,
        "num_replicas": 1,
        "max_ongoing_requests": 1000,
        "ray_actor_options": {"num_cpus": 0.05},
        "logging_config": {"enable_access_log": False},  # every report and probe would be a line
    }



# -- a Serve config file's `args` ---------------------------------------------------------------

RAY_ARGS = {"replicas", "autoscale", "gpus_per_replica", "cpus_per_replica"}
PATH_ARGS = {"token_file", "record"}


def configs_from_args(args: dict[str, Any]) -> tuple[ServerConfig, RayConfig]:
    """The `args` of the aimsvoice application in a Serve config file -> (ServerConfig, RayConfig).

    Keys: ServerConfig's fields (model, device, dtype, host, max_sessions, session_minutes,
    idle_timeout, token_file, allow_origins, record, context) and replicas, autoscale ("MIN:MAX"),
    gpus_per_replica, cpus_per_replica. ValueError names an unknown key or a bad value."""
    known = set(ServerConfig.__dataclass_fields__) - {"port", "ssl", "unload_after"}
    unknown = sorted(set(args) - known - RAY_ARGS)
    if unknown:
        raise ValueError(f"unknown args {unknown}; known: {sorted(known | RAY_ARGS)}")
    server = {k: v for k, v in args.items() if k in known}
    for key in PATH_ARGS & set(server):
        if server[key] is not None:
            server[key] = Path(server[key])
    if "allow_origins" in server:
        server["allow_origins"] = tuple(server["allow_origins"] or ())
    server.setdefault("host", "0.0.0.0")  # behind Serve's proxy: the access rules of an exposed server
    if server.get("session_minutes") is None:
        server["session_minutes"] = DEFAULT_SESSION_MINUTES
    config = ServerConfig(**server)
    if config.max_sessions is None:
        raise ValueError("args.max_sessions is required: Ray routes and scales by each replica's rows")
    autoscale = args.get("autoscale")
    ray_config = RayConfig(
        replicas=int(args.get("replicas", 1)),
        autoscale=parse_autoscale(str(autoscale)) if autoscale else None,
        gpus_per_replica=args.get("gpus_per_replica"),
        cpus_per_replica=args.get("cpus_per_replica"),
    )
    return config, ray_config
