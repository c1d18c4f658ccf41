"""A fault-injecting HTTP proxy in front of a real server: it forwards requests to moto's S3 (or a Ray
dashboard), and answers a share of them as a failing S3 would: 503 SlowDown, 500 InternalError, or a
connection dropped before any answer; it can also hold each request a while, as a distant store's latency
does. moto itself has neither."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOW_DOWN = "slow_down"
INTERNAL_ERROR = "internal_error"
DROP = "drop"
FAULTS = (SLOW_DOWN, INTERNAL_ERROR, DROP)
ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
              "<RequestId>fault-proxy</RequestId></Error>")


class FaultyProxy:
    """``every``: one request in this many fails (0: none), the faults taking turns; ``fail_all``: every
    request fails (a store down for longer than any retry budget); ``delay``: a function of the request that
    says how many seconds to hold it first (slow reads keep a run's stages busy, slow uploads make its
    writes easy to catch running); ``refuse``: a function of
    the request that may return ``(status, body)`` to answer instead of forwarding it. ``injected`` counts
    the faults given; ``most_in_flight`` is the most requests it held at once (`reset_in_flight` starts
    counting again)."""

    def __init__(self, upstream: str, *, every: int = 0) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.every = every
        self.fail_all = False
        self.delay: Callable[[BaseHTTPRequestHandler], float] = lambda request: 0.0
        self.refuse: Callable[[BaseHTTPRequestHandler], tuple[int, str] | None] = lambda request: None
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._requests = itertools.count(1)
        self._faults = itertools.cycle(FAULTS)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_fault(self) -> str | None:
        with self._lock:
            number = next(self._requests)
            if self.fail_all or (self.every and number % self.every == 0):
                fault = next(self._faults)
                self.injected[fault] += 1
                return fault
            self.forwarded += 1
            return None

    def reset_in_flight(self) -> None:
        with self._lock:
            self.most_in_flight = self.in_flight

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._handle(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = _read_body(request)
        time.sleep(self.delay(request))
        refusal = self.refuse(request)
        if refusal is not None:
            self._answer(request, refusal[0], refusal[1].encode(), "text/plain")
            return
        fault = self._next_fault()
        if fault == DROP:
            request.close_connection = True
            request.connection.shutdown(2)  # no answer at all: the client sees the connection end
            return
        if fault is not None:
            status, code = (503, "SlowDown") if fault == SLOW_DOWN else (500, "InternalError")
            self._answer(request, status, ERROR_BODY.format(code=code, message=f"injected {code}").encode(),
                         "application/xml")
            return
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
            if body or request.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            request.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server",
                                       "date"):
                    request.send_header(key, value)
            # A HEAD answer carries the object's length, not its own (it has no body).
            length = response.getheader("Content-Length") if request.command == "HEAD" else None
            request.send_header("Content-Length", length or str(len(payload)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(payload)
        finally:
            upstream.close()


    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, payload: bytes, content_type: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)


def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    """The request's body, whole: by its Content-Length, or chunk by chunk (the AWS SDK uploads parts chunked)."""
    if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
        body = b""
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while request.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return body
            body += request.rfile.read(size)
            request.rfile.readline()  # the CRLF after each chunk
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""
