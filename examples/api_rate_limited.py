"""Call a rate-limited API from many workers: rate limit, Retry-After, retry, breaker, DLQ, replay.

The script starts its own small "records API" on 127.0.0.1: it admits 20
requests/s (a token bucket; beyond that it answers ``429`` with ``Retry-After``),
fails 10% of requests with ``500``, and can be switched "down" (``503``).

1. Four workers share ONE ``RateLimit``, set 20% above the API's limit on
   purpose: the few 429s say ``Retry-After: 1``, which pauses the limit for every
   worker, and the retry policy waits that long, so no 429 ends in the DLQ.
2. The API goes down in the middle of a second batch: the circuit breaker opens
   after 3 failures and the rest are dead-lettered (``circuit_open``) unsent.
3. The API is back: a replay recovers every dead-lettered record.

Run: python examples/api_rate_limited.py
"""

from __future__ import annotations

import math
import random
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from amorsize import (
    CircuitBreaker,
    DeadLetterQueue,
    DLQPolicy,
    RateLimit,
    RetryPolicy,
    execute,
    replay_failed_items,
)

API_RATE = 20  # requests per second the API admits
API_BURST = 5  # requests it admits at once after a quiet spell
STATE: dict[str, Any] = {"tokens": float(API_BURST), "at": time.monotonic(), "down": False, "seen": Counter()}
LOCK = threading.Lock()


class RecordsAPI(BaseHTTPRequestHandler):
    """GET /records/<id>: 200 with a body, 429 + Retry-After, 500 at random, 503 when down."""

    def do_GET(self) -> None:
        with LOCK:
            now = time.monotonic()
            STATE["tokens"] = min(API_BURST, STATE["tokens"] + (now - STATE["at"]) * API_RATE)
            STATE["at"] = now
            if STATE["down"]:
                status = 503
            elif STATE["tokens"] < 1:
                status = 429
            else:
                STATE["tokens"] -= 1
                status = 500 if random.random() < 0.1 else 200
            STATE["seen"][status] += 1
        body = f"record {self.path.rsplit('/', 1)[-1]}".encode() if status == 200 else b"error"
        self.send_response(status)
        if status == 429:  # whole seconds until a token is back, at least 1
            self.send_header("Retry-After", str(max(1, math.ceil((1 - STATE["tokens"]) / API_RATE))))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def fetch_record(url: str) -> str:
    """The worker function: GET a record; an HTTPError carries the Retry-After header."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.read().decode()


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordsAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/records"
    limit = RateLimit(int(API_RATE * 1.2))  # 20% too high, on purpose
    retry = RetryPolicy(max_retries=6, initial_delay=0.05, max_delay=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        dlq = DeadLetterQueue(DLQPolicy(directory=tmp))

        # 1. One limit for all four workers; 429s and 500s are retried.
        urls = [f"{base}/{i}" for i in range(60)]  # 3 s at the API's rate
        begin = time.monotonic()
        out = execute(fetch_record, urls, n_jobs=4, chunksize=2, rate_limit=limit, retry=retry, dlq=dlq)
        seen = dict(STATE["seen"])
        print(f"batch 1: {sum(map(bool, out))}/60 records in {time.monotonic() - begin:.1f}s; "
              f"API answered {seen}; DLQ: {len(dlq)} entries")
        assert len(dlq) == 0, "every 429 and 500 should have been retried"

        # 2. The API goes down half-way through batch 2: the breaker stops the calls.
        #    (One worker, at the API's own rate: a 429 here would count as a failure.)
        def flaky(url: str) -> str:
            if url.endswith("/130"):
                STATE["down"] = True  # in-process run below: this is the API's state
            return fetch_record(url)

        breaker = CircuitBreaker(failure_threshold=3, reset_timeout=3600)
        urls = [f"{base}/{i}" for i in range(100, 160)]
        polite = RateLimit(API_RATE)
        quick = RetryPolicy(max_retries=2, initial_delay=0.05)  # a random 500 passes, a 503 stays
        execute(flaky, urls, backend="in_process", rate_limit=polite, retry=quick,
                circuit_breaker=breaker, dlq=dlq)
        polite.close()
        reasons = Counter(e.reason for e in dlq.get_entries())
        print(f"batch 2: API went down; DLQ: {dict(reasons)}")
        assert reasons["exception"] >= 3 and reasons["circuit_open"] > 0

        # 3. Back up: replay every dead-lettered record through the same limit.
        STATE["down"] = False
        # The entries were recorded for the run's own function; the fix is another one.
        recovered, still_failed = replay_failed_items(dlq, limit(fetch_record), retry=retry,
                                                      function=None)
        print(f"replay: {len(recovered)} recovered, {len(still_failed)} still failing; "
              f"DLQ now {len(dlq)}")
        assert not still_failed and len(dlq) == 0
        dlq.close()
    server.shutdown()
    server.server_close()
    limit.close()


if __name__ == "__main__":
    main()
