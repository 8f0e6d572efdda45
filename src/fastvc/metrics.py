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
        self.queue_wait = Histogram("fastvc_queue_wait_seconds", "Block ready to its batch dispatched",
                                    buckets=LATENCY_BUCKETS_S, registry=r)
        self.forward_time = Histogram("fastvc_forward_seconds", "Engine forward pass time, by batch size",
                                      ["batch_size"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.deadline_misses = Counter("fastvc_deadline_misses", "Blocks computed later than one block after ready",
                                       registry=r)
        self.degraded_blocks = Counter("fastvc_degraded_blocks", "Blocks run with fewer diffusion steps (overload)",
                                       registry=r)
        self.concealed_blocks = Counter("fastvc_concealed_blocks", "Blocks not computed in time, sent as silence",
                                        registry=r)
        self.blocks_gated = Counter("fastvc_blocks_gated", "Silent blocks that skipped the model (silence gate)",
                                    registry=r)
        self.batches_failed = Counter("fastvc_batches_failed", "Engine forward passes that raised", registry=r)
        self.steps_cut = Gauge("fastvc_diffusion_steps_cut", "Diffusion steps removed by adaptive steps now",
                               registry=r)
        self.draining = Gauge("fastvc_draining", "1 while the server drains before shutdown", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

