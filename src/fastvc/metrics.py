"""Prometheus metrics of one server instance, in its own registry (tests run several servers in one process).

    Metrics().render() -> (body bytes, content type) for GET /metrics
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every series fastvc exports. Names follow Prometheus conventions (`_total`, `_seconds`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge("fastvc_sessions_active", "Sessions streaming now", registry=r)
        self.sessions_total = Counter("fastvc_sessions", "Sessions started", registry=r)
        self.sessions_completed = Counter("fastvc_sessions_completed", "Sessions that ended normally", registry=r)
        self.blocks = Counter("fastvc_blocks", "Blocks converted and sent", registry=r)
        self.blocks_failed = Counter("fastvc_blocks_failed", "Blocks whose engine batch failed (concealed)",
                                     registry=r)
        self.errors = Counter("fastvc_errors", "Errors sent to clients, by error_code", ["code"], registry=r)
        self.opus_concealed = Counter("fastvc_opus_packets_concealed", "Corrupt Opus packets concealed",
                                      registry=r)
        self.audio_in_seconds = Counter("fastvc_audio_in_seconds", "Seconds of audio received", registry=r)
        self.audio_out_seconds = Counter("fastvc_audio_out_seconds", "Seconds of audio sent", registry=r)
        self.block_latency = Histogram("fastvc_block_latency_seconds",
                                       "Block complete (last input sample in) to its audio sent",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("fastvc_batch_size", "Blocks per engine forward pass",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.draining = Gauge("fastvc_draining", "1 while the server drains before shutdown", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MeteredEngine:
    """An engine seen through its batch sizes: `run_batch` observes `len(requests)`, everything else delegates.

    Works with any runner (it only calls the engine), on the worker thread (prometheus metrics are thread-safe).
    """

    def __init__(self, engine, batch_size: Histogram) -> None:
        self.engine = engine
        self._batch_size = batch_size

    def run_batch(self, requests):
        self._batch_size.observe(len(requests))
        return self.engine.run_batch(requests)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)
