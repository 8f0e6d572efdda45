"""fast-vc-service's simple protocol, on `/` and `/ws` beside the native one (picked by the first message).

    client {"signal":"start","stream_id","sample_rate","sample_bit"}     no reply (the original sends none)
           optional: "encoding" PCM|OPUS, "opus_frame_duration" (ms), "sample_rate_out" (default 16000),
           "api_key" (when the server has keys), "voice", "seed", "diffusion_steps" (fastvc extensions)
    client binary audio (PCM, or one Opus packet per message)           server binary audio, same encoding
    client {"signal":"end"}                                             server rest of the audio,
                                                                        {"signal":"completed","stream_id",
                                                                         "stats"}, close 1000
    server {"status":"failed","stream_id","error_msg","error_code"}     then close with the error's code

Fields are checked as the native `config` is (`fastvc.protocol.parse_config`), under their simple names.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from fastvc.dialects.base import Message, SerializedConnection, limits_of
from fastvc.protocol import (PCM_BIT_DEPTHS, AudioEvent, ConfigEvent, EndEvent, Event, InvalidConfig, InvalidMessage,
                             ProtocolError, ProtocolLimits, SessionConfig, check_message_size, parse_config,
                             parse_json_object)

RENAMED = {"stream_id": "session_id", "sample_bit": "bit_depth"}
PASSED = ("sample_rate", "encoding", "opus_frame_duration", "sample_rate_out", "api_key", "voice", "seed",
          "diffusion_steps")


def is_simple_start(message: Message) -> bool:
    """Whether a connection's first message belongs to the simple protocol (a JSON object with "signal")."""
    if not isinstance(message, str):
        return False
    try:
        fields = json.loads(message)
    except json.JSONDecodeError:
        return False
    return isinstance(fields, dict) and "signal" in fields


class SimpleSerializer:
    """start / binary audio / end, with fast-vc-service's message shapes."""

    name = "simple"

    def __init__(self, limits: ProtocolLimits | None = None, logger=None) -> None:
        self.limits = limits or ProtocolLimits()
        self.log = logger or structlog.get_logger("fastvc.simple")
        self.config: SessionConfig | None = None
        self.stream_id: str | None = None
        self.ended = False

    def open(self, request_path: str) -> Event | None:
        return None

    def receive(self, message: Message) -> Event | None:
        check_message_size(message, self.limits)
        if self.ended:
            raise InvalidMessage("no message may follow 'end'")
        if isinstance(message, bytes):
            if self.config is None:
                raise InvalidMessage("audio received before the 'start' signal")
            return AudioEvent(message)
        fields = parse_json_object(message)
        signal = fields.get("signal")
        if signal == "start":
            return self._start(fields)
        if signal == "end":
            if self.config is None:
                raise InvalidMessage("'end' received before the 'start' signal")
            self.ended = True
            return EndEvent()
        raise InvalidMessage(f"unknown signal {signal!r}; expected 'start', 'end' or binary audio")

    def _start(self, fields: dict[str, Any]) -> ConfigEvent:
        if self.config is not None:
            raise InvalidMessage("'start' may be sent only once, first")
        stream_id = fields.get("stream_id")
        if isinstance(stream_id, str):
            self.stream_id = stream_id
        if "sample_bit" not in fields:
            raise InvalidConfig("'sample_bit' is required")
        if fields["sample_bit"] not in PCM_BIT_DEPTHS or isinstance(fields["sample_bit"], bool):
            raise InvalidConfig(f"'sample_bit' must be one of {PCM_BIT_DEPTHS}, got {fields['sample_bit']!r}")
        native = {RENAMED[name]: fields[name] for name in RENAMED if name in fields}
        native.update({name: fields[name] for name in PASSED if name in fields})
        native["output_encoding"] = fields.get("encoding", "PCM")  # audio comes back as it went in
        self.config = parse_config(native, self.limits)
        self.stream_id = self.config.session_id
        return ConfigEvent(self.config)

    def ready(self, config: SessionConfig, details: dict[str, Any]) -> list[Message]:
        return []  # fast-vc-service sends no ready message

    def audio(self, packets: list[bytes]) -> list[Message]:
        return list(packets)

    def complete(self, config: SessionConfig, stats: dict[str, Any]) -> list[Message]:
        return [json.dumps({"signal": "completed", "stream_id": config.session_id, "stats": stats})]

    def error(self, error: ProtocolError) -> list[Message]:
        return [json.dumps({"status": "failed", "stream_id": self.stream_id, "error_msg": str(error),
                            "error_code": error.error_code})]

    def close_reason(self, error: ProtocolError) -> str:
        return error.error_code


async def serve_simple(service, connection, *, slot=None) -> None:
    await SerializedConnection(service, connection, SimpleSerializer(limits_of(service))).run(slot=slot)
