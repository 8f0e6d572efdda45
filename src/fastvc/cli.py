"""The `fastvc` command.

    fastvc serve [--config F] [--host H] [--port P] [--engine NAME]   run the server (python -m fastvc.server)
    fastvc status [--port P]           running servers, from their state files (stale files are removed)
    fastvc stop [--port P] [--force]   SIGTERM (graceful drain) and wait; --force: SIGKILL
    fastvc clean [-y]                  delete the log and recording directories of the config
    fastvc version
    fastvc download [--cache-dir D] [--no-verify]   fetch the Seed-VC weights and check they load

Every command takes `--config` (default: ./server.toml if present) and `--state-dir`. More commands plug in
through `PLUGIN_COMMANDS` ("name" -> "module:function"; the function gets the sub-parser and returns the
handler `handler(args) -> exit code`); the model engineer adds `download` there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fastvc import __version__
from fastvc.config import Config, ConfigError, load_config
from fastvc.statefile import list_states, process_alive, state_path, wait_for_exit

DEFAULT_CONFIG = "server.toml"
NOT_RUNNING = 3
PLUGIN_COMMANDS: dict[str, str] = {
    "download": "fastvc.download:add_command",
}


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    config = load_config(path)
    if getattr(args, "state_dir", None):
        config.server.state_dir = args.state_dir
    return config


def _health(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=2) as response:
            return "ready" if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return "draining or loading" if error.code == 503 else f"HTTP {error.code}"
    except OSError:
        return "not answering"


def _servers(config: Config, port: int | None) -> list:
    """Live servers' states; stale files (process gone, unreadable) are reported and removed."""
    live = []
    for path, state in list_states(config.server.state_dir):
        if port is not None and path != state_path(config.server.state_dir, port):
            continue
        if state is None or not process_alive(state.pid):
            what = f"pid {state.pid}" if state else "unreadable file"
            print(f"removed stale state file {path} ({what} is not running)")
            path.unlink(missing_ok=True)
            continue
        live.append(state)
    return live


def cmd_serve(args: argparse.Namespace) -> int:
    from fastvc import server

    if args.config is None and Path(DEFAULT_CONFIG).is_file():
        args.config = DEFAULT_CONFIG
    argv = [a for name in ("config", "host", "port", "engine") if getattr(args, name) is not None
            for a in (f"--{name}", str(getattr(args, name)))]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    return server.main(argv)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    states = _servers(config, args.port)
    if not states:
        print("no fastvc server running" + (f" on port {args.port}" if args.port else ""))
        return NOT_RUNNING
    for state in states:
        print(json.dumps({"port": state.port, "pid": state.pid, "host": state.host, "version": state.version,
                          "status": _health(state.host, state.port)}))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    config = _load(args)
    states = _servers(config, args.port)
    if not states:
        print("no fastvc server running" + (f" on port {args.port}" if args.port else ""))
        return NOT_RUNNING
    timeout_s = args.timeout if args.timeout is not None else config.server.drain_timeout_s + 5.0
    code = 0
    for state in states:
        os.kill(state.pid, signal.SIGKILL if args.force else signal.SIGTERM)
        if wait_for_exit(state.pid, timeout_s):
            state_path(config.server.state_dir, state.port).unlink(missing_ok=True)
            print(f"stopped fastvc on port {state.port} (pid {state.pid})")
        else:
            print(f"fastvc on port {state.port} (pid {state.pid}) is still draining; use --force to kill it")
            code = 1
    return code


def cmd_clean(args: argparse.Namespace) -> int:
    config = _load(args)
    targets = [Path(d) for d in (config.logging.directory, config.recording.directory) if d]
    targets = [t for t in targets if t.exists()]
    if not targets:
        print("nothing to clean")
        return 0
    if not args.yes:
        answer = input(f"delete {', '.join(map(str, targets))}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept everything")
            return 1
    for target in targets:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        print(f"deleted {target}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"fastvc {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvc", description="Real-time voice-conversion server.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", default=None, help=f"TOML config (default: ./{DEFAULT_CONFIG} if present)")
        sub.add_argument("--state-dir", default=None, help="where state files live (overrides [server] state_dir)")
        sub.set_defaults(handler=handler)
        return sub

    serve = command("serve", cmd_serve, "run the server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--engine", default=None)
    command("status", cmd_status, "show running servers").add_argument("--port", type=int, default=None)
    stop = command("stop", cmd_stop, "stop running servers gracefully")
    stop.add_argument("--port", type=int, default=None)
    stop.add_argument("--force", action="store_true", help="kill at once (SIGKILL) instead of draining")
    stop.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: drain timeout + 5)")
    command("clean", cmd_clean, "delete logs and recordings").add_argument(
        "-y", "--yes", action="store_true", help="do not ask")
    command("version", cmd_version, "print the version")
    for name, target in PLUGIN_COMMANDS.items():
        module_name, _, function = target.partition(":")
        handler_for = getattr(importlib.import_module(module_name), function)
        sub = commands.add_parser(name)
        sub.set_defaults(handler=handler_for(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"fastvc: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
