"""`/` and `/ws` speak two dialects; the first message picks one.

    first message is a JSON object with "signal"  -> fast-vc-service's simple protocol (fastvc.dialects.simple)
    anything else                                 -> the native protocol (fastvc.dialects.native)

The chosen dialect sees the connection as if nothing had been read: `ReplayConnection` hands it the first
message again. Before the pick, refusals (full, draining, a client silent past the receive timeout) are
answered in the native format.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fastvc.dialects.base import close_discarding
from fastvc.dialects.native import serve_native
from fastvc.dialects.simple import is_simple_start, serve_simple
from fastvc.protocol import ProtocolError, SessionTimeout, error_message

log = structlog.get_logger("fastvc.dialects")


class ReplayConnection:
    """A server connection whose next `recv` returns `first` (already read), then reads the socket again."""

    def __init__(self, connection: ServerConnection, first: str | bytes) -> None:
        self._connection = connection
        self._first: list[str | bytes] = [first]
        self.send = connection.send  # per block: no __getattr__ lookup
        self.transport = connection.transport

    async def recv(self, *args, **kwargs) -> str | bytes:
        if self._first:
            self.recv = self._connection.recv  # replayed: later calls go straight to the socket
            return self._first.pop()
        return await self._connection.recv(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._connection, name)


async def serve_root(service, connection: ServerConnection) -> None:
    slot = contextlib.ExitStack()  # the connection's session slot, handed over to the dialect that serves it
    try:
        slot.enter_context(service.admit())
        first = await _first_message(connection, service.config.server.receive_timeout_s)
    except ProtocolError as error:  # full, draining or silent: refused before a dialect took the connection
        slot.close()
        await _refuse(service, connection, error)
        return
    except ConnectionClosed:
        slot.close()
        log.debug("connection.closed_before_first_message")
        return
    handler = serve_simple if is_simple_start(first) else serve_native
    with slot:  # normally the dialect releases it first, before answering its last message
        await handler(service, ReplayConnection(connection, first), slot=slot)


async def _first_message(connection: ServerConnection, timeout_s: float) -> str | bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await connection.recv()
    except TimeoutError as error:
        raise SessionTimeout(f"no message for {timeout_s:g} s") from error


async def _refuse(service, connection: ServerConnection, error: ProtocolError) -> None:
    """Refused before a dialect was picked (full, draining, silent): answered in the native format."""
    service.metrics.errors.labels(code=error.error_code).inc()
    log.warning("session.error", error_code=error.error_code, message=str(error))
    with contextlib.suppress(ConnectionClosed):
        await connection.send(error_message(error))
        await close_discarding(connection, error.close_code, error.error_code)
