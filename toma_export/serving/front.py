"""The HTTP front of ``toma-export serve``: KServe v2 JSON requests checked before Triton parses them.

Triton 2.51's HTTP server parses a JSON inference request itself before any model code runs, and
answers what it cannot parse with HTTP 500 (unparsable JSON, a list, no ``inputs``, a string or a
float in an INT field, a seed above 2**63, ``shape`` disagreeing with ``data``) or converts it
silently (``steps`` 2**32 + 2 becomes INT32 2). So the public HTTP port is this small front: a JSON
``POST /v2/models/toma_pipeline[/versions/N]/infer`` is checked with the contract's own parser
(:func:`toma_export.serving.contract.parse_json_request`, every value range-checked before
conversion) and refused with HTTP 400 and the contract's message, or passed on unchanged to Triton,
which listens on 127.0.0.1 only. Everything else (health, metadata, metrics-free paths, binary-tensor
requests, other models) passes through as it is; gRPC and metrics go to Triton directly. The model
checks every request again (:func:`~toma_export.serving.contract.parse_rows`), so nothing depends
on the front for correctness, only for the status code and the wording.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from toma_export.serving.contract import MAX_REQUEST_BYTES, MODEL_NAME, Limits, RequestError, parse_json_request

__all__ = ["HttpFront"]

_INFER = re.compile(rf"^/v2/models/{MODEL_NAME}(/versions/[0-9]+)?/infer/?(\?.*)?$")
#: Headers that describe one hop, not the message (RFC 9110 7.6.1); not copied across the front.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "content-length"}
#: Largest body passed through unread by the front (binary-tensor requests of other sizes).
MAX_FORWARD_BYTES = 256 << 20
#: Seconds the front waits for Triton's answer (a generation of --max-steps steps fits well inside).
UPSTREAM_TIMEOUT_S = 900.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for k, v in headers or [("Content-Type", "application/json")]:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _body(self) -> bytes | None:
        """The request body (Content-Length or chunked), None after answering a body that is too large."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if total > MAX_FORWARD_BYTES:
                    self.close_connection = True
                    self._error(413, f"request body over {MAX_FORWARD_BYTES} bytes")
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORWARD_BYTES:
            self.close_connection = True
            self._error(413, f"request body of {length} bytes is over {MAX_FORWARD_BYTES} bytes")
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _relay(self) -> None:
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self._error(400, "the request body could not be read (malformed Content-Length or chunked encoding)")
            return
        if body is None:
            return
        json_infer = (self.command == "POST" and _INFER.match(self.path)
                      and "inference-header-content-length" not in {k.lower() for k in self.headers})
        if json_infer:
            try:
                if len(body) > MAX_REQUEST_BYTES:
                    raise RequestError(f"the JSON request body is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}.")
                parse_json_request(body, self.server.limits)
            except RequestError as err:
                self._error(400, str(err))
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        try:
            status, out_headers, data = self._forward(body, headers)
        except (OSError, http.client.HTTPException) as err:
            self._error(503, f"the inference server is not answering ({type(err).__name__}); retry shortly.")
            return
        self._send(status, data, [(k, v) for k, v in out_headers if k.lower() not in _HOP])

    def _forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """This request to Triton, on a keep-alive connection of this client connection (a new one if
        Triton closed it)."""
        for attempt in (0, 1):
            conn: http.client.HTTPConnection | None = getattr(self, "_upstream", None)
            if conn is None:
                host, port = self.server.upstream
                conn = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT_S)
                self._upstream: http.client.HTTPConnection | None = conn
            try:
                conn.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT") else None,
                             headers=headers)
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def finish(self) -> None:
        super().finish()
        conn = getattr(self, "_upstream", None)
        if conn is not None:
            conn.close()

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _relay  # noqa: N815 - http.server's naming


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    #: Listen backlog. socketserver's default of 5 let a burst of simultaneous clients (more than the
    #: model's batch and queue, which Triton should refuse with 503) see some connections reset instead.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int], limits: Limits):
        super().__init__(address, _Handler)
        self.upstream, self.limits = upstream, limits


class HttpFront:
    """The public HTTP port: checks JSON inference requests, passes everything on to ``upstream``."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int], limits: Limits):
        self._server = _Server((host, port), upstream, limits)
        self._thread = threading.Thread(target=self._server.serve_forever, name="toma-http-front", daemon=True)

    def start(self) -> "HttpFront":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
