"""The `fastvc` command: status/stop through state files (live and stale), clean, version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fastvc import __version__
from fastvc.cli import NOT_RUNNING, main
from fastvc.statefile import ServerState, state_path, write_state
from conftest import REPO_ROOT


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastvc {__version__}"


@pytest.mark.parametrize("command", ["status", "stop"])
def test_a_stale_state_file_is_reported_and_removed(tmp_path, capsys, command):
    write_state(str(tmp_path), ServerState(pid=_dead_pid(), host="127.0.0.1", port=9999, version="0", started_at=0))
    (tmp_path / "server-9998.json").write_text("{half a fi")
    assert main([command, "--state-dir", str(tmp_path)]) == NOT_RUNNING
    out = capsys.readouterr().out
    assert "stale state file" in out and "no fastvc server running" in out
    assert list(tmp_path.iterdir()) == []


def _spawn_server(state_dir) -> tuple[subprocess.Popen, int]:
    """`fastvc serve` (passthrough, a free port) in a subprocess; returns it and its port, once listening."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "FASTVC_API_KEYS": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "fastvc.cli", "serve", "--config", str(REPO_ROOT / "server.toml"), "--port", "0",
         "--engine", "passthrough", "--state-dir", str(state_dir)],
        env=env, cwd=state_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not list(state_dir.glob("server-*.json")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    state_file, = state_dir.glob("server-*.json")
    return process, json.loads(state_file.read_text())["port"]


def test_status_and_stop_a_real_server(tmp_path, capsys):
    process, port = _spawn_server(tmp_path)
    try:
        time.sleep(0.2)
        assert main(["status", "--state-dir", str(tmp_path), "--port", str(port)]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["pid"] == process.pid and status["status"] == "ready"
        assert main(["stop", "--state-dir", str(tmp_path), "--port", str(port)]) == 0
        assert "stopped fastvc" in capsys.readouterr().out
        assert process.wait(timeout=5) == 0
        assert not state_path(str(tmp_path), port).exists()
        logged = process.stderr.read().decode()
        assert '"event": "server.draining"' in logged and '"event": "server.stopped"' in logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_clean_deletes_logs_and_recordings(tmp_path, capsys):
    config = tmp_path / "server.toml"
    config.write_text(f'[logging]\ndirectory = "{tmp_path / "logs"}"\n'
                      f'[recording]\ndirectory = "{tmp_path / "rec"}"\n')
    for folder in ("logs", "rec/2026/01/01"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x").write_text("x")
    assert main(["clean", "--config", str(config), "-y"]) == 0
    assert not (tmp_path / "logs").exists() and not (tmp_path / "rec").exists()
    assert main(["clean", "--config", str(config), "-y"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_stop_force_kills_at_once(tmp_path, capsys):
    process, port = _spawn_server(tmp_path)
    try:
        assert main(["stop", "--state-dir", str(tmp_path), "--port", str(port), "--force"]) == 0
        assert process.wait(timeout=5) == -9
        assert list(tmp_path.glob("server-*.json")) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
