"""Where a new session goes: a replica with a free row, the least loaded first. Pure decisions.

The router (router.py) asks every replica for its ongoing requests when a session arrives (one
actor call per replica, once per session, never per frame) and hands the answers here with what
it knows itself:

- A WebSocket session is one ongoing request for its whole length, and /healthz lives in another
  application, so a replica's ongoing requests are its sessions (plus, briefly, a refusal or a
  /metrics scrape in flight).
- A replica's answer may predate a session this router has just sent it, so the router also
  counts its own requests per replica (`Claims`) until they complete; a replica's load is the
  larger of the two (claims know nothing of other proxies' sessions; answers know them all).
- `RowPolicy.rank`: replicas with a free row by load, then those that did not answer in time (they
  may have one), then the full ones by load; ties in random order. Ray tries them in that order.
  A full replica still takes the request (its Ray limit is its rows plus headroom, config.py) and
  refuses it with its own governance: 503 + Retry-After before the upgrade on /api/chat, an error
  and close 1013 on /ws.
  So past the whole deployment's capacity a client is refused at once, never queued.
"""

from __future__ import annotations

import random
from typing import Mapping

CLAIM_TTL_S = 5.0  # a claim the replica has not confirmed by then is dropped (the request never went)


class RowPolicy:
    """Ranks replicas for a new session by free rows and load."""

    def __init__(self, max_sessions: int, rng: random.Random | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.max_sessions = max_sessions
        self._rng = rng or random.Random()

    def loads(self, reported: Mapping[str, int | None], claimed: Mapping[str, int]) -> dict[str, int]:
        """Each answering replica's load: the larger of its own count and this router's claims on it."""
        return {r: max(n, claimed.get(r, 0)) for r, n in reported.items() if n is not None}

    def rank(self, reported: Mapping[str, int | None], claimed: Mapping[str, int]) -> list[str]:
        """Replica ids, most preferred first. reported: ongoing requests per replica (None: no answer)."""
        loads = self.loads(reported, claimed)
        keyed = {r: (load, self._rng.random()) for r, load in loads.items()}
        ordered = sorted(keyed, key=keyed.__getitem__)
        silent = [r for r, n in reported.items() if n is None]
        self._rng.shuffle(silent)
        free = [r for r in ordered if loads[r] < self.max_sessions]
        full = [r for r in ordered if loads[r] >= self.max_sessions]
        return free + silent + full


class Claims:
    """Requests this router has sent, by replica, until they complete.

    `claim` when a replica is chosen (unconfirmed: lapses after CLAIM_TTL_S), `confirm` when the
    replica has taken it, `release` when it has completed (or was refused by Ray).
    """

    def __init__(self, ttl_s: float = CLAIM_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._claims: dict[str, tuple[str, float | None]] = {}  # request id -> (replica id, expiry; None once confirmed)

    def claim(self, request_id: str, replica_id: str, now: float) -> None:
        self._claims[request_id] = (replica_id, now + self.ttl_s)

    def confirm(self, request_id: str, replica_id: str) -> None:
        self._claims[request_id] = (replica_id, None)

    def release(self, request_id: str) -> None:
        self._claims.pop(request_id, None)

    def counts(self, now: float) -> dict[str, int]:
        """Live claims per replica (expired unconfirmed ones are dropped here)."""
        counts: dict[str, int] = {}
        for request_id, (replica_id, expiry) in list(self._claims.items()):
            if expiry is not None and now >= expiry:
                del self._claims[request_id]
                continue
            counts[replica_id] = counts.get(replica_id, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self._claims)
