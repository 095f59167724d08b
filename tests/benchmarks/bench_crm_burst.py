#!/usr/bin/env python
"""Benchmark: a burst of lead updates to one Kommo account through the shared rate limiter.

A small fake Kommo (ThreadingHTTPServer on 127.0.0.1) answers ``PATCH /api/v4/leads/<id>``
like Kommo does, after ``--latency`` ms, and answers 429 to any request that makes more than
``--allowance`` (7) arrive within one second (a sliding window, stricter than a calendar
second). Several workers (threads, or processes with ``--processes``) then send ``--updates``
``KommoClient.update_lead`` calls between them, each worker with its own client, all through
``integrations.ratelimit`` on one key: the database variant by default (a fresh SQLite
file, or ``--database-url``), Redis with ``--redis`` (REDIS_URL, or ``--redis-url``).

Printed: total time, achieved updates per second against the allowance (goal ≥ 90 %), the
count of 429 answers (goal 0), and the most requests that arrived within any one second.
The exit status is 1 when a goal is missed.

    .venv/bin/python tests/benchmarks/bench_crm_burst.py
    .venv/bin/python tests/benchmarks/bench_crm_burst.py --processes --workers 2
    .venv/bin/python tests/benchmarks/bench_crm_burst.py --redis-url redis://127.0.0.1:6379/3
    .venv/bin/python tests/benchmarks/bench_crm_burst.py \\
        --database-url postgres://postgres@127.0.0.1:5432/kommo_agents_c
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOAL_SHARE = 0.90
TOKEN = "bench-access-token"


# --- The fake Kommo -----------------------------------------------------------------------


class FakeKommo(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, allowance: int, latency: float) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.allowance, self.latency = allowance, latency
        self.lock = threading.Lock()
        self.arrivals: list[float] = []  # every request, refused ones too: Kommo counts them
        self.refused = self.accepted = self.unauthorized = 0

    def admit(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.arrivals.append(now)
            recent = len(self.arrivals) - bisect.bisect_right(self.arrivals, now - 1.0)
            if recent > self.allowance:
                self.refused += 1
                return False
            self.accepted += 1
            return True


class Handler(BaseHTTPRequestHandler):
    server: FakeKommo
    protocol_version = "HTTP/1.1"  # keep-alive, as with the real API

    def do_PATCH(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = re.fullmatch(r"/api/v4/leads/(\d+)", self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            with self.server.lock:
                self.server.unauthorized += 1
            return self.answer(401, {"title": "Unauthorized", "status": 401})
        if not match or not isinstance(json.loads(body or b"null"), dict):
            return self.answer(400, {"title": "Bad Request", "status": 400})
        if not self.server.admit():
            return self.answer(429, {"title": "Too Many Requests", "status": 429}, {"Retry-After": "1"})
        time.sleep(self.server.latency)
        lead_id = int(match[1])
        self.answer(200, {"id": lead_id, "updated_at": int(time.time()), "_links": {"self": {"href": self.path}}})

    def answer(self, status: int, data: dict, headers: dict | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/hal+json" if status < 400 else "application/problem+json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # quiet
        pass


def max_in_one_second(times: list[float]) -> int:
    ordered, best, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] < t - 1.0:  # a window of one second, both ends included
            start += 1
        best = max(best, end - start + 1)
    return best


# --- Workers -----------------------------------------------------------------------------


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def send_updates(base_url: str, key: str, per_second: float, lead_ids: list[int]) -> list[str]:
    """One worker: its own client, the shared limiter; returns the errors it met."""
    from django.db import connection

    from crm.client import KommoClient, LeadUpdate
    from integrations import ratelimit
    from integrations.errors import IntegrationError

    client = KommoClient(base_url, TOKEN, acquire=ratelimit.limiter(key, per_second))
    errors = []
    try:
        for n, lead_id in enumerate(lead_ids):
            try:
                client.update_lead(lead_id, LeadUpdate(price=1000 + n, tags_to_add=["burst"]))
            except IntegrationError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
    return errors


def process_worker(env, base_url, key, per_second, lead_ids, start, results) -> None:
    """One worker process: set up Django, wait for the others (start-up is not timed), send."""
    setup_django(env)
    from integrations import ratelimit

    ratelimit.reserve(f"warm-up:{key}", 1000)  # connect to the store before the start
    start.wait()
    results.put(send_updates(base_url, key, per_second, lead_ids))


def prepare_database() -> str:
    """Create the RateSlot table when this database has none; describe the database."""
    from django.db import connection

    from integrations.models import RateSlot

    if RateSlot._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(RateSlot)
    name = connection.settings_dict["NAME"]
    connection.close()
    return f"{connection.vendor} {name}"


# --- Main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--processes", action="store_true", help="workers are processes (default: threads)")
    parser.add_argument("--allowance", type=int, default=7, help="requests per second the fake Kommo accepts")
    parser.add_argument("--rate", type=float, default=None, help="the limiter's rate (default: --allowance)")
    parser.add_argument("--latency", type=float, default=50, help="the fake Kommo's answer time, ms")
    parser.add_argument("--redis", action="store_true", help="the Redis variant, on REDIS_URL")
    parser.add_argument("--redis-url", help="the Redis variant, on this server")
    parser.add_argument("--database-url", help="the database variant on this database (default: a new SQLite file)")
    args = parser.parse_args()

    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    scratch = tempfile.TemporaryDirectory(prefix="bench-crm-")
    env["DATABASE_URL"] = args.database_url or f"sqlite:///{Path(scratch.name) / 'bench.sqlite3'}"
    redis_url = args.redis_url or (os.environ.get("REDIS_URL", "") if args.redis else "")
    if args.redis and not redis_url:
        parser.error("--redis needs REDIS_URL (or --redis-url)")
    env["REDIS_URL"] = redis_url
    setup_django(env)
    store = f"redis {redis_url}" if redis_url else f"database: {prepare_database()}"

    rate = args.rate or args.allowance
    server = FakeKommo(args.allowance, args.latency / 1000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    key = f"kommo:bench-{uuid.uuid4().hex[:8]}"
    shares = [list(range(18425309 + w, 18425309 + args.updates, args.workers)) for w in range(args.workers)]

    print(
        f"store: {store}\nworkers: {args.workers} {'processes' if args.processes else 'threads'}, "
        f"{args.updates} lead updates, limiter {rate:g}/s, fake Kommo allows {args.allowance}/s, "
        f"answers in {args.latency:g} ms"
    )
    if args.processes:
        context = multiprocessing.get_context("spawn")
        start, queue = context.Barrier(args.workers + 1), context.Queue()
        workers = [
            context.Process(target=process_worker, args=(env, base_url, key, rate, share, start, queue))
            for share in shares
        ]
        for worker in workers:
            worker.start()
        start.wait(timeout=120)
        started = time.monotonic()
        results = [queue.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
    else:
        started = time.monotonic()
        results = [[] for _ in shares]

        def run(n: int) -> None:
            results[n] = send_updates(base_url, key, rate, shares[n])

        threads = [threading.Thread(target=run, args=(n,)) for n in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - started
    server.shutdown()

    errors = [error for result in results for error in result]
    done = args.updates - len(errors)
    achieved = done / elapsed
    share = achieved / args.allowance
    arrivals = server.arrivals
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    window = max_in_one_second(arrivals)
    print(f"total time: {elapsed:.2f} s")
    print(
        f"achieved: {achieved:.2f} updates/s = {share:.1%} of the {args.allowance}/s allowance "
        f"(goal >= {GOAL_SHARE:.0%}); requests arrived at {(len(arrivals) - 1) / span if span else 0:.2f}/s"
    )
    print(f"429 answers: {server.refused} (goal 0); requests: {len(arrivals)}, updates done: {done}")
    print(f"most requests in any 1-second window: {window} (allowed {args.allowance})")
    for error in errors[:5]:
        print(f"error: {error}")
    met = share >= GOAL_SHARE and server.refused == 0 and not errors and not server.unauthorized
    print("goals: met" if met else "goals: NOT met")
    scratch.cleanup()
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
