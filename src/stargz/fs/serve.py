"""Serve local eStargz blobs as lazy layers on one FUSE mount until SIGTERM/SIGINT.

    python -m stargz.fs.serve MOUNTPOINT BLOB[=TOCDIGEST]... [--metrics HOST:PORT]
        [--config TOML] [--no-background]

Each blob is opened as a ``stargz.layer.Layer`` (verified chunks, caches, prefetch to the
landmark, background fetch) over the file, and appears as ``MOUNTPOINT/<blob digest>/``. A blob
given without its TOC digest is served with a warning; its chunks are still checked.
Prints ``ready`` on stdout once the mount is usable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import sys
from pathlib import Path

import anyio

from stargz import logs
from stargz.cache import cache_from_config
from stargz.config import Config, load_config
from stargz.errors import StargzError
from stargz.fs.mount import LazyFS, first_set, on_stop_signals
from stargz.layer import BackgroundScheduler, Layer, mount
from stargz.remote.fetcher import FileBlobFetcher


def file_digest(path: Path) -> str:
    with path.open("rb") as blob:
        return "sha256:" + hashlib.file_digest(blob, "sha256").hexdigest()


async def open_local_layers(specs: list[str], config: Config) -> list[Layer]:
    """``BLOB`` or ``BLOB=TOCDIGEST`` each to a mounted layer sharing one chunk cache and the
    process's background scheduler."""
    cache = cache_from_config(config.cache)
    scheduler = BackgroundScheduler(config.background_quiet_sec, config.max_concurrency)
    layers = []
    for spec in specs:
        path_text, _, toc_digest = spec.partition("=")
        path = Path(path_text)
        fetcher = FileBlobFetcher(path)
        reason = None if toc_digest else f"no TOC digest given for {path}"
        layers.append(await mount(fetcher, file_digest(path), toc_digest or None, cache, config,
                                  skip_verification_reason=reason, scheduler=scheduler))
    return layers


async def _serve(fs: LazyFS, specs: list[str], config: Config) -> None:
    stop = anyio.Event()
    with on_stop_signals(stop):
        layers = await open_local_layers(specs, config)  # on this loop: their fetches run here
        try:
            for layer in layers:
                fs.add_layer(layer)
            async with fs.running() as ended:
                print("ready", flush=True)
                await first_set(stop, ended)
        finally:
            for layer in layers:
                await layer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stargz.fs.serve", description=__doc__)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("blobs", nargs="+", metavar="BLOB[=TOCDIGEST]")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus exporter address")
    parser.add_argument("--config", type=Path, help="layer config (TOML, as the snapshotter's)")
    parser.add_argument("--no-background", action="store_true", help="no background fetch")
    args = parser.parse_args(argv)
    logs.configure("info")
    try:
        config = load_config(args.config) if args.config else Config()
        if args.no_background:
            config = dataclasses.replace(config, no_background_fetch=True)
        fs = LazyFS(args.mountpoint, metrics_address=args.metrics)
        asyncio.run(_serve(fs, args.blobs, config))
    except (StargzError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
