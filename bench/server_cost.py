"""Measure the server's own CPU cost with the passthrough engine: messages per CPU-second of the server process.

    PYTHONPATH=src python bench/server_cost.py [--sessions 20] [--seconds 10] [--encoding PCM|OPUS]
                                               [--output-encoding PCM|OPUS] [--message-ms 20] [--realtime]

Starts `python -m fastvc.server --engine passthrough` on a free port, streams `--sessions` concurrent sessions
of `--seconds` of audio each (as fast as the server takes it, or paced in real time with `--realtime`), and
reads the server's user+system CPU time from /proc/<pid>/stat before and after. Prints one JSON line:
messages in/out, server CPU seconds, messages per CPU-second, audio seconds per CPU-second, and the server's
block counters (blocks, deadline misses, concealed blocks: non-zero means clients got silence).
The server's whole block path runs (resampling, BlockStream, SOLA, codecs); only the model is a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from fastvc.codec import OpusEncoder, to_int16  # noqa: E402

RATE_HZ = 16000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def source_audio(seconds: float) -> np.ndarray:
    speech = REPO_ROOT.parent / "shared" / "audio" / "speech-2spk-30s-16k.wav"
    if speech.exists():
        import wave

        with wave.open(str(speech)) as wav:
            samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768
        return np.resize(samples, int(seconds * RATE_HZ))
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def messages_for(audio: np.ndarray, encoding: str, message_ms: int) -> list[bytes]:
    if encoding == "OPUS":
        encoder = OpusEncoder(RATE_HZ, message_ms)
        return encoder.encode(audio) + encoder.flush()
    step = RATE_HZ * message_ms // 1000
    pcm = to_int16(audio).tobytes()
    return [pcm[i * 2: (i + step) * 2] for i in range(0, audio.shape[0], step)]


async def one_session(url: str, config: dict, messages: list[bytes], message_s: float, realtime: bool) -> int:
    """Stream one session; returns the number of messages received."""
    received = 0
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "config", **config}))

        async def reader() -> None:
            nonlocal received
            async for message in ws:
                received += 1

        reading = asyncio.create_task(reader())
        start = time.monotonic()
        for index, message in enumerate(messages):
            if realtime:  # absolute clock: start + messages sent x duration
                await asyncio.sleep(max(0.0, start + index * message_s - time.monotonic()))
            await ws.send(message)
        await ws.send(json.dumps({"type": "end"}))
        await reading
    return received


async def run_clients(port: int, args: argparse.Namespace, messages: list[bytes]) -> list[int]:
    config = {"sample_rate": RATE_HZ, "bit_depth": 16, "channels": 1, "encoding": args.encoding,
              "opus_frame_duration": args.message_ms, "output_encoding": args.output_encoding,
              "sample_rate_out": RATE_HZ}
    url = f"ws://127.0.0.1:{port}/ws"
    return await asyncio.gather(*[one_session(url, config, messages, args.message_ms / 1000, args.realtime)
                                  for _ in range(args.sessions)])


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("server not ready")


def scrape_counters(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """The named series of the server's /metrics (absent ones are left out)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = {}
    for line in lines:
        name, _, value = line.partition(" ")
        if name in names:
            values[name.removeprefix("fastvc_")] = float(value)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--encoding", choices=["PCM", "OPUS"], default="PCM")
    parser.add_argument("--output-encoding", choices=["PCM", "OPUS"], default="PCM")
    parser.add_argument("--message-ms", type=int, choices=[10, 20, 40, 60], default=20)
    parser.add_argument("--realtime", action="store_true", help="pace each client in real time")
    parser.add_argument("--config", default=str(REPO_ROOT / "server.toml"), help="server config (engine: passthrough)")
    args = parser.parse_args()

    port = free_port()
    messages = messages_for(source_audio(args.seconds), args.encoding, args.message_ms)
    with tempfile.TemporaryDirectory() as state_dir:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "FASTVC_API_KEYS": ""}
        server = subprocess.Popen(
            [sys.executable, "-m", "fastvc.server", "--config", args.config, "--engine",
             "passthrough", "--port", str(port), "--state-dir", state_dir],
            env=env, cwd=state_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, server)
            cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
            received = asyncio.run(run_clients(port, args, messages))
            cpu_s, wall_s = cpu_seconds(server.pid) - cpu_before, time.monotonic() - wall_before
            counters = scrape_counters(port, ("fastvc_blocks_total", "fastvc_concealed_blocks_total",
                                              "fastvc_deadline_misses_total"))
        finally:
            server.terminate()
            server.wait(timeout=30)
    sent = args.sessions * (len(messages) + 2)
    total = sent + sum(received)
    audio_s = args.sessions * args.seconds
    print(json.dumps({
        "sessions": args.sessions, "seconds_each": args.seconds, "encoding": args.encoding,
        "output_encoding": args.output_encoding, "message_ms": args.message_ms, "realtime": args.realtime,
        "messages_in": sent, "messages_out": sum(received), "server_cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 3), "messages_per_cpu_s": round(total / cpu_s, 1),
        "audio_s_per_cpu_s": round(audio_s / cpu_s, 1),
        "cpu_ms_per_audio_s": round(cpu_s / audio_s * 1000, 2),
        **counters,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
