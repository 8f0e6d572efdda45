"""The engine interface: a batch of block requests in, one output slice per request out.

An engine runs on the single model worker thread (never on the event loop). It is built from the stream
settings and derives the geometry from its own model rate and mel hop (`engine.geometry`), so every request
of a batch has the same shapes:

    BlockRequest.window_16k  (geometry.window_16k,)              content-encoder input
    BlockRequest.recent      (geometry.return_samples + extra_right,)  newest model-rate samples
    BlockResult.audio        (geometry.return_samples,)           model-rate slice for SOLA (step B8)

Exceptions: `EngineError` (a batch failed; its blocks are concealed, the server keeps serving),
`EngineLoadError` (the engine cannot start: missing weights, a checkpoint that does not fit; the message says
what to do, the server prints it and exits) and `UnknownEngineError` (a name not in the registry).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastvc.stream import StitchResult, StreamGeometry, StreamSettings


class EngineError(RuntimeError):
    """A batch could not be computed; its blocks fail, other batches go on."""


class EngineLoadError(RuntimeError):
    """The engine cannot be built or loaded; the message is meant for the operator (no traceback needed)."""


class UnknownEngineError(ValueError):
    """No engine is registered under that name."""


@dataclass
class BlockRequest:
    """One block of one session, as the engine sees it.

    seed: per-block seed for the block's random draws (sampler noise, vocoder phases), derived from the
        session seed and block index, so the output does not depend on which batch the block ran in.
    noise: explicit draws overriding `seed` (the oracle checker passes the fixture's tensors), or None.
    """

    session_id: str
    block_index: int
    window_16k: np.ndarray
    recent: np.ndarray
    voice_id: str = "default"
    diffusion_steps: int = 10
    cfg_rate: float = 0.7
    seed: int = 0
    noise: dict[str, Any] | None = None

    def batch_key(self) -> tuple:
        """Requests may share a batch only when this key is equal (same steps, CFG on/off, shapes)."""
        return (self.diffusion_steps, self.cfg_rate > 0.0, self.window_16k.shape[0], self.recent.shape[0])


@dataclass
class BlockResult:
    """audio: (geometry.return_samples,) float32 at the model rate; extras: debug intermediates.

    concealed: the block was not computed (it could not be back in time, or its batch failed): `audio` is
    silence of the right length, which SOLA cross-fades into, so the stream goes on without a click.
    stitched: `audio` already stitched into its session's stream by the runner (with the other blocks of its
        batch, `fastvc.stream.stitch_batch`), or None: the session stitches it.
    """

    session_id: str
    block_index: int
    audio: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    concealed: bool = False
    stitched: StitchResult | None = None


class Engine(ABC):
    """Base class of every engine. Subclasses set `name` and implement `run_batch`."""

    name: str = ""
    model_rate_hz: int = 22050
    hop_length: int = 256
    needs_content_window: bool = True  # False: never reads BlockRequest.window_16k (sessions skip step B3)

    def __init__(self, settings: StreamSettings) -> None:
        """Subclasses that read the model rate or hop from a model config set them before calling this."""
        self.settings = settings
        self.geometry = StreamGeometry.from_settings(settings, self.model_rate_hz, self.hop_length)

    @abstractmethod
    def run_batch(self, requests: Sequence[BlockRequest]) -> list[BlockResult]:
        """Compute one output slice per request, in request order. Called on the worker thread only."""

    def voices(self) -> list[str]:
        """Target voice ids this engine can convert to."""
        return ["default"]

    def prompt_frames(self, voice_id: str) -> int:
        """Length of the voice's prompt (mel frames), for the scheduler's prompt-length buckets; 0 if none."""
        return 0

    def warmup(self) -> None:
        """Optional: run once before serving (allocations, kernel selection)."""

    def close(self) -> None:
        """Release resources."""


ENGINE_MODULES: dict[str, str] = {
    "passthrough": "fastvc.engine.passthrough:PassthroughEngine",
    "cost-model": "fastvc.engine.cost_model:CostModelEngine",
    "synthetic": "fastvc.engine.seedvc:SyntheticEngine",
    "seedvc": "fastvc.engine.seedvc:SeedVCEngine",
}


def engine_names() -> list[str]:
    return sorted(ENGINE_MODULES)


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as `name`; imported lazily so `passthrough` never imports torch."""
    if name not in ENGINE_MODULES:
        raise UnknownEngineError(f"unknown engine {name!r}; choose one of {', '.join(engine_names())}")
    module_name, _, class_name = ENGINE_MODULES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_engine(name: str, settings: StreamSettings, **options: Any) -> Engine:
    """Build the engine `name` for the stream `settings`, with its section of the config as keyword options."""
    return engine_class(name)(settings, **options)
