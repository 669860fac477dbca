"""Keeping registry secrets out of a mount daemon's /proc entries.

A forked daemon keeps its parent's argument and environment blocks for life: /proc/<pid>/cmdline
(readable by every user) and /proc/<pid>/environ (by its owner) show them. So a password never
reaches the daemon through its arguments (``--user`` takes a username only; the password comes
from stdin or a terminal), and the environment variables that held one are wiped from the
process's memory before the fork, once the credentials have been read from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from stargz.errors import RuntimeIntegrationError

SECRET_VARIABLES = ("STARGZ_PASSWORD",)
# Fields of /proc/self/stat after the command name: env_start and env_end (proc(5) 50 and 51).
_ENV_START_FIELD = 50 - 3


def scrub_environment(names: Iterable[str] = SECRET_VARIABLES) -> None:
    """Remove ``names`` from the environment, including the initial block /proc shows."""
    names = tuple(name for name in names if name in os.environ)
    if not names:
        return
    for name in names:
        del os.environ[name]  # what children and getenv see
    try:
        _wipe_initial_block(names)
    except OSError as err:
        raise RuntimeIntegrationError(
            f"can not wipe {', '.join(names)} from this process's environment "
            f"({err.strerror}); give the password with --password-stdin instead") from None


def _wipe_initial_block(names: tuple[str, ...]) -> None:
    # Unsetting a variable does not erase the block the kernel handed the process at exec,
    # which is what /proc/<pid>/environ reads: overwrite the entries in place.
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    env_start = int(fields[_ENV_START_FIELD])
    with open("/proc/self/environ", "rb") as environ:
        block = environ.read()
    prefixes = tuple(f"{name}=".encode() for name in names)
    offset = 0
    spans = []
    for entry in block.split(b"\0"):
        if entry.startswith(prefixes):
            spans.append((offset, len(entry)))
        offset += len(entry) + 1
    if not spans:
        return
    mem = os.open("/proc/self/mem", os.O_RDWR)
    try:
        for start, length in spans:
            os.pwrite(mem, b"\0" * length, env_start + start)
    finally:
        os.close(mem)
