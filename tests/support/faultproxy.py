"""A fault-injecting HTTP/1.1 proxy in front of a registry, for tests.

It forwards each request on a fresh upstream connection and can, for matching requests, reset
the connection, answer a status (500, 429 with Retry-After...) itself, truncate the body, or stall
mid-body. It records every request (method, path, Range, status, body bytes sent), so tests can
prove how little a lazy pull fetched. It runs its own event loop in a thread:

    with FaultProxy("127.0.0.1", 5000) as proxy:
        proxy.add_fault(Fault("reset", path_contains="/blobs/", times=2))
        ... client talks to proxy.host ...
        proxy.bytes_served("/blobs/")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["reset", "status", "truncate", "stall"]
_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 403: "Forbidden", 404: "Not Found"}


@dataclass
class Fault:
    kind: FaultKind
    path_contains: str = ""
    method: str | None = None
    times: int = 1  # how many matching requests get it
    status: int = 500
    retry_after: str | None = None
    keep_fraction: float = 0.5  # truncate/stall: share of the body sent first
    stall_seconds: float = 30.0
    only_ranged: bool = False  # only requests carrying a Range header

    def matches(self, method: str, path: str, range_header: str | None) -> bool:
        return (self.times > 0 and self.path_contains in path
                and (self.method is None or self.method == method)
                and (not self.only_ranged or range_header is not None))


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    fault: str | None


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._faults: list[Fault] = []
        self._served: list[Served] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result()
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- test-facing API ---------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._served.clear()

    def served(self, path_contains: str = "", method: str | None = None) -> list[Served]:
        with self._lock:
            return [s for s in self._served if path_contains in s.path
                    and (method is None or s.method == method)]

    def bytes_served(self, path_contains: str = "", method: str | None = None) -> int:
        return sum(s.body_bytes for s in self.served(path_contains, method))

    # -- the proxy ---------------------------------------------------------------------------

    def _take_fault(self, request: _Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(request.method, request.target, request.header("range")):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, request: _Request, status: int, sent: int, fault: Fault | None) -> None:
        with self._lock:
            self._served.append(Served(request.method, request.target.split("?", 1)[0],
                                       request.header("range"), status, sent,
                                       fault.kind if fault else None))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await _read_request(reader)
            if request is not None:
                await self._answer(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        fault = self._take_fault(request)
        if fault is not None and fault.kind == "reset":
            _reset(writer)
            self._record(request, 0, 0, fault)
            return
        if fault is not None and fault.kind == "status":
            head, body = _status_answer(fault)
            self._record(request, fault.status, len(body), fault)
            writer.write(head + body)
            await writer.drain()
            return
        head, body, status = await self._forward(request)
        sent = body
        if fault is not None:  # truncate or stall: only part of the body goes out
            sent = body[:int(len(body) * fault.keep_fraction)]
        # Recorded before sending: a client holding all the bytes may look at once.
        self._record(request, status, len(sent), fault)
        writer.write(head + sent)
        await writer.drain()
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.stall_seconds)
            _reset(writer)
        elif fault is not None:
            # A truncated body ends with an orderly close, so the client gets every byte sent.
            writer.close()
            await writer.wait_closed()

    async def _forward(self, request: _Request) -> tuple[bytes, bytes, int]:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            lines = [f"{request.method} {request.target} HTTP/1.1"]
            for name, value in request.headers:
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    lines.append(f"{name}: {value}")
            if request.body or request.method in ("PUT", "POST", "PATCH"):
                lines.append(f"Content-Length: {len(request.body)}")
            lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        head_lines = head.decode("latin-1").split("\r\n")
        status = int(head_lines[0].split()[1])
        kept = [h for h in head_lines if not h.lower().startswith("connection:")]
        new_head = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
        return new_head, body, status


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN, as a dropped connection looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _status_answer(fault: Fault) -> tuple[bytes, bytes]:
    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
    lines = [f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close"]
    if fault.retry_after is not None:
        lines.append(f"Retry-After: {fault.retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    request = _Request(method, target, headers, b"")
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        request.body = await _read_chunked(reader)
    else:
        request.body = await reader.readexactly(int(request.header("content-length") or 0))
    return request


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
