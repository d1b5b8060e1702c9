"""The served pipeline on a real Triton Inference Server (bundled in nvidia-pytriton), 127.0.0.1 only.

One server (sdxl-tiny, 64x64, eager ToMA) for the module; every loop bounded in count and time; the
server is stopped at the end and no tritonserver process is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("pytriton")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

from toma_export.serving.contract import GenerationRequest  # noqa: E402
from toma_export.serving.server import ServeOptions, TritonServing  # noqa: E402

MAX_STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opts(**kw: Any) -> ServeOptions:
    base = dict(source="sdxl-tiny", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                max_batch=4, max_queue_delay_ms=30.0, max_queue_size=8, max_steps=MAX_STEPS, exit_timeout_s=10,
                ready_timeout_s=180, warmup_steps=1)
    base.update(kw)
    return ServeOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServing]:
    s = TritonServing(_opts()).start()
    try:
        yield s
    finally:
        s.stop()
        assert not s.alive()


@pytest.fixture(scope="module")
def reference() -> Any:
    """In-process solo results: the same pipeline source, one request per call."""
    from toma_export.serving.pipeline import generator_for_source

    gen = generator_for_source("sdxl-tiny", height=64, width=64)
    cache: dict[GenerationRequest, np.ndarray] = {}

    def solo(r: GenerationRequest) -> np.ndarray:
        if r not in cache:
            cache[r] = gen.generate([r])[0]
        return cache[r]

    return solo


def _inputs(module: Any, r: GenerationRequest) -> list[Any]:
    arrays = [("prompt", np.array([[r.prompt.encode()]], dtype=object), "BYTES"),
              ("seed", np.array([[r.seed]], np.int64), "INT64"),
              ("steps", np.array([[r.steps]], np.int32), "INT32"),
              ("guidance_scale", np.array([[r.guidance_scale]], np.float32), "FP32")]
    if r.negative_prompt is not None:
        arrays.append(("negative_prompt", np.array([[r.negative_prompt.encode()]], dtype=object), "BYTES"))
    out = []
    for name, arr, dt in arrays:
        i = module.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def infer(server: TritonServing, r: GenerationRequest, *, grpc: bool = False) -> np.ndarray:
    o = server.options
    if grpc:
        with grpcclient.InferenceServerClient(f"{o.host}:{o.grpc_port}") as c:
            return c.infer("toma_pipeline", _inputs(grpcclient, r), client_timeout=60).as_numpy("image")[0]
    c = httpclient.InferenceServerClient(f"{o.host}:{o.http_port}", network_timeout=60, connection_timeout=60)
    try:
        return c.infer("toma_pipeline", _inputs(httpclient, r)).as_numpy("image")[0]
    finally:
        c.close()


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    """uint8 images: equal up to a rounding flip of values that differ by ~1e-6 before quantisation
    (the float contract, <= 1e-3, is tested in-process in test_serving_contract.py)."""
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())


def _post(server: TritonServing, body: dict[str, Any], timeout: float = 60) -> tuple[int, str]:
    return _post_raw(server, json.dumps(body).encode(), timeout)


def _body(**over: Any) -> dict[str, Any]:
    """A JSON request: prompt "a cat", seed 1, steps 2; ``name=value`` sets a value, ``name=None`` drops the
    input, ``name={...}`` replaces the whole input."""
    values: dict[str, Any] = {"prompt": "a cat", "seed": 1, "steps": 2}
    types = {"prompt": "BYTES", "seed": "INT64", "steps": "INT32"}
    inputs = []
    for name in ("prompt", "seed", "steps"):
        v = over.get(name, values[name])
        if v is None:
            continue
        inputs.append(v if isinstance(v, dict) else {"name": name, "shape": [1, 1], "datatype": types[name], "data": [v]})
    return {"inputs": inputs}


def test_health_and_metrics(server: TritonServing) -> None:
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{server.http_url}/v2/models/toma_pipeline/config", timeout=10) as r:
        cfg = json.loads(r.read())
    assert cfg["max_batch_size"] == 4 and cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 8
    o = server.options
    with urllib.request.urlopen(f"http://{o.host}:{o.metrics_port}/metrics", timeout=10) as r:
        assert b"nv_inference_count" in r.read()


def test_concurrent_requests_equal_solo(server: TritonServing, reference: Any) -> None:
    reqs = [GenerationRequest(f"prompt number {i}", 10 + i, 2, 5.0 if i % 3 else 1.0,
                              "ugly" if i == 4 else None) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda ir: infer(server, ir[1], grpc=ir[0] % 2 == 1), enumerate(reqs), timeout=120))
    for r, image in zip(reqs, got):
        assert_same_image(image, reference(r))
    assert len({g.tobytes() for g in got}) == len(got)  # every request got its own image


def test_a_b_a_nothing_leaks(server: TritonServing, reference: Any) -> None:
    a = GenerationRequest("a lighthouse at dusk", 5, 3, 5.0)
    b = GenerationRequest("a bowl of soup", 6, 3, 5.0)
    first, _, again = infer(server, a), infer(server, b), infer(server, a)
    assert np.array_equal(first, again)
    assert_same_image(first, reference(a))


def _post_raw(server: TritonServing, data: bytes, timeout: float = 60) -> tuple[int, str]:
    req = urllib.request.Request(f"{server.http_url}/v2/models/toma_pipeline/infer", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize("data, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON list"),
    (b"{}", 'no \\"inputs\\" list'),
    (b"", "the request body is empty"),
    (json.dumps(_body(seed="seven")).encode(), "not an integer"),
    (json.dumps(_body(steps=2.5)).encode(), "not an integer"),
    (json.dumps(_body(seed=2**63 + 5)).encode(), "outside the INT64 range"),
    (json.dumps(_body(steps=2**32 + 2)).encode(), "outside the INT32 range"),  # not wrapped to 2 and served
    (json.dumps(_body(steps={"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [1, 2]})).encode(),
     "but 2 value(s)"),
])
def test_what_triton_cannot_parse_gets_400_with_the_contracts_message(server: TritonServing, data: bytes,
                                                                      fragment: str) -> None:
    """Triton 2.51 answers these with 500 (or serves a wrapped INT32): the HTTP front checks the JSON first."""
    status, text = _post_raw(server, data)
    assert status == 400, (status, text)
    assert fragment in text and "error" in json.loads(text), text
    assert _post(server, _body(steps=1))[0] == 200


@pytest.mark.parametrize("body, fragment", [
    (_body(prompt=None), "prompt"),                                                    # missing input
    (_body(seed={"name": "seed", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}), "seed"),  # wrong dtype
    (_body(steps={"name": "steps", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}), "steps"),  # wrong shape
    (_body(steps=0), "steps=0"),
    (_body(steps=MAX_STEPS + 1), f"steps={MAX_STEPS + 1}"),
    (_body(prompt=""), "prompt is empty"),
    (_body(prompt="x" * 3000), "limit is 2048"),
    (_body(seed={"name": "seed", "shape": [1, 1], "datatype": "BYTES", "data": ["7"]}), "seed"),  # seed as text
])
def test_malformed_requests_get_400_and_server_keeps_serving(server: TritonServing, body: dict[str, Any],
                                                             fragment: str) -> None:
    status, text = _post(server, body)
    assert 400 <= status < 500, (status, text)
    assert fragment in text, text
    status, _ = _post(server, _body(steps=1))
    assert status == 200


def test_bad_request_in_a_batch_does_not_fail_the_others(server: TritonServing, reference: Any) -> None:
    good = GenerationRequest("good neighbour", 77, 2, 5.0)
    with ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(_post, server, _body(steps=0)) for _ in range(2)]
        ok = pool.submit(infer, server, good)
        assert all(f.result(timeout=60)[0] == 400 for f in bad)
        assert_same_image(ok.result(timeout=60), reference(good))


def test_queue_limit_rejects_quickly(server: TritonServing) -> None:
    """24 simultaneous requests against max_batch 4 + queue 8: the excess is refused at once (503,
    'maximum queue size'), the rest are served; nothing hangs."""
    start = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda i: _post(server, _body(seed=i, steps=3), timeout=120), range(24),
                                timeout=150))
    codes = [c for c, _ in results]
    rejected = [t for c, t in results if c != 200]
    assert codes.count(200) >= 4 and rejected, codes
    assert all(c == 503 for c in codes if c != 200), codes
    assert all("queue" in t.lower() for t in rejected), rejected[:1]
    assert time.monotonic() - start < 150
    assert _post(server, _body(steps=1))[0] == 200


def test_client_disconnect_mid_generation_leaves_server_healthy(server: TritonServing, reference: Any) -> None:
    o = server.options
    payload = json.dumps(_body(seed=3, steps=4)).encode()
    for _ in range(2):
        with socket.create_connection((o.host, o.http_port), timeout=10) as s:
            s.sendall(b"POST /v2/models/toma_pipeline/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            time.sleep(0.2)  # generation under way; then the client goes away
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=30) as r:
        assert r.status == 200
    nxt = GenerationRequest("after the hang-up", 9, 2, 5.0)
    assert_same_image(infer(server, nxt), reference(nxt))


def test_refuses_to_start_on_corrupted_or_half_written_artifact(tmp_path: Path) -> None:
    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    (corrupted / "manifest.json").write_text("{not json")
    half = tmp_path / "half"
    half.mkdir()
    (half / "select.onnx").write_bytes(b"\0" * 16)
    for folder in (corrupted, half):
        proc = subprocess.run([sys.executable, "-m", "toma_export.cli", "serve", str(folder), "--port",
                               str(free_port())], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "toma-export: error:" in proc.stderr and str(folder) in proc.stderr, proc.stderr
        assert "manifest" in proc.stderr


def _tritonservers() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "tritonserver"], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_leaves_nothing(tmp_path: Path) -> None:
    before = _tritonservers()
    port = free_port()
    cmd = [sys.executable, "-m", "toma_export.cli", "serve", "sdxl-tiny", "--port", str(port), "--grpc-port",
           str(free_port()), "--metrics-port", str(free_port()), "--max-steps", "20", "--exit-timeout", "30"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            pytest.fail("server not ready")
        fake = TritonServing(_opts(http_port=port))
        results: list[tuple[int, str]] = []
        t = threading.Thread(target=lambda: results.append(_post(fake, _body(steps=20), timeout=90)))
        t.start()
        time.sleep(1.0)  # the request is being generated
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=90)
        assert not t.is_alive()
        status, text = results[0]
        assert status == 200 and "image" in text  # finished, not cut off
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
    deadline = time.monotonic() + 30
    while _tritonservers() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_tritonservers() - before)
