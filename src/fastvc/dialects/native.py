"""The native dialect: fast-vc-service's standard protocol (see docs/protocol.md) over one connection.

    handshake: config (validated, authenticated) -> ready
    streaming: binary audio -> decoder -> session.feed;  session -> encoder -> binary audio
    end:       {"type": "end"} -> session.finish -> complete(stats) -> close 1000
    errors:    ProtocolError -> {"type": "error", ...} -> close with its code; client gone -> abort quietly
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fastvc.codec import AudioFormatError, Decoder, Encoder, make_decoder, make_encoder
from fastvc.protocol import (AudioEvent, ConfigEvent, EndEvent, InternalError, InvalidAudio, InvalidMessage,
                             NativeProtocol, ProtocolError, ProtocolLimits, SessionConfig, SessionTimeout,
                             complete_message, config_dict, error_message, ready_message)
from fastvc.service import Service
from fastvc.session import Session


class NativeSink:
    """Encodes a session's output and sends one binary message per packet (PCM: one per block)."""

    def __init__(self, connection: ServerConnection, encoder: Encoder, service: Service) -> None:
        self.connection = connection
        self.encoder = encoder
        self.service = service
        self.send_timeout_s = service.config.server.receive_timeout_s

    async def send_audio(self, samples: np.ndarray) -> None:
        await self._send(await self._run(self.encoder.encode, samples))

    async def flush(self) -> None:
        await self._send(await self._run(self.encoder.flush))

    async def _run(self, function, *args) -> list[bytes]:
        if not self.encoder.costly:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.service.codec_executor, function, *args)

    async def _send(self, packets: list[bytes]) -> None:
        for packet in packets:
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.connection.send(packet)
            except TimeoutError as error:
                raise SessionTimeout(f"client did not read its audio for {self.send_timeout_s:g} s") from error


class NativeConnection:
    """One connection speaking the native protocol; `run` returns when the connection is done."""

    def __init__(self, service: Service, connection: ServerConnection) -> None:
        self.service = service
        self.connection = connection
        server_config = service.config.server
        self.protocol = NativeProtocol(ProtocolLimits(
            max_message_bytes=server_config.max_message_bytes,
            default_sample_rate_out_hz=server_config.default_sample_rate_out_hz,
            max_diffusion_steps=server_config.max_diffusion_steps,
        ))
        self.receive_timeout_s = server_config.receive_timeout_s
        self.log = structlog.get_logger("fastvc.native").bind(peer=_peer(connection))
        self.session: Session | None = None
        self.config: SessionConfig | None = None
        self.decoder: Decoder | None = None
        self.sink: NativeSink | None = None
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
        config = await self._handshake()
        self.log = self.log.bind(session_id=config.session_id)
        self.log.info("session.start", **config_dict(config))
        while True:
            event = self.protocol.receive(await self._receive())
            if isinstance(event, AudioEvent):
                await self.session.feed(await self._decode(event.payload))
            elif isinstance(event, EndEvent):
                await self._finish(config)
                return

    async def _handshake(self) -> SessionConfig:
        event = self.protocol.receive(await self._receive())
        if not isinstance(event, ConfigEvent):  # the protocol refuses audio and 'end' before config
            raise InvalidMessage("the first message must be 'config'")
        config = self.config = event.config
        self.service.authenticate(config.api_key)
        self.decoder = make_decoder(config.encoding, sample_rate_hz=config.sample_rate_hz,
                                    bit_depth=config.bit_depth, frame_ms=config.opus_frame_ms)
        encoder = make_encoder(config.output_encoding, sample_rate_hz=config.sample_rate_out_hz,
                               frame_ms=config.opus_frame_ms)
        params = self.service.session_params(
            config.session_id, input_rate_hz=self.decoder.output_rate_hz,
            output_rate_hz=config.sample_rate_out_hz, voice=config.voice,
            diffusion_steps=config.diffusion_steps, seed=config.seed)
        self.sink = NativeSink(self.connection, encoder, self.service)
        self.session = self.service.open_session(params, self.sink, self.log.bind(session_id=config.session_id))
        geometry = self.service.engine.geometry
        await self.connection.send(ready_message(
            config.session_id, sample_rate_out=config.sample_rate_out_hz, output_encoding=config.output_encoding,
            voice=params.voice_id, seed=params.seed, diffusion_steps=params.diffusion_steps,
            block_ms=round(geometry.block / geometry.model_rate_hz * 1000, 3),
            algorithmic_latency_ms=round(geometry.algorithmic_latency_s * 1000, 3)))
        return config

    async def _receive(self) -> str | bytes:
        try:
            async with asyncio.timeout(self.receive_timeout_s):
                return await self.connection.recv()
        except TimeoutError as error:
            raise SessionTimeout(f"no message for {self.receive_timeout_s:g} s") from error

    async def _decode(self, payload: bytes) -> np.ndarray:
        try:
            if self.decoder.costly:
                loop = asyncio.get_running_loop()
                samples = await loop.run_in_executor(self.service.codec_executor, self.decoder.decode, payload)
            else:
                samples = self.decoder.decode(payload)
        except AudioFormatError as error:
            raise InvalidAudio(str(error)) from error
        return samples

    async def _finish(self, config: SessionConfig) -> None:
        stats = await self.session.finish()
        await self.sink.flush()
        stats.concealed_packets = self.decoder.concealed_packets
        self.service.metrics.opus_concealed.inc(self.decoder.concealed_packets)
        self.service.metrics.sessions_completed.inc()
        self.outcome = "complete"
        summary = stats.to_dict()
        self.log.info("session.end", outcome="complete", **summary)
        await self.connection.send(complete_message(config.session_id, summary))
        await self.connection.close(1000, "complete")

    async def _refuse(self, error: ProtocolError, *, logged: bool = False) -> None:
        """Tell the client why (error message), count it, close with the error's code."""
        self.service.metrics.errors.labels(code=error.error_code).inc()
        if not logged:
            self.log.warning("session.error", error_code=error.error_code, message=str(error), blocks=self._blocks())
        try:
            await self.connection.send(error_message(error))
            await self.connection.close(error.close_code, error.error_code)
        except ConnectionClosed:
            pass  # the client left first: nothing more to tell it

    def _summary(self) -> dict:
        """Stats, outcome and config of the session (for its recording)."""
        return {"session_id": self.config.session_id, "outcome": self.outcome,
                "config": config_dict(self.config), "stats": self.session.stats.to_dict()}

    def _blocks(self) -> int:
        return self.session.stats.blocks if self.session is not None else 0


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"


async def serve_native(service: Service, connection: ServerConnection, *, slot=None) -> None:
    await NativeConnection(service, connection).run(slot=slot)
