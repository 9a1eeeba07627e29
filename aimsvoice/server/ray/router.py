"""The request router of the VoiceReplica deployment: Ray Serve's hooks around `RowPolicy` (routing.py).

Serve runs one router per proxy (and per handle); `choose_replicas` is called once per request
to be routed, which for this deployment means once per session (and per /metrics scrape), never
per audio frame: a frame travels on the WebSocket the proxy already holds to the replica.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from .routing import Claims, RowPolicy


class RowRouter(FIFOMixin, RequestRouter):
    """Sends a session to a replica with a free row, the least loaded first (see routing.py)."""

    def initialize_state(self, max_sessions: int = 1, **_: Any) -> None:
        self._policy = RowPolicy(max_sessions)
        self._claims = Claims()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        # Fresh counts from every replica (their answers also refresh Serve's queue-length cache,
        # which picks within each rank). Serve's documented probe: one small actor call each.
        probed = await self._probe_queue_lens(candidate_replicas, 0)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        reported = {r.replica_id.unique_id: n for r, n in probed}
        now = time.monotonic()
        order = self._policy.rank(reported, self._claims.counts(now))
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # every replica was ranked: a retry waits
            if order:
                self._claims.claim(pending_request.metadata.internal_request_id, order[0], now)
        return [[by_id[replica_id]] for replica_id in order if replica_id in by_id]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        self._claims.confirm(pending_request.metadata.internal_request_id, replica_id.unique_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._claims.release(internal_request_id)
