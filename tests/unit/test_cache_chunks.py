"""Memory LRU and the content-addressed disk cache."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from stargz.cache import DiskCache, MemoryCache, TieredCache, cache_from_config
from stargz.config import CacheConfig
from stargz.errors import CacheError


def chunk(i: int, size: int = 1000) -> tuple[str, bytes]:
    data = bytes([i % 256]) * size + str(i).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def test_memory_lru_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    cache = MemoryCache(limit_bytes=3500)
    items = [chunk(i) for i in range(4)]
    for digest, data in items[:3]:
        cache.put(digest, data)
    assert cache.get(items[0][0]) == items[0][1]  # 0 is now the most recent
    cache.put(*items[3])
    assert cache.size_bytes <= 3500
    assert cache.get(items[1][0]) is None  # least recently used went first
    assert [cache.get(d) for d, _ in (items[0], items[2], items[3])] == [
        items[0][1], items[2][1], items[3][1]]
    big_digest, big = chunk(9, 5000)
    cache.put(big_digest, big)  # larger than the whole cache: not kept, nothing evicted
    assert cache.get(big_digest) is None and len(cache) == 3


def test_disk_cache_layout_and_reuse_across_instances(tmp_path: Path) -> None:
    digest, data = chunk(1)
    DiskCache(tmp_path, 1 << 20).put(digest, data)
    hex_digest = digest.removeprefix("sha256:")
    assert (tmp_path / "sha256" / hex_digest[:2] / hex_digest).read_bytes() == data
    again = DiskCache(tmp_path, 1 << 20)
    assert again.get(digest) == data and again.size_bytes == len(data)


def test_disk_cache_eviction_respects_limit_by_access_time(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, limit_bytes=3500)
    items = [chunk(i) for i in range(4)]
    for digest, data in items[:3]:
        cache.put(digest, data)
    assert cache.get(items[0][0]) == items[0][1]
    cache.put(*items[3])
    assert cache.size_bytes <= 3500
    files = list((tmp_path / "sha256").rglob("*"))
    on_disk = sum(p.stat().st_size for p in files if p.is_file())
    assert on_disk == cache.size_bytes
    assert cache.get(items[1][0]) is None and cache.get(items[0][0]) == items[0][1]


def test_disk_cache_order_survives_restart(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    items = [chunk(i) for i in range(3)]
    for digest, data in items:
        cache.put(digest, data)
    old = time.time_ns() - 10**12
    for n, (digest, _) in enumerate(items):  # item 2 oldest, then 1, then 0
        os.utime(cache.path_of(digest), ns=(old - n * 10**9, old))
    smaller = DiskCache(tmp_path, 2100)  # room for two
    assert smaller.get(items[2][0]) is None
    assert smaller.get(items[0][0]) == items[0][1] and smaller.get(items[1][0]) == items[1][1]


def test_leftover_temp_file_is_never_served_and_is_swept(tmp_path: Path) -> None:
    digest, data = chunk(5)
    hex_digest = digest.removeprefix("sha256:")
    folder = tmp_path / "sha256" / hex_digest[:2]
    folder.mkdir(parents=True)
    temp = folder / f".tmp-{hex_digest}.123.456"
    temp.write_bytes(data[:100])  # a crash mid-write
    cache = DiskCache(tmp_path, 1 << 20)
    assert cache.get(digest) is None
    assert not temp.exists() and cache.size_bytes == 0


def test_corrupt_file_on_disk_is_dropped_not_served(tmp_path: Path) -> None:
    digest, data = chunk(6)
    cache = DiskCache(tmp_path, 1 << 20)
    cache.put(digest, data)
    cache.path_of(digest).write_bytes(b"x" + data[1:])
    assert cache.get(digest) is None
    assert not cache.path_of(digest).exists() and cache.size_bytes == 0


def test_bad_digest_is_a_cache_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20)
    with pytest.raises(CacheError):
        cache.get("sha256:../../etc/passwd")
    with pytest.raises(CacheError):
        cache.put("md5:abcd", b"x")


def test_tiered_cache_promotes_disk_hits(tmp_path: Path) -> None:
    digest, data = chunk(7)
    tiered = cache_from_config(CacheConfig(directory=str(tmp_path), memory_limit_bytes=1 << 20))
    assert tiered.disk is not None
    tiered.disk.put(digest, data)
    assert tiered.memory.get(digest) is None
    assert tiered.get(digest) == data and tiered.memory.get(digest) == data
    memory_only = TieredCache(MemoryCache(1 << 20))
    memory_only.put(digest, data)
    assert memory_only.get(digest) == data


def test_disk_cache_directories_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "made" / "cache"
        digest, data = chunk(3)
        DiskCache(root, 1 << 20).put(digest, data)
    finally:
        os.umask(old)
    shard = root / "sha256" / digest[7:9]
    for directory in (root, root / "sha256", shard):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert (shard / digest[7:]).stat().st_mode & 0o777 == 0o600
