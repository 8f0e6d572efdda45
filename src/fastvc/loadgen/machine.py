"""How busy the machine was while a sweep point ran (Linux /proc; None elsewhere).

    meter = CpuMeter(server_pid); ...run...; meter.read() -> {"cpus", "loadavg_1m", "cpu_busy_pct", ...}

On a shared machine the numbers a load test prints mean little without the load it ran under: the whole
machine's busy share (all cores, other users included), the server's and the load generator's own CPU.
Percentages of CPU are of one core (200 % = two cores busy).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any


def _machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (its reaped children excluded)."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # load worker processes, once joined
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


class CpuMeter:
    """CPU use between construction and `read()`. server_pid: a server process to account separately."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self._wall = time.monotonic()
        self._machine = _machine_jiffies()
        self._server = process_cpu_s(server_pid) if server_pid else None
        self._client = _own_cpu_s()
        self._loadavg = os.getloadavg()[0]

    def read(self) -> dict[str, Any]:
        wall_s = max(time.monotonic() - self._wall, 1e-9)
        report: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_1m_before": round(self._loadavg, 2),
                                  "loadavg_1m_after": round(os.getloadavg()[0], 2)}
        machine = _machine_jiffies()
        if machine and self._machine and machine[1] > self._machine[1]:
            busy = (machine[0] - self._machine[0]) / (machine[1] - self._machine[1])
            report["machine_busy_pct"] = round(100.0 * busy * (os.cpu_count() or 1), 1)
        server = process_cpu_s(self.server_pid) if self.server_pid else None
        if server is not None and self._server is not None:
            report["server_cpu_pct"] = round(100.0 * (server - self._server) / wall_s, 1)
        report["client_cpu_pct"] = round(100.0 * (_own_cpu_s() - self._client) / wall_s, 1)
        if "machine_busy_pct" in report:  # other users of the machine: what neither we nor the server used
            others = report["machine_busy_pct"] - report["client_cpu_pct"] - report.get("server_cpu_pct", 0.0)
            report["others_cpu_pct"] = round(max(0.0, others), 1)
        return report
