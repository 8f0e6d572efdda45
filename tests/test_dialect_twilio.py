"""Twilio Media Streams at /twilio: the serializer on bytes, then a real server with a client playing Twilio."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog
import structlog.testing
from websockets.asyncio.client import connect

from dialectkit import (STREAM_SID, assert_same_audio, mulaw_bytes, mulaw_samples, twilio_call, twilio_media,
                        twilio_start, twilio_stop)
from fastvc.dialects.twilio import TwilioSerializer
from fastvc.protocol import AudioEvent, ConfigEvent, EndEvent, InvalidAudio, InvalidConfig, InvalidMessage
from serverkit import make_config, running_server, speech, ws_url

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def test_start_configures_a_mulaw_8k_session_with_the_voice_parameter():
    serializer = TwilioSerializer()
    assert serializer.receive(CONNECTED) is None
    event = serializer.receive(twilio_start({"voice": "alice", "api_key": "k1"}))
    assert isinstance(event, ConfigEvent)
    config = event.config
    assert (config.session_id, config.voice, config.api_key) == (STREAM_SID, "alice", "k1")
    assert (config.encoding, config.sample_rate_hz, config.output_encoding, config.sample_rate_out_hz) == \
        ("MULAW", 8000, "MULAW", 8000)


def test_media_payload_is_base64_decoded_and_the_rest_is_ignored_or_ends():
    serializer = TwilioSerializer()
    serializer.receive(twilio_start())
    assert serializer.receive(twilio_media(b"\xff\x7f\x00", 1)) == AudioEvent(b"\xff\x7f\x00")
    dtmf = json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"track": "inbound_track", "digit": "1"}})
    assert serializer.receive(dtmf) is None
    assert serializer.receive(json.dumps({"event": "mark", "mark": {"name": "block-1"}})) is None
    assert serializer.marks_played == 1
    assert isinstance(serializer.receive(twilio_stop()), EndEvent)


def test_output_is_media_then_mark_carrying_the_stream_sid():
    serializer = TwilioSerializer()
    serializer.receive(twilio_start())
    media, mark = (json.loads(m) for m in serializer.audio([b"\x01\x02\x03"]))
    assert media == {"event": "media", "streamSid": STREAM_SID, "media": {"payload": "AQID"}}
    assert mark == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "block-1"}}


def test_media_before_start_is_refused():
    with pytest.raises(InvalidMessage, match="before 'start'"):
        TwilioSerializer().receive(twilio_media(b"\xff" * 160, 1))


def test_a_payload_that_is_not_base64_is_refused():
    serializer = TwilioSerializer()
    serializer.receive(twilio_start())
    with pytest.raises(InvalidAudio, match="base64"):
        serializer.receive(twilio_media("not base64!!", 1))


def test_an_unknown_event_is_ignored_and_counted():
    serializer = TwilioSerializer()
    serializer.receive(twilio_start())
    assert serializer.receive(json.dumps({"event": "transcription", "streamSid": STREAM_SID})) is None
    assert serializer.ignored_events == 1


@pytest.mark.parametrize("media_format", [
    {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
])
def test_a_media_format_other_than_mulaw_8k_mono_is_refused(media_format):
    with pytest.raises(InvalidConfig, match="mediaFormat"):
        TwilioSerializer().receive(twilio_start(media_format=media_format))


def call_messages(samples, parameters=None) -> list[str]:
    data = mulaw_bytes(samples)
    chunks = [data[i: i + 160] for i in range(0, len(data), 160)]  # 20 ms, as Twilio sends
    return [CONNECTED, twilio_start(parameters)] + [twilio_media(c, n + 1) for n, c in enumerate(chunks)] + \
        [twilio_stop()]


async def test_a_call_comes_back_as_mulaw_of_the_same_duration(audio_dir):
    source = speech(audio_dir, 8000, seconds=4.0)
    sent = mulaw_samples(mulaw_bytes(source))  # what Twilio really sends: the μ-law of the speech
    async with running_server() as server:
        result = await twilio_call(ws_url(server, "/twilio"), call_messages(source, {"voice": "default"}))
    assert result.close_code == 1000
    assert_same_audio(sent, result.audio(), 8000, max_duration_error_s=0.040, min_correlation=0.95)
    kinds = [event["event"] for event in result.events]
    assert kinds[:2] == ["media", "mark"] and kinds.count("media") == kinds.count("mark")
    assert all(event["streamSid"] == STREAM_SID for event in result.events)


async def test_bad_twilio_input_gets_a_clear_close_and_spares_other_calls(audio_dir):
    source = speech(audio_dir, 8000, seconds=2.0)
    mulaw_20ms = mulaw_bytes(source[:160])
    unknown = json.dumps({"event": "something-new", "streamSid": STREAM_SID})
    bad_format = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
    async with running_server() as server:
        url = ws_url(server, "/twilio")
        good, before_start, not_base64, wrong_format, with_unknown = await asyncio.gather(
            twilio_call(url, call_messages(source)),
            twilio_call(url, [CONNECTED, twilio_media(mulaw_20ms, 1)]),
            twilio_call(url, [CONNECTED, twilio_start(), twilio_media("%%%not-base64%%%", 1)]),
            twilio_call(url, [CONNECTED, twilio_start(media_format=bad_format)]),
            twilio_call(url, call_messages(source)[:3] + [unknown] + call_messages(source)[3:]),
        )
        assert server.service.active_sessions == 0
    assert (before_start.close_code, before_start.media) == (1008, [])
    assert "before 'start'" in before_start.close_reason
    assert not_base64.close_code == 1007 and "base64" in not_base64.close_reason
    assert wrong_format.close_code == 1008 and "mediaFormat" in wrong_format.close_reason
    for call in (good, with_unknown):  # an unknown event is ignored: the call goes on
        assert call.close_code == 1000
        assert_same_audio(mulaw_samples(mulaw_bytes(source)), call.audio(), 8000, max_duration_error_s=0.040,
                          min_correlation=0.95)


async def test_a_call_dropped_without_stop_frees_its_session(audio_dir):
    source = speech(audio_dir, 8000, seconds=2.0)
    async with running_server() as server:
        with structlog.testing.capture_logs() as logs:
            async with connect(ws_url(server, "/twilio")) as ws:
                for message in call_messages(source)[:-1]:  # everything but the stop
                    await ws.send(message)
                await ws.recv()  # converted audio is flowing
                assert server.service.active_sessions == 1
                ws.transport.abort()  # the socket drops: no stop, no close frame
            for _ in range(100):
                if server.service.active_sessions == 0:
                    break
                await asyncio.sleep(0.02)
        assert server.service.active_sessions == 0 and server.service.runner.pending == 0
        ends = [line for line in logs if line["event"] == "session.end"]
        assert [line["outcome"] for line in ends] == ["client_gone"]
        assert [line for line in logs if line["log_level"] in ("warning", "error", "critical")] == []
        # The server still serves the next call in full.
        result = await twilio_call(ws_url(server, "/twilio"), call_messages(source))
        assert result.close_code == 1000 and len(result.audio()) == source.shape[0]


async def test_a_recorded_call_is_filed_under_its_stream_sid(audio_dir, tmp_path):
    config = make_config()
    config.recording.enabled = True
    config.recording.directory = str(tmp_path)
    source = speech(audio_dir, 8000, seconds=1.0)
    async with running_server(config) as server:
        await twilio_call(ws_url(server, "/twilio"), call_messages(source))
    stats_file, = tmp_path.glob(f"*/*/*/{STREAM_SID}_stats.json")
    summary = json.loads(stats_file.read_text())
    assert (summary["dialect"], summary["outcome"], summary["config"]["encoding"]) == ("twilio", "complete", "MULAW")
    assert summary["stats"]["input_seconds"] == 1.0
