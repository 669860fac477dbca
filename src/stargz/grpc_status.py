"""The error tree and gRPC status codes, both ways, in one table (containerd's errdefs speak
these codes): the snapshotter answers with them, the containerd client reads them back."""

from __future__ import annotations

import grpc

from stargz.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RuntimeIntegrationError,
    StargzError,
)

ERROR_STATUS: tuple[tuple[type[StargzError], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (RuntimeIntegrationError, grpc.StatusCode.UNAVAILABLE),
)
_STATUS_ERROR = {code: error_type for error_type, code in ERROR_STATUS}


def status_for(err: BaseException) -> grpc.StatusCode:
    """The code a server answers for ``err``: UNKNOWN for other StargzErrors, INTERNAL for bugs."""
    for error_type, code in ERROR_STATUS:
        if isinstance(err, error_type):
            return code
    return grpc.StatusCode.UNKNOWN if isinstance(err, StargzError) else grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode) -> type[StargzError]:
    """The class a client raises for a failed call's ``code``."""
    return _STATUS_ERROR.get(code, RuntimeIntegrationError)
