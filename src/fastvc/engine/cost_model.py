"""The cost-model engine: a GPU's timing without a GPU. Each batch sleeps `a + b·batch_size` milliseconds.

    forward_ms = (cost_a_ms + cost_b_ms · batch_size) · diffusion_steps / reference_steps

`a` is the fixed cost of one forward pass (kernel launches, the batch's shared work), `b` the cost each
session adds. With the defaults (a = 20 ms, b = 0.5 ms) one 180 ms block period holds one batch of
floor((180 − 20) / 0.5) = 320 sessions: the bound `bench/scheduler_sim.py` measures the server against.
Time scales with the diffusion steps run (`reference_steps` = the configured default costs exactly a + b·n),
so the scheduler's adaptive steps have the effect they would have on the real model.

The output is deterministic and checkable: the passthrough slice (the input, aligned where the model's output
slice would be) at half amplitude. The engine sleeps on the model worker thread, so the event loop and the
other threads keep running, as they would while a GPU computes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastvc.engine.base import BlockRequest, BlockResult, Engine

OUTPUT_GAIN = 0.5


class CostModelEngine(Engine):
    name = "cost-model"
    needs_content_window = False

    def __init__(self, settings, *, config: Any = None, cost_a_ms: float | None = None,
                 cost_b_ms: float | None = None, reference_steps: int | None = None, **_options) -> None:
        """Costs come from the keyword options, else from `config.engine` / `config.stream`, else the defaults."""
        super().__init__(settings)
        engine_config = getattr(config, "engine", None)
        stream_config = getattr(config, "stream", None)
        self.cost_a_ms = cost_a_ms if cost_a_ms is not None else getattr(engine_config, "cost_a_ms", 20.0)
        self.cost_b_ms = cost_b_ms if cost_b_ms is not None else getattr(engine_config, "cost_b_ms", 0.5)
        self.reference_steps = (reference_steps if reference_steps is not None
                                else getattr(stream_config, "diffusion_steps", 10))
        if self.cost_a_ms < 0 or self.cost_b_ms < 0 or self.reference_steps < 1:
            raise ValueError("cost_a_ms and cost_b_ms must be >= 0 and reference_steps >= 1")

    def forward_ms(self, batch_size: int, diffusion_steps: int) -> float:
        return (self.cost_a_ms + self.cost_b_ms * batch_size) * diffusion_steps / self.reference_steps

    def run_batch(self, requests: Sequence[BlockRequest]) -> list[BlockResult]:
        """Sleep the modelled time, then return each request's passthrough slice at half amplitude."""
        if not requests:
            return []
        end_s = time.perf_counter() + self.forward_ms(len(requests), requests[0].diffusion_steps) / 1000.0
        n = self.geometry.return_samples
        results = [BlockResult(r.session_id, r.block_index, r.recent[:n] * OUTPUT_GAIN) for r in requests]
        remaining_s = end_s - time.perf_counter()
        if remaining_s > 0:
            time.sleep(remaining_s)
        return results
