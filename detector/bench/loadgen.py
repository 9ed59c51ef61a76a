"""Load for benchmark and reliability scripts: gRPC clients in separate processes (asyncio, grpc.aio).

Closed loop (``clients`` requests always in flight) or open loop (Poisson arrivals at ``rate``
requests/s in total). Every response is checked against its own request id and sample ids; every
request's status code and latency are kept. Load targets the given address only and stops by
itself after ``seconds``.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing as mp
import time

import numpy as np

START_UP_S = 1.5  # process spawn and imports, subtracted from the wall time


async def _client_loop(target, samples, seconds, batch, concurrency, rate, seed, timeout, metadata, backoff_s, pushback,
                       out):
    import grpc

    from detector.serving.grpc.converters import score_request
    from detector.v1 import detector_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.DetectorStub(channel)
    rng = np.random.default_rng(seed)
    end = time.monotonic() + seconds
    codes, latencies, bad = [], [], 0

    async def one(i):
        nonlocal bad
        idx = rng.integers(0, len(samples), batch)
        rid = f"{seed}-{i}"
        ids = [f"{rid}-{j}" for j in range(batch)]
        req = score_request(samples[idx], ids, rid)
        t0, wait = time.perf_counter(), None
        try:
            resp = await stub.Score(req, timeout=timeout, metadata=metadata)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            resp, code = None, e.code().name
            wait = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms") if pushback else None
        latencies.append(time.perf_counter() - t0)
        codes.append(code)
        if resp is not None and (resp.request_id != rid or [r.sample_id for r in resp.results] != ids):
            bad += 1
        if code != "RESOURCE_EXHAUSTED":
            return 0.0
        return int(wait) / 1000 if wait is not None else backoff_s

    if rate is None:
        async def worker(w):
            i = 0
            while time.monotonic() < end:
                pause = await one(f"{w}-{i}")  # refused: wait as the server asked (or backoff_s), as a polite client
                if pause:
                    await asyncio.sleep(min(pause, max(end - time.monotonic(), 0.0)))
                i += 1
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    else:
        tasks, i = [], 0
        next_t = time.monotonic()
        while next_t < end:
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(i)))
            i += 1
            next_t += rng.exponential(1.0 / rate)
        await asyncio.gather(*tasks)
    await channel.close()
    out.put({"codes": codes, "latencies": latencies, "bad": bad})


def _client_proc(*args):
    asyncio.run(_client_loop(*args))


def _percentiles(lat: np.ndarray) -> dict:
    if not len(lat):
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p95_ms": float(np.percentile(lat, 95) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "max_ms": float(lat.max() * 1e3)}


def load(target: str, samples: np.ndarray, seconds: float, batch: int, clients: int = 0, procs: int = 4,
         rate: float | None = None, timeout: float = 30.0, metadata: tuple = (), backoff_s: float = 0.0,
         pushback: bool = False) -> dict:
    """Run the load; returns OK samples/s, latency percentiles of OK requests, codes, lost/swapped.
    Closed-loop clients refused with RESOURCE_EXHAUSTED pause for the server's ``grpc-retry-pushback-ms`` when
    ``pushback`` (as gRPC's own retry policy would), else for ``backoff_s`` (0: resend at once)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ps = [ctx.Process(target=_client_proc, args=(target, samples, seconds, batch, c,
                                                 None if rate is None else rate / procs, i, timeout, metadata, backoff_s,
                                                 pushback, out))
          for i, c in enumerate(per) if c or rate is not None]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    parts = [out.get(timeout=seconds + timeout + 120) for _ in ps]
    for p in ps:
        p.join()
    codes = [c for p in parts for c in p["codes"]]
    lat = np.array([x for p in parts for x in p["latencies"]])
    ok = np.array([c == "OK" for c in codes], dtype=bool)
    counts = collections.Counter(codes)
    refused = lat[np.array([c == "RESOURCE_EXHAUSTED" for c in codes], dtype=bool)] if len(lat) else lat
    return {"requests": len(codes), "ok": int(ok.sum()), "samples_per_s": int(ok.sum()) * batch / seconds,
            **_percentiles(lat[ok] if len(lat) else lat), "codes": dict(counts),
            "errors": len(codes) - int(ok.sum()), "bad": int(sum(p["bad"] for p in parts)),
            "refused_p99_ms": _percentiles(refused)["p99_ms"],
            "wall_s": time.perf_counter() - t0 - START_UP_S}


def bench_samples(bundle, n: int = 2048) -> np.ndarray:
    """Fashion-MNIST test images for a 28x28 grayscale model, synthetic images of the right shape otherwise."""
    from detector.data import load_spec
    from detector.data.synthetic import bars, manifold_vectors
    from detector.model.bundle import load_bundle

    data = load_bundle(bundle).config["data"]
    shape = tuple(data["sample_shape"])
    if shape == (1, 28, 28):
        return load_spec("fashion-mnist:test").read(0, n)
    if data["kind"] == "vector":
        return manifold_vectors(n, dim=shape[0]).astype(np.float32)
    return bars(n, size=shape[1], channels=shape[0])
