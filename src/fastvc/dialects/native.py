"""The native dialect: fast-vc-service's standard protocol (see docs/protocol.md) over one connection.

    handshake: config (validated, authenticated) -> ready
    streaming: binary audio -> decoder -> session.feed;  session -> encoder -> binary audio
    end:       {"type": "end"} -> session.finish -> complete(stats) -> close 1000
    errors:    ProtocolError -> {"type": "error", ...} -> close with its code; client gone -> abort quietly

The messages are `fastvc.protocol`'s; the connection's lifecycle (admission, auth, timeouts, backpressure,
stats, closing) is the serializer dialects' driver, `fastvc.dialects.base.SerializedConnection`.
"""

from __future__ import annotations

from typing import Any

import structlog

from fastvc.dialects.base import Message, SerializedConnection, limits_of
from fastvc.protocol import (Event, NativeProtocol, ProtocolError, ProtocolLimits, SessionConfig, complete_message,
                             error_message, ready_message)


class NativeReplies:
    """The server's side of the native protocol: ready, binary audio, complete, error; also spoken by L16."""

    def ready(self, config: SessionConfig, details: dict[str, Any]) -> list[Message]:
        return [ready_message(config.session_id, **details)]

    def audio(self, packets: list[bytes]) -> list[Message]:
        return list(packets)

    def complete(self, config: SessionConfig, stats: dict[str, Any]) -> list[Message]:
        return [complete_message(config.session_id, stats)]

    def error(self, error: ProtocolError) -> list[Message]:
        return [error_message(error)]

    def close_reason(self, error: ProtocolError) -> str:
        return error.error_code


class NativeSerializer(NativeReplies):
    """config / binary audio / end, as `NativeProtocol` parses them; errors close with their error code."""

    name = "native"

    def __init__(self, limits: ProtocolLimits | None = None, logger=None) -> None:
        self.protocol = NativeProtocol(limits)
        self.log = logger or structlog.get_logger("fastvc.native")

    def open(self, request_path: str) -> Event | None:
        return None  # the config comes as the first message

    def receive(self, message: Message) -> Event:
        return self.protocol.receive(message)  # refuses audio and 'end' before 'config' itself



async def serve_native(service, connection, *, slot=None) -> None:
    await SerializedConnection(service, connection, NativeSerializer(limits_of(service))).run(slot=slot)
