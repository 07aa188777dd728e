"""A rate-limited HTTP service on 127.0.0.1 for the pacing tests and benchmarks/bench_pacing.py.

It behaves like the APIs users throttle for: a token bucket of ``rate`` requests
per second holding at most ``burst`` tokens; a request finding no token gets
``429`` with ``Retry-After`` (whole seconds, or an HTTP date); a ``error_share`` of
the admitted requests get ``500`` at random; every answer comes after ``latency``
seconds. It records each request (arrival, departure, status) on the
``time.monotonic`` clock, which on Linux every process on the machine shares, so a
test can compare server arrivals with its workers' timestamps.

    with HTTPService(rate=50, burst=5) as service:
        urllib.request.urlopen(service.url + "/item/1")
        service.max_in_window(1.0)   # most arrivals in any 1-second window
"""

from __future__ import annotations

import math
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: on a loaded machine the accept loop falls
    # behind 30 concurrent clients, the kernel drops their SYNs, and they retry a second
    # later, so a test of concurrency would measure the backlog instead.
    request_queue_size = 128


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    arrival: float
    departure: float
    status: int


class HTTPService:
    """A ThreadingHTTPServer with a token bucket; a context manager that starts and stops it."""

    def __init__(
        self,
        rate: float = 50.0,
        burst: int = 5,
        *,
        error_share: float = 0.0,
        latency: float = 0.0,
        retry_after: str = "seconds",
        seed: int = 0,
    ) -> None:
        assert retry_after in ("seconds", "date")
        self.rate, self.burst = float(rate), int(burst)
        self.error_share, self.latency, self.retry_after = error_share, latency, retry_after
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self.hits: list[Hit] = []
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HTTPService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> HTTPService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the policy -------------------------------------------------------------------

    def admit(self) -> tuple[int, float]:
        """Take a token: (200, 0) or (500, 0) if admitted, else (429, seconds until a token)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1.0:
                return 429, (1.0 - self._tokens) / self.rate
            self._tokens -= 1.0
            return (500 if self._random.random() < self.error_share else 200), 0.0

    def retry_after_header(self, wait: float) -> str:
        """Retry-After for a wait: whole seconds (RFC 9110, rounded up) or an HTTP date."""
        if self.retry_after == "date":
            return formatdate(time.time() + max(1.0, wait), usegmt=True)
        return str(max(1, math.ceil(wait)))

    def record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    # --- what the tests read ----------------------------------------------------------

    def statuses(self) -> dict[int, int]:
        """How many answers of each status were sent."""
        with self._lock:
            hits = list(self.hits)
        counts: dict[int, int] = {}
        for hit in hits:
            counts[hit.status] = counts.get(hit.status, 0) + 1
        return counts

    def arrivals(self, status: int | None = None) -> list[float]:
        """Sorted arrival times (of one status, or all)."""
        with self._lock:
            return sorted(h.arrival for h in self.hits if status is None or h.status == status)

    def per_second(self) -> list[int]:
        """Arrivals in each whole second since the first request."""
        times = self.arrivals()
        if not times:
            return []
        counts = [0] * (int(times[-1] - times[0]) + 1)
        for t in times:
            counts[int(t - times[0])] += 1
        return counts

    def max_in_window(self, window: float, status: int | None = None) -> int:
        """The most arrivals in any half-open window of ``window`` seconds (sliding)."""
        return max_in_window(self.arrivals(status), window)

    def max_in_flight(self) -> int:
        """The most requests the server was handling at the same moment."""
        with self._lock:
            spans = [(h.arrival, h.departure) for h in self.hits]
        return max_overlap(spans)


def max_in_window(times: list[float], window: float) -> int:
    """The most of the sorted ``times`` in any half-open interval ``[t, t + window)``."""
    best, low = 0, 0
    for high, t in enumerate(times):
        while t - times[low] >= window:
            low += 1
        best = max(best, high - low + 1)
    return best


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most ``(start, end)`` intervals open at one moment (an end before a start at a tie)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def _handler_for(service: HTTPService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            arrival = time.monotonic()
            status, wait = service.admit()
            if service.latency:
                time.sleep(service.latency)
            body = b"ok" if status == 200 else b"error"
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", service.retry_after_header(wait))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            service.record(Hit(arrival, time.monotonic(), status))

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: thousands of requests per test

    return Handler


#: No proxy from the environment: the service is on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, timeout: float = 10.0) -> bytes:
    """GET ``url``; the body, or ``urllib.error.HTTPError`` (headers included) for a 4xx/5xx."""
    with _OPENER.open(url, timeout=timeout) as response:
        return bytes(response.read())


def get(url: str, timeout: float = 10.0) -> int:
    """GET ``url``; the status code (an HTTPError's too), raising nothing else."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
