"""``serve`` / ``export-triton``: the pipeline on Triton Inference Server.

The work is done by :mod:`toma_export.serving` (imported when a command runs, so building the parser
loads no torch).
"""

from __future__ import annotations

import argparse
from typing import Any

from toma_export.cli.argtypes import int_in, nonneg_float, path_arg


_positive_int = int_in(1, 2**31, "value", "8")
_port = int_in(1, 65536, "port", "--port 8000")
_nonneg_float = nonneg_float("value", "20")
_side = int_in(1, 4097, "image side", "64")


def _batching_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch", type=_positive_int, default=8, help="images per dynamic batch (default 8)")
    p.add_argument("--max-queue-delay-ms", type=_nonneg_float, default=20.0,
                   help="how long the dynamic batcher waits to fill a batch (default 20 ms)")
    p.add_argument("--max-queue-size", type=_positive_int, default=64,
                   help="requests queued beyond this are rejected at once (HTTP 503), not held (default 64)")
    p.add_argument("--instances", type=_positive_int, default=1, help="pipeline model instances (default 1)")
    p.add_argument("--max-steps", type=_positive_int, default=50,
                   help="largest 'steps' a request may ask for; more gets a 400 (default 50)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from toma_export.serving.server import ServeOptions, TritonServing

    options = ServeOptions(
        source=args.source, host=args.host, http_port=args.port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, instances=args.instances, max_steps=args.max_steps,
        height=args.height, width=args.width, ratio=args.ratio, exit_timeout_s=args.exit_timeout,
    )
    server = TritonServing(options).start()
    o = server.options
    print(f"serving toma_pipeline ({o.height}x{o.width}) from {o.source}: HTTP {server.http_url}, "
          f"gRPC {o.host}:{o.grpc_port}, metrics http://{o.host}:{o.metrics_port}/metrics, "
          f"ready {server.http_url}/v2/health/ready", flush=True)
    return server.serve_forever()


def _cmd_export(args: argparse.Namespace) -> int:
    from toma_export.serving.repository import export_triton

    out = export_triton(args.artifact, args.out, max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                        max_queue_size=args.max_queue_size, instances=args.instances, max_steps=args.max_steps)
    print(f"wrote Triton model repository {out} (toma_pipeline + denoiser models); "
          f"run: tritonserver --model-repository {out}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the text-to-image pipeline on Triton Inference Server (KServe v2)",
                       description="Serve model 'toma_pipeline' over KServe v2 HTTP and gRPC with dynamic batching, "
                                   "health (/v2/health/ready) and Prometheus metrics. SIGTERM stops it cleanly.")
    p.add_argument("source", metavar="ARTIFACT_OR_MODEL", type=path_arg("ARTIFACT_OR_MODEL", "sdxl-tiny"),
                   help="an artifact folder (toma-export build --out) or a model (embedded name, e.g. sdxl-tiny)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=_port, default=8002, help="Prometheus metrics port (default 8002)")
    _batching_options(p)
    p.add_argument("--height", type=_side, default=64,
                   help="image height for a model, a multiple of 8 (16 for Flux) up to 4096 (artifacts: theirs)")
    p.add_argument("--width", type=_side, default=64, help="image width for a model, as --height (artifacts: theirs)")
    p.add_argument("--ratio", type=nonneg_float("--ratio", "--ratio 0.5"), default=0.5, help="ToMA ratio for a model served eagerly (default 0.5)")
    p.add_argument("--exit-timeout", type=_positive_int, default=20,
                   help="seconds in-flight requests get to finish on SIGTERM (default 20)")
    p.set_defaults(handler=_cmd_serve)

    e = sub.add_parser("export-triton", help="write a Triton model repository for an artifact (stock Triton container)",
                       description="Denoiser variants as ONNX Runtime backend models, the pipeline as a Python-backend "
                                   "model calling them through BLS, config.pbtxt with dynamic batching and instance groups.")
    e.add_argument("artifact", metavar="ARTIFACT", type=path_arg("ARTIFACT", "engines/out/sdxl"), help="an ONNX Runtime artifact folder (toma-export build --out)")
    e.add_argument("--out", required=True, type=path_arg("--out", "triton-repo"),
                   help="repository folder to create (must not exist)")
    _batching_options(e)
    e.set_defaults(handler=_cmd_export)
