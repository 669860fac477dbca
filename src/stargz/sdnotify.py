"""systemd's readiness protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET``.

A ``Type=notify`` unit counts as started only once its daemon sends ``READY=1``, so the units
ordered after it (containerd: our units say ``Before=containerd.service``) start when the daemon
can serve a pull at full speed, not merely when its process exists. Without ``$NOTIFY_SOCKET``
(started by hand, or ``Type=simple``) nothing is sent.

Written here rather than taken from a package: it is one send(2), and ``systemd-python`` needs
libsystemd's headers to build. Standard library only, so any daemon of the project may use it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV_VAR = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STATUS=...``, ``STOPPING=1``; newline-separated) to the
    service manager. True if sent; False without a manager or when the send failed (logged: a
    daemon keeps serving whether or not its manager heard it)."""
    address = os.environ.get(ENV_VAR, "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: its name starts with a NUL byte
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("could not tell the service manager %r at %s: %s", state,
                    os.environ.get(ENV_VAR), err)
        return False
    return True
