"""A gate in front of a real upstream registry: it passes requests on, counts them, and on
demand answers 429 or 500 itself or slows blob bodies, as Docker Hub does on a bad day."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

PIECE = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up mid-answer: no traceback


class Gate:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream  # http://HOST:PORT
        self.mode = "pass"  # or "429", "500"
        self.blob_delay = 0.0  # seconds before a blob body starts
        self.blob_pace = 0.0  # seconds between 64 KiB pieces of a blob body
        self.blob_redirect = ""  # base URL (another gate: a CDN) that blob GETs are sent to with 307
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of what it passed on
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60)
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                gate._handle(self)

            do_HEAD = do_GET

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str, fragment: str) -> int:
        """Requests passed on and answered (401 challenges, part of every token flow, aside)."""
        with self._lock:
            return sum(
                1 for m, path, status in self.requests if m == method and fragment in path and status != 401
            )

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.authorizations.append(handler.headers.get("authorization"))
        if self.blob_redirect and "/blobs/" in handler.path and handler.command == "GET":
            handler.send_response(307)
            handler.send_header("Location", f"{self.blob_redirect}{handler.path}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if self.mode in ("429", "500") and handler.path.startswith("/v2/"):
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
            handler.send_response(int(self.mode))
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body if handler.command == "GET" else b"")
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        request = self._http.build_request(handler.command, f"{self.upstream}{handler.path}", headers=headers)
        answer = self._http.send(request, stream=True)
        with self._lock:
            self.requests.append((handler.command, handler.path, answer.status_code))
        try:
            if "/blobs/" in handler.path and handler.command == "GET" and answer.status_code == 200:
                time.sleep(self.blob_delay)
            handler.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    handler.send_header(key, value)
            length = answer.headers.get("content-length")
            body = b"" if length is not None or handler.command == "HEAD" else answer.read()
            handler.send_header("Content-Length", length if length is not None else str(len(body)))
            handler.end_headers()
            if handler.command == "HEAD":
                return
            if length is None:
                handler.wfile.write(body)
                return
            for chunk in answer.iter_raw(PIECE if self.blob_pace else None):
                handler.wfile.write(chunk)
                if self.blob_pace and "/blobs/" in handler.path:
                    handler.wfile.flush()
                    time.sleep(self.blob_pace)
        finally:
            answer.close()

    def __enter__(self) -> Gate:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()
