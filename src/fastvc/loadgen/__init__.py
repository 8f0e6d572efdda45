"""fastvc's load generator: N concurrent real-time streams against a server, and what they measured.

    run_sessions(url, n, audio, duration_s, frame_ms, encoding, pace, ramp_s) -> [SessionMetrics]

Modules, in the order a run flows through them: audio (WAV -> wire frames), client (one session over the
native protocol), sweep (N sessions, one or many processes), metrics (definitions and pure computations),
report (JSON, table, PNG), plus spawn (a server subprocess), machine (CPU load) and search (--find-max).
The command-line front end is bench/load.py. The load generator is a client: it never imports the server.
"""

from fastvc.loadgen.metrics import SessionMetrics, Timeline, summarize_point
from fastvc.loadgen.sweep import LoadRun, run_load, run_load_async, run_sessions

__all__ = ["LoadRun", "SessionMetrics", "Timeline", "run_load", "run_load_async", "run_sessions", "summarize_point"]
