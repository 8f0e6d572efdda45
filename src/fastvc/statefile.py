"""State files: how `fastvc status` and `fastvc stop` find a running server.

    <state_dir>/server-<port>.json   {"pid", "host", "port", "version", "started_at", "config"}

The server writes its file once it listens and removes it when it stops. A file whose process is gone (or
whose pid now belongs to another program) is stale: readers report it and delete it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerState:
    pid: int
    host: str
    port: int
    version: str
    started_at: float
    config: str | None = None


def state_dir(path: str) -> Path:
    return Path(os.path.expanduser(path))


def state_path(directory: str, port: int) -> Path:
    return state_dir(directory) / f"server-{port}.json"


def write_state(directory: str, state: ServerState) -> Path:
    path = state_path(directory, state.port)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(asdict(state)))
    temporary.replace(path)  # atomic: a reader never sees half a file
    return path


def remove_state(directory: str, port: int, pid: int | None = None) -> None:
    """Delete the file of `port` (only if it still names `pid`, when given: a newer server may own it)."""
    path = state_path(directory, port)
    state = read_state(path)
    if state is None or pid is None or state.pid == pid:
        path.unlink(missing_ok=True)


def read_state(path: Path) -> ServerState | None:
    """The state in `path`, or None if it is missing or unreadable (a crash mid-write, a foreign file)."""
    try:
        return ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def list_states(directory: str) -> list[tuple[Path, ServerState | None]]:
    return [(path, read_state(path)) for path in sorted(state_dir(directory).glob("server-*.json"))]


def process_alive(pid: int) -> bool:
    """True if `pid` runs and (where /proc exists) is a fastvc server, not a program that reused the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"fastvc" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def wait_for_exit(pid: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait until `pid` is gone; True if it left within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(poll_s)
    return not process_alive(pid)
