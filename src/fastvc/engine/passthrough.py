"""The passthrough engine: returns the input itself, aligned exactly where the model's output slice would be.

Useful to test a gateway integration and to measure the server's own cost: the whole block path (buffers,
SOLA, resampling, codecs) runs, only the model is replaced by a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastvc.engine.base import BlockRequest, BlockResult, Engine


class PassthroughEngine(Engine):
    name = "passthrough"
    needs_content_window = False

    def __init__(self, settings, **_options) -> None:
        super().__init__(settings)

    def run_batch(self, requests: Sequence[BlockRequest]) -> list[BlockResult]:
        n = self.geometry.return_samples
        return [BlockResult(r.session_id, r.block_index, r.recent[:n].copy()) for r in requests]
