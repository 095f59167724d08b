"""What the benchmark scripts share: figures (percentiles, CPU from /proc), a throwaway
database, Django set up the way the worker is, ``manage.py worker`` in its own process
group, other processes (servers), and the plumbing of the fake vendor servers.

Not a test module (pytest collects ``test_*.py`` only): the scripts import it as
``common``, their own directory being first on ``sys.path`` when they run.
"""
from __future__ import annotations

import bisect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
ALLOWANCE = 7  # Kommo: requests a second per account
RESPONSIBLE = 8374811  # a Kommo user id the fake deliveries name
PROTECTED_DATABASES = ("kommo_agents", "test_kommo_agents")

# loopback only: a proxy from the environment must not see the scripts' own requests
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- figures -------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def show(
    name: str, s: dict[str, float], *, unit: str = "ms", width: int = 52, places: int = 6, extra: str = ""
) -> None:
    """One line: ``name`` and the p50 / p95 / p99 / max of a ``summary``."""
    if not s.get("n"):
        print(f"  {name:{width}} (none)")
        return
    print(
        f"  {name:{width}} p50 {s['p50']:{places}.2f}  p95 {s['p95']:{places}.2f}  p99 {s['p99']:{places}.2f}  "
        f"max {s['max']:7.2f} {unit}" + (f"   {extra}" if extra else ""),
        flush=True,
    )


def process_cpu(*, group: int | None = None, cmdline: str | None = None) -> dict[int, float]:
    """User + system CPU seconds so far, by pid, of the processes of a process group, or
    of every process whose command line contains ``cmdline`` (a PostgreSQL backend's
    title names its database), from /proc. A process's own time and that of the children
    it has waited for: django-q2 replaces its worker process every 500 tasks, and the
    sentinel that waits for it inherits its CPU time."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if cmdline is not None:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
                if cmdline not in title or "autovacuum" in title:  # the backends serving queries
                    continue
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[2] is the process group; [11]-[14] utime, stime, cutime, cstime (proc(5), from field 3)
        if group is None or int(fields[2]) == group:
            found[int(entry.name)] = sum(int(f) for f in fields[11:15]) / ticks
    return found


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds so far of the processes of a process group, from /proc:
    those alive and the children they have reaped (django-q2 recycles its workers)."""
    return sum(process_cpu(group=group).values())


def database_stats() -> tuple[float, int] | None:
    """PostgreSQL's time executing statements in this database so far, and its committed
    transactions (other databases on the server, other projects' tests, do not count);
    None on SQLite."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT active_time, xact_commit FROM pg_stat_database WHERE datname = current_database()")
        active, commits = cursor.fetchone()
        return active / 1000, commits


# --- the database --------------------------------------------------------------------------


def prepare_database(
    database_url: str, *, scratch_prefix: str, default_name: str | None = None
) -> tuple[str, str | None, Callable[[], None]]:
    """The URL to use, the PostgreSQL database's name (None on SQLite) and a function that
    drops it afterwards. Without ``database_url``: a new SQLite file in a scratch
    directory. With one: a database on that server, dropped and created again, whose name
    must contain "bench"; another name is refused, or replaced by ``default_name``."""
    if not database_url:
        scratch = tempfile.mkdtemp(prefix=scratch_prefix)
        path = Path(scratch) / "bench.sqlite3"
        return f"sqlite:///{path}", None, lambda: shutil.rmtree(scratch, ignore_errors=True)
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit("DATABASE_URL: PostgreSQL only (without it the benchmark uses a new SQLite file)")
    name = parts.path.lstrip("/")
    if "bench" not in name or name in PROTECTED_DATABASES:
        if default_name is None:
            sys.exit(f"DATABASE_URL names database {name!r}: the benchmark drops it, so its name must contain 'bench'")
        name = default_name  # the server of DATABASE_URL, a database of our own
    create_database(database_url, name)
    url = urlunsplit(parts._replace(path="/" + quote(name)))
    return url, name, lambda: drop_database(database_url, name)


def _admin_url(database_url: str) -> str:
    return urlunsplit(urlsplit(database_url)._replace(path="/postgres"))


def create_database(database_url: str, name: str) -> None:
    """Drop (if there) and create database ``name`` on the server of ``database_url``."""
    import psycopg
    from psycopg import sql

    if "bench" not in name or name in PROTECTED_DATABASES:
        raise ValueError(f"refusing to re-create {name!r}: a benchmark's database has 'bench' in its name")
    drop_database(database_url, name)
    with psycopg.connect(_admin_url(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    if "bench" not in name or name in PROTECTED_DATABASES:
        raise ValueError(f"refusing to drop {name!r}: a benchmark's database has 'bench' in its name")
    with psycopg.connect(_admin_url(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def check_redis_url(redis_url: str) -> None:
    """Benchmarks keep out of Redis database 0 (the project's, and other people's)."""
    if not redis_url:
        return
    parts = urlsplit(redis_url)
    number = parts.path.lstrip("/") or "0"
    if number == "0":
        sys.exit(f"REDIS_URL {redis_url}: use a database of its own for benchmarks (e.g. redis://127.0.0.1:6379/8)")


# --- Django and the worker -----------------------------------------------------------------


def worker_env(
    *,
    database_url: str,
    redis_url: str,
    workers: int,
    log_level: str,
    settings_module: str = "config.settings.local",
    pythonpath: Sequence[str] = (),
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the processes a benchmark starts (and of its own Django):
    DEBUG off (it keeps every query in memory), no psycopg pool (it stalls django-q2's
    forked workers), loopback requests never through a proxy."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_POOL",)}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*pythonpath, os.environ.get("PYTHONPATH", "")]))
    env |= {
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DEBUG": "false",
        "DATABASE_URL": database_url,
        "DATABASE_POOL": "false",
        "REDIS_URL": redis_url,
        "Q_WORKERS": str(workers),
        **(extra or {}),
        "LOG_LEVEL": log_level,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def setup_django(env: dict[str, str], paths: Sequence[str] = ()) -> None:
    """Django in this process, on the benchmark's database; its own log: warnings only."""
    os.environ.update(env | {"LOG_LEVEL": "WARNING"})  # this process: the figures only
    sys.path[:0] = [str(ROOT), *paths]
    import django

    django.setup()


class Worker:
    """``manage.py worker`` (or ``argv``) in its own process group, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path, argv: Sequence[str] = ("manage.py", "worker")) -> None:
        self.log = log
        self.handle = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_size(self) -> int:
        self.handle.flush()
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the cluster, its workers, all at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.handle.close()

    def stop(self) -> None:
        stop_group(self.process, 60)
        self.handle.close()


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group of ``process`` (started with start_new_session), then
    SIGKILL when it has not ended after ``timeout`` seconds."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    # the group may outlive its leader (a forked child): nothing of it stays behind
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_process(argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in its own group, cwd the project, output to ``log``."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            list(argv), cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http_ok(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers 200; exits with the process's log when it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args[1:4]} exited ({process.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            with http.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"nothing answered {url} within {timeout:.0f} s; the log:\n{log.read_text()[-3000:]}")


# --- fake vendor servers -------------------------------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """A threaded fake vendor on 127.0.0.1 that counts what it did: ``done`` by
    operation, ``seen`` by whatever key a script records (to find a thing done twice),
    and every request's arrival per Kommo account, to answer 429 to one that would make
    more than ALLOWANCE in any second of that account, as Kommo does."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.next_id = 10_000_000
        self.done: Counter[str] = Counter()  # operation → requests answered 200
        self.seen: Counter[tuple] = Counter()  # a script's key of the thing done → times done
        self.arrivals: dict[int, list[float]] = {}  # Kommo account → arrival times, refused ones too
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def admit(self, account: int) -> bool:
        with self.lock:
            now = time.monotonic()
            times = self.arrivals.setdefault(account, [])
            times.append(now)
            if len(times) - bisect.bisect_left(times, now - 1.0) > ALLOWANCE:
                self.refused += 1
                return False
            return True

    def count(self, operation: str, key: tuple) -> int:
        """Count one thing done; a new id for it."""
        with self.lock:
            self.done[operation] += 1
            self.seen[key] += 1
            self.next_id += 1
            return self.next_id

    def reset(self) -> None:
        with self.lock:
            self.done.clear()
            self.seen.clear()
            self.arrivals.clear()
            self.refused = 0

    def densest_second(self) -> tuple[int | None, list[float]]:
        """The account with the most arrivals within one second, and those arrivals (seconds
        after the first of them): what a second over the allowance looked like."""
        best: tuple[int | None, list[float]] = (None, [])
        with self.lock:
            for account, times in self.arrivals.items():
                ordered = sorted(times)
                start = 0
                for end, t in enumerate(ordered):
                    while ordered[start] < t - 1.0:
                        start += 1
                    if end - start + 1 > len(best[1]):
                        best = (account, [x - ordered[start] for x in ordered[start : end + 1]])
        return best

    def most_in_one_second(self) -> int:
        best = 0
        with self.lock:
            for times in self.arrivals.values():
                ordered = sorted(times)
                start = 0
                for end, t in enumerate(ordered):
                    while ordered[start] < t - 1.0:
                        start += 1
                    best = max(best, end - start + 1)
        return best


class JsonHandler(BaseHTTPRequestHandler):
    """JSON in and out, keep-alive, quiet."""

    server: FakeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as with the real APIs

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body for the client's delayed ACK (~40 ms a call), which no real API costs
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet
        pass

    def content_type(self, status: int) -> str:
        return "application/json"

    def _body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(raw or b"null")

    def _answer(self, status: int, data, headers: dict | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.content_type(status))
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _kommo_admitted(self, account: int, token: str) -> bool:
        """The bearer token checked, then the account's allowance; answers 401 / 429 when not."""
        if self.headers.get("Authorization") != f"Bearer {token}":
            self._answer(401, {"title": "Unauthorized", "status": 401})
            return False
        if not self.server.admit(account):
            self._answer(429, {"title": "Too Many Requests", "status": 429}, {"Retry-After": "1"})
            return False
        return True


# --- webhook deliveries --------------------------------------------------------------------


def lead_status_delivery(
    lead_id: int,
    *,
    name: str,
    pipeline_id: int,
    status_id: int,
    old_status_id: int,
    price: int,
    modified: int,
    account_id: int,
) -> bytes:
    """A Kommo "leads[status]" delivery of one lead's move, form-encoded as Kommo posts it."""
    p = "leads[status][0]"
    pairs = [
        (f"{p}[id]", str(lead_id)),
        (f"{p}[name]", name),
        (f"{p}[status_id]", str(status_id)),
        (f"{p}[old_status_id]", str(old_status_id)),
        (f"{p}[pipeline_id]", str(pipeline_id)),
        (f"{p}[price]", str(price)),
        (f"{p}[responsible_user_id]", str(RESPONSIBLE)),
        (f"{p}[last_modified]", str(modified)),
        (f"{p}[modified_user_id]", str(RESPONSIBLE)),
        (f"{p}[created_user_id]", str(RESPONSIBLE)),
        (f"{p}[date_create]", str(modified - 86400)),
        (f"{p}[account_id]", str(account_id)),
        ("account[subdomain]", "acmesales"),
        ("account[id]", str(account_id)),
    ]
    return urlencode(pairs).encode()
