"""Serve local eStargz blobs on one FUSE mount until SIGTERM/SIGINT.

    python -m stargz.fs.serve MOUNTPOINT BLOB[=TOCDIGEST]... [--metrics HOST:PORT]

Each blob appears as ``MOUNTPOINT/<blob digest>/``. A blob given without its TOC digest is served
unverified against an annotation (a warning is logged), its chunks are still checked.
Prints ``ready`` on stdout once the mount is usable.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
import sys
from pathlib import Path

from stargz.errors import StargzError
from stargz.estargz.reader import open_blob
from stargz.estargz.source import FileSource
from stargz.fs.mount import LazyFS
from stargz.fs.view import BlobLayerView


def file_digest(path: Path) -> str:
    with path.open("rb") as blob:
        return "sha256:" + hashlib.file_digest(blob, "sha256").hexdigest()


def open_local_layer(spec: str) -> BlobLayerView:
    """``BLOB`` or ``BLOB=TOCDIGEST`` to a layer view over that file."""
    path_text, _, toc_digest = spec.partition("=")
    path = Path(path_text)
    unverified = open_blob(FileSource(path))
    if toc_digest:
        blob = unverified.verify(toc_digest)
    else:
        blob = unverified.skip_verification(f"no TOC digest given for {path}")
    return BlobLayerView(file_digest(path), blob)


async def _serve(fs: LazyFS) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fs.stop)
    ready = asyncio.Event()
    server = asyncio.create_task(fs.serve(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        print("ready", flush=True)
    waiter.cancel()
    await server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stargz.fs.serve", description=__doc__)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("blobs", nargs="+", metavar="BLOB[=TOCDIGEST]")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus exporter address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fs = LazyFS(args.mountpoint, metrics_address=args.metrics)
        for spec in args.blobs:
            fs.add_layer(open_local_layer(spec))
        asyncio.run(_serve(fs))
    except (StargzError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
