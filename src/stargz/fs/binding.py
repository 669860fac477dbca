"""pyfuse3, imported once and switched to asyncio.

pyfuse3 imports trio at load time only to bind the name; :func:`pyfuse3.asyncio.enable` then
replaces it with its asyncio shim, so loading trio (about 0.1 s, a tenth of `stargz mount`'s
start-up) buys nothing. A placeholder stands in while pyfuse3 loads, unless trio is loaded
already; it is removed afterwards, so a later ``import trio`` gets the real one.
"""

from __future__ import annotations

import sys
import types

_placeholder = None
if "trio" not in sys.modules:
    _placeholder = sys.modules["trio"] = types.ModuleType("trio")
try:
    import pyfuse3 as pyfuse3
    import pyfuse3.asyncio
finally:
    if _placeholder is not None and sys.modules.get("trio") is _placeholder:
        del sys.modules["trio"]

pyfuse3.asyncio.enable()

__all__ = ["pyfuse3"]
