"""The one place where errors become errno values for the kernel."""

from __future__ import annotations

import errno
import logging

from stargz.errors import (
    CacheError,
    FormatError,
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    StargzError,
    UnsafePathError,
    VerificationError,
)

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
_ERRNO_BY_CLASS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, errno.ENOENT),
    (VerificationError, errno.EIO),  # wrong bytes are never handed out
    (RegistryError, errno.EIO),  # TransportError, AuthError, RangeError ...
    (FormatError, errno.EIO),
    (CacheError, errno.EIO),
    (UnsafePathError, errno.EACCES),
    (InvalidArgumentError, errno.EINVAL),
    (StargzError, errno.EIO),
)


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE reply carries for ``exc``; unexpected errors are logged and become EIO."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    for cls, code in _ERRNO_BY_CLASS:
        if isinstance(exc, cls):
            if code == errno.EIO:
                log.warning("I/O error served to a reader: %s", exc)
            return code
    log.error("unexpected error in a filesystem operation", exc_info=exc)
    return errno.EIO
