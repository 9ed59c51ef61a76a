#!/usr/bin/env python
"""Serving throughput and latency, side by side in one run. Writes docs/benchmarks/serving.{md,json}.

    .venv/bin/python scripts/bench_serve.py --bundle BUNDLE [--bundle BUNDLE2 ...] [--seconds 8]

Each bundle in turn (a 1x28x28 and a 3x64x64 model side by side in one run), each with:

(a) in-process Scorer ceiling at its best batch (32, 64, ... up to the max batch);
(b) transport ceiling: the same gRPC server with a no-op scorer, 64 clients, 1-sample requests;
(c) the real server, 64 clients sending 1-sample requests, batching on and off;
(d) the real server, 8 clients sending 64-sample requests;
(e) open-loop load at half the highest sustained 1-sample rate: p99 against
    max_delay_ms + 2 x one full batch's compute;
(f) with --overload, instead of (a)-(e): overload, 256 clients x 64 samples with 2 s deadlines for 10 s (about 20x what
    2 cores score), beside (d): the share of admitted requests (OK or DEADLINE_EXCEEDED) that missed their
    deadline, goodput against (d), and every status code seen; refused clients wait for the server's pushback in
    (f) and resend at once in (f'). Writes serving-overload.{md,json}.
Clients run in separate processes (asyncio, grpc.aio) and check that every response carries
its own request id and sample ids: lost, duplicated or swapped answers are counted.
Load targets loopback only and stops by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detector.bench.loadgen import bench_samples, load
from detector.bench.results import stamp, write_results
from detector.timing import best_rate
from detector.model.bundle import load_bundle
from detector.serving.process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIMIT = 256  # `detector serve`'s default --max-batch-samples

# ---------------------------------------------------------------- server side
def server(bundle, noop: bool = False, batching: bool = True, max_batch: int | None = None,
           max_delay_ms: float = 2.0, precision: str = "fp32", device: str = "auto") -> ServeProcess:
    """`detector serve` with the bench's settings (a queue long enough never to refuse on its own); ``max_batch``:
    exactly that batch (None: the server's default, tuned at start-up); ``noop``: the same server with a scorer
    that does no work (this script's noop-server role), for the transport ceiling."""
    batch = [] if max_batch is None else ["--max-batch-samples", str(max_batch), "--fixed-batch"]
    flags = [*batch, "--max-delay-ms", str(max_delay_ms), "--max-queue-samples", str(1 << 20),
             "--precision", precision, *([] if batching else ["--no-batching"])]
    command = [sys.executable, __file__, "--role", "noop-server"] if noop else ()
    return ServeProcess(bundle, *flags, device=device, command=command)


def run_noop_server(argv: list[str]) -> None:
    """`detector serve` ARGV, its Scorer replaced by NoopScorer."""
    from detector.cli import build_parser, serve

    serve(build_parser().parse_args(["serve", *argv]), wrap=NoopScorer)


class NoopScorer:
    """The real scorer's validation and metadata; scoring returns a precomputed result (no model)."""

    def __init__(self, real):
        self._real = real
        self._result = real.score(np.zeros((4096, *real.sample_shape), np.uint8))
        for name in ("sample_shape", "kind", "model_version", "device", "calibration", "input_dtype"):
            setattr(self, name, getattr(real, name))

    def check(self, batch):
        return self._real.check(batch)

    def stage(self, batch):
        return batch

    def score(self, batch, diagnostics=(), maps=False):
        return self._result.slice(0, len(batch))


def ceiling(bundle, limit: int) -> dict[int, float]:
    """(a): the in-process Scorer's samples/s at batches of 1, 2, 4 ... up to ``limit`` (the best of them is (a))."""
    from detector.scoring.scorer import Scorer

    scorer = Scorer.from_path(bundle)
    x = np.concatenate([bench_samples(bundle)] * (1 + limit // 2048))[:limit]
    return {n: best_rate(lambda: scorer.score(x[:n]), n) for n in sorted({*(1 << i for i in range(limit.bit_length())),
                                                                       limit})}


def served_batch(target: str) -> int:
    """The batch limit the server at ``target`` works with (GetModelInfo: tuned at start-up unless fixed)."""
    from detector.client import DetectorClient

    with DetectorClient(target, timeout=30) as client:
        return client.model_info().max_batch_samples


def main() -> None:
    if sys.argv[1:3] == ["--role", "noop-server"]:
        run_noop_server(sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, action="append",
                        help="the model to serve; repeat it to measure several in one run (e.g. 1x28x28 and 3x64x64)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="serve exactly this batch (--fixed-batch); default: the server's own, tuned at start-up "
                             "up to 256")
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--overload", action="store_true", help="(d) and (f) alone, into serving-overload.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()

    run = overload if args.overload else measure
    results, sections = {}, []
    for bundle in args.bundle:
        shape = "x".join(map(str, load_bundle(bundle).config["data"]["sample_shape"]))
        print(f"== {shape}: {bundle}", flush=True)
        results[shape], section = run(args, bundle, bench_samples(bundle))
        sections += [f"## {shape}", "", *section, ""]
    name, title = (("serving-overload", "Serving under overload") if args.overload
                   else ("serving", "Serving throughput and latency"))
    res = stamp({"models": results})
    command = " ".join(["scripts/bench_serve.py", *(f"--bundle {b}" for b in args.bundle),
                        *(["--overload"] if args.overload else []), f"--seconds {args.seconds:g}",
                        *([f"--max-batch {args.max_batch}"] if args.max_batch else [])])
    batch = (f"max batch {args.max_batch}, fixed" if args.max_batch else
             f"max batch tuned at start-up, of at most {DEFAULT_LIMIT}: each section says to what")
    lines = [f"# {title}", "", f"Measured by `.venv/bin/python {command}` on {res['machine']}, {res['date']}, "
             f"each model in turn; default server settings ({batch}, max delay "
             f"{args.max_delay_ms:g} ms{', max queue wait 5000 ms' if args.overload else ''}). Clients run in 4 "
             "separate processes on the same machine, so on 2 cores they compete with the server for CPU.", "",
             *([OVERLOAD_NOTE, ""] if args.overload else []), *sections]
    write_results(args.out, name, res, lines)


def measure(args, bundle, samples) -> tuple[dict, list[str]]:
    """(a)-(e) with one model, each printed as it is measured, then the checks against the issue's bars; returns
    the results and their section of serving.md."""
    res = {}
    rates = ceiling(bundle, args.max_batch or DEFAULT_LIMIT)
    res["a_best_batch"] = max(rates, key=rates.get)
    res["a_ceiling_samples_per_s"] = rates[res["a_best_batch"]]
    print(f"(a) in-process Scorer at its best batch ({res['a_best_batch']}): {res['a_ceiling_samples_per_s']:.0f} "
          f"samples/s", flush=True)
    with server(bundle, noop=True) as s:
        res["b_transport"] = load(s.target, samples, args.seconds, 1, 64)
    print(f"(b) transport ceiling (no-op scorer, 64 clients x 1 sample): {res['b_transport']}", flush=True)
    with server(bundle, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms) as s:
        res["served_batch"] = served_batch(s.target)
        print(f"served batch: {res['served_batch']}", flush=True)
        res["c_batching_on"] = load(s.target, samples, args.seconds, 1, 64)
        print(f"(c) real server, batching on, 64 clients x 1 sample: {res['c_batching_on']}", flush=True)
        res["d_8x64"] = load(s.target, samples, args.seconds, 64, 8)
        print(f"(d) real server, 8 clients x 64 samples: {res['d_8x64']}", flush=True)
        half = res["c_batching_on"]["samples_per_s"] / 2
        res["e_half_rate"] = load(s.target, samples, args.seconds, 1, 0, rate=half)
        res["e_half_rate"]["offered_per_s"] = half
        print(f"(e) open loop at {half:.0f} req/s: {res['e_half_rate']}", flush=True)
    with server(bundle, batching=False, max_batch=args.max_batch) as s:
        res["c_batching_off"] = load(s.target, samples, args.seconds, 1, 64)
    print(f"(c) real server, batching off, 64 clients x 1 sample: {res['c_batching_off']}", flush=True)
    batch_s = res["served_batch"] / rates[res["served_batch"]]  # the server tunes over the same sizes as (a)
    res["a_batch1_samples_per_s"] = rates[1]
    return res, serving_section(args, res, batch_s)


def serving_section(args, res: dict, batch_s: float) -> list[str]:
    """The checks against the issue's bars (kept in ``res``) and one model's tables."""
    a, b = res["a_ceiling_samples_per_s"], res["b_transport"]["samples_per_s"]
    con, coff, d = (res["c_batching_on"]["samples_per_s"], res["c_batching_off"]["samples_per_s"],
                    res["d_8x64"]["samples_per_s"])
    bound_ms = args.max_delay_ms + 2 * batch_s * 1e3
    checks = {
        "(d) / (a) >= 0.9": d / a, "(c on) / min((a), (b)) >= 0.7": con / min(a, b),
        "(c on) / (c off) >= 3": con / coff,
        f"(e) p99 ms <= {bound_ms:.1f} (max_delay + 2 x batch compute)": res["e_half_rate"]["p99_ms"],
        "lost + duplicated + swapped answers": sum(r.get("bad", 0) for r in res.values() if isinstance(r, dict)),
    }
    res["checks"] = checks
    res["p99_bound_ms"] = bound_ms
    # What the machine itself allows where the clients, the transport and the model share the same cores: the
    # transport's and the model's CPU time add up, and batching off still pays the transport per sample.
    limits = {
        "(c on) / min((a), (b)) if the transport's and the model's CPU time add up": 1 / (1 / a + 1 / b) / min(a, b),
        "(c on) / (c off) at most (a) / (a at batch 1), the model's own batching gain":
            a / res["a_batch1_samples_per_s"]}
    res["limits"] = limits
    for k, v in {**checks, **limits}.items():
        print(f"{k}: {v:.3f}")
    rows = [("(b) transport ceiling, no-op scorer, 64 x 1", res["b_transport"]),
            ("(c) batching on, 64 clients x 1", res["c_batching_on"]),
            ("(c) batching off, 64 clients x 1", res["c_batching_off"]),
            ("(d) batching on, 8 clients x 64", res["d_8x64"]),
            (f"(e) open loop at {res['e_half_rate']['offered_per_s']:.0f} req/s", res["e_half_rate"])]
    limit = args.max_batch or DEFAULT_LIMIT
    lines = [f"(a) in-process Scorer ceiling at its best batch ({res['a_best_batch']}, of 1 to {limit}): "
             f"**{a:.0f} samples/s**. The server batches up to {res['served_batch']} samples "
             f"({'fixed' if args.max_batch else f'tuned at start-up, of at most {limit}'}); a full batch of "
             f"{res['served_batch']} takes {batch_s * 1e3:.1f} ms in-process.", "",
             "| run | samples/s | p50 ms | p95 ms | p99 ms | errors | lost/swapped |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['samples_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} | {r['bad']} |" for name, r in rows]
    return lines + ["", "| check | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in checks.items()] + [
        "", "What this machine allows (same run):", "", "| limit | value |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" for k, v in limits.items()]


OVERLOAD_NOTE = (
    "In (f) a refused client waits as long as the server's `grpc-retry-pushback-ms` says (as gRPC's retry policy, "
    "and `detector.client`, do); in (f') it resends at once. The clients of one process share one connection; "
    "a request that arrives on a connection before the pushback it was given is held until then, or refused "
    "before its deadline, up to as many requests as the connection was refused (`detector/serving/pushback.py`): "
    "the refusals' p99 shows what that costs.")


def overload(args, bundle, samples) -> tuple[dict, list[str]]:
    """(d), (f) and (f') in one run, one server: admission by deadline under 20x overload."""
    with server(bundle, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms) as s:
        served = served_batch(s.target)
        print(f"served batch: {served}", flush=True)
        d = load(s.target, samples, args.seconds, 64, 8)
        print(f"(d) 8 clients x 64 samples: {d}", flush=True)
        f = load(s.target, samples, 10.0, 64, 256, timeout=2.0, pushback=True)
        print(f"(f) 256 clients x 64 samples, 2 s deadlines, retry after the server's pushback: {f}", flush=True)
        naive = load(s.target, samples, 10.0, 64, 256, timeout=2.0)
        print(f"(f') the same, resending at once: {naive}", flush=True)
    res = {"served_batch": served, "d_8x64": d, "f_overload": f, "f_overload_resend_at_once": naive,
           "checks": {**overload_checks("(f)", f, d), **overload_checks("(f')", naive, d),
                      "lost + duplicated + swapped answers": d["bad"] + f["bad"] + naive["bad"]}}
    lines = [f"The server batches up to {served} samples.", "",
             "| run | requests | OK | samples/s (goodput) | p99 ms (OK) | p99 ms (refused) | codes |",
             "|---|---|---|---|---|---|---|"]
    for name, r in (("(d) 8 clients x 64", d), ("(f) 256 clients x 64, 2 s deadlines, 10 s, pushback honoured", f),
                    ("(f') the same, resending at once", naive)):
        lines.append(f"| {name} | {r['requests']} | {r['ok']} | {r['samples_per_s']:.0f} | {r['p99_ms']:.1f} | "
                     + ("-" if np.isnan(r["refused_p99_ms"]) else f"{r['refused_p99_ms']:.0f}") + " | "
                     + ", ".join(f"{c} {n}" for c, n in sorted(r["codes"].items())) + " |")
    lines += ["", "| check | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in res["checks"].items()]
    for k, v in res["checks"].items():
        print(f"{k}: {v:.3f}")
    return res, lines


def overload_checks(name: str, f: dict, d: dict) -> dict:
    missed = f["codes"].get("DEADLINE_EXCEEDED", 0)
    return {f"{name} admitted requests that missed their deadline <= 0.05": missed / max(f["ok"] + missed, 1),
            f"{name} goodput / (d) >= 0.7": f["samples_per_s"] / d["samples_per_s"],
            f"{name} codes other than OK, RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED":
                sum(n for c, n in f["codes"].items()
                    if c not in ("OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"))}


if __name__ == "__main__":
    main()
