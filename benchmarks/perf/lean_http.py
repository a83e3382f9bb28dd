"""A minimal HTTP/1.1 load generator: keep-alive connections, each request's bytes built once.

Why not httpx: the client shares the machine's cores with the server under test, and httpx's
AsyncClient spends about as much CPU per request as a lean server does (against a server that
answers a constant, it tops out near 1,300 requests/s on this project's 2-core machine). That
CPU is taken from the server, so the measured throughput would say more about the client than
about the server. This client only writes prebuilt requests and reads responses framed by
Content-Length (which every answer of the servers measured here carries); anything else is an
error, not a guess.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class LeanHttpError(RuntimeError):
    """A response this client does not read (not 2xx, or not framed by Content-Length)."""


@dataclass(frozen=True)
class Request:
    """One POST, serialised once and sent as is every time."""

    raw: bytes

    @classmethod
    def post(
        cls, url: str, path: str, body: bytes, content_type: str, headers: dict[str, str] | None
    ) -> Request:
        host = urlsplit(url).netloc
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        return cls(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body of one file part, and its Content-Type."""
    boundary = "leanperfboundary7d1c"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _head_length(head: bytes) -> int:
    """The Content-Length of a response head; raises unless the status is 2xx."""
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    if not 200 <= status < 300:
        raise LeanHttpError(f"HTTP {status}")
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise LeanHttpError("response without Content-Length")


class Connection:
    """One blocking keep-alive connection, for sequential requests."""

    def __init__(self, url: str) -> None:
        self._sock = socket.create_connection(_address(url))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def send(self, request: Request) -> bytes:
        self._sock.sendall(request.raw)
        while b"\r\n\r\n" not in self._buffer:
            self._read()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        length = _head_length(head)
        while len(self._buffer) < length:
            self._read()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _read(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise LeanHttpError("connection closed by the server")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


async def _send_async(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
) -> bytes:
    writer.write(request.raw)
    head = await reader.readuntil(b"\r\n\r\n")
    return await reader.readexactly(_head_length(head[:-4]))


def sequential(url: str, request: Request, *, count: int, warmup: int = 2) -> list[float]:
    """`count` requests one after another on one connection: each one's latency in seconds."""
    connection = Connection(url)
    try:
        for _ in range(warmup):
            connection.send(request)
        latencies = []
        for _ in range(count):
            t = time.perf_counter()
            connection.send(request)
            latencies.append(time.perf_counter() - t)
        return latencies
    finally:
        connection.close()


def concurrent(
    url: str, request: Request, *, concurrency: int, count: int
) -> tuple[list[float], float]:
    """`count` requests over `concurrency` connections, each sending its next request as soon
    as its last is answered: the latencies, and the wall time of the whole run."""

    async def run() -> tuple[list[float], float]:
        host, port = _address(url)
        connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
        for _, writer in connections:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # One request on each connection first: connections open, first-request costs paid.
        await asyncio.gather(*(_send_async(r, w, request) for r, w in connections))
        latencies: list[float] = []
        remaining = count

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                await _send_async(reader, writer, request)
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in connections))
        wall = time.perf_counter() - started
        for _, writer in connections:
            writer.close()
        return latencies, wall

    return asyncio.run(run())
