"""What every wire dialect shares: config, the engine runner, metrics, recordings, admission and auth.

    server -> dialect (native JSON, later Twilio, L16...) -> Service.admit / authenticate / open_session -> Session

A dialect decodes its framing into samples, asks the `Service` for a `Session`, feeds it, and encodes what
the session sends to its `AudioSink`. The service holds no per-session state beyond a count.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import secrets
from collections.abc import Iterator

import numpy as np
import structlog

from fastvc.config import Config
from fastvc.engine.base import Engine
from fastvc.metrics import Metrics
from fastvc.protocol import AuthFailed, InvalidConfig, Overloaded, ShuttingDown
from fastvc.runner import EngineRunner
from fastvc.session import AudioSink, Session, SessionParams
from fastvc.stitcher import StitchThread


class Service:
    """Shared by all connections of one server. `engine`/`runner` are None until the engine has loaded."""

    def __init__(self, config: Config, metrics: Metrics, *, recorder=None, logger=None) -> None:
        self.config = config
        self.metrics = metrics
        self.recorder = recorder
        self.log = logger or structlog.get_logger("fastvc.service")
        self.engine: Engine | None = None
        self.runner: EngineRunner | None = None
        self.draining = False
        self.active_sessions = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.codec_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.server.codec_threads, thread_name_prefix="fastvc-codec")
        self.stitcher = StitchThread().start()  # SOLA of every session, off the event loop
        self._api_keys = [key.encode() for key in config.api_keys()]

    @property
    def ready(self) -> bool:
        return self.runner is not None and not self.draining

    @property
    def auth_enabled(self) -> bool:
        return bool(self._api_keys)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `server.max_sessions` slots for a connection; refuse when draining or full."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; connect to another instance")
        if not self.ready:
            raise Overloaded("the engine is still loading; try again shortly")
        if self.active_sessions >= self.config.server.max_sessions:
            raise Overloaded(f"the server is at its limit of {self.config.server.max_sessions} sessions")
        if self.runner.is_overloaded():
            raise Overloaded("the engine is behind (adaptive steps or concealment active); try again shortly")
        self.active_sessions += 1
        self.idle.clear()
        self.metrics.sessions_active.set(self.active_sessions)
        try:
            yield
        finally:
            self.active_sessions -= 1
            self.metrics.sessions_active.set(self.active_sessions)
            if self.active_sessions == 0:
                self.idle.set()

    def authenticate(self, api_key: str | None) -> None:
        """Constant-time check against every configured key; with no keys configured, auth is off."""
        if not self._api_keys:
            return
        given = (api_key or "").encode()
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise AuthFailed("missing or invalid api_key")

    def resolve_voice(self, requested: str | None) -> str:
        voices = self.engine.voices()
        voice = requested or self.config.voices.default_voice or voices[0]
        if voice not in voices:
            raise InvalidConfig(f"unknown voice {voice!r}; available: {', '.join(voices[:20])}")
        return voice

    def session_params(self, session_id: str, *, input_rate_hz: int, output_rate_hz: int, voice: str | None,
                       diffusion_steps: int | None, seed: int | None) -> SessionParams:
        """Fill a session's parameters from the request, falling back to the config's defaults."""
        return SessionParams(
            session_id=session_id,
            input_rate_hz=input_rate_hz,
            output_rate_hz=output_rate_hz,
            voice_id=self.resolve_voice(voice),
            diffusion_steps=diffusion_steps or self.config.stream.diffusion_steps,
            cfg_rate=self.config.stream.inference_cfg_rate,
            seed=secrets.randbits(63) if seed is None else seed,
            max_blocks_in_flight=self.config.server.max_blocks_in_flight,
        )

    def open_session(self, params: SessionParams, sink: AudioSink, logger) -> Session:
        recording = self.recorder.open(params.session_id) if self.recorder is not None else None
        session = Session(params, self.engine.geometry, self.runner, sink,
                          content_window=self.engine.needs_content_window, stitcher=self.stitcher,
                          observer=SessionObserver(self.metrics, recording), logger=logger)
        session.start()
        self.metrics.sessions_total.inc()
        return session

    def close_session(self, session: Session, summary: dict) -> None:
        """After a session ends, whatever the outcome: finish its recording with `summary`."""
        if session.observer is not None:
            session.observer.close(summary)

    def close(self) -> None:
        self.codec_executor.shutdown(wait=False, cancel_futures=True)
        self.stitcher.close()


class SessionObserver:
    """Feeds a session's audio and blocks to the metrics and, when enabled, its recording."""

    def __init__(self, metrics: Metrics, recording=None) -> None:
        self.metrics = metrics
        self.recording = recording

    def on_input(self, samples: np.ndarray, sample_rate_hz: int) -> None:
        self.metrics.audio_in_seconds.inc(samples.shape[0] / sample_rate_hz)
        if self.recording is not None:
            self.recording.write_input(samples, sample_rate_hz)

    def on_output(self, samples: np.ndarray, sample_rate_hz: int) -> None:
        self.metrics.audio_out_seconds.inc(samples.shape[0] / sample_rate_hz)
        if self.recording is not None:
            self.recording.write_output(samples, sample_rate_hz)

    def on_block(self, latency_s: float, failed: bool) -> None:
        self.metrics.blocks.inc()
        self.metrics.block_latency.observe(latency_s)
        if failed:
            self.metrics.blocks_failed.inc()

    def close(self, summary: dict) -> None:
        if self.recording is not None:
            self.recording.close(summary)
