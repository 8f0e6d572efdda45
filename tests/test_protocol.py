"""The native protocol without I/O: messages in, typed events or errors (with their wire codes) out."""

from __future__ import annotations

import json

import pytest

from fastvc.protocol import (AudioEvent, ConfigEvent, EndEvent, InvalidConfig, InvalidMessage, MessageTooLarge,
                             NativeProtocol, ProtocolLimits, complete_message, error_message, ready_message)

PCM_CONFIG = {"type": "config", "sample_rate": 16000, "bit_depth": 16, "channels": 1, "encoding": "PCM"}


def _configured(**fields) -> NativeProtocol:
    protocol = NativeProtocol()
    protocol.receive(json.dumps({**PCM_CONFIG, **fields}))
    return protocol


def test_a_full_conversation_gives_typed_events():
    protocol = NativeProtocol()
    event = protocol.receive(json.dumps({**PCM_CONFIG, "session_id": "abc", "api_key": "k", "voice": "v",
                                         "seed": 7, "diffusion_steps": 8, "output_encoding": "opus",
                                         "sample_rate_out": 24000}))
    assert isinstance(event, ConfigEvent)
    config = event.config
    assert (config.session_id, config.sample_rate_hz, config.bit_depth, config.encoding) == ("abc", 16000, 16, "PCM")
    assert (config.output_encoding, config.sample_rate_out_hz, config.seed, config.diffusion_steps) == (
        "OPUS", 24000, 7, 8)
    assert protocol.receive(b"\x00\x00") == AudioEvent(b"\x00\x00")
    assert isinstance(protocol.receive('{"type": "end"}'), EndEvent)


def test_defaults_fill_optional_fields():
    config = NativeProtocol(ProtocolLimits(default_sample_rate_out_hz=22050)).receive(
        json.dumps({"type": "config", "sample_rate": 8000, "bit_depth": 16})).config
    assert config.channels == 1 and config.encoding == "PCM" and config.output_encoding == "PCM"
    assert config.sample_rate_out_hz == 22050 and config.opus_frame_ms == 20
    assert len(config.session_id) == 32 and config.seed is None


def test_binary_before_config_is_refused():
    with pytest.raises(InvalidMessage, match="before the 'config'") as caught:
        NativeProtocol().receive(b"\x00\x00")
    assert (caught.value.error_code, caught.value.close_code) == ("INVALID_MESSAGE", 1008)


@pytest.mark.parametrize("text,match", [("{not json", "malformed JSON"), ("[1, 2]", "JSON object"),
                                        ('{"type": "hello"}', "unknown message type")])
def test_malformed_or_unknown_text_is_refused(text, match):
    with pytest.raises(InvalidMessage, match=match):
        NativeProtocol().receive(text)


def test_config_twice_is_refused():
    with pytest.raises(InvalidMessage, match="only once"):
        _configured().receive(json.dumps(PCM_CONFIG))


def test_end_before_config_and_messages_after_end_are_refused():
    with pytest.raises(InvalidMessage):
        NativeProtocol().receive('{"type": "end"}')
    protocol = _configured()
    protocol.receive('{"type": "end"}')
    with pytest.raises(InvalidMessage, match="follow 'end'"):
        protocol.receive(b"\x00\x00")


@pytest.mark.parametrize("change,match", [
    ({"sample_rate": None}, "'sample_rate' is required"),
    ({"sample_rate": 4000}, "between 8000 and 48000"),
    ({"sample_rate": "16k"}, "must be an integer"),
    ({"bit_depth": None}, "'bit_depth' is required"),
    ({"bit_depth": 12}, "'bit_depth' must be one of"),
    ({"channels": 2}, "'channels' must be 1"),
    ({"encoding": "MP3"}, "'encoding' must be one of"),
    ({"encoding": "OPUS", "opus_frame_duration": 25}, "'opus_frame_duration'"),
    ({"encoding": "OPUS", "sample_rate": 44100}, "not an Opus rate"),
    ({"output_encoding": "OPUS", "sample_rate_out": 22050}, "not an Opus rate"),
    ({"sample_rate_out": 96000}, "between 8000 and 48000"),
    ({"seed": -1}, "'seed'"),
    ({"diffusion_steps": 0}, "'diffusion_steps'"),
    ({"session_id": ""}, "'session_id'"),
    ({"api_key": 5}, "'api_key'"),
])
def test_invalid_config_fields_are_named(change, match):
    fields = {**PCM_CONFIG, **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(InvalidConfig, match=match) as caught:
        NativeProtocol().receive(json.dumps(fields))
    assert (caught.value.error_code, caught.value.close_code) == ("INVALID_CONFIG", 1008)


def test_oversized_message_is_refused_with_1009():
    protocol = NativeProtocol(ProtocolLimits(max_message_bytes=100))
    with pytest.raises(MessageTooLarge) as caught:
        protocol.receive(b"\x00" * 101)
    assert (caught.value.error_code, caught.value.close_code) == ("MESSAGE_TOO_LARGE", 1009)


def test_server_messages_are_the_documented_json():
    assert json.loads(ready_message("s1", sample_rate_out=16000)) == {
        "type": "ready", "session_id": "s1", "message": "ready to receive audio", "sample_rate_out": 16000}
    assert json.loads(complete_message("s1", {"blocks": 3})) == {
        "type": "complete", "session_id": "s1", "stats": {"blocks": 3}}
    assert json.loads(error_message(InvalidConfig("bad"))) == {
        "type": "error", "error_code": "INVALID_CONFIG", "message": "bad"}
