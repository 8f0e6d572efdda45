"""Logging with structlog: JSON lines when stderr is not a terminal, readable console lines otherwise.

    configure_logging(level="info", fmt="auto")   once, at process start
    log = get_logger("fastvc.server").bind(session_id=...)   per session: the id is on every line

Events are names, not prose: `log.info("session.start", sample_rate_hz=16000)`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

FORMATS = ("auto", "json", "console")


def configure_logging(level: str = "info", fmt: str = "auto", directory: str = "") -> None:
    """Route structlog through the standard library: stderr (JSON or console) and, if `directory`, a file.

    The file (`<directory>/fastvc.log`) always gets JSON lines.
    """
    if fmt not in FORMATS:
        raise ValueError(f"logging format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    console = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    handlers = [_handler(logging.StreamHandler(sys.stderr), console, shared)]
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(directory) / "fastvc.log", encoding="utf-8")
        handlers.append(_handler(file_handler, structlog.processors.JSONRenderer(), shared))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(numeric_level)
    for noisy in ("websockets.server", "websockets.client"):  # handshake failures: we log our own events
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))


def _handler(handler: logging.Handler, renderer, shared: list) -> logging.Handler:
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared,
    ))
    return handler


def get_logger(name: str = "fastvc"):
    return structlog.get_logger(name)
