"""Log levels and the one log format of every ``stargz`` process.

Levels are the reference's (logrus) names: trace, debug, info, warn/warning, error, fatal,
panic. ``trace`` is debug plus the libraries' own chatter (httpx/httpcore per request and per
connection, grpc, asyncio); at info and above those libraries say only warnings, so INFO stays one
line per meaningful event, never one per HTTP request. Lines read ``TIME LEVEL LOGGER: MESSAGE``
with an RFC 3339 time (the reference's JSON logs carry ``"time"`` too).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime

from stargz.errors import ConfigError
from stargz.printable import PrintableFormatter

LEVELS: dict[str, int] = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
LEVEL_NAMES = ", ".join(LEVELS)
# Libraries that log per request or per connection; their level follows ours only at trace.
CHATTY = ("httpx", "httpcore", "hpack", "grpc", "asyncio")


def level_name(name: str) -> str:
    """``name`` checked and lower-cased (``WARN`` -> ``warn``); ConfigError names the choices."""
    lowered = name.strip().lower()
    if lowered not in LEVELS:
        raise ConfigError(f"log level {name!r} is not one of {LEVEL_NAMES}")
    return lowered


class _Formatter(PrintableFormatter):  # names in messages may come from an image: escaped
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")


FORMATTER = _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
_handler: logging.Handler | None = None


def configure(name: str) -> None:
    """Set the process's level to ``name`` and log to stderr in the one format (idempotent)."""
    global _handler
    chosen = level_name(name)
    level = LEVELS[chosen]
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(FORMATTER)
    if _handler not in root.handlers:
        root.addHandler(_handler)
    root.setLevel(level)
    libraries = _library_level(chosen, level)
    for library in CHATTY:
        logging.getLogger(library).setLevel(libraries)


def _library_level(chosen: str, level: int) -> int:
    if chosen == "trace":
        return logging.DEBUG
    if level == logging.DEBUG:
        return logging.INFO  # httpx's one line per request; not httpcore's per-connection steps
    return max(level, logging.WARNING)
