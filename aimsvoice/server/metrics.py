"""Prometheus metrics for `GET /metrics`, in a registry of the app's own (several apps, one process, no clash).

prometheus_client's metrics are thread-safe: the tick thread and the event loop update them directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TICK_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.5, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every number the server exports."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = Gauge("aimsvoice_sessions_active", "Sessions admitted and not yet ended.", registry=registry)
        self.sessions_max = Gauge("aimsvoice_sessions_max", "Sessions allowed at once (--max-sessions).", registry=registry)
        self.sessions_started = Counter("aimsvoice_sessions_started_total", "Sessions admitted.", registry=registry)
        self.sessions_rejected = Counter(
            "aimsvoice_sessions_rejected_total", "Sessions refused, by reason.", ["reason"], registry=registry)
        self.sessions_ended = Counter("aimsvoice_sessions_ended_total", "Sessions ended, by reason.", ["reason"], registry=registry)
        self.tick_seconds = Histogram(
            "aimsvoice_tick_seconds", "Duration of each engine tick, by kind (realtime: every talking row; prompt: prompt rows only).",
            ["kind"], buckets=TICK_BUCKETS_S, registry=registry)
        self.audio_in_seconds = Counter(
            "aimsvoice_audio_in_seconds_total", "User audio received from live sessions (seconds).", registry=registry)
        self.audio_out_seconds = Counter(
            "aimsvoice_audio_out_seconds_total", "Agent audio handed to the clients (seconds).", registry=registry)
        self.frames_dropped = Counter(
            "aimsvoice_frames_dropped_total",
            "80 ms frames lost, by kind: late (the client's audio had not come, silence heard), "
            "input_shed (user audio shed to bound latency), output (agent audio a client did not take).",
            ["kind"], registry=registry)
        self.schedule_restarts = Counter(
            "aimsvoice_tick_schedule_restarts_total", "Times the real-time ticks fell more than a frame behind.", registry=registry)
        self.gpu_memory_bytes = Gauge("aimsvoice_gpu_memory_bytes", "Device memory allocated by the model (0 on CPU or cold).", registry=registry)
        self.model_warm = Gauge("aimsvoice_model_warm", "1 while the model is loaded, else 0.", registry=registry)
        self.model_loads = Counter("aimsvoice_model_loads_total", "Times the model was loaded.", registry=registry)
        for kind in ("late", "input_shed", "output"):
            self.frames_dropped.labels(kind)
        for kind in ("realtime", "prompt"):
            self.tick_seconds.labels(kind)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
