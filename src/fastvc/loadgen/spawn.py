"""Start a fastvc server subprocess for a load run, wait until it is ready, stop it afterwards.

    with SpawnedServer("passthrough", overrides={"scheduler": {"max_batch_size": 1}}) as server:
        run_sessions(server.url, ...)

The server gets a free loopback port and a temporary config: the given config file (or the defaults) with
`overrides` merged in per section. Its output goes to a log file, whose tail is quoted if it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SRC_DIR = Path(__file__).resolve().parents[2]


class SpawnError(RuntimeError):
    """The server process exited or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """TOML text for a config of flat sections (the shape of server.toml)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def merged_config(base_path: str | Path | None, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = tomllib.loads(Path(base_path).read_text()) if base_path else {}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return data


class SpawnedServer:
    """A `python -m fastvc.server` subprocess on a free port (a context manager)."""

    def __init__(self, engine: str, *, config_path: str | Path | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, host: str = "127.0.0.1",
                 ws_path: str = "/ws", ready_timeout_s: float = 120.0, extra_args: list[str] | None = None) -> None:
        self.engine, self.host, self.ws_path = engine, host, ws_path
        self.config = merged_config(config_path, overrides or {})
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args or []
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="fastvc-load-")
        self.log_path = Path(self._workdir.name) / "server.log"

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.ws_path}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> SpawnedServer:
        config_path = Path(self._workdir.name) / "server.toml"
        config_path.write_text(dump_toml(self.config))
        self.port = free_port(self.host)
        command = [sys.executable, "-m", "fastvc.server", "--config", str(config_path), "--host", self.host,
                   "--port", str(self.port), "--engine", self.engine, *self.extra_args]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")])))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self._workdir.name)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SpawnError(f"server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/ready", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        log_tail = self.log_tail()
        self.stop()
        raise SpawnError(f"server not ready after {self.ready_timeout_s:.0f} s:\n{log_tail}")

    def log_tail(self, n_lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n_lines:])
        except OSError:
            return "(no server log)"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Ask the server to drain and exit (SIGTERM); kill it if it has not after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def close(self) -> int | None:
        """Stop the server and remove its temporary config and log; returns its exit code."""
        code = self.stop()
        self._workdir.cleanup()
        return code

    def __enter__(self) -> SpawnedServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()
