"""/healthz for the whole deployment, from the replicas' reports and Serve's view of them. Pure.

Each replica reports its scheduler's health (the single-node /healthz numbers: model warm or
cold, sessions active and max, device, tick times) to the DeploymentHealth replica when it
changes and at least every REPORT_EVERY_S. Serve's controller says which replicas run and which
are leaving (STOPPING: a downscale or an update chose them; they take no new session and drain
the ones they have). `DeploymentView.summary` joins the two:

- `replicas`: one entry per replica, `state` running / draining / starting, with its own numbers;
- `sessions_active`: every session, draining replicas' included (they are still being served);
- `sessions_max`: the rows of running replicas only (a draining replica takes no new session);
- `model`: warm when a running replica is warm; `status`: ok when a running replica has reported.

A report older than STALE_S is left out (the replica is gone or stuck); a replica that has not
reported yet shows as loading.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..config import FRAME_S

REPORT_EVERY_S = 1.0  # a replica reports at least this often, and at once when its numbers change
STALE_S = 5.0
RUNNING_STATES = frozenset({"RUNNING"})
DRAINING_STATES = frozenset({"STOPPING"})
REPORTED_FIELDS = ("model", "loading", "device", "sessions_active", "sessions_max", "tick_ms_p50", "tick_ms_p99")


class DeploymentView:
    """The latest report of every replica, and the summary /healthz shows."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[dict[str, Any], float]] = {}

    def report(self, replica_id: str, health: Mapping[str, Any], now: float) -> None:
        self._reports[replica_id] = ({k: health.get(k) for k in REPORTED_FIELDS}, now)

    def gone(self, replica_id: str) -> None:
        self._reports.pop(replica_id, None)

    def sessions_active(self, now: float) -> int:
        return sum(report.get("sessions_active") or 0 for report in self._fresh(now).values())

    def _fresh(self, now: float) -> dict[str, dict[str, Any]]:
        for replica_id, (_, at) in list(self._reports.items()):
            if now - at > STALE_S:
                del self._reports[replica_id]
        return {replica_id: report for replica_id, (report, _) in self._reports.items()}

    def summary(self, states: Mapping[str, str] | None, now: float) -> dict[str, Any]:
        """states: Serve's state of each replica of the deployment (None: the controller did not answer;
        then every fresh report counts as a running replica)."""
        reports = self._fresh(now)
        ids = set(reports) if states is None else set(states)
        replicas = []
        for replica_id in sorted(ids):
            state = "RUNNING" if states is None else states[replica_id]
            role = "running" if state in RUNNING_STATES else "draining" if state in DRAINING_STATES else "starting"
            report = reports.get(replica_id)
            entry: dict[str, Any] = {"replica": replica_id, "state": role}
            if report is None:
                entry.update(model="loading", sessions_active=0, sessions_max=None)
            else:
                entry.update(report)
                entry["model"] = "loading" if report.get("loading") else report.get("model")
                entry.pop("loading", None)
                entry["sessions_active"] = report.get("sessions_active") or 0
            replicas.append(entry)
        running = [e for e in replicas if e["state"] == "running"]
        reporting = [e for e in running if e["model"] in ("warm", "cold")]
        return {
            "status": "ok" if reporting else "unavailable",
            "model": "warm" if any(e["model"] == "warm" for e in running) else "cold",
            "sessions_active": sum(e["sessions_active"] for e in replicas),
            "sessions_max": sum(e.get("sessions_max") or 0 for e in running),
            "replicas_running": len(running),
            "replicas_draining": sum(e["state"] == "draining" for e in replicas),
            "replicas": replicas,
            "tick_budget_ms": round(1000 * FRAME_S, 1),
        }


def replica_states(details: Mapping[str, Any], app: str, deployment: str) -> dict[str, str]:
    """Serve's replica states for one deployment, from the controller's instance details."""
    try:
        replicas = details["applications"][app]["deployments"][deployment]["replicas"]
    except (KeyError, TypeError):
        return {}
    return {r["replica_id"]: str(getattr(r["state"], "value", r["state"])) for r in replicas}  # an Enum or its value
