"""The native wire protocol (fast-vc-service compatible), without I/O: bytes and text in, typed events out.

    client text  {"type": "config", ...}  --NativeProtocol.receive()--> ConfigEvent (validated SessionConfig)
    client bytes (PCM bytes, or one Opus packet)   --------------------> AudioEvent
    client text  {"type": "end"}          ---------------------------> EndEvent
    server       ready_message() / complete_message() / error_message()  -> JSON text

`NativeProtocol` is a small state machine (AWAITING_CONFIG -> STREAMING -> ENDED) that refuses messages in
the wrong state. Every refusal is a `ProtocolError` carrying its wire `error_code` and WebSocket close code:

    ProtocolError
     |-- InvalidMessage     INVALID_MESSAGE    1008  malformed JSON, unknown type, binary before config, ...
     |-- InvalidConfig      INVALID_CONFIG     1008  a config field is missing or out of range
     |-- AuthFailed         AUTH_FAILED        1008  api_key missing or wrong
     |-- InvalidAudio       INVALID_AUDIO      1007  audio bytes that cannot be decoded (e.g. odd PCM16 length)
     |-- MessageTooLarge    MESSAGE_TOO_LARGE  1009  a message over server.max_message_bytes
     |-- SessionTimeout     TIMEOUT            1008  client silent past server.receive_timeout_s, or not reading
     |-- Overloaded         OVERLOADED         1013  server.max_sessions reached (try again later)
     |-- ShuttingDown       SHUTTING_DOWN      1001  the server is draining
     `-- InternalError      INTERNAL_ERROR     1011  a bug or an engine failure; the session cannot go on
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

PCM_BIT_DEPTHS = (16, 24, 32)
PCM_MIN_RATE_HZ, PCM_MAX_RATE_HZ = 8000, 48000
OPUS_RATES_HZ = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (10, 20, 40, 60)
ENCODINGS = ("PCM", "OPUS")
MAX_SESSION_ID_CHARS = 128
MAX_SEED = 2**63 - 1


class ProtocolError(Exception):
    """A client message the server refuses. `error_code` goes in the error message, `close_code` closes."""

    error_code = "INTERNAL_ERROR"
    close_code = 1011


class InvalidMessage(ProtocolError):
    error_code, close_code = "INVALID_MESSAGE", 1008


class InvalidConfig(ProtocolError):
    error_code, close_code = "INVALID_CONFIG", 1008


class AuthFailed(ProtocolError):
    error_code, close_code = "AUTH_FAILED", 1008


class InvalidAudio(ProtocolError):
    error_code, close_code = "INVALID_AUDIO", 1007


class MessageTooLarge(ProtocolError):
    error_code, close_code = "MESSAGE_TOO_LARGE", 1009


class SessionTimeout(ProtocolError):
    error_code, close_code = "TIMEOUT", 1008


class Overloaded(ProtocolError):
    error_code, close_code = "OVERLOADED", 1013


class ShuttingDown(ProtocolError):
    error_code, close_code = "SHUTTING_DOWN", 1001


class InternalError(ProtocolError):
    error_code, close_code = "INTERNAL_ERROR", 1011


@dataclass(frozen=True)
class SessionConfig:
    """A validated `config` message. Optional fields are None when the client left them out."""

    session_id: str
    sample_rate_hz: int
    bit_depth: int
    channels: int
    encoding: str
    opus_frame_ms: int
    sample_rate_out_hz: int
    output_encoding: str
    api_key: str | None = None
    voice: str | None = None
    seed: int | None = None
    diffusion_steps: int | None = None


@dataclass(frozen=True)
class ConfigEvent:
    config: SessionConfig


@dataclass(frozen=True)
class AudioEvent:
    payload: bytes


@dataclass(frozen=True)
class EndEvent:
    pass


Event = ConfigEvent | AudioEvent | EndEvent


class ProtocolState(enum.Enum):
    AWAITING_CONFIG = "awaiting_config"
    STREAMING = "streaming"
    ENDED = "ended"


@dataclass(frozen=True)
class ProtocolLimits:
    """What the server accepts; defaults come from `fastvc.config` through the server."""

    max_message_bytes: int = 1 << 20
    default_sample_rate_out_hz: int = 16000
    max_diffusion_steps: int = 100



def check_message_size(message: str | bytes, limits: ProtocolLimits) -> None:
    """Every dialect's first check on an incoming message: MessageTooLarge past `max_message_bytes`."""
    if len(message) > limits.max_message_bytes:
        raise MessageTooLarge(f"message of {len(message)} bytes exceeds the limit of {limits.max_message_bytes} bytes")

class NativeProtocol:
    """Parses one connection's client messages in order; raises `ProtocolError` for anything refused."""

    def __init__(self, limits: ProtocolLimits | None = None) -> None:
        self.limits = limits or ProtocolLimits()
        self.state = ProtocolState.AWAITING_CONFIG
        self.config: SessionConfig | None = None

    def receive(self, message: str | bytes) -> Event:
        """One WebSocket message (text as str, binary as bytes) -> its event."""
        check_message_size(message, self.limits)
        if self.state is ProtocolState.ENDED:
            raise InvalidMessage("no message may follow 'end'")
        if isinstance(message, bytes):
            return self._receive_audio(message)
        return self._receive_text(message)

    def _receive_audio(self, payload: bytes) -> AudioEvent:
        if self.state is ProtocolState.AWAITING_CONFIG:
            raise InvalidMessage("audio received before the 'config' message")
        return AudioEvent(payload)

    def _receive_text(self, text: str) -> Event:
        fields = parse_json_object(text)
        kind = fields.get("type")
        if kind == "config":
            if self.state is not ProtocolState.AWAITING_CONFIG:
                raise InvalidMessage("'config' may be sent only once, first")
            self.config = parse_config(fields, self.limits)
            self.state = ProtocolState.STREAMING
            return ConfigEvent(self.config)
        if kind == "end":
            if self.state is not ProtocolState.STREAMING:
                raise InvalidMessage("'end' received before the 'config' message")
            self.state = ProtocolState.ENDED
            return EndEvent()
        raise InvalidMessage(f"unknown message type {kind!r}; expected 'config', 'end' or binary audio")


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidMessage(f"malformed JSON: {error.msg} at position {error.pos}") from error
    if not isinstance(fields, dict):
        raise InvalidMessage("a text message must be a JSON object")
    return fields


def _integer(fields: dict[str, Any], name: str, *, required: bool, default: int | None = None) -> int | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise InvalidConfig(f"'{name}' is required")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(f"'{name}' must be an integer, got {value!r}")
    return value


def _encoding(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str) or value.upper() not in ENCODINGS:
        raise InvalidConfig(f"'{name}' must be one of {', '.join(ENCODINGS)}, got {value!r}")
    return value.upper()


def _optional_string(fields: dict[str, Any], name: str, max_chars: int = MAX_SESSION_ID_CHARS) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise InvalidConfig(f"'{name}' must be a non-empty string of at most {max_chars} characters")
    return value


def _check_rate(name: str, rate_hz: int, encoding: str) -> None:
    if encoding == "OPUS" and rate_hz not in OPUS_RATES_HZ:
        raise InvalidConfig(f"'{name}' {rate_hz} is not an Opus rate; use one of {OPUS_RATES_HZ}")
    if not PCM_MIN_RATE_HZ <= rate_hz <= PCM_MAX_RATE_HZ:
        raise InvalidConfig(f"'{name}' must be between {PCM_MIN_RATE_HZ} and {PCM_MAX_RATE_HZ} Hz, got {rate_hz}")


def parse_config(fields: dict[str, Any], limits: ProtocolLimits) -> SessionConfig:
    """Validate a `config` message's fields into a `SessionConfig`; raise `InvalidConfig` naming the field."""
    encoding = _encoding(fields, "encoding", "PCM")
    output_encoding = _encoding(fields, "output_encoding", "PCM")
    sample_rate_hz = _integer(fields, "sample_rate", required=True)
    _check_rate("sample_rate", sample_rate_hz, encoding)
    bit_depth = _integer(fields, "bit_depth", required=encoding == "PCM", default=16)
    if encoding == "PCM" and bit_depth not in PCM_BIT_DEPTHS:
        raise InvalidConfig(f"'bit_depth' must be one of {PCM_BIT_DEPTHS}, got {bit_depth}")
    channels = _integer(fields, "channels", required=False, default=1)
    if channels != 1:
        raise InvalidConfig(f"only mono audio is supported: 'channels' must be 1, got {channels}")
    opus_frame_ms = _integer(fields, "opus_frame_duration", required=False, default=20)
    if opus_frame_ms not in OPUS_FRAME_MS:
        raise InvalidConfig(f"'opus_frame_duration' must be one of {OPUS_FRAME_MS} ms, got {opus_frame_ms}")
    sample_rate_out_hz = _integer(fields, "sample_rate_out", required=False,
                                  default=limits.default_sample_rate_out_hz)
    _check_rate("sample_rate_out", sample_rate_out_hz, output_encoding)
    seed = _integer(fields, "seed", required=False)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidConfig(f"'seed' must be between 0 and {MAX_SEED}")
    steps = _integer(fields, "diffusion_steps", required=False)
    if steps is not None and not 1 <= steps <= limits.max_diffusion_steps:
        raise InvalidConfig(f"'diffusion_steps' must be between 1 and {limits.max_diffusion_steps}")
    api_key = fields.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidConfig("'api_key' must be a string")
    return SessionConfig(
        session_id=_optional_string(fields, "session_id") or uuid.uuid4().hex,
        sample_rate_hz=sample_rate_hz,
        bit_depth=bit_depth,
        channels=channels,
        encoding=encoding,
        opus_frame_ms=opus_frame_ms,
        sample_rate_out_hz=sample_rate_out_hz,
        output_encoding=output_encoding,
        api_key=api_key,
        voice=_optional_string(fields, "voice"),
        seed=seed,
        diffusion_steps=steps,
    )


def ready_message(session_id: str, **details: Any) -> str:
    """`{"type": "ready", "session_id", "message", ...details}` (details: effective settings, extensions)."""
    return json.dumps({"type": "ready", "session_id": session_id, "message": "ready to receive audio", **details})


def complete_message(session_id: str, stats: dict[str, Any]) -> str:
    return json.dumps({"type": "complete", "session_id": session_id, "stats": stats})


def error_message(error: ProtocolError) -> str:
    return json.dumps({"type": "error", "error_code": error.error_code, "message": str(error)})


def config_dict(config: SessionConfig) -> dict[str, Any]:
    """The config as a plain dict without the api_key (for logs and recordings)."""
    fields = asdict(config)
    fields.pop("api_key")
    return fields
