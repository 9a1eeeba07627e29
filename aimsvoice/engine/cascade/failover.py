"""Which provider serves each part of a turn, and when one that failed is tried again (pure).

The policy of LiveKit agents' FallbackAdapter, per component (speech-to-text, the reply,
speech): providers are tried in order; one that fails by a connection error, a timeout, a 5xx,
a 429 or a stream cut mid-way is marked down for the session and the turn moves on to the next,
and a background probe (a cheap request: the provider's model list) brings it back. Probes are
due `probe_after_s` after the failure, then ever more rarely (x `backoff`, at most `probe_max_s`)
while they fail. The last provider of a chain is the local one: it is never skipped, so a turn
always has someone to serve it.

Failures that another try cannot fix (a rejected key, a request refused as malformed) are not
failovers: the engine raises them. Decisions only, on the caller's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT, TIMEOUT, SERVER, RATE_LIMIT, CUT = "connect", "timeout", "server", "rate-limit", "cut"
FAILOVER_KINDS = frozenset({CONNECT, TIMEOUT, SERVER, RATE_LIMIT, CUT})
AUTH, REQUEST = "auth", "request"  # not failovers


@dataclass(frozen=True)
class FailoverConfig:
    probe_after_s: float = 5.0
    backoff: float = 2.0
    probe_max_s: float = 60.0


@dataclass
class _Down:
    kind: str
    since_s: float
    probe_at_s: float
    interval_s: float


class Failover:
    """Providers by component, in order of preference; which are down, and which are due a probe.

    chains: component ("stt", "llm", "tts") -> provider names, the preferred first.
    """

    def __init__(self, chains: dict[str, tuple[str, ...]], config: FailoverConfig = FailoverConfig()) -> None:
        if any(not chain for chain in chains.values()):
            raise ValueError("every component needs at least one provider")
        self.chains = {component: tuple(chain) for component, chain in chains.items()}
        self.config = config
        self._down: dict[tuple[str, str], _Down] = {}

    def order(self, component: str) -> tuple[str, ...]:
        """The providers to try for this component now, in order: those up, and always the last."""
        chain = self.chains[component]
        return tuple(p for p in chain[:-1] if (component, p) not in self._down) + chain[-1:]

    def is_up(self, component: str, provider: str) -> bool:
        return (component, provider) not in self._down

    def failed(self, component: str, provider: str, kind: str, now_s: float) -> None:
        """A failover-kind failure: the provider is down until a probe succeeds (the last of a chain is never marked)."""
        if kind not in FAILOVER_KINDS:
            raise ValueError(f"{kind!r} is not a failover (one of {sorted(FAILOVER_KINDS)})")
        if provider == self.chains[component][-1]:
            return
        down = self._down.get((component, provider))
        if down is None:
            interval = self.config.probe_after_s
            self._down[(component, provider)] = _Down(kind, now_s, now_s + interval, interval)
        else:
            down.kind = kind

    def probes_due(self, now_s: float) -> list[tuple[str, str]]:
        """(component, provider) pairs whose probe is due."""
        return [key for key, down in self._down.items() if now_s >= down.probe_at_s]

    def probed(self, component: str, provider: str, ok: bool, now_s: float) -> None:
        """A probe's outcome: up again, or the next probe later."""
        down = self._down.get((component, provider))
        if down is None:
            return
        if ok:
            del self._down[(component, provider)]
            return
        down.interval_s = min(down.interval_s * self.config.backoff, self.config.probe_max_s)
        down.probe_at_s = now_s + down.interval_s

    def down(self) -> dict[str, str]:
        """"component provider" -> the kind of failure, for what is down now."""
        return {f"{component} {provider}": d.kind for (component, provider), d in self._down.items()}
