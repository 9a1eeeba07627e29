"""The single-node metrics, exported through Ray's metrics system too, with the replica as a label.

`mirror_to_ray(metrics)` replaces each Prometheus metric of a replica's `Metrics` by a tee: every
update goes to the Prometheus metric (the replica's own /metrics, unchanged) and to a Ray Serve
metric of the same name, kind and labels. Ray adds `deployment`, `replica` and `application`
and exports it from each node's metrics agent as `ray_<name>` (`ray_aimsvoice_sessions_active`,
`ray_aimsvoice_sessions_started_total`, `ray_aimsvoice_tick_seconds_bucket`, ...), so one scrape
config covers every replica of the cluster.

The scheduler and the routes look the metrics up on `Metrics` at each use, so the swap needs no
change in them; it happens before the scheduler starts.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from ..metrics import Metrics


class _Tee:
    """A Prometheus metric (or one of its labelled children) and the Ray metric it mirrors."""

    def __init__(self, prometheus: Any, ray_metric: Any, labelnames: tuple[str, ...], tags: dict[str, str] | None = None) -> None:
        self._prometheus = prometheus
        self._ray = ray_metric
        self._labelnames = labelnames
        self._tags = tags

    def labels(self, *values: str, **named: str) -> _Tee:
        tags = dict(zip(self._labelnames, values)) if values else dict(named)
        return _Tee(self._prometheus.labels(*values, **named), self._ray, self._labelnames, tags)

    def inc(self, amount: float = 1.0) -> None:
        self._prometheus.inc(amount)
        if amount > 0:
            self._ray.inc(amount, tags=self._tags)

    def set(self, value: float) -> None:
        self._prometheus.set(value)
        self._ray.set(value, tags=self._tags)

    def observe(self, value: float) -> None:
        self._prometheus.observe(value)
        self._ray.observe(value, tags=self._tags)

    def __getattr__(self, name: str) -> Any:  # anything else reads the Prometheus side
        return getattr(self._prometheus, name)


def _ray_metric(metric: Any) -> Any:
    from ray.serve import metrics as serve_metrics

    name, description, tags = metric._name, metric._documentation, tuple(metric._labelnames)
    if isinstance(metric, Counter):
        return serve_metrics.Counter(name, description=description, tag_keys=tags)
    if isinstance(metric, Gauge):
        return serve_metrics.Gauge(name, description=description, tag_keys=tags)
    if isinstance(metric, Histogram):
        bounds = [b for b in metric._upper_bounds if math.isfinite(b)]
        return serve_metrics.Histogram(name, description=description, boundaries=bounds, tag_keys=tags)
    raise TypeError(f"no Ray counterpart for {type(metric).__name__}")


def mirror_to_ray(metrics: Metrics) -> None:
    """Make every metric of `metrics` a tee into Ray's metrics (call inside a Serve replica)."""
    for attribute, metric in list(vars(metrics).items()):
        if isinstance(metric, (Counter, Gauge, Histogram)):
            setattr(metrics, attribute, _Tee(metric, _ray_metric(metric), tuple(metric._labelnames)))
