"""Load test of the served pipeline (``toma_pipeline``) with tritonclient: latency percentiles and images/s.

Rows: sequential single requests (the baseline: one client, one request at a time), then concurrency
1, 4 and 16 (that many client threads, each sending requests back to back; Triton's dynamic batcher
groups what is queued together). Every run is bounded by --requests and --timeout.

Against a running server::

    python scripts/load_test.py --url 127.0.0.1:8000

Or let it start one (``toma-export serve`` on 127.0.0.1, free ports) and stop it at the end::

    python scripts/load_test.py --serve sdxl-tiny --steps 2 --max-batch 16 --max-queue-delay-ms 20

Prints a Markdown table (and --json writes the numbers).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _inputs(http: Any, prompt: str, seed: int, steps: int) -> list[Any]:
    out = []
    for name, arr, dt in (("prompt", np.array([[prompt.encode()]], dtype=object), "BYTES"),
                          ("seed", np.array([[seed]], np.int64), "INT64"),
                          ("steps", np.array([[steps]], np.int32), "INT32")):
        i = http.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def run_level(url: str, concurrency: int, requests: int, steps: int, timeout: float) -> dict[str, Any]:
    """``requests`` requests from ``concurrency`` threads, each back to back; latencies of the successful ones."""
    import tritonclient.http as http

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout

    def worker() -> None:
        client = http.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    client.infer("toma_pipeline", _inputs(http, f"load test prompt {i}", i, steps))
                except Exception as err:  # noqa: BLE001 - counted and reported
                    errors.append(str(err)[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result(timeout=timeout + 60)
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "wall_s": wall,
            "p50_ms": pct(50) * 1e3, "p95_ms": pct(95) * 1e3, "p99_ms": pct(99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
            "images_per_s": len(lat) / wall if wall > 0 else 0.0, "first_error": errors[0] if errors else ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="host:port of a running server's HTTP endpoint")
    ap.add_argument("--serve", metavar="ARTIFACT_OR_MODEL", help="start a server on this (127.0.0.1, free ports)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    ap.add_argument("--sequential-requests", type=int, default=16)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue-delay-ms", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on each level, seconds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if bool(args.url) == bool(args.serve):
        ap.error("give exactly one of --url and --serve")

    server = None
    if args.serve:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from toma_export.serving.server import ServeOptions, TritonServing

        server = TritonServing(ServeOptions(
            args.serve, http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port(),
            max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms, max_queue_size=256,
            warmup_steps=args.steps)).start()
        url = f"127.0.0.1:{server.options.http_port}"
    else:
        url = args.url
    try:
        run_level(url, 1, 4, args.steps, args.timeout)  # warm the client path and the model
        rows = [dict(run_level(url, 1, args.sequential_requests, args.steps, args.timeout), mode="sequential")]
        for c in (int(x) for x in args.levels.split(",")):
            rows.append(dict(run_level(url, c, args.requests, args.steps, args.timeout), mode=f"concurrency {c}"))
    finally:
        if server is not None:
            server.stop()
    base = rows[0]["images_per_s"]
    print(f"\n| mode | requests | errors | p50 ms | p95 ms | p99 ms | images/s | vs sequential |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
