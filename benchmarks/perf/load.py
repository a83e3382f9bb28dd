"""The load: POST /v1/classify sequentially, alternating between two servers, or at a fixed
concurrency; and the floor they are measured against, the bare model's preprocess + encode in
this process."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks.perf import lean_http
from benchmarks.perf.harness import summarize
from liteembed.images import decode_image


def classify_sequential(
    url: str, image: bytes, *, count: int, warmup: int = 2, data: dict[str, Any] | None = None
) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=300) as client:
        files = {"image": ("q.jpg", image, "image/jpeg")}
        for _ in range(warmup):
            client.post("/v1/classify", files=files, data=data or {}).raise_for_status()
        started = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            client.post("/v1/classify", files=files, data=data or {}).raise_for_status()
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
    return summarize(latencies, wall, count)


def classify_alternating(
    reference_url: str,
    sized_url: str,
    image: bytes,
    *,
    count: int,
    warmup: int = 2,
    transport: httpx.BaseTransport | None = None,
    reference_params: Callable[[int], dict[str, str]] | None = None,
    sized_params: Callable[[int], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """`count` pairs of sequential requests from one client: reference, sized, reference, ...
    (`*_params(i)`: the query of each side's i-th request, e.g. the tenant it acts within).

    Measuring both servers in the same window is what makes their ratio trustworthy on a shared
    machine: background load and CPU frequency drift hit both lists alike, whereas two windows
    measured one after another drifted by more than the effect. One request is in flight at a
    time, so the two servers never compete for the CPU. `transport` is for tests (an
    httpx.MockTransport); the benchmark always talks real HTTP.
    """
    files = {"image": ("q.jpg", image, "image/jpeg")}

    def one(client: httpx.Client, params: dict[str, str] | None = None) -> float:
        t = time.perf_counter()
        client.post("/v1/classify", files=files, params=params).raise_for_status()
        return time.perf_counter() - t

    def query(of: Callable[[int], dict[str, str]] | None, i: int) -> dict[str, str] | None:
        return of(i) if of is not None else None

    reference: list[float] = []
    sized: list[float] = []
    with (
        httpx.Client(base_url=reference_url, timeout=300, transport=transport) as ref_client,
        httpx.Client(base_url=sized_url, timeout=300, transport=transport) as sized_client,
    ):
        for i in range(warmup):  # connections open, first-request costs paid on both sides
            one(ref_client, query(reference_params, i))
            one(sized_client, query(sized_params, i))
        for i in range(count):
            reference.append(one(ref_client, query(reference_params, i)))
            sized.append(one(sized_client, query(sized_params, i)))
    # Each request's neighbour in time is its pair, so a per-pair ratio cancels even drift
    # within the window; its median is robust to the odd stalled request on either side.
    pair_ratios = [s / r for s, r in zip(sized, reference, strict=True) if r > 0]
    return {
        # Throughput over each server's own busy time (the window is shared, so the wall
        # clock would halve both): the rate it serves at when it is the one working.
        "sized": summarize(sized, sum(sized), count),
        "reference": summarize(reference, sum(reference), count),
        "pair_ratio_median": statistics.median(pair_ratios) if pair_ratios else float("nan"),
        "pairs": count,
    }


def classify_concurrent(
    url: str, image: bytes, *, concurrency: int, count: int
) -> dict[str, float]:
    async def run() -> dict[str, float]:
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            files = {"image": ("q.jpg", image, "image/jpeg")}

            async def one() -> None:
                t = time.perf_counter()
                response = await client.post("/v1/classify", files=files)
                response.raise_for_status()
                latencies.append(time.perf_counter() - t)

            await asyncio.gather(*(one() for _ in range(concurrency)))  # warm the connections
            latencies.clear()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(i)

            async def worker() -> None:
                while True:
                    try:
                        queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await one()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
        return summarize(latencies, wall, count)

    return asyncio.run(run())


def bare_encode(
    backend: Any, image: bytes, *, batch: int, count: int, full_size: bool = False
) -> dict[str, float]:
    """Preprocess + encode in this process: the floor the service is measured against. The
    image is decoded once beforehand, as the service decodes it (reduced to the model's decode
    side), so both preprocess the same pixels; with `full_size`, at full size, as this floor was
    measured before the bare pipeline existed (preprocessing then costs more)."""
    pil = decode_image(image, min_side=None if full_size else backend.decode_side)
    images = [pil] * batch
    backend.encode_image_batch(backend.preprocess_images(images))  # warm-up
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        backend.encode_image_batch(backend.preprocess_images(images))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return summarize(latencies, wall, count * batch)


def classify_request(url: str, image: bytes, *, raw: bool) -> lean_http.Request:
    """POST /v1/classify of one JPEG: its bytes as the body (`raw`), or a multipart form."""
    if raw:
        return lean_http.Request.post(url, "/v1/classify", image, "image/jpeg", None)
    body, content_type = lean_http.multipart("image", "q.jpg", image, "image/jpeg")
    return lean_http.Request.post(url, "/v1/classify", body, content_type, None)


def lean_sequential(url: str, image: bytes, *, count: int, raw: bool) -> dict[str, float]:
    """/classify at concurrency 1 from the lean client (`benchmarks/perf/lean_http.py`)."""
    latencies = lean_http.sequential(url, classify_request(url, image, raw=raw), count=count)
    return summarize(latencies, sum(latencies), count)


def lean_concurrent(
    url: str,
    image: bytes,
    *,
    concurrency: int,
    count: int,
    raw: bool,
    build: Callable[[str, bytes], lean_http.Request] | None = None,
) -> dict[str, float]:
    """/classify at a fixed concurrency from the lean client (or the request `build` makes)."""
    request = build(url, image) if build is not None else classify_request(url, image, raw=raw)
    latencies, wall = lean_http.concurrent(url, request, concurrency=concurrency, count=count)
    return summarize(latencies, wall, count)


def bare_pipeline(backend: Any, image: bytes, *, batch: int, count: int) -> dict[str, float]:
    """Decode + preprocess + encode in this process, from the JPEG's bytes: the floor no server
    goes below, since every server has to decode what it is sent. Decoded as the service
    decodes (`decode_image`, reduced to the model's decode side)."""

    def once() -> None:
        pils = [decode_image(image, min_side=backend.decode_side) for _ in range(batch)]
        backend.encode_image_batch(backend.preprocess_images(pils))

    once()  # warm-up
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        once()
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return summarize(latencies, wall, count * batch)


def decode_ms(image: bytes, repeats: int = 50, min_side: int | None = None) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        decode_image(image, min_side=min_side)
    return (time.perf_counter() - t) / repeats * 1000


def lean_alternating(
    reference_url: str,
    other_url: str,
    image: bytes,
    *,
    count: int,
    warmup: int = 20,
    build: Callable[[str, bytes], lean_http.Request] | None = None,
) -> dict[str, Any]:
    """`count` pairs of raw-body /classify requests (or the request `build` makes) from the lean
    client, reference, other, reference, ... (one in flight at a time), as
    `classify_alternating` does with httpx: both servers measured in the same window, the
    per-pair ratio cancelling drift within it."""
    make = build or (lambda url, image: classify_request(url, image, raw=True))
    request = {url: make(url, image) for url in (reference_url, other_url)}
    connections = {url: lean_http.Connection(url) for url in request}
    latencies: dict[str, list[float]] = {url: [] for url in request}
    try:
        for i in range(warmup + count):
            for url, connection in connections.items():
                t = time.perf_counter()
                connection.send(request[url])
                if i >= warmup:
                    latencies[url].append(time.perf_counter() - t)
    finally:
        for connection in connections.values():
            connection.close()
    reference, other = latencies[reference_url], latencies[other_url]
    pair_ratios = [o / r for o, r in zip(other, reference, strict=True) if r > 0]
    return {
        "other": summarize(other, sum(other), count),
        "reference": summarize(reference, sum(reference), count),
        "pair_ratio_median": statistics.median(pair_ratios),
        "pairs": count,
    }
