"""Binary L16 at `/l16?rate=16000&voice=alice`: raw 16-bit little-endian mono PCM both ways, JSON for control.

The style of Vonage's and jambonz's audio WebSockets: the URL carries the format, binary messages carry
audio, text messages carry control and errors.

    query: rate (8000..48000, required), voice, api_key, session_id, seed, diffusion_steps (all optional)
    server  {"type":"ready","session_id",...}          once the session is open
    client  binary L16 at `rate`                       server  binary L16 at `rate` (converted)
    client  {"type":"end"}                             server  rest of the audio, {"type":"complete","stats"},
                                                               close 1000
    server  {"type":"error","error_code","message"}    then close with the error's code (as the native protocol)

A gateway's own JSON notices (Vonage's first message {"event":"websocket:connected","content-type":
"audio/l16;rate=16000"}, DTMF events...) are ignored, except that a `content-type` naming another rate than
the URL's is refused. Closing the socket without `end` aborts the session and frees it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from fastvc.dialects.base import Message, SerializedConnection, limits_of
from fastvc.dialects.native import NativeReplies
from fastvc.protocol import (PCM_MAX_RATE_HZ, PCM_MIN_RATE_HZ, AudioEvent, ConfigEvent, EndEvent, Event, InvalidConfig,
                             InvalidMessage, ProtocolLimits, SessionConfig, check_message_size, parse_config,
                             parse_json_object)

QUERY_FIELDS = {"rate": "sample_rate", "voice": "voice", "api_key": "api_key", "session_id": "session_id",
                "seed": "seed", "diffusion_steps": "diffusion_steps"}
INTEGER_FIELDS = ("rate", "seed", "diffusion_steps")
L16_CONTENT_TYPE = re.compile(r"audio/l16\s*;\s*rate\s*=\s*(\d+)", re.IGNORECASE)


class L16Serializer(NativeReplies):
    """Config from the URL, audio as binary messages, control and errors as JSON text."""

    name = "l16"

    def __init__(self, limits: ProtocolLimits | None = None, logger=None) -> None:
        self.limits = limits or ProtocolLimits()
        self.log = logger or structlog.get_logger("fastvc.l16")
        self.config: SessionConfig | None = None
        self.ended = False

    def open(self, request_path: str) -> ConfigEvent:
        query = parse_qs(urlsplit(request_path).query, keep_blank_values=True)
        unknown = sorted(set(query) - set(QUERY_FIELDS))
        if unknown:
            raise InvalidConfig(f"unknown query parameter(s) {', '.join(unknown)}; "
                                f"use {', '.join(QUERY_FIELDS)}")
        values = {name: query[name][-1] for name in query}
        if "rate" not in values:
            raise InvalidConfig("the query must give the sample rate: /l16?rate=16000")
        fields: dict[str, Any] = {QUERY_FIELDS[name]: _integer(name, value) if name in INTEGER_FIELDS else value
                                  for name, value in values.items()}
        rate_hz = fields["sample_rate"]
        if not PCM_MIN_RATE_HZ <= rate_hz <= PCM_MAX_RATE_HZ:
            raise InvalidConfig(f"'rate' must be between {PCM_MIN_RATE_HZ} and {PCM_MAX_RATE_HZ} Hz, got {rate_hz}")
        fields.update(type="config", bit_depth=16, channels=1, encoding="PCM", sample_rate_out=rate_hz)
        self.config = parse_config(fields, self.limits)
        return ConfigEvent(self.config)

    def receive(self, message: Message) -> Event | None:
        check_message_size(message, self.limits)
        if self.ended:
            raise InvalidMessage("no message may follow 'end'")
        if isinstance(message, bytes):
            return AudioEvent(message)
        fields = parse_json_object(message)
        kind = fields.get("type")
        if kind == "end":
            self.ended = True
            return EndEvent()
        if kind is not None:
            raise InvalidMessage(f"unknown message type {kind!r}; expected 'end' or binary audio")
        self._check_content_type(fields.get("content-type"))
        self.log.debug("l16.notice_ignored", keys=sorted(fields)[:8])
        return None

    def _check_content_type(self, content_type: Any) -> None:
        if not isinstance(content_type, str):
            return
        match = L16_CONTENT_TYPE.search(content_type)
        if match is None or int(match.group(1)) != self.config.sample_rate_hz:
            raise InvalidConfig(f"content-type {content_type!r} does not match the URL's "
                                f"audio/l16;rate={self.config.sample_rate_hz}")



def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise InvalidConfig(f"'{name}' must be an integer, got {text!r}") from error


async def serve_l16(service, connection) -> None:
    await SerializedConnection(service, connection, L16Serializer(limits_of(service))).run()
