"""The fastvc server: one asyncio process, WebSocket sessions and HTTP probes on the same port.

    python -m fastvc.server [--config server.toml] [--host H] [--port P] [--engine NAME]

    GET /health   200 while the process is up
    GET /ready    200 when the engine is loaded and the server is not draining, else 503
    GET /metrics  Prometheus text format
    GET /demo     the browser demo; GET /voices the target voices (fastvc.web)
    WS  / and /ws the native protocol, or fast-vc-service's simple one; /twilio Twilio Media Streams; /l16 raw
                  16-bit PCM (fastvc.dialects: one module per dialect)

Lifecycle: start() binds the port, loads the engine off the event loop (/ready answers 503 meanwhile), starts
the runner. SIGINT/SIGTERM -> drain(): /ready turns 503 and new sessions are refused, sessions in flight get
`server.drain_timeout_s` to finish, then the rest are closed with 1001 and the engine stops.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import os
import signal
import sys
import time
from dataclasses import replace

import structlog
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from fastvc import __version__
from fastvc.config import Config, ConfigError, load_config
from fastvc.dialects import DIALECTS
from fastvc.engine.base import EngineLoadError, create_engine
from fastvc.log import configure_logging
from fastvc.metrics import Metrics
from fastvc.recording import Recorder
from fastvc.runner import EngineRunner
from fastvc.service import Service
from fastvc.statefile import ServerState, remove_state, write_state
from fastvc.web import web_response

WIRE_SIZE_HEADROOM = 2
"""The transport accepts messages up to this many times `max_message_bytes`, so the protocol can answer an
oversized one with a MESSAGE_TOO_LARGE error instead of the transport's bare close 1009."""

RECORDING_PRUNE_INTERVAL_S = 6 * 3600


class Server:
    """Owns the listening socket, the service (engine, runner, sessions) and the shutdown sequence."""

    def __init__(self, config: Config, *, logger=None) -> None:
        self.config = config
        self.log = logger or structlog.get_logger("fastvc.server")
        self.metrics = Metrics()
        recording = config.recording
        self.recorder = Recorder(recording.directory, recording.retention_days) if recording.enabled else None
        self.service = Service(config, self.metrics, recorder=self.recorder, logger=self.log)
        self._ws_server: WebSocketServer | None = None
        self._engine_task: asyncio.Task | None = None
        self._prune_task: asyncio.Task | None = None
        self._port = 0
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0); known once `start` has bound it."""
        return self._port

    async def start(self, *, wait_ready: bool = True) -> None:
        server_config = self.config.server
        self._ws_server = await serve(
            self._handle, server_config.host, server_config.port,
            process_request=self._process_request,
            compression=None,
            max_size=server_config.max_message_bytes * WIRE_SIZE_HEADROOM,
            server_header=f"fastvc/{__version__}",
        )
        self._port = self._ws_server.sockets[0].getsockname()[1]
        self.log.info("server.listening", host=server_config.host, port=self.port, engine=self.config.engine.name,
                      auth=self.service.auth_enabled)
        if not self.service.auth_enabled:
            self.log.warning("server.auth_disabled", hint="set [auth] api_keys or the FASTVC_API_KEYS variable")
        self._engine_task = asyncio.create_task(self._load_engine(), name="fastvc-load-engine")
        if self.recorder is not None:
            self._prune_task = asyncio.create_task(self._prune_recordings(), name="fastvc-prune-recordings")
        if wait_ready:
            await self._engine_task

    @property
    def engine_task(self) -> asyncio.Task:
        """Loading the engine; done when ready (or failed: its exception says why)."""
        return self._engine_task

    async def _load_engine(self) -> None:
        engine_config = self.config.engine
        try:
            engine = await asyncio.to_thread(create_engine, engine_config.name, self.config.stream.settings(),
                                             config=self.config)
        except Exception as error:
            self.log.error("server.engine_failed", engine=engine_config.name, error=repr(error))
            raise
        stream_config = self.config.stream
        runner = EngineRunner(engine, config=self.config.scheduler, metrics=self.metrics, logger=self.log,
                              silence_threshold_db=stream_config.silence_threshold_db if stream_config.silence_gate
                              else None)
        await runner.start()
        self.service.engine, self.service.runner = engine, runner
        self.log.info("server.ready", engine=engine.name, model_rate_hz=engine.model_rate_hz,
                      algorithmic_latency_ms=round(engine.geometry.algorithmic_latency_s * 1000, 1))

    async def _prune_recordings(self) -> None:
        """Apply the recordings' retention now and every `RECORDING_PRUNE_INTERVAL_S`."""
        while True:
            deleted = await asyncio.to_thread(self.recorder.prune)
            if deleted:
                self.log.info("recordings.pruned", days_deleted=deleted)
            await asyncio.sleep(RECORDING_PRUNE_INTERVAL_S)

    async def drain(self) -> None:
        """Graceful stop: refuse new sessions, let current ones finish (bounded), close the rest with 1001."""
        if self.service.draining:
            return
        self.service.draining = True
        self.metrics.draining.set(1)
        timeout_s = self.config.server.drain_timeout_s
        self.log.info("server.draining", sessions=self.service.active_sessions, timeout_s=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                await self.service.idle.wait()
        except TimeoutError:
            self.log.warning("server.drain_timeout", sessions_left=self.service.active_sessions)
        await self.stop()

    async def stop(self) -> None:
        """Close every connection (1001), stop the engine and release resources."""
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True, code=1001, reason="server shutting down")
            await self._ws_server.wait_closed()
        for task in (self._engine_task, self._prune_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.service.runner is not None:
            await self.service.runner.stop()
            self.service.engine.close()
            self.service.runner = None
        self.service.close()
        self.log.info("server.stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _handle(self, connection: ServerConnection) -> None:
        handler = DIALECTS[_path(connection.request)]
        await handler(self.service, connection)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP probes on the WebSocket port; refuse WebSocket upgrades on unknown paths or while unready."""
        path = _path(request)
        if path == "/health":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/ready":
            if self.service.ready:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            state = "draining" if self.service.draining else "loading"
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{state}\n")
        if path == "/metrics":
            body, content_type = self.metrics.render()
            response = connection.respond(http.HTTPStatus.OK, "")
            return _with_body(response, body, content_type)
        page = web_response(path, self.service)  # /demo and /voices (fastvc.web)
        if page is not None:
            return page
        if path not in DIALECTS:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no endpoint at {path}\n")
        if not self.service.ready:
            state = "draining" if self.service.draining else "loading"
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"server is {state}\n")
        return None


def _path(request: Request) -> str:
    return request.path.split("?", 1)[0]


def _with_body(response: Response, body: bytes, content_type: str) -> Response:
    """`response` with `body` and its type (websockets' Headers is a multi-dict: replace, never add)."""
    headers = Headers(response.headers)
    for name in ("Content-Type", "Content-Length"):
        del headers[name]
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    return replace(response, headers=headers, body=body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvc serve", description="Run the fastvc voice-conversion server.")
    parser.add_argument("--config", default=None, help="TOML config file (default: built-in defaults)")
    parser.add_argument("--host", default=None, help="interface to bind (overrides [server] host)")
    parser.add_argument("--port", type=int, default=None, help="port to bind (overrides [server] port)")
    parser.add_argument("--engine", default=None, help="engine name (overrides [engine] name)")
    parser.add_argument("--state-dir", default=None, help="state file directory (overrides [server] state_dir)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.host is not None:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    if args.engine is not None:
        config.engine.name = args.engine
    if args.state_dir is not None:
        config.server.state_dir = args.state_dir
    return config


async def serve_until_signalled(config: Config, config_path: str | None = None) -> int:
    """Start, serve until SIGINT/SIGTERM, then drain and stop. Returns the exit code (1: the engine failed)."""
    server = Server(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(server.drain()))
    await server.start(wait_ready=False)
    state = ServerState(pid=os.getpid(), host=config.server.host, port=server.port, version=__version__,
                        started_at=time.time(), config=config_path)
    write_state(config.server.state_dir, state)
    try:
        stopped = asyncio.ensure_future(server.wait_stopped())
        await asyncio.wait([stopped, server.engine_task], return_when=asyncio.FIRST_COMPLETED)
        if server.engine_task.done() and not server.engine_task.cancelled() and server.engine_task.exception():
            error = server.engine_task.exception()
            if isinstance(error, EngineLoadError):  # the operator's problem (missing weights...): say it plainly
                print(f"fastvc: {error}", file=sys.stderr)
            await server.stop()
            return 1
        await stopped
        return 0
    finally:
        remove_state(config.server.state_dir, server.port, os.getpid())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run(config: Config, config_path: str | None = None) -> int:
    configure_logging(config.logging.level, config.logging.format, config.logging.directory)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on platforms without it
        return asyncio.run(serve_until_signalled(config, config_path))
    return uvloop.run(serve_until_signalled(config, config_path))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"fastvc: {error}", file=sys.stderr)
        return 2
    return run(config, args.config)


if __name__ == "__main__":
    sys.exit(main())
