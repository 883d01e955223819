"""Structured logging: JSON lines under systemd or when piped, readable lines on a terminal.

Context is bound with ``structlog.contextvars`` (merged into every line): a job's lines carry
``run_id`` and ``job`` (daemon.service), a poll's lines ``poll_id`` (daemon.discovery); every
line about a dataset carries ``obs_id``. On a terminal the lines go through the same rich
console as the progress bar, so the two do not tear.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from rich.console import Console

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

_console: Console | None = None


def console() -> Console:
    """The terminal console shared by log lines and progress bars."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def wants_json(fmt: str, stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """JSON unless asked for console, or on a terminal that is not journald's."""
    env = os.environ if environ is None else environ
    if fmt != "auto":
        return fmt == "json"
    return bool(env.get("JOURNAL_STREAM")) or not stream.isatty()


class _ConsoleLogger:
    """A structlog logger that prints through the rich console (keeps progress bars intact)."""

    def msg(self, message: str) -> None:
        console().print(message, markup=False, highlight=False, soft_wrap=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> bool:
    """Set up structlog for the process; returns True when rendering JSON."""
    stream = stream or sys.stderr
    as_json = wants_json(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if as_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        processors = [*shared, structlog.processors.format_exc_info, renderer]
        factory: Any = structlog.WriteLoggerFactory(file=stream)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        processors = [*shared, renderer]
        factory = (lambda *_: _ConsoleLogger()) if stream is sys.stderr else \
            structlog.WriteLoggerFactory(file=stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: render their lines the same way (one
    # JSON object per line under systemd), and keep their chatter out unless it matters.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    # APScheduler warns whenever a run is skipped because the previous one is still
    # going: that is the "one instance at a time" rule working, not news.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # Not "astroquery": it installs its own logger class on import and fails if a plain
    # logger of that name exists already (daemon.mast quietens it after importing).
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return as_json
