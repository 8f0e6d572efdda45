"""`/` and `/ws` speak two dialects; the first message picks one.

    first message is a JSON object with "signal"  -> fast-vc-service's simple protocol (fastvc.dialects.simple)
    anything else                                 -> the native protocol (fastvc.dialects.native)

The chosen dialect sees the connection as if nothing had been read: `ReplayConnection` hands it the first
message again. A client silent past the receive timeout gets the native TIMEOUT error.
"""

from __future__ import annotations

import asyncio

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fastvc.dialects.native import serve_native
from fastvc.dialects.simple import is_simple_start, serve_simple
from fastvc.protocol import SessionTimeout, error_message

log = structlog.get_logger("fastvc.dialects")


class ReplayConnection:
    """A server connection whose next `recv` returns `first` (already read), then reads the socket again."""

    def __init__(self, connection: ServerConnection, first: str | bytes) -> None:
        self._connection = connection
        self._first: list[str | bytes] = [first]

    async def recv(self, *args, **kwargs) -> str | bytes:
        if self._first:
            return self._first.pop()
        return await self._connection.recv(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._connection, name)


async def serve_root(service, connection: ServerConnection) -> None:
    timeout_s = service.config.server.receive_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            first = await connection.recv()
    except TimeoutError:
        error = SessionTimeout(f"no message for {timeout_s:g} s")
        service.metrics.errors.labels(code=error.error_code).inc()
        try:
            await connection.send(error_message(error))
            await connection.close(error.close_code, error.error_code)
        except ConnectionClosed:
            pass
        return
    except ConnectionClosed:
        log.info("session.client_gone", blocks=0)
        return
    handler = serve_simple if is_simple_start(first) else serve_native
    await handler(service, ReplayConnection(connection, first))
