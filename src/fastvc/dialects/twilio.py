"""Twilio Media Streams, bidirectional (`<Connect><Stream url="wss://host/twilio">`), at `/twilio`.

    Twilio -> fastvc                                      fastvc -> Twilio
    {"event":"connected","protocol":"Call",...}           (nothing)
    {"event":"start","start":{"streamSid",                (nothing: Twilio has no ready message)
        "mediaFormat":{"encoding":"audio/x-mulaw",
        "sampleRate":8000,"channels":1},
        "customParameters":{"voice","api_key"}}}
    {"event":"media","media":{"payload":<base64 μ-law>}}  {"event":"media","streamSid","media":{"payload"}}
                                                          {"event":"mark","streamSid","mark":{"name":"block-N"}}
    {"event":"mark","mark":{"name":"block-N"}}            (Twilio played block N: counted)
    {"event":"dtmf",...}                                  (ignored)
    {"event":"stop",...}                                  rest of the audio, then close 1000

Twilio has no error message: a refused stream is closed with the error's close code and a reason that says
why (visible in Twilio's debugger). An event this module does not know is logged and ignored, so a new Twilio
event never drops a call. The session id is the `streamSid`; the target voice and the API key come from the
`<Parameter>`s of the `<Stream>` (Twilio does not pass a query string to the WebSocket).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from typing import Any

import structlog

from fastvc.dialects.base import Message, SerializedConnection, limits_of
from fastvc.protocol import (AudioEvent, ConfigEvent, EndEvent, Event, InvalidAudio, InvalidConfig, InvalidMessage,
                             ProtocolError, ProtocolLimits, SessionConfig, check_message_size, parse_json_object)

TWILIO_ENCODING = "audio/x-mulaw"
TWILIO_RATE_HZ = 8000
MAX_PARAMETER_CHARS = 128


class TwilioState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class TwilioSerializer:
    """Parses one Twilio stream's events in order and frames the converted audio as Twilio `media` + `mark`."""

    name = "twilio"

    def __init__(self, limits: ProtocolLimits | None = None, logger=None) -> None:
        self.limits = limits or ProtocolLimits()
        self.log = logger or structlog.get_logger("fastvc.twilio")
        self.state = TwilioState.AWAITING_START
        self.stream_sid: str | None = None
        self.marks_sent = 0
        self.marks_played = 0
        self.ignored_events = 0

    def open(self, request_path: str) -> Event | None:
        return None

    def receive(self, message: Message) -> Event | None:
        check_message_size(message, self.limits)
        if isinstance(message, bytes):
            raise InvalidMessage("Twilio Media Streams sends JSON text messages, not binary ones")
        fields = parse_json_object(message)
        event = fields.get("event")
        if self.state is TwilioState.STOPPED:
            raise InvalidMessage(f"{event!r} after 'stop'")
        handler = _HANDLERS.get(event)
        if handler is None:
            self.ignored_events += 1
            self.log.warning("twilio.unknown_event", twilio_event=str(event)[:64])
            return None
        return handler(self, fields)

    def _on_connected(self, fields: dict[str, Any]) -> None:
        return None

    def _on_start(self, fields: dict[str, Any]) -> ConfigEvent:
        if self.state is not TwilioState.AWAITING_START:
            raise InvalidMessage("'start' may come only once")
        start = _object(fields, "start")
        self.stream_sid = _stream_sid(start.get("streamSid") or fields.get("streamSid"))
        _check_media_format(_object(start, "mediaFormat"))
        parameters = start.get("customParameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidConfig("'start.customParameters' must be an object")
        self.state = TwilioState.STREAMING
        return ConfigEvent(SessionConfig(
            session_id=self.stream_sid, sample_rate_hz=TWILIO_RATE_HZ, bit_depth=8, channels=1,
            encoding="MULAW", opus_frame_ms=20, sample_rate_out_hz=TWILIO_RATE_HZ, output_encoding="MULAW",
            api_key=_parameter(parameters, "api_key"), voice=_parameter(parameters, "voice")))

    def _on_media(self, fields: dict[str, Any]) -> AudioEvent | None:
        if self.state is not TwilioState.STREAMING:
            raise InvalidMessage("'media' before 'start': the stream's format is not known yet")
        media = _object(fields, "media")
        if media.get("track", "inbound") != "inbound":
            return None  # only the caller's audio is converted
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise InvalidAudio("'media.payload' must be a base64 string")
        try:
            return AudioEvent(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as error:
            raise InvalidAudio(f"'media.payload' is not valid base64: {error}") from error

    def _on_mark(self, fields: dict[str, Any]) -> None:
        self.marks_played += 1
        return None

    def _on_dtmf(self, fields: dict[str, Any]) -> None:
        return None

    def _on_stop(self, fields: dict[str, Any]) -> EndEvent:
        if self.state is not TwilioState.STREAMING:
            raise InvalidMessage("'stop' before 'start'")
        self.state = TwilioState.STOPPED
        return EndEvent()

    def ready(self, config: SessionConfig, details: dict[str, Any]) -> list[Message]:
        return []

    def audio(self, packets: list[bytes]) -> list[Message]:
        """Each packet (one block of μ-law bytes) -> a `media` message and a `mark` naming the block."""
        messages: list[Message] = []
        for packet in packets:
            self.marks_sent += 1
            messages.append(json.dumps({"event": "media", "streamSid": self.stream_sid,
                                        "media": {"payload": base64.b64encode(packet).decode("ascii")}}))
            messages.append(json.dumps({"event": "mark", "streamSid": self.stream_sid,
                                        "mark": {"name": f"block-{self.marks_sent}"}}))
        return messages

    def complete(self, config: SessionConfig, stats: dict[str, Any]) -> list[Message]:
        self.log.info("twilio.marks", sent=self.marks_sent, played=self.marks_played,
                      ignored_events=self.ignored_events)
        return []

    def error(self, error: ProtocolError) -> list[Message]:
        return []  # Twilio defines no error message; the close reason carries it

    def close_reason(self, error: ProtocolError) -> str:
        return f"{error.error_code}: {error}"


_HANDLERS = {
    "connected": TwilioSerializer._on_connected,
    "start": TwilioSerializer._on_start,
    "media": TwilioSerializer._on_media,
    "mark": TwilioSerializer._on_mark,
    "dtmf": TwilioSerializer._on_dtmf,
    "stop": TwilioSerializer._on_stop,
}


def _object(fields: dict[str, Any], name: str) -> dict[str, Any]:
    value = fields.get(name)
    if not isinstance(value, dict):
        raise InvalidMessage(f"'{name}' must be an object")
    return value


def _stream_sid(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PARAMETER_CHARS:
        raise InvalidConfig("'start.streamSid' must be a non-empty string")
    return value


def _check_media_format(media_format: dict[str, Any]) -> None:
    encoding = media_format.get("encoding")
    rate_hz = media_format.get("sampleRate")
    channels = media_format.get("channels", 1)
    if encoding != TWILIO_ENCODING or rate_hz != TWILIO_RATE_HZ or channels != 1:
        raise InvalidConfig(f"unsupported mediaFormat {encoding!r} {rate_hz!r} Hz {channels!r} channel(s); "
                            f"fastvc takes {TWILIO_ENCODING} {TWILIO_RATE_HZ} Hz mono")


def _parameter(parameters: dict[str, Any], name: str) -> str | None:
    value = parameters.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_PARAMETER_CHARS:
        raise InvalidConfig(f"custom parameter '{name}' must be a string of at most {MAX_PARAMETER_CHARS} characters")
    return value


async def serve_twilio(service, connection) -> None:
    await SerializedConnection(service, connection, TwilioSerializer(limits_of(service))).run()
