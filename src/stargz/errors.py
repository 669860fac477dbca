"""The one exception tree of stargz.

Every error the package raises on purpose is a :class:`StargzError`, so a caller
(and the CLI, which prints ``str(err)`` as one line) can catch them all at once::

    StargzError
    ├── FormatError                 the bytes are not a valid (e)stargz / zstd:chunked blob
    │   ├── FooterError             no footer, a broken footer, or an unknown footer kind
    │   │   └── ExternalTOCError    the footer says the TOC is kept outside the blob
    │   ├── TOCError                the TOC is missing, malformed, hostile or inconsistent
    │   └── DecompressionError      a member/frame does not decompress
    ├── VerificationError           bytes do not match the digest that vouches for them
    │   ├── TOCDigestMismatch       the TOC is not the one the layer annotation names
    │   └── ChunkDigestMismatch     a chunk's bytes are not its chunkDigest
    ├── BuildError                  a layer can not be converted (bad tar, missing prioritized file)
    ├── UnsafePathError             a path would land outside the root it is extracted to
    ├── NotFoundError               no such entry / manifest / blob
    ├── AlreadyExistsError          a snapshot (key or name) that already exists
    ├── FailedPreconditionError     its state forbids it (remove with children, commit a view)
    ├── InvalidArgumentError        a request that makes no sense (bad filter, parent not committed)
    ├── RegistryError               the registry could not give what was asked
    │   ├── AuthError               wrong or missing credentials, token service refused
    │   ├── InvalidReference      a malformed image reference
    │   ├── TransportError          resets, timeouts, 5xx, 429 past every retry
    │   └── RangeError              a range answer that does not hold the bytes asked for
    ├── CacheError                  the chunk cache can not store or serve an entry
    ├── ConfigError                 a config file or flag that does not make sense
    └── RuntimeIntegrationError     containerd / podman / FUSE refused what we asked

Messages never contain credentials. Lower layers raise the most specific class;
front ends (FUSE, gRPC) map the tree to errno / gRPC status codes in one place each.
"""

from __future__ import annotations


class StargzError(Exception):
    """Base of every error stargz raises on purpose."""


class FormatError(StargzError):
    """The blob is not a valid eStargz, legacy stargz or zstd:chunked blob."""


class FooterError(FormatError):
    """The footer is missing, truncated or malformed."""


class ExternalTOCError(FooterError):
    """The blob's footer points to a TOC stored outside the blob, which is not supported."""


class TOCError(FormatError):
    """The TOC is missing, malformed, hostile or inconsistent."""


class DecompressionError(FormatError):
    """A gzip member or zstd frame does not decompress."""


class VerificationError(StargzError):
    """Bytes do not match the digest that vouches for them."""


class TOCDigestMismatch(VerificationError):
    """The TOC's sha256 is not the expected TOC digest."""


class ChunkDigestMismatch(VerificationError):
    """A chunk's uncompressed bytes do not match its chunkDigest."""


class BuildError(StargzError):
    """A layer can not be converted to eStargz."""


class UnsafePathError(StargzError):
    """A path would resolve outside the root it belongs to."""


class NotFoundError(StargzError):
    """No such entry, manifest or blob."""


class AlreadyExistsError(StargzError):
    """The snapshot (or other named object) already exists."""


class FailedPreconditionError(StargzError):
    """The object exists but its state forbids the operation."""


class InvalidArgumentError(StargzError):
    """A request argument that does not make sense (bad filter, wrong parent kind)."""


class RegistryError(StargzError):
    """The registry could not give (or take) what was asked."""


class AuthError(RegistryError):
    """Credentials are missing or wrong, or the token service refused them."""


class InvalidReference(RegistryError):
    """An image reference that does not parse."""


class TransportError(RegistryError):
    """The connection failed (reset, timeout, 5xx, 429) past every retry."""


class RangeError(RegistryError):
    """A range answer did not hold exactly the bytes asked for."""


class CacheError(StargzError):
    """The chunk cache can not store or serve an entry."""


class ConfigError(StargzError):
    """A configuration file or option that does not make sense."""


class RuntimeIntegrationError(StargzError):
    """containerd, podman or FUSE refused what was asked of it."""
