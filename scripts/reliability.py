#!/usr/bin/env python
"""Reliability checks against a real `detector serve` process on loopback. Each prints one summary line
and writes docs/reliability/CHECK.json.

    .venv/bin/python scripts/reliability.py fuzz --bundle B [--n 10000]
    .venv/bin/python scripts/reliability.py overload --bundle B [--seconds 60]
    .venv/bin/python scripts/reliability.py reload --bundle B --bundle2 B2 [--seconds 30]
    .venv/bin/python scripts/reliability.py sigterm --bundle B
    .venv/bin/python scripts/reliability.py auth --bundle B
    .venv/bin/python scripts/reliability.py all --bundle B --bundle2 B2

fuzz: hypothesis-generated malformed requests (wrong dtype, shape and byte count, NaN/Inf, out of
range, huge and negative dims, empty, too many samples, id count, non-UTF-8 strings, truncated and
garbage bytes, oversized messages, truncated and cancelled streams) mixed with valid requests whose
answers are checked against the in-process Scorer. overload: open-loop load at 4x the sustainable
rate. reload: SIGHUP every few seconds under load, with a corrupted bundle once. sigterm: SIGTERM
under load. auth: bearer token and TLS. Every load is bounded in time, targets loopback only and
stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from detector.bench.certs import make_cert
from detector.bench.loadgen import bench_samples, load
from detector.bench.results import stamp
from detector.serving.grpc.converters import score_request
from detector.serving.process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- fuzz
INVALID, TOO_BIG = "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"


def fuzz(args) -> dict:
    from detector.scoring.scorer import Scorer

    scorer = Scorer.from_path(args.bundle, device="cpu")
    pool = bench_samples(args.bundle, 256)
    expected = scorer.score(pool).scores["novelty"]
    max_request, max_mb = 64, 1
    cases = _malformed_cases(scorer, max_request, max_mb)
    with ServeProcess(args.bundle, "--max-request-samples", str(max_request), "--max-message-mb", str(max_mb)) as srv:
        stats = _fuzz_server(srv, cases, pool, expected, args.n)
        stats["streams"] = fuzz_streams(srv, pool, _wire_dtype(scorer), args.streams)
        stats["seconds"] = time.monotonic() - stats.pop("started")
        stats["server_alive"] = srv.proc.poll() is None
        stats["serving_after"] = srv.serving()
        stats["invalid_argument_counted"] = srv.metric_sum("detector_errors_total", code="INVALID_ARGUMENT")
        stats["rss_mb_after"] = srv.rss_mb()
        code, _, log = srv.stop()
    stats["exit_code"] = code
    stats["tracebacks_in_log"] = log.count("Traceback")
    stats["crashes"] = int(not stats["server_alive"]) + int(code != 0)
    wrong = len(stats["wrong_code"]) + stats["streams"]["wrong"]
    stats["summary"] = (f"fuzz: {stats['malformed']} malformed requests + {stats['streams']['streams']} truncated/"
                        f"cancelled streams mixed with {stats['valid']} valid: {stats['crashes']} crashes, {wrong} wrong "
                        f"codes, {stats['wrong_answer'] + stats['valid_failed']} valid requests answered wrongly or "
                        f"not at all, server SERVING after: {stats['serving_after']} ({stats['seconds']:.0f} s)")
    stats["wrong_code"] = stats["wrong_code"][:20]
    return stats


def _wire_dtype(scorer):
    from detector.v1 import detector_pb2 as pb

    return pb.UINT8 if scorer.input_dtype == "uint8" else pb.FLOAT32


def _malformed_cases(scorer, max_request: int, max_mb: int):
    """A hypothesis strategy of (kind, request bytes, the status code the server must answer)."""
    from google.protobuf import wrappers_pb2
    from hypothesis import strategies as st

    from detector.v1 import detector_pb2 as pb

    shape = list(scorer.sample_shape)
    per = int(np.prod(shape))

    def request(tensor_shape, data, dtype=_wire_dtype(scorer), ids=()) -> bytes:
        return pb.ScoreRequest(request_id="fuzz", samples=pb.Tensor(shape=tensor_shape, dtype=dtype, data=data),
                               sample_ids=list(ids)).SerializeToString()

    def uint8s(n):
        return request([n, *shape], bytes(n * per), dtype=pb.UINT8)

    def floats(n, value=0.5):
        return np.full(n * per, value, "<f4").tobytes()

    def string_field(number: int, payload: bytes) -> bytes:
        """Field ``number`` (1: request_id, 3: sample_ids) holding bytes that are not UTF-8. Generated classes refuse
        such strings, so the bytes come from a message whose field of that number is ``bytes``: same wire format."""
        return (wrappers_pb2.BytesValue(value=payload) if number == 1 else pb.Tensor(data=payload)).SerializeToString()

    n_ = st.integers(1, 4)
    bad_utf8 = st.binary(min_size=1, max_size=20).filter(lambda b: not _is_utf8(b))
    kinds = {
        "dtype": st.builds(lambda d, n: request([n, *shape], bytes(n * per * 4), dtype=d),
                           st.integers(-2**31, 2**31 - 1).filter(lambda d: d not in (1, 2, 3)), n_),
        "shape": st.builds(lambda n, d: request([n, *d], bytes(n * int(np.prod(d))), dtype=pb.UINT8), n_,
                           st.lists(st.integers(1, 40), min_size=1, max_size=3).filter(lambda d: d != shape)),
        "byte count": st.builds(lambda n, delta: request([n, *shape], bytes(max(0, n * per + delta)), dtype=pb.UINT8),
                                n_, st.integers(-per, per).filter(lambda d: d != 0)),
        "nan/inf": st.builds(lambda n, pos, v: request([n, *shape], _with(floats(n), pos % (n * per), v),
                                                       dtype=pb.FLOAT32),
                             n_, st.integers(0, 10**9), st.sampled_from([np.nan, np.inf, -np.inf])),
        "huge dim": st.builds(lambda n, d, at: request([n, *shape[:at], d, *shape[at + 1:]], bytes(8)), n_,
                              st.integers(2**31, 2**63 - 1), st.integers(0, len(shape) - 1)),
        "negative dim": st.builds(lambda d, at: request([*([1] + shape)[:at], d, *([1] + shape)[at + 1:]], bytes(per)),
                                  st.integers(-2**63, -1), st.integers(0, len(shape))),
        "empty": st.sampled_from([request([], b""), request([0, *shape], b""),
                                  pb.ScoreRequest(request_id="x").SerializeToString(), b""]),
        "too many samples": st.builds(lambda extra: uint8s(max_request + extra), st.integers(1, 16)),
        "id count": st.tuples(n_, st.integers(1, 9)).filter(lambda t: t[0] != t[1]).map(
            lambda t: request([t[0], *shape], bytes(t[0] * per), dtype=pb.UINT8, ids=[str(i) for i in range(t[1])])),
        "non-UTF-8 string": st.builds(lambda n, number, b: uint8s(n) + string_field(number, b), n_,
                                      st.sampled_from([1, 3]), bad_utf8),
        "truncated bytes": st.builds(lambda n, frac: (lambda r: r[:int(len(r) * frac)])(uint8s(n)), n_,
                                     st.floats(0, 0.999)),
        "garbage bytes": st.binary(min_size=1, max_size=200),
    }
    if scorer.kind == "image":
        kinds["out of range"] = st.builds(lambda n, v: request([n, *shape], floats(n, v), dtype=pb.FLOAT32), n_,
                                          st.one_of(st.floats(-1e30, -1e-3), st.floats(1.001, 1e30)))
    oversized = st.builds(lambda extra: request([1, (max_mb << 20) + extra], bytes((max_mb << 20) + extra),
                                                dtype=pb.UINT8), st.integers(1, 1 << 20))
    return st.one_of(*(st.tuples(st.just(kind), cases, st.just(INVALID)) for kind, cases in kinds.items()),
                     st.tuples(st.just("oversized message"), oversized, st.just(TOO_BIG)))


def _fuzz_server(srv: ServeProcess, cases, pool: np.ndarray, expected: np.ndarray, n: int) -> dict:
    """Send ``n`` malformed requests drawn from ``cases``, a valid one after every fifth; count what came back."""
    import grpc
    from hypothesis import HealthCheck, Phase, given, settings

    from detector.v1 import detector_pb2 as pb

    stats = {"malformed": 0, "valid": 0, "by_kind": {}, "wrong_code": [], "wrong_answer": 0, "valid_failed": 0}
    channel = grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 8 << 20)])
    raw_score = channel.unary_unary("/detector.v1.Detector/Score")
    typed_score = channel.unary_unary("/detector.v1.Detector/Score", request_serializer=pb.ScoreRequest.SerializeToString,
                                      response_deserializer=pb.ScoreResponse.FromString)
    rng = np.random.default_rng(0)

    def send_valid():
        idx = rng.integers(0, len(pool), int(rng.integers(1, 5)))
        req = score_request(pool[idx], [str(i) for i in idx], f"v{stats['valid']}")
        stats["valid"] += 1
        try:
            reply = typed_score(req, timeout=30)
        except grpc.RpcError as e:
            stats["valid_failed"] += 1
            print(f"valid request failed: {e.code().name} {e.details()}", file=sys.stderr)
            return
        got = np.array([r.novelty_score for r in reply.results])
        # Batching moves novelty by float32 rounding (~1e-4 on the tiny test bundle); a mixed-up sample, by units.
        if (reply.request_id != req.request_id or [r.sample_id for r in reply.results] != list(req.sample_ids)
                or not np.allclose(got, expected[idx], rtol=1e-3, atol=1e-3)):
            stats["wrong_answer"] += 1

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def one(case):
        kind, raw, want = case
        try:
            raw_score(raw, timeout=30)
            got, details = "OK", ""
        except grpc.RpcError as e:
            got, details = e.code().name, e.details() or ""
        stats["malformed"] += 1
        stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
        if got != want:
            stats["wrong_code"].append((kind, want, got, details[:200]))
        if stats["malformed"] % 5 == 0:
            send_valid()

    stats["started"] = time.monotonic()
    one()
    channel.close()
    return stats


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _with(data: bytes, position: int, value: float) -> bytes:
    a = np.frombuffer(data, "<f4").copy()
    a[position] = value
    return a.tobytes()


def fuzz_streams(srv: ServeProcess, pool: np.ndarray, dtype, n: int) -> dict:
    """Streams that end early: cut off by the client after some answers, or broken by a malformed request."""
    import grpc

    from detector.v1 import detector_pb2 as pb
    from detector.v1 import detector_pb2_grpc as pb_grpc

    stub = pb_grpc.DetectorStub(grpc.insecure_channel(srv.target))
    rng = np.random.default_rng(1)
    wrong = 0

    def req(i, bad=False):
        x = pool[i % len(pool)][None]
        shape = [1, *x.shape[1:]] if not bad else [2, *x.shape[1:]]  # bad: byte count does not match
        return pb.ScoreRequest(request_id=str(i), samples=pb.Tensor(shape=shape, dtype=dtype, data=x.tobytes()))

    for s in range(n):
        k = int(rng.integers(1, 6))
        if s % 2:  # malformed request after k good ones: k answers, then INVALID_ARGUMENT ends the stream
            answers, code = 0, "OK"
            try:
                for _ in stub.ScoreStream(iter([req(i) for i in range(k)] + [req(k, bad=True)] + [req(k + 1)]),
                                          timeout=30):
                    answers += 1
            except grpc.RpcError as e:
                code = e.code().name
            wrong += int(answers != k or code != "INVALID_ARGUMENT")
        else:  # the client cancels while its stream is still open
            release = threading.Event()

            def requests():
                for i in range(k):
                    yield req(i)
                release.wait(10)

            call = stub.ScoreStream(requests(), timeout=30)
            answers = 0
            for _ in call:
                answers += 1
                if answers == k:
                    call.cancel()
                    break
            release.set()
            wrong += int(answers != k)
    return {"streams": n, "wrong": wrong}


# ---------------------------------------------------------------- overload
def overload(args) -> dict:
    samples = bench_samples(args.bundle)
    b = args.request_samples
    res = {"max_queue_wait_ms": args.max_queue_wait_ms, "deadline_s": args.deadline, "request_samples": b}
    with ServeProcess(args.bundle, "--max-queue-wait-ms", str(args.max_queue_wait_ms)) as srv:
        load(srv.target, samples, 3, b, clients=8)  # warm both sides
        # Sustainable: the most that closed-loop clients (backing off 50 ms when refused) get answered.
        res["sustained"] = {c: load(srv.target, samples, 5, b, clients=c, timeout=args.deadline, backoff_s=0.05)
                            for c in (2, 4, 8, 16)}
        rate = max(r["samples_per_s"] for r in res["sustained"].values()) / b  # requests/s
        res["sustainable_per_s"] = rate * b
        res["rss_mb_before"] = srv.rss_mb()
        res["unloaded"] = load(srv.target, samples, 10, b, rate=rate / 2, timeout=args.deadline)
        rss, stop = [], threading.Event()

        def sample_rss():
            while not stop.wait(0.5):
                rss.append(srv.rss_mb())
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        res["overload"] = load(srv.target, samples, args.seconds, b, rate=4 * rate, timeout=args.deadline)
        res["overload"]["offered_per_s"] = 4 * rate
        stop.set()
        sampler.join()
        res["rss_mb_max_during"] = max(rss)
        res["recovered"] = load(srv.target, samples, 10, b, rate=rate / 2, timeout=args.deadline)
        res["serving_after"] = srv.serving()
        res["exit_code"] = srv.stop()[0]
    u, o, r = res["unloaded"], res["overload"], res["recovered"]
    codes = o["codes"]
    res["checks"] = {
        "accepted p99 / unloaded p99 (<= 2)": o["p99_ms"] / u["p99_ms"],
        "refused share": codes.get("RESOURCE_EXHAUSTED", 0) / o["requests"],
        "refusal p99 ms": o["refused_p99_ms"],
        "other errors": o["errors"] - codes.get("RESOURCE_EXHAUSTED", 0),
        "over deadline": int(o["max_ms"] > args.deadline * 1e3),
        "RSS growth MB": res["rss_mb_max_during"] - res["rss_mb_before"],
        "recovered p99 / unloaded p99": r["p99_ms"] / u["p99_ms"],
    }
    res["summary"] = (f"overload: {o['offered_per_s']:.0f} req/s of {b} samples offered for {args.seconds:g} s (4 x "
                      f"sustainable {rate:.0f}/s = {rate * b:.0f} samples/s): {codes.get('RESOURCE_EXHAUSTED', 0)} of {o['requests']} refused with "
                      f"RESOURCE_EXHAUSTED (p99 {o['refused_p99_ms']:.1f} ms), {o['ok']} accepted with p99 "
                      f"{o['p99_ms']:.0f} ms = {res['checks']['accepted p99 / unloaded p99 (<= 2)']:.2f} x unloaded "
                      f"({u['p99_ms']:.0f} ms), {res['checks']['other errors']} other errors, RSS "
                      f"{res['rss_mb_before']:.0f} -> max {res['rss_mb_max_during']:.0f} MB, after: p99 "
                      f"{r['p99_ms']:.0f} ms, {r['errors']} errors, SERVING {res['serving_after']}")
    return res


# ---------------------------------------------------------------- reload
def reload(args) -> dict:
    work = Path(tempfile.mkdtemp())
    link = work / "current"
    corrupt = work / "corrupt"
    shutil.copytree(args.bundle, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    link.symlink_to(Path(args.bundle).resolve())
    samples = bench_samples(args.bundle)
    res = {}
    with ServeProcess(link) as srv:
        stop, swaps = threading.Event(), []

        def point_to(target: Path) -> None:
            tmp = work / "next"
            tmp.symlink_to(Path(target).resolve())
            os.replace(tmp, link)  # atomic
            srv.proc.send_signal(signal.SIGHUP)
            swaps.append(str(target))

        def reloader():
            bundles = [args.bundle2, args.bundle]
            i = 0
            while not stop.wait(args.every):
                if i == len(bundles) * 2:  # once, mid-load: a corrupted bundle
                    point_to(corrupt)
                    stop.wait(args.every)
                point_to(bundles[i % 2])
                i += 1
        thread = threading.Thread(target=reloader, daemon=True)
        thread.start()
        res["load"] = load(srv.target, samples, args.seconds, 4, clients=16, timeout=30)
        stop.set()
        thread.join()
        time.sleep(1)
        res["reloads_loaded"] = srv.metric_sum("detector_model_reloads_total", outcome="loaded")
        res["reloads_refused"] = srv.metric_sum("detector_model_reloads_total", outcome="refused")
        versions = {dict(lab).get("model_version") for (n, lab), v in srv.metrics().items()
                    if n == "detector_samples_scored_total" and v > 0}
        res["versions_served"] = sorted(versions)
        res["exit_code"], _, log = srv.stop()
    res["swaps"] = len(swaps)
    res["refusal_logged"] = "reload refused" in log
    shutil.rmtree(work)
    ld = res["load"]
    res["summary"] = (f"reload: {res['swaps']} SIGHUP swaps every {args.every:g} s under load (16 clients, "
                      f"{ld['requests']} requests, {len(res['versions_served'])} model versions served): "
                      f"{ld['errors']} failed requests, {ld['bad']} lost/swapped; {res['reloads_loaded']:.0f} loaded, "
                      f"{res['reloads_refused']:.0f} refused (the corrupted bundle; logged: {res['refusal_logged']})")
    return res


# ---------------------------------------------------------------- sigterm
def sigterm(args) -> dict:
    samples = bench_samples(args.bundle)
    srv = ServeProcess(args.bundle, "--grace-s", "20")
    out = {}
    thread = threading.Thread(target=lambda: out.update(load(srv.target, samples, args.seconds, 4, clients=32,
                                                             timeout=30)))
    thread.start()
    give_up = time.monotonic() + args.seconds / 2
    while srv.metric_sum("detector_samples_scored_total") < 2000 and time.monotonic() < give_up:
        time.sleep(0.2)  # SIGTERM only once the load is flowing
    scored_before = srv.metric_sum("detector_samples_scored_total")
    code, stdout, _ = srv.stop()
    thread.join()
    codes = out["codes"]
    lost = sum(v for k, v in codes.items() if k not in ("OK", "UNAVAILABLE")) + out["bad"]
    res = {"load": out, "exit_code": code, "drained": "stopped" in stdout, "scored_before_sigterm": scored_before,
           "lost": lost}
    res["summary"] = (f"sigterm: SIGTERM under load (32 clients, {scored_before:.0f} samples scored before it, "
                      f"{out['requests']} requests in all): {out['ok']} answered, "
                      f"{codes.get('UNAVAILABLE', 0)} refused before acceptance (UNAVAILABLE), {lost} lost; "
                      f"exit code {code}")
    return res


# ---------------------------------------------------------------- auth
def auth(args) -> dict:
    import grpc

    from detector.client import DetectorClient

    work = Path(tempfile.mkdtemp())
    for name in ("ca", "server"):  # two self-signed certificates: the server's, and one it was not signed by
        make_cert(work, name)
    (work / "token").write_text("s3cret-token\n")
    x = bench_samples(args.bundle, 4)
    trusted = grpc.ssl_channel_credentials((work / "server.crt").read_bytes())
    other_ca = grpc.ssl_channel_credentials((work / "ca.crt").read_bytes())
    res = {"refused": {}, "tls": {}}
    with ServeProcess(args.bundle, "--tls-cert", str(work / "server.crt"), "--tls-key", str(work / "server.key"),
                      "--auth-token-file", str(work / "token")) as srv:
        for name, metadata in (("no token", ()), ("wrong token", (("authorization", "Bearer nope"),)),
                               ("no Bearer prefix", (("authorization", "s3cret-token"),))):
            with DetectorClient(srv.target, credentials=trusted, metadata=metadata, retries=0) as client:
                try:
                    client.score(x)
                    res["refused"][name] = "OK"
                except grpc.RpcError as e:
                    res["refused"][name] = e.code().name
        res["scored_after_refusals"] = srv.metric_sum("detector_samples_scored_total")
        res["ok_requests_after_refusals"] = srv.metric_sum("detector_requests_total", code="OK")
        for name, creds in (("CA not trusted", other_ca), ("plaintext", None)):
            with DetectorClient(srv.target, credentials=creds, retries=0, timeout=5,
                                metadata=(("authorization", "Bearer s3cret-token"),)) as client:
                try:
                    client.score(x)
                    res["tls"][name] = "OK"
                except grpc.RpcError as e:
                    res["tls"][name] = e.code().name
        with DetectorClient(srv.target, credentials=trusted,
                            metadata=(("authorization", "Bearer s3cret-token"),)) as client:
            res["with token"] = len(client.score(x))
        res["scored_after"] = srv.metric_sum("detector_samples_scored_total")
    shutil.rmtree(work)
    ok = (set(res["refused"].values()) == {"UNAUTHENTICATED"} and res["scored_after_refusals"] == 0
          and res["ok_requests_after_refusals"] == 0 and "OK" not in res["tls"].values() and res["with token"] == len(x))
    res["passed"] = ok
    res["summary"] = (f"auth: {', '.join(f'{k}: {v}' for k, v in res['refused'].items())}; samples scored "
                      f"{res['scored_after_refusals']:.0f}, OK requests {res['ok_requests_after_refusals']:.0f}; "
                      f"TLS {', '.join(f'{k}: {v}' for k, v in res['tls'].items())}; with the token "
                      f"{res['with token']} results; {'PASS' if ok else 'FAIL'}")
    return res


CHECKS = {"fuzz": fuzz, "overload": overload, "reload": reload, "sigterm": sigterm, "auth": auth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=(*CHECKS, "all"))
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--bundle2", type=Path, help="a second bundle of the same input shape (reload)")
    parser.add_argument("--n", type=int, default=10_000, help="fuzz: malformed requests")
    parser.add_argument("--streams", type=int, default=200, help="fuzz: truncated or cancelled streams")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (overload 60, reload 30, sigterm 20)")
    parser.add_argument("--every", type=float, default=3.0, help="reload: seconds between swaps")
    parser.add_argument("--max-queue-wait-ms", type=float, default=100.0, help="overload: the server's wait budget")
    parser.add_argument("--request-samples", type=int, default=8, help="overload: samples per request")
    parser.add_argument("--deadline", type=float, default=2.0, help="overload: client deadline, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability")
    args = parser.parse_args()
    if args.check in ("reload", "all") and args.bundle2 is None:
        parser.error("reload needs --bundle2")
    seconds = args.seconds
    args.out.mkdir(parents=True, exist_ok=True)
    for name in CHECKS if args.check == "all" else [args.check]:
        args.seconds = seconds or {"overload": 60.0, "reload": 30.0, "sigterm": 20.0}.get(name, 0.0)
        res = stamp(CHECKS[name](args))
        res["command"] = f"scripts/reliability.py {name} " + " ".join(sys.argv[2:])
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
        print(res["summary"], flush=True)


if __name__ == "__main__":
    main()
