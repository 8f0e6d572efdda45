"""One connection driver for every dialect (native, Twilio, binary L16, fast-vc-service's simple protocol).

    transport message --serializer.receive--> ConfigEvent | AudioEvent | EndEvent | None (nothing to do)
    ConfigEvent -> authenticate, decoder/encoder by wire name, Service.open_session, serializer.ready()
    AudioEvent  -> decoder -> session.feed;   session -> encoder -> serializer.audio(packets) -> transport
    EndEvent    -> session.finish -> encoder flush -> serializer.complete(stats) -> close 1000
    ProtocolError -> serializer.error(error) -> close with the error's code; client gone -> session aborted

A `Serializer` is pure (no I/O, testable with bytes): it knows its dialect's messages and nothing of sockets,
sessions or codecs. Everything else (admission, auth, timeouts, backpressure, stats, metrics) is here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import numpy as np
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fastvc.codec import AudioFormatError, Decoder, Encoder, make_decoder, make_encoder
from fastvc.protocol import (AudioEvent, ConfigEvent, EndEvent, Event, InternalError, InvalidAudio, InvalidMessage,
                             ProtocolError, ProtocolLimits, SessionConfig, SessionTimeout, config_dict)
from fastvc.service import Service
from fastvc.session import Session

Message = str | bytes
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes of UTF-8
MAX_FRAME_HEADER_BYTES = 14  # RFC 6455: 2 bytes, 8 of extended length, 4 of mask


class Serializer(Protocol):
    """One wire dialect, without I/O. Methods return the messages to send, in order."""

    name: str
    log: Any  # a structlog logger; the driver rebinds it with the session id once the session opens

    def open(self, request_path: str) -> Event | None:
        """The event implied by the URL (a config from the query string), or None."""

    def receive(self, message: Message) -> Event | None:
        """One client message -> its event, or None when it needs no action; raises `ProtocolError`."""

    def ready(self, config: SessionConfig, details: dict[str, Any]) -> list[Message]: ...

    def audio(self, packets: list[bytes]) -> list[Message]:
        """Encoded output packets (one per block for PCM and G.711, one per frame for Opus) -> messages."""

    def complete(self, config: SessionConfig, stats: dict[str, Any]) -> list[Message]: ...

    def error(self, error: ProtocolError) -> list[Message]: ...

    def close_reason(self, error: ProtocolError) -> str: ...


def limits_of(service: Service) -> ProtocolLimits:
    server = service.config.server
    return ProtocolLimits(max_message_bytes=server.max_message_bytes,
                          default_sample_rate_out_hz=server.default_sample_rate_out_hz,
                          max_diffusion_steps=server.max_diffusion_steps)


def truncate_reason(text: str) -> str:
    return text.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def close_discarding(connection: ServerConnection, code: int, reason: str) -> None:
    """Close, discarding what the client still sends (audio, Twilio's mark echoes...): a full receive queue
    would pause reading and hide the client's close frame until websockets' close timeout (10 s)."""
    discard = asyncio.create_task(_discard_incoming(connection))
    try:
        await connection.close(code, truncate_reason(reason))
    finally:
        discard.cancel()


async def _discard_incoming(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await connection.recv()


class SerializerSink:
    """The session's `AudioSink`: encodes its output and sends the serializer's messages."""

    def __init__(self, connection: ServerConnection, encoder: Encoder, serializer: Serializer,
                 service: Service) -> None:
        self.connection = connection
        self.encoder = encoder
        self.serializer = serializer
        self.service = service
        self.send_timeout_s = service.config.server.receive_timeout_s
        self._transport = getattr(connection, "transport", None)  # None for test doubles: always timed

    async def send_audio(self, samples: np.ndarray) -> None:
        await self._send(self.serializer.audio(await self._run(self.encoder.encode, samples)))

    async def flush(self) -> None:
        await self._send(self.serializer.audio(await self._run(self.encoder.flush)))

    async def _run(self, function, *args) -> list[bytes]:
        if not self.encoder.costly:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.service.codec_executor, function, *args)

    async def _send(self, messages: list[Message]) -> None:
        for message in messages:
            if self._fits_in_write_buffer(message):  # the send cannot wait for the client: no timer needed
                await self.connection.send(message)
                continue
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.connection.send(message)
            except TimeoutError as error:
                raise SessionTimeout(f"client did not read its audio for {self.send_timeout_s:g} s") from error

    def _fits_in_write_buffer(self, message: Message) -> bool:
        """True when writing is not paused (buffer at or under the low-water mark) and `message` keeps it under
        the high-water mark: websockets then returns without waiting for the client to read (it waits only while
        writing is paused), so the per-message timeout (a timer armed and cancelled, ~4.5 µs) can be skipped."""
        if self._transport is None or not isinstance(message, bytes):
            return False
        low, high = self._transport.get_write_buffer_limits()
        buffered = self._transport.get_write_buffer_size()
        return buffered <= low and buffered + len(message) + MAX_FRAME_HEADER_BYTES <= high


class SerializedConnection:
    """One connection of a serializer dialect; `run` returns when the connection is done."""

    def __init__(self, service: Service, connection: ServerConnection, serializer: Serializer) -> None:
        self.service = service
        self.connection = connection
        self.serializer = serializer
        self.receive_timeout_s = service.config.server.receive_timeout_s
        self.log = structlog.get_logger(f"fastvc.{serializer.name}").bind(peer=_peer(connection),
                                                                          dialect=serializer.name)
        self.session: Session | None = None
        self.config: SessionConfig | None = None
        self.decoder: Decoder | None = None
        self.sink: SerializerSink | None = None
        self.outcome = "aborted"

    async def run(self, *, slot: contextlib.AbstractContextManager | None = None) -> None:
        """`slot`: this connection's session slot when the caller took it already (`fastvc.dialects.root`)."""
        try:
            with slot if slot is not None else self.service.admit():
                await self._serve()
        except ProtocolError as error:
            self.outcome = error.error_code
            await self._refuse(error)
        except ConnectionClosed:
            self.outcome = "client_gone"  # not an error: logged once, as the session's end
        except Exception as error:  # noqa: BLE001 - a bug: report INTERNAL_ERROR to the client, log the trace
            self.outcome = "INTERNAL_ERROR"
            self.log.exception("session.internal_error", error=repr(error))
            await self._refuse(InternalError("internal server error"), logged=True)
        finally:
            if self.session is not None:
                await self.session.abort()
                if self.outcome != "complete":  # every session.start has one session.end, whatever happened
                    self.log.info("session.end", outcome=self.outcome, **self.session.stats.to_dict())
                self.service.close_session(self.session, self._summary())

    async def _serve(self) -> None:
        event = self.serializer.open(self.connection.request.path)
        while not isinstance(event, ConfigEvent):
            if event is not None:  # serializers refuse audio or an end before their start themselves
                raise InvalidMessage("the stream has not started")
            event = self.serializer.receive(await self._receive())
        config = event.config
        await self._start(config)
        while True:
            event = self.serializer.receive(await self._receive())
            if isinstance(event, AudioEvent):
                await self.session.feed(await self._decode(event.payload))
            elif isinstance(event, EndEvent):
                await self._finish(config)
                return

    async def _start(self, config: SessionConfig) -> None:
        self.config = config
        self.service.authenticate(config.api_key)
        self.log = self.log.bind(session_id=config.session_id)
        self.serializer.log = self.log  # the serializer's own events (ignored messages...) name the session too
        self.decoder = make_decoder(config.encoding, sample_rate_hz=config.sample_rate_hz,
                                    bit_depth=config.bit_depth, frame_ms=config.opus_frame_ms)
        encoder = make_encoder(config.output_encoding, sample_rate_hz=config.sample_rate_out_hz,
                               frame_ms=config.opus_frame_ms)
        params = self.service.session_params(
            config.session_id, input_rate_hz=self.decoder.output_rate_hz,
            output_rate_hz=config.sample_rate_out_hz, voice=config.voice,
            diffusion_steps=config.diffusion_steps, seed=config.seed)
        self.sink = SerializerSink(self.connection, encoder, self.serializer, self.service)
        self.session = self.service.open_session(params, self.sink, self.log)
        self.log.info("session.start", **config_dict(config))
        geometry = self.service.engine.geometry
        details = dict(sample_rate_out=config.sample_rate_out_hz, output_encoding=config.output_encoding,
                       voice=params.voice_id, seed=params.seed, diffusion_steps=params.diffusion_steps,
                       block_ms=round(geometry.block / geometry.model_rate_hz * 1000, 3),
                       algorithmic_latency_ms=round(geometry.algorithmic_latency_s * 1000, 3))
        for message in self.serializer.ready(config, details):
            await self.connection.send(message)

    async def _receive(self) -> Message:
        try:
            async with asyncio.timeout(self.receive_timeout_s):
                return await self.connection.recv()
        except TimeoutError as error:
            raise SessionTimeout(f"no message for {self.receive_timeout_s:g} s") from error

    async def _decode(self, payload: bytes) -> np.ndarray:
        try:
            if self.decoder.costly:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.service.codec_executor, self.decoder.decode, payload)
            return self.decoder.decode(payload)
        except AudioFormatError as error:
            raise InvalidAudio(str(error)) from error

    async def _finish(self, config: SessionConfig) -> None:
        stats = await self.session.finish()
        await self.sink.flush()
        stats.concealed_packets = self.decoder.concealed_packets
        self.service.metrics.opus_concealed.inc(self.decoder.concealed_packets)
        self.service.metrics.sessions_completed.inc()
        self.outcome = "complete"
        summary = stats.to_dict()
        self.log.info("session.end", outcome="complete", **summary)
        for message in self.serializer.complete(config, summary):
            await self.connection.send(message)
        await self._close(1000, "complete")

    async def _close(self, code: int, reason: str) -> None:
        await close_discarding(self.connection, code, reason)

    async def _refuse(self, error: ProtocolError, *, logged: bool = False) -> None:
        """Tell the client why (in its dialect), count it, close with the error's code."""
        self.service.metrics.errors.labels(code=error.error_code).inc()
        if not logged:
            self.log.warning("session.error", error_code=error.error_code, message=str(error), blocks=self._blocks())
        try:
            for message in self.serializer.error(error):
                await self.connection.send(message)
            await self._close(error.close_code, self.serializer.close_reason(error))
        except ConnectionClosed:
            pass  # the client left first: nothing more to tell it

    def _summary(self) -> dict:
        """Stats, outcome and config of the session (for its recording)."""
        return {"session_id": self.config.session_id, "dialect": self.serializer.name, "outcome": self.outcome,
                "config": config_dict(self.config), "stats": self.session.stats.to_dict()}

    def _blocks(self) -> int:
        return self.session.stats.blocks if self.session is not None else 0


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"
