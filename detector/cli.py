"""`detector` command line: parse -> settings -> one call into the package. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from detector.errors import DetectorError

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fpr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in (0, 1), got '{text}'") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate in (0, 1), got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """One line on a usage error, not the whole usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="detector", description="VAE anomaly detection: train, calibrate, "
                                     "score, evaluate, serve, audit.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train_command, _calibrate_command, _score_command, _evaluate_command, _serve_command,
                _audit_command, _health_command):
        add(sub)  # one function per command: its flags and their help
    return parser


def _train_command(sub) -> None:
    p = sub.add_parser("train", help="fit a VAE, calibrate thresholds, write a bundle")
    p.add_argument("--data", required=True, metavar="SPEC", help="fashion-mnist:train[:classes=0,3], .npz, .npy, "
                   "IDX, image folder or CSV")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="settings: [model] [train] [score] tables")
    p.add_argument("--epochs", type=_positive_int, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--seed", type=int, help="seed for splits, initialisation and batches")
    p.add_argument("--fpr", type=_fpr, help="target false-positive rate of the thresholds (default 0.01)")
    p.add_argument("--debias", action="store_true", help="DB-VAE adaptive resampling during training")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in BUNDLE.ckpt/")
    _add_device(p)


def _calibrate_command(sub) -> None:
    p = sub.add_parser("calibrate", help="recompute thresholds and p-values of a bundle, in place")
    p.add_argument("--model", required=True, type=Path, metavar="BUNDLE")
    p.add_argument("--data", required=True, metavar="SPEC", help="held-out normal data")
    p.add_argument("--fpr", type=_fpr, default=0.01, help="target false-positive rate (default 0.01)")
    _add_device(p)


def _score_command(sub) -> None:
    p = sub.add_parser("score", help="per-sample scores to a CSV or Parquet file")
    p.add_argument("--model", type=Path, metavar="BUNDLE", help="bundle to score with in this process")
    p.add_argument("--server", metavar="HOST:PORT", help="score through a running gRPC server instead")
    p.add_argument("--data", required=True, metavar="SPEC")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help=".csv or .parquet")
    p.add_argument("--batch-size", type=_positive_int, default=1024)
    _add_diagnostics(p)
    p.add_argument("--maps", type=Path, metavar="DIR",
                   help="also write each sample's per-pixel anomaly map (DIR/<index>.npy) and an overlay of it on the "
                        "input (DIR/<index>.png); image models only")
    _add_client_security(p, "with --server: ")
    _add_device(p)


def _evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="AUROC / AUPRC / FPR@95TPR / calibrated FPR per score")
    p.add_argument("--model", required=True, type=Path, metavar="BUNDLE")
    p.add_argument("--normal", required=True, metavar="SPEC")
    p.add_argument("--anomalous", required=True, metavar="SPEC")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--batch-size", type=_positive_int, default=1024)
    _add_diagnostics(p)
    _add_device(p)


def _serve_command(sub) -> None:
    p = sub.add_parser("serve", help="gRPC scoring server with dynamic batching and Prometheus metrics; "
                                     "SIGHUP reloads the bundle from --model")
    p.add_argument("--model", required=True, type=Path, metavar="BUNDLE")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one (default 50051)")
    p.add_argument("--metrics-host", default=None, help="address of the metrics endpoint (default: --host)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus port; 0 picks, -1 disables")
    p.add_argument("--max-batch-samples", type=_positive_int, default=256,
                   help="most samples in one forward pass; concurrent requests are gathered up to it, or up to the "
                        "smallest batch the device scores about as fast per sample, measured at start-up (default "
                        "256; 1024 or more on a GPU)")
    p.add_argument("--fixed-batch", dest="tune_batch", action="store_false",
                   help="batch up to --max-batch-samples as given, without measuring at start-up")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="longest a request waits for others to share its forward pass (default 2)")
    p.add_argument("--max-queue-samples", type=_positive_int, default=4096,
                   help="samples waiting at most; beyond it new requests get RESOURCE_EXHAUSTED at once (default 4096)")
    p.add_argument("--max-queue-wait-ms", type=float, default=5000.0,
                   help="refuse new requests (RESOURCE_EXHAUSTED) while the queue holds more than this much "
                        "scoring time; 0 turns it off (default 5000; set it to your latency target)")
    p.add_argument("--max-request-samples", type=_positive_int, default=4096,
                   help="most samples in one request (default 4096)")
    p.add_argument("--max-message-mb", type=_positive_int, default=64,
                   help="largest gRPC message received or sent, MiB (default 64)")
    p.add_argument("--max-stream-requests", type=int, default=1_000_000,
                   help="requests per ScoreStream before it is ended with RESOURCE_EXHAUSTED; 0: no limit")
    p.add_argument("--no-batching", action="store_true", help="one request per forward pass (benchmarks)")
    p.add_argument("--grace-s", type=float, default=20.0, help="SIGTERM: time in-flight requests get to finish")
    p.add_argument("--ready-file", type=Path, metavar="FILE",
                   help="write JSON here once SERVING (pid, grpc and metrics addresses, model version, device); "
                        "removed at exit: for scripts and harnesses that start the server")
    p.add_argument("--drift-window", type=_positive_int, default=1000, metavar="SAMPLES",
                   help="drift tests (detector_drift_p_value) run on the primary score's p-values of the last this "
                        "many samples (default 1000; at least 30)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    p.add_argument("--auth-token-file", metavar="FILE",
                   help="require 'authorization: Bearer <token>' metadata; also $DETECTOR_AUTH_TOKEN")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="network precision on CUDA (autocast); the CPU always scores in fp32")
    _add_device(p)


def _audit_command(sub) -> None:
    p = sub.add_parser("audit", help="score a whole dataset: per-sample table, weights, summary, HTML report")
    p.add_argument("--model", required=True, type=Path, metavar="BUNDLE")
    p.add_argument("--data", required=True, metavar="SPEC")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--chunk-size", type=_positive_int, default=8192, help="samples per resumable chunk")
    p.add_argument("--batch-size", type=_positive_int, default=1024)
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="per-sample table format")
    _add_diagnostics(p)
    _add_device(p)


def _health_command(sub) -> None:
    p = sub.add_parser("health", help="exit 0 if a server reports SERVING on grpc.health.v1 (container probes)")
    p.add_argument("--target", default="127.0.0.1:50051", metavar="HOST:PORT")
    p.add_argument("--service", default="detector.v1.Detector")
    p.add_argument("--timeout", type=float, default=3.0)
    _add_client_security(p, "")


def _add_client_security(p: argparse.ArgumentParser, prefix: str) -> None:
    """The client side of `detector serve`'s --tls-cert/--tls-key/--tls-client-ca/--auth-token-file."""
    p.add_argument("--tls-ca", metavar="PEM", help=f"{prefix}connect over TLS, trusting this CA certificate")
    p.add_argument("--tls-cert", metavar="PEM", help=f"{prefix}present this client certificate (mutual TLS, for a "
                                                     "server started with --tls-client-ca; needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")
    p.add_argument("--auth-token-file", metavar="FILE",
                   help=f"{prefix}send 'authorization: Bearer <token>'; also $DETECTOR_AUTH_TOKEN")


def _add_diagnostics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--diagnostics", type=lambda v: [n for n in v.split(",") if n], default=[], metavar="NAMES",
                   help="costlier scores to add, comma-separated: iw_nll (K-sample likelihood bound), complexity "
                        "(JPEG 2000 code length, one CPU encode per sample); by default neither is computed")


def _health(args: argparse.Namespace) -> int:
    import grpc

    from detector.client import health_status, open_channel

    security = _client_security(args)
    with open_channel(args.target, security["credentials"]) as channel:
        try:
            status = health_status(channel, args.service, args.timeout, security["metadata"])
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}", file=sys.stderr)
            return 1
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


def _audit(args: argparse.Namespace) -> int:
    from detector.audit.runner import run_audit

    summary = run_audit(args.model, args.data, args.out, args.chunk_size, args.batch_size, args.device, args.format,
                        progress=not args.quiet, diagnostics=args.diagnostics)
    if summary:
        print(f"audited {summary['n_samples']} samples: {summary['novelty_rate']['novelty']:.2%} novel, "
              f"{summary['resample_rate']:.2%} flagged for resampling; report: {args.out / 'report.html'}")
    return 0


def _auth_token(args: argparse.Namespace) -> str | None:
    import os

    if args.auth_token_file:
        from detector.serving.grpc.security import read_secret

        return read_secret(args.auth_token_file, "auth token file").decode().strip()
    return os.environ.get("DETECTOR_AUTH_TOKEN") or None


def _client_security(args: argparse.Namespace) -> dict:
    """TLS credentials and bearer-token metadata for a client, from --tls-ca, --tls-cert, --tls-key and
    --auth-token-file."""
    from detector.serving.grpc.security import client_credentials

    token = _auth_token(args)
    return {"credentials": client_credentials(args.tls_ca, args.tls_cert, args.tls_key),
            "metadata": (("authorization", f"Bearer {token}"),) if token else ()}


def serve(args: argparse.Namespace, wrap=None) -> int:
    """`detector serve`; ``wrap`` (benchmarks: a no-op scorer for the transport ceiling) replaces the Scorer with
    wrap(scorer), the rest of the server unchanged."""
    import asyncio
    import logging

    from detector.config import ServeConfig
    from detector.scoring.scorer import Scorer
    from detector.serving.grpc.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ServeConfig(host=args.host, port=args.port, metrics_host=args.metrics_host or args.host,
                      metrics_port=args.metrics_port, device=args.device, max_batch_samples=args.max_batch_samples,
                      tune_batch=args.tune_batch,
                      max_delay_ms=args.max_delay_ms, max_queue_samples=args.max_queue_samples,
                      max_queue_wait_ms=args.max_queue_wait_ms, max_stream_requests=args.max_stream_requests,
                      max_request_samples=args.max_request_samples, max_message_bytes=args.max_message_mb << 20,
                      batching=not args.no_batching, grace_s=args.grace_s, drift_window_samples=args.drift_window,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                      auth_token=_auth_token(args))
    scorer = Scorer.from_path(args.model, device=args.device, precision=args.precision)
    if wrap is not None:
        scorer = wrap(scorer)
    try:
        asyncio.run(serve_forever(scorer, cfg, args.model, args.ready_file))
    except OSError as exc:
        raise DetectorError(f"cannot serve: {exc}") from None
    return 0


def _train(args: argparse.Namespace) -> int:
    from detector.config import load_settings
    from detector.data import load_spec
    from detector.training.pipeline import train_bundle

    settings = load_settings(args.config)
    for key in ("epochs", "seed", "device"):
        if getattr(args, key) is not None and (key != "device" or args.device != "auto"):
            setattr(settings.train, key, getattr(args, key))
    if args.fpr is not None:
        settings.score.target_fpr = args.fpr
    settings.train.debias = settings.train.debias or args.debias
    samples = load_spec(args.data)
    result = train_bundle(samples, settings, args.out, resume=args.resume, progress=not args.quiet)
    if result is None:  # a torchrun rank other than 0: rank 0 reports and writes
        return 0
    for w in result.calibration_warnings:
        print(f"warning: {w}", file=sys.stderr)
    h = result.history
    print(f"wrote {args.out} (model {result.bundle.model_version}): best epoch {h.best_epoch + 1}, "
          f"val neg-ELBO {min(h.val_loss):.2f} nats, {h.samples_per_second:.0f} samples/s")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from detector.calibrate import recalibrate

    bundle, caught = recalibrate(args.model, args.data, args.fpr, args.device, progress=not args.quiet)
    for w in caught:
        print(f"warning: {w}", file=sys.stderr)
    cal = bundle.calibration
    thresholds = ", ".join(f"{k} {v['threshold']:.4g}" for k, v in cal["scores"].items())
    print(f"recalibrated {args.model} at FPR {args.fpr} on {cal['n_calibrate']} samples: {thresholds}")
    return 0


def _score(args: argparse.Namespace) -> int:
    import numpy as np

    from detector.data import load_spec
    from detector.scoring.table import check_table_path, result_columns, write_table

    if (args.model is None) == (args.server is None):
        raise DetectorError("give exactly one of --model BUNDLE or --server HOST:PORT")
    check_table_path(args.out)
    samples = load_spec(args.data)
    on_maps = None
    if args.maps is not None:
        from detector.scoring.overlay import MapWriter

        if samples.kind != "image":
            raise DetectorError(f"--maps: {args.data} holds feature vectors; anomaly maps are for images")
        writer = MapWriter(args.maps, len(str(max(len(samples) - 1, 0))))
        on_maps = lambda start, maps: writer.write(start, samples.read(start, start + len(maps)), maps)  # noqa: E731
    if args.server is not None:
        from detector.client import score_samples_remote

        result = score_samples_remote(args.server, samples, args.batch_size, progress=not args.quiet,
                                      diagnostics=args.diagnostics, on_maps=on_maps, **_client_security(args))
    else:
        from detector.scoring.scorer import Scorer

        scorer = Scorer.from_path(args.model, device=args.device)
        result = scorer.score_samples(samples, args.batch_size, progress=not args.quiet, diagnostics=args.diagnostics,
                                      on_maps=on_maps)
    write_table(result_columns(result, np.arange(len(samples)), samples.labels), args.out)
    novel = int(result.novel["novelty"].sum())
    maps = f"; anomaly maps (.npy) and overlays (.png) in {args.maps}" if args.maps is not None else ""
    print(f"wrote {len(samples)} rows to {args.out}: {novel} flagged novel ({novel / len(samples):.2%}){maps}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from detector.data import load_spec
    from detector.evaluation import evaluate_results, format_table
    from detector.scoring.scorer import Scorer

    scorer = Scorer.from_path(args.model, device=args.device)
    normal = scorer.score_samples(load_spec(args.normal), args.batch_size, progress=not args.quiet,
                                  diagnostics=args.diagnostics)
    anomalous = scorer.score_samples(load_spec(args.anomalous), args.batch_size, progress=not args.quiet,
                                     diagnostics=args.diagnostics)
    report = evaluate_results(normal, anomalous)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


COMMANDS = {"train": _train, "calibrate": _calibrate, "score": _score, "evaluate": _evaluate, "serve": serve, "audit": _audit, "health": _health}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    try:
        return COMMANDS[args.command](args)
    except DetectorError as exc:
        print(f"detector {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"detector {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
