"""Start and stop Triton Inference Server (the binary bundled in ``nvidia-pytriton``) on a repository.

:class:`TritonServing` writes the ``toma_pipeline`` repository (:mod:`toma_export.serving.repository`),
then starts Triton through PyTriton's launcher with that repository (KServe v2 HTTP and gRPC, Prometheus
metrics). The pipeline runs in Triton's Python backend (:mod:`toma_export.serving.backend`), not through
PyTriton's proxy: the Python backend answers each request of a dynamic batch on its own (a malformed
one gets its own 400 while the others are served), sees cancelled requests, and is the same model the
exported repository deploys on the stock Triton container.

Two things this machine needed, done here so a fresh machine needs nothing:

- The Python-backend stub links ``libpython3.X.so``; the loader must find the *running*
  interpreter's own library (``sysconfig.get_config_var("LIBDIR")``) before any system one, or a
  system Python of another patch release is loaded against this standard library
  (``AttributeError: '_thread.RLock' object has no attribute '_recursion_count'``): LIBDIR goes first
  on the server's ``LD_LIBRARY_PATH``.
- The stub imports torch, diffusers and toma_export: PyTriton puts this environment's ``bin`` first on
  ``PATH`` (the stub's interpreter finds the venv from it) and this package's root goes on
  ``PYTHONPATH``.

HTTP clients reach Triton through :mod:`toma_export.serving.front` on the public port (JSON
requests checked first, so malformed ones get 400 with the contract's message); Triton's own HTTP
server listens on 127.0.0.1 only. gRPC and metrics are Triton's, on their ports.

Shutdown (SIGTERM/SIGINT to ``toma-export serve``, or :meth:`stop`): Triton stops accepting requests,
waits up to ``exit_timeout_s`` for in-flight ones to finish, then exits; the launcher kills it if it
does not. Nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from toma_export.errors import ToMAError
from toma_export.serving.contract import DEFAULT_MAX_STEPS, MAX_PROMPT_BYTES, MODEL_NAME

__all__ = ["ServeOptions", "TritonServing", "server_environment", "validate_source"]


@dataclass
class ServeOptions:
    source: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_ms: float = 20.0
    max_queue_size: int = 64
    instances: int = 1
    max_steps: int = DEFAULT_MAX_STEPS
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    height: int = 64
    width: int = 64
    ratio: float = 0.5
    exit_timeout_s: int = 20
    ready_timeout_s: float = 300.0
    warmup_steps: int = 2
    verbose: bool = False


@contextlib.contextmanager
def server_environment() -> Iterator[None]:
    """``os.environ`` as the Triton launcher must see it (LIBDIR first on LD_LIBRARY_PATH, this package on
    PYTHONPATH), restored afterwards: the launcher copies ``os.environ`` when it starts the server."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    root = str(Path(__file__).resolve().parents[2])
    saved = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    try:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, saved["LD_LIBRARY_PATH"]) if p)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, saved["PYTHONPATH"]) if p)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def validate_source(source: str) -> tuple[str, int | None, int | None]:
    """Check what will be served before Triton starts: an artifact through the loader (its
    ``ArtifactError`` names a corrupted, half-written or mismatched artifact), a model by name/folder.
    Returns the absolute source and the artifact's resolution (None for a model)."""
    path = Path(source)
    if path.exists() and path.is_dir() and not (path / "model_index.json").exists() and not (path / "config.json").exists():
        from toma_export import __version__
        from toma_export.engines.artifact import read_manifest

        manifest = read_manifest(path, expect_version=__version__)
        return str(path.resolve()), manifest.shapes.height, manifest.shapes.width
    from toma_export.models.registry import EMBEDDED_MODELS

    if source in EMBEDDED_MODELS:
        return source, None, None
    if path.exists():
        return str(path.resolve()), None, None
    raise ToMAError(
        f"{source!r} is neither an artifact folder (toma-export build --out), a local diffusers folder, nor an "
        f"embedded model ({', '.join(EMBEDDED_MODELS)})."
    )


def _free_local_port() -> int:
    """A free TCP port on 127.0.0.1 (for Triton's own HTTP server behind the front)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TritonServing:
    """One Triton server process serving ``toma_pipeline``; ``start()`` returns when it is ready."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self._triton: Any = None
        self._front: Any = None
        self._repo: Path | None = None
        self._lock = threading.Lock()
        #: Triton's own HTTP port, on 127.0.0.1 only: the public port is the checking front (serving.front).
        self._triton_http_port = 0

    @property
    def http_url(self) -> str:
        return f"http://{self.options.host}:{self.options.http_port}"

    def start(self) -> "TritonServing":
        o = self.options
        source, height, width = validate_source(o.source)
        if height is not None:
            o.height, o.width = height, width or o.width
        else:  # a model served eagerly: its size and ratio, before Triton starts
            from toma_export.config import ToMAConfig
            from toma_export.engines.build import check_image_size

            check_image_size(source, o.height, o.width)
            ToMAConfig(ratio=o.ratio)
        from pytriton.triton import Triton, TritonConfig

        from toma_export.serving.repository import write_serve_repository

        self._repo = Path(tempfile.mkdtemp(prefix="toma-serve-"))
        write_serve_repository(
            self._repo, source=source, height=o.height, width=o.width, ratio=o.ratio, max_steps=o.max_steps,
            max_prompt_bytes=o.max_prompt_bytes, max_batch=o.max_batch, max_queue_delay_ms=o.max_queue_delay_ms,
            max_queue_size=o.max_queue_size, instances=o.instances, warmup_steps=o.warmup_steps)
        self._triton_http_port = _free_local_port()
        config = TritonConfig(
            model_repository=self._repo, http_address="127.0.0.1", http_port=self._triton_http_port, grpc_address=o.host,
            grpc_port=o.grpc_port, metrics_address=o.host, metrics_port=o.metrics_port, allow_metrics=True,
            allow_gpu_metrics=False, exit_timeout_secs=o.exit_timeout_s, exit_on_error=True,
            strict_readiness=True, log_verbose=0,
        )
        try:
            with server_environment():
                self._triton = Triton(config=config)
                self._triton.run()
            self._wait_ready()
            from toma_export.serving.contract import Limits
            from toma_export.serving.front import HttpFront

            self._front = HttpFront(o.host, o.http_port, ("127.0.0.1", self._triton_http_port),
                                    Limits(max_steps=o.max_steps, max_prompt_bytes=o.max_prompt_bytes)).start()
        except BaseException as err:
            logs = self.logs()
            self.stop()
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            tail = "\n".join(line for line in logs.splitlines() if "error" in line.lower())[-3000:]
            raise ToMAError(f"Triton did not become ready ({type(err).__name__}: {err}).\n{tail}") from None
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        url = f"http://127.0.0.1:{self._triton_http_port}/v2/models/{MODEL_NAME}/ready"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ToMAError("the Triton server exited while loading the model")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)  # not listening yet: poll again until the deadline
                continue
            time.sleep(0.25)
        raise ToMAError(f"model {MODEL_NAME} not ready after {self.options.ready_timeout_s:.0f} s")

    def alive(self) -> bool:
        server = getattr(self._triton, "_triton_server", None)
        return bool(server is not None and server.is_alive())

    def logs(self) -> str:
        server = getattr(self._triton, "_triton_server", None)
        return server.logs() if server is not None else ""

    def stop(self) -> None:
        """Stop Triton (in-flight requests get up to ``exit_timeout_s`` to finish) and remove the repository."""
        with self._lock:
            triton, self._triton = self._triton, None
            front, self._front = self._front, None
            repo, self._repo = self._repo, None
        if triton is not None:
            triton.stop()  # in-flight requests finish (their answers pass the front, still open)
        if front is not None:
            front.stop()
        if repo is not None:
            shutil.rmtree(repo, ignore_errors=True)

    def serve_forever(self) -> int:
        """Block until SIGTERM/SIGINT or the server dies; then stop cleanly. Returns an exit status."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.wait(1.0):
                if not self.alive():
                    return 1
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> "TritonServing":
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
