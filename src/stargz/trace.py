"""Where the time goes: spans and events as one machine-readable DEBUG line each.

    with span("toc_fetch", layer=digest) as s:
        tail = await fetch_tail(...)
        s.set(bytes=len(tail))
    event("prefetch_start", layer=digest, bytes=n)

Lines go to the ``stargz.trace`` logger at DEBUG and read
``trace phase=toc_fetch t=812.4 ms=12.31 layer=sha256:... bytes=4096``: ``t`` is when the span
began (an event: when it happened) in milliseconds since this process's trace epoch, ``ms`` a
span's duration. The first line of a process is ``trace phase=epoch t=0.0 mono=S``, with ``S``
the epoch on the system-wide monotonic clock (seconds), so lines from several processes line up.
Values with spaces, quotes or ``=`` are JSON-quoted; :func:`parse` reads a line back.

Switched off (the logger not enabled for DEBUG) a span costs one level check: no clock read, no
formatting. ``enable()`` turns the lines on whatever the process's own log level is.
Standard library only, so every layer of the data flow may use it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from types import TracebackType
from typing import Final

LOGGER_NAME: Final = "stargz.trace"
PREFIX: Final = "trace "
_log = logging.getLogger(LOGGER_NAME)
_EPOCH: Final = time.monotonic()  # the process's trace epoch: when this module was imported
_announced = False

Value = str | int | float | bool | None
_PLAIN = re.compile(r'[^\s"=]+')
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def enable() -> None:
    """Emit trace lines from now on, whatever the root logger's level (a child logger's own
    level decides; its records still reach the root's handlers)."""
    _log.setLevel(logging.DEBUG)


def enabled() -> bool:
    return _log.isEnabledFor(logging.DEBUG)


def since_epoch_ms(mono: float | None = None) -> float:
    """Milliseconds from the trace epoch to ``mono`` (a ``time.monotonic()``; default now)."""
    return ((time.monotonic() if mono is None else mono) - _EPOCH) * 1000


def event(phase: str, **fields: Value) -> None:
    """One line for something that happened now."""
    if _log.isEnabledFor(logging.DEBUG):
        _emit(phase, time.monotonic(), None, fields)


class Span:
    """A timed phase: logged when it ends, with fields added on the way (``set``)."""

    __slots__ = ("_fields", "_phase", "_start")

    def __init__(self, phase: str, fields: dict[str, Value]) -> None:
        self._phase = phase
        self._fields = fields
        self._start = 0.0

    def set(self, **fields: Value) -> None:
        self._fields.update(fields)

    def __enter__(self) -> Span:
        self._start = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None:
            self._fields["error"] = kind.__name__
        _emit(self._phase, self._start, time.monotonic() - self._start, self._fields)


class _Off(Span):
    """What ``span`` hands out while tracing is off: does nothing, allocates nothing."""

    def set(self, **fields: Value) -> None:
        pass

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


_OFF: Final = _Off("off", {})


def span(phase: str, **fields: Value) -> Span:
    """A context manager timing ``phase`` (sync or async code alike)."""
    if not _log.isEnabledFor(logging.DEBUG):
        return _OFF
    return Span(phase, fields)


def _emit(phase: str, start: float, seconds: float | None, fields: dict[str, Value]) -> None:
    global _announced
    if not _announced:
        _announced = True
        _log.debug("%sphase=epoch t=0.0 mono=%.6f", PREFIX, _EPOCH)
    parts = [f"phase={phase}", f"t={(start - _EPOCH) * 1000:.1f}"]
    if seconds is not None:
        parts.append(f"ms={seconds * 1000:.2f}")
    parts += [f"{key}={_quote(value)}" for key, value in fields.items()]
    _log.debug("%s%s", PREFIX, " ".join(parts))


def _quote(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def parse(line: str) -> dict[str, str] | None:
    """The fields of a trace line (anywhere in ``line``, after a log prefix), None for any
    other line. Values stay strings; ``t``/``ms`` are milliseconds."""
    at = line.find(PREFIX + "phase=")
    if at < 0:
        return None
    fields: dict[str, str] = {}
    for key, raw in _FIELD.findall(line, at + len(PREFIX)):
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
    return fields
