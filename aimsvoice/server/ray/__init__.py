"""`aimsvoice serve --ray`: the serve application as a Ray Serve deployment, one replica per GPU.

Kept apart from the single-node server, which it reuses whole: each replica runs `create_app`
(its own scheduler and batched engine, loaded before it takes traffic) and owns the WebSocket
sessions Serve's proxy hands it; audio frames never cross a deployment handle. Ray is an optional
extra (`pip install 'aimsvoice[ray]'`); nothing outside this package imports it.

- config.py: `RayConfig` and the Serve options that carry the policy (no Ray import): Ray's
  per-replica request limit = the session limit + headroom; drain time = the session length +
  a margin; a code version that changes only with the settings.
- routing.py: where a new session goes (a replica with a free row, least loaded first), pure;
  router.py: Serve's request-router hooks around it.
- health.py: /healthz for the whole deployment from the replicas' reports, pure;
  deployment.py: the `VoiceReplica` and `DeploymentHealth` deployments and the application
  builders of deploy/serve-config.yaml.
- metrics.py: the single-node metrics mirrored into Ray's, with the replica as a label.
- run.py: `serve_ray` (the CLI) and `RayDeployment` (start, redeploy, health, close).

Sessions are never cut: a replica chosen to leave (downscale, update) is out of the routing at
once and keeps its sessions until they end by their limits (`--session-minutes` bounds the wait);
a shutdown first has every replica end its sessions with `end`.
"""

from __future__ import annotations

from ... import lazy_exports

_EXPORTS = {
    "RayConfig": ".config",
    "parse_autoscale": ".config",
    "RayDeployment": ".run",
    "serve_ray": ".run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
