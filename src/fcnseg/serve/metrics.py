"""Prometheus metrics of one serving process: requests by route and status, latency, batch sizes, queue depth.

Each process has its own registry (several apps in one test process do not collide). Under
``fcnseg serve --workers N`` every worker answers ``/metrics`` with its own counts: scrape the workers one by
one (or run them as separate processes on separate ports), as for any multi-process Python exporter.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

ROUTES = ("/", "/v1/segment", "/v1/model", "/healthz", "/metrics")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def route_label(path: str) -> str:
    """A bounded label for a request path: the route itself, ``/static`` for page assets, else ``other``."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class Metrics:
    """The instruments; ``queue_depth`` and ``ready`` are read at scrape time."""

    def __init__(self, *, queue_depth: Callable[[], int], ready: Callable[[], bool]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fcnseg_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.latency = Histogram("fcnseg_request_duration_seconds", "Time from request to the response's end",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fcnseg_batch_size", "Images per model call (dynamic batching)",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("fcnseg_inference_duration_seconds", "Time of one model call (a whole batch)",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        Gauge("fcnseg_queue_depth", "Images waiting for a batch", registry=r).set_function(queue_depth)
        Gauge("fcnseg_ready", "1 once the model is loaded and warmed up", registry=r).set_function(
            lambda: float(ready()))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = route_label(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
