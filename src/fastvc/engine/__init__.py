"""Engines: what turns a batch of block requests into model output slices, on the worker thread.

Pick one by name with `create_engine`; each engine module registers itself in `ENGINES`.
"""

from fastvc.engine.base import BlockRequest, BlockResult, Engine, EngineError, create_engine, engine_names

__all__ = ["BlockRequest", "BlockResult", "Engine", "EngineError", "create_engine", "engine_names"]
