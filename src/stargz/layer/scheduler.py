"""One scheduler per process for background fetches: they run only while the daemon is quiet.

The rules are the reference's (task.BackgroundTaskManager, started by its fs with a 5 s period):

- prioritized work (an on-demand fetch, a prefetch, resolving a layer) marks the daemon busy
  while it runs and for ``quiet_sec`` after it ends;
- a background fetch starts only when the daemon is not busy, at most ``concurrency`` at once
  across every layer;
- prioritized work that starts while background fetches run cancels them (on any layer); each
  is started again, from scratch, once the daemon is quiet again.

A filesystem request (``note_use``: a lookup, a stat, a read served from memory) only delays new
background fetches by ``USE_QUIET_S``: it is answered in microseconds, and the short pause keeps
the background's decompression from competing with a stat walk for the GIL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio

log = logging.getLogger(__name__)

USE_QUIET_S = 0.1  # after a filesystem request; background fetches step aside this long
T = TypeVar("T")


class BackgroundScheduler:
    """Decides when background fetches of every layer may run; see the module docstring."""

    def __init__(self, quiet_sec: float, concurrency: int) -> None:
        self.quiet_sec = quiet_sec
        self.concurrency = concurrency
        self.started = 0  # background fetches started (a preempted one counts each time)
        self.preempted = 0  # background fetches cancelled by prioritized work
        self._prioritized = 0
        self._busy_until = 0.0  # time.monotonic() before which no background fetch starts
        self._idle = anyio.Event()  # set while no prioritized work runs
        self._idle.set()
        self._slots = anyio.Semaphore(concurrency)
        self._running: set[anyio.CancelScope] = set()

    @property
    def prioritized_running(self) -> int:
        return self._prioritized

    @property
    def background_running(self) -> int:
        return len(self._running)

    @contextmanager
    def prioritized(self) -> Iterator[None]:
        """Around prioritized work: background fetches stop now and wait until it is over
        and ``quiet_sec`` have passed."""
        self._begin()
        try:
            yield
        finally:
            self._end()

    def note_use(self) -> None:
        """A filesystem request was served: no background fetch starts for a moment."""
        self._busy_until = max(self._busy_until, time.monotonic() + USE_QUIET_S)

    async def run(self, fetch: Callable[[], Awaitable[T]]) -> T:
        """Run one background fetch once the daemon is quiet, in one of the slots; if
        prioritized work cancels it, run it again later. Cancelling the caller cancels it."""
        while True:
            await self.until_quiet()
            async with self._slots:
                if not self._quiet():
                    continue  # prioritized work came while we waited for a slot
                self.started += 1
                with anyio.CancelScope() as scope:
                    self._running.add(scope)
                    try:
                        return await fetch()
                    finally:
                        self._running.discard(scope)
            self.preempted += 1  # only our own scope's cancellation gets here
            log.debug("background fetch preempted by prioritized work; retried when quiet")

    def quiet_in(self) -> float:
        """Seconds until a background fetch may start if nothing else happens (0: now;
        infinite while prioritized work runs)."""
        if self._prioritized:
            return float("inf")
        return max(0.0, self._busy_until - time.monotonic())

    def _quiet(self) -> bool:
        return self.quiet_in() == 0.0

    async def until_quiet(self) -> None:
        """Return once a background fetch may start (no prioritized work, ``quiet_sec`` and
        the last use behind us)."""
        while True:
            if self._prioritized:
                await self._idle.wait()
                continue
            left = self._busy_until - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(left)

    def _begin(self) -> None:
        if self._prioritized == 0:
            self._idle = anyio.Event()
        self._prioritized += 1
        for scope in self._running:
            scope.cancel()

    def _end(self) -> None:
        self._prioritized -= 1
        self._busy_until = max(self._busy_until, time.monotonic() + self.quiet_sec)
        if self._prioritized == 0:
            self._idle.set()
