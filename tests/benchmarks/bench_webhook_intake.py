#!/usr/bin/env python
"""Benchmark of the Kommo webhook intake behind a real server, on PostgreSQL.

What it does, in one run:

1. creates (drops first) its own database, ``bench_kommo_agents`` by default, on the
   server of DATABASE_URL, migrates it, and creates a user, an agent and a Kommo
   integration;
2. starts the real web server the way a deployment would: ``uvicorn config.asgi:application``
   with 2 workers (and/or gunicorn with ``config.wsgi``), ``config.settings.production``
   with a generated SECRET_KEY and ENCRYPTION_KEYS, SECURE_SSL_REDIRECT=false;
3. drives it with ``wrk`` (50 connections by default): first the bare view ``GET /healthz``
   (with ``--async-bare`` also an ``async def`` view returning 200, served from a URLconf
   the benchmark generates, never from the project's), then ``POST /api/webhooks/crm/<key>``
   with a realistic lead-status delivery in which every request has new lead ids, so
   nothing dedupes. By default as fast as the server answers (each connection sends its
   next request when the last one is answered), where latency is mostly queueing: with 50
   connections the mean latency is 50 / throughput (Little's law), so p99 < 100 ms needs
   well over 500 answers/s. ``--rate N`` offers N requests/s instead (paced, spread over
   the connections): latency then is the server's at that load;
4. checks that no event was lost or duplicated: stored events ≥ accepted requests × events
   per request, one queued task per stored delivery, no lead id stored twice (stored
   deliveries may exceed accepted ones by the requests in flight when wrk stopped);
5. starts the django-q2 worker (``manage.py qcluster``) and measures how fast it drains
   the stored events.

The load generator runs on the same machine as the server and the database, so absolute
figures are pessimistic; compare the webhook with the bare view.

The benchmark has one integration, so after its first delivery each process finds it in
the intake's cache of integrations by key (crm/intake.py, 2 s); ``--target-cache-seconds 0``
measures every delivery looking its integration up, as with many quiet integrations.

Needs ``wrk`` (``apt-get install -y wrk``) and, for ``--server gunicorn``, gunicorn in the
venv (not a project requirement). Run from anywhere:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python tests/benchmarks/bench_webhook_intake.py --seconds 10

    # also an async bare view, uvicorn's options explicit; then 500 deliveries/s offered
    … bench_webhook_intake.py --async-bare --server-arg=--loop=uvloop --server-arg=--http=httptools
    … bench_webhook_intake.py --rate 500 --no-drain

    # three fresh servers in a row, then the range of their figures (the machine is noisy)
    … bench_webhook_intake.py --repeat 3 --no-drain
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = 31416592
GOAL_RPS, GOAL_P99_MS, GOAL_RATIO = 500, 100, 0.5

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only

WRK_SCRIPT = r"""
-- args: mode ("get" | "post"), template file, first lead id of this run, events per request
local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_no", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  mode, ok, bad, counter = args[1], 0, 0, 0
  if mode == "post" then
    local f = assert(io.open(args[2], "r"))
    template = f:read("*a")
    f:close()
    base = tonumber(args[3]) + thread_no * 1000000000
    per = tonumber(args[4])
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
end

function request()
  if mode ~= "post" then
    return wrk.format("GET")
  end
  counter = counter + 1
  local first = base + counter * per
  local body = template:gsub("__LEAD(%d+)__", function(i) return tostring(first + tonumber(i)) end)
  return wrk.format(nil, nil, nil, body)
end

PACING

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local total_ok, total_bad = 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_bad = total_bad + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"ok": %d, "bad": %d, "completed": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d}\n',
    total_ok, total_bad, summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout))
end
"""


# --rate: each wrk thread sends at fixed intervals (rate / threads a second), from a random
# start. When the server falls behind, a request waits for a free connection and wrk
# measures it from when it is sent: compare the achieved rate with the offered one.
PACED = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec; int clock_gettime(int, bench_timespec *); ]]
local clock = ffi.new("bench_timespec")
local interval_ms = 1000 * THREADS / RATE
local next_ms = nil

local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

function delay()
  local now = now_ms()
  if next_ms == nil then next_ms = now + math.random() * interval_ms end
  local wait = next_ms - now
  next_ms = next_ms + interval_ms
  if wait > 0 then return wait end
  return 0
end
"""


def wrk_script(rate: float, threads: int) -> str:
    pacing = PACED.replace("THREADS", str(threads)).replace("RATE", repr(float(rate))) if rate else ""
    return WRK_SCRIPT.replace("PACING", pacing)


# --async-bare and --target-cache-seconds: the servers run these settings, the production
# ones with a URLconf that puts the bare async view in front of the project's
BENCH_SETTINGS = """from config.settings.production import *  # noqa: F401,F403

ROOT_URLCONF = "bench_urls"
"""
BENCH_URLS = """from django.http import HttpResponse
from django.urls import include, path


async def bare_async(request):
    return HttpResponse(status=200)


urlpatterns = [path("bench/bare-async", bare_async), path("", include("config.urls"))]
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the Kommo webhook intake behind uvicorn (ASGI) and/or gunicorn (WSGI) on "
        "PostgreSQL, with wrk. DATABASE_URL must point at a PostgreSQL server; the benchmark creates its "
        "own database there.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measurement (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="concurrent senders (default 50)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="web server worker processes (default 2)")
    parser.add_argument(
        "--server",
        action="append",
        choices=["uvicorn", "gunicorn"],
        help="server(s) to measure, repeatable (default: uvicorn; gunicorn needs gunicorn in the venv)",
    )
    parser.add_argument("--events-per-request", type=int, default=1, help="lead changes per delivery (default 1)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="offer this many requests/s (paced) instead of sending as fast as the server answers",
    )
    parser.add_argument(
        "--async-bare",
        action="store_true",
        help="also measure an async def view returning 200 (from a URLconf the benchmark generates)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the server, repeatable (e.g. --server-arg=--loop=uvloop)",
    )
    parser.add_argument(
        "--target-cache-seconds",
        type=float,
        default=None,
        help="CRM_WEBHOOK_TARGET_CACHE_SECONDS of the servers (default: the project's, 2 s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each server this many times (a fresh server each time)"
    )
    parser.add_argument("--database", default="bench_kommo_agents", help="database to (re)create for the run")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the server (default INFO, as deployed)")
    parser.add_argument("--access-log", action="store_true", help="keep the server's per-request access log")
    parser.add_argument("--no-drain", action="store_true", help="skip measuring the django-q2 worker")
    parser.add_argument("--drain-timeout", type=int, default=600, help="seconds to wait for the worker (default 600)")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    return parser.parse_args(argv)


# --- database --------------------------------------------------------------------------


def bench_database_url(database_url: str, name: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path="/" + quote(name)))


def recreate_database(database_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    admin_url = bench_database_url(database_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(bench_database_url(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group this script started (the server and its workers)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            with _http.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"the server did not answer {url} within {timeout:.0f} s; its log:\n{log.read_text()[-3000:]}")


def server_command(server: str, port: int, workers: int, access_log: bool, extra: Sequence[str] = ()) -> list[str]:
    if server == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(workers), "--lifespan", "off"]
        return [*argv, *extra] if access_log else [*argv, "--no-access-log", *extra]
    argv = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}"]
    argv += ["--workers", str(workers)]
    return [*argv, "--access-logfile", "-", *extra] if access_log else [*argv, *extra]


def cpu_seconds(*, group: int | None = None, command: str | None = None) -> float:
    """User + system CPU seconds used so far by the live processes of a process group, or
    of every process with this command name (``postgres``: all its backends), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[2] is the process group; [11], [12] utime and stime (proc(5), from field 3)
        if (group is not None and int(fields[2]) == group) or (command is not None and name == command):
            total += int(fields[11]) + int(fields[12])
    return total / ticks


class CpuMeter:
    """CPU used by the server (its process group) and by PostgreSQL during a measurement."""

    def __init__(self, group: int):
        self.group = group

    def __enter__(self):
        self.server0, self.db0 = cpu_seconds(group=self.group), cpu_seconds(command="postgres")
        return self

    def __exit__(self, *exc):
        self.server = cpu_seconds(group=self.group) - self.server0
        self.db = cpu_seconds(command="postgres") - self.db0

    def per_request_ms(self, result: dict) -> dict[str, float]:
        done = max(result["completed"], 1)
        return {"server_cpu_ms": 1000 * self.server / done, "postgres_cpu_ms": 1000 * self.db / done}


# --- load ----------------------------------------------------------------------------------


def delivery_template(events: int) -> str:
    """A lead-status delivery as Kommo sends it, with __LEAD<i>__ where the lead ids go."""
    pairs: list[tuple[str, str]] = []
    for i in range(events):
        p = f"leads[status][{i}]"
        pairs += [
            (f"{p}[id]", f"__LEAD{i}__"),
            (f"{p}[name]", "Заявка с сайта"),
            (f"{p}[status_id]", "142"),
            (f"{p}[old_status_id]", "48293914"),
            (f"{p}[price]", "15000"),
            (f"{p}[responsible_user_id]", "8374811"),
            (f"{p}[last_modified]", "1717079340"),
            (f"{p}[modified_user_id]", "8374811"),
            (f"{p}[created_user_id]", "8374811"),
            (f"{p}[date_create]", "1717078512"),
            (f"{p}[pipeline_id]", "6213074"),
            (f"{p}[account_id]", str(ACCOUNT_ID)),
            (f"{p}[custom_fields][0][id]", "1033471"),
            (f"{p}[custom_fields][0][name]", "Бюджет"),
            (f"{p}[custom_fields][0][values][0][value]", "10k-20k"),
            (f"{p}[custom_fields][0][values][0][enum]", "729455"),
            (f"{p}[custom_fields][1][id]", "1033475"),
            (f"{p}[custom_fields][1][name]", "Preferred date"),
            (f"{p}[custom_fields][1][values][0]", "1717362000"),
            (f"{p}[created_at]", "1717078512"),
            (f"{p}[updated_at]", "1717079340"),
        ]
    pairs += [("account[subdomain]", "acmesales"), ("account[id]", str(ACCOUNT_ID))]
    return urlencode(pairs)


def run_wrk(url: str, args: argparse.Namespace, script: Path, lua_args: list[str], seconds: int) -> dict:
    argv = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script), url, "--", *lua_args]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line.removeprefix("BENCH_JSON "))
            result["rps"] = result["completed"] / (result["duration_us"] / 1e6)
            result["ok_rps"] = result["ok"] / (result["duration_us"] / 1e6)
            return result
    sys.exit(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


# --- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = args.server or ["uvicorn"]
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")):
        print("DATABASE_URL must point at a PostgreSQL server (the benchmark creates its own database there)")
        return 2
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk")
        return 2
    if "gunicorn" in servers:
        try:
            import gunicorn  # noqa: F401
        except ImportError:
            print("--server gunicorn needs gunicorn in this venv: .venv/bin/pip install gunicorn")
            return 2

    work = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    bench_url = bench_database_url(database_url, args.database)
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_POOL")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ENCRYPTION_KEYS": "bench:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": bench_url,
        "LOG_LEVEL": args.log_level,
        "PYTHONUNBUFFERED": "1",
    }
    # persistent connections for the worker, migrations and this process; the ASGI server
    # turns the psycopg pool on itself (config/asgi.py), gunicorn keeps persistent ones
    plain_env = env | {"DATABASE_POOL": "false"}
    server_env = env
    if args.async_bare or args.target_cache_seconds is not None:
        settings_text = BENCH_SETTINGS
        if args.target_cache_seconds is not None:
            settings_text += f"CRM_WEBHOOK_TARGET_CACHE_SECONDS = {args.target_cache_seconds!r}\n"
        (work / "bench_settings.py").write_text(settings_text)
        (work / "bench_urls.py").write_text(BENCH_URLS)
        path = os.pathsep.join(p for p in (str(work), env.get("PYTHONPATH", "")) if p)
        server_env = env | {"DJANGO_SETTINGS_MODULE": "bench_settings", "PYTHONPATH": path}

    print(f"database {args.database}: creating and migrating …", flush=True)
    recreate_database(database_url, args.database)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=plain_env, check=True)

    os.environ.update(plain_env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django_q.models import OrmQ

    from agents.models import Agent
    from crm.models import CrmEvent
    from integrations.models import Integration

    owner = get_user_model().objects.create_user(username="bench", password=secrets.token_urlsafe(12))
    agent = Agent.objects.create(owner=owner, name="Bench agent", instructions="Sell politely.")
    integration = Integration.objects.create(
        agent=agent,
        integration_type="kommo",
        config={"account_id": ACCOUNT_ID},
        credentials={"access_token": "bench-token", "refresh_token": "bench-refresh"},
    )
    webhook_path = urlsplit(integration.webhook_url).path

    script = work / "bench.lua"
    script.write_text(wrk_script(args.rate, args.wrk_threads))
    template = work / "delivery.txt"
    template.write_text(delivery_template(args.events_per_request))
    per = args.events_per_request
    print(
        f"load: wrk -t{args.wrk_threads} -c{args.connections} -d{args.seconds}s on this machine "
        f"({os.cpu_count()} cores, shared with the server and PostgreSQL); "
        f"delivery {template.stat().st_size} bytes, {per} event(s) each; "
        + (f"{args.rate:g} requests/s offered (paced)" if args.rate else "as fast as the server answers"),
        flush=True,
    )
    print(
        f"uvicorn: psycopg pool of {env.get('DATABASE_POOL_MIN_SIZE', '2')}-{env.get('DATABASE_POOL_MAX_SIZE', '10')} "
        "connections a process; gunicorn: one persistent connection a process; intake cache of integrations: "
        + (f"{args.target_cache_seconds:g} s" if args.target_cache_seconds is not None else "the project's default"),
        flush=True,
    )

    results: dict[str, dict] = {}
    failures: list[str] = []
    for run_no, server in enumerate([s for s in servers for _ in range(max(args.repeat, 1))], start=1):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = work / f"{server}.log"
        process = start(
            server_command(server, port, args.workers, args.access_log, args.server_arg),
            server_env if server == "uvicorn" else server_env | {"DATABASE_POOL": "false"},
            log,
        )
        try:
            wait_ready(f"{base}/healthz", process, log)
            first_lead = run_no * 10**12
            # warm up: imports, connections, the pool
            run_wrk(f"{base}/healthz", args, script, ["get"], 2)
            run_wrk(f"{base}{webhook_path}", args, script, ["post", str(template), str(first_lead), str(per)], 2)
            time.sleep(2)  # the requests in flight when wrk stopped finish
            events_before = CrmEvent.objects.count()
            tasks_before = OrmQ.objects.count()
            first_lead += 10**11
            with CpuMeter(process.pid) as meter:
                bare = run_wrk(f"{base}/healthz", args, script, ["get"], args.seconds)
            bare |= meter.per_request_ms(bare)
            bare_async = None
            if args.async_bare:
                run_wrk(f"{base}/bench/bare-async", args, script, ["get"], 2)
                bare_async = run_wrk(f"{base}/bench/bare-async", args, script, ["get"], args.seconds)
            with CpuMeter(process.pid) as meter:
                hook = run_wrk(
                    f"{base}{webhook_path}",
                    args,
                    script,
                    ["post", str(template), str(first_lead), str(per)],
                    args.seconds,
                )
            hook |= meter.per_request_ms(hook)
        finally:
            stop(process)
        # the server has stopped: every request it accepted has committed or rolled back
        run_events = CrmEvent.objects.filter(lead_id__gte=first_lead, lead_id__lt=first_lead + 10**11)
        stored = run_events.count()
        distinct_leads = run_events.values("lead_id").distinct().count()
        tasks = OrmQ.objects.count() - tasks_before
        stored_deliveries, remainder = divmod(stored, per)
        in_flight = stored_deliveries - hook["ok"]
        check = {
            "stored_events": stored,
            "expected_at_least": hook["ok"] * per,
            "stored_deliveries": stored_deliveries,
            "in_flight_at_stop": in_flight,
            "tasks_queued": tasks,
            "lead_ids_stored_twice": stored - distinct_leads,
            "events_of_warmup_and_run": CrmEvent.objects.count() - events_before,
        }
        problems = []
        if stored < hook["ok"] * per:
            problems.append(f"lost events: {hook['ok'] * per - stored}")
        if remainder:
            problems.append("a delivery was stored partly")
        if stored != distinct_leads:
            problems.append(f"duplicated events: {stored - distinct_leads}")
        if not 0 <= in_flight <= args.connections:
            problems.append(f"{in_flight} stored deliveries beyond the accepted ones")
        if tasks != stored_deliveries:
            problems.append(f"{tasks} tasks queued for {stored_deliveries} deliveries")
        if hook["bad"] or hook["connect_errors"] or hook["read_errors"] or hook["timeouts"]:
            problems.append(
                f"{hook['bad']} non-200 answers, {hook['connect_errors']} connect / {hook['read_errors']} read "
                f"errors, {hook['timeouts']} timeouts"
            )
        errors_logged = sum(1 for line in log.read_text(errors="replace").splitlines() if " ERROR " in line)
        result = {"bare": bare, "webhook": hook, "check": check, "errors_logged": errors_logged}
        if bare_async:
            result["bare_async"] = bare_async
        results.setdefault(server, []).append(result)
        failures += [f"{server}: {p}" for p in problems]
        ratio = hook["ok_rps"] / bare["rps"] if bare["rps"] else 0
        extra = f" {' '.join(args.server_arg)}" if args.server_arg else ""
        print(f"\n== {server} ({args.workers} workers{extra}), log {log}")
        print(f"  bare GET /healthz      {bare['rps']:8.0f} req/s   p50 {ms(bare['p50_us'])}  p99 {ms(bare['p99_us'])}")
        if bare_async:
            print(
                f"  bare async view        {bare_async['rps']:8.0f} req/s   p50 {ms(bare_async['p50_us'])}  "
                f"p99 {ms(bare_async['p99_us'])}   (webhook / it: {hook['ok_rps'] / bare_async['rps']:.2f})"
            )
        print(
            f"  webhook POST           {hook['ok_rps']:8.0f} deliveries/s   p50 {ms(hook['p50_us'])}  "
            f"p99 {ms(hook['p99_us'])}  max {ms(hook['max_us'])}"
        )
        if not args.rate:
            print(f"  webhook / bare         {ratio:8.2f}")
        print(
            f"  CPU a request: server {bare['server_cpu_ms']:.2f} ms bare, {hook['server_cpu_ms']:.2f} ms webhook; "
            f"PostgreSQL {hook['postgres_cpu_ms']:.2f} ms a delivery"
        )
        print(
            f"  accepted {hook['ok']}, stored {stored} events = {stored_deliveries} deliveries "
            f"({in_flight} in flight when wrk stopped), {tasks} tasks queued, "
            f"{stored - distinct_leads} duplicated; {errors_logged} ERROR lines in the server log"
        )
        if args.rate:
            # paced: both runs were offered the same rate, so their ratio says nothing
            kept_up = hook["ok_rps"] >= 0.98 * args.rate
            goal = args.rate >= GOAL_RPS and kept_up and hook["p99_us"] / 1000 < GOAL_P99_MS
            print(
                f"  {args.rate:g} requests/s offered: {'kept up' if kept_up else 'fell behind'}, p99 "
                f"{ms(hook['p99_us'])}; ≥ {GOAL_RPS}/s with p99 < {GOAL_P99_MS} ms {'met' if goal else 'NOT met'} "
                "(the ratio to the bare view needs a run without --rate)"
            )
        else:
            goal = (
                hook["ok_rps"] >= GOAL_RPS and hook["p99_us"] / 1000 < GOAL_P99_MS and ratio >= GOAL_RATIO
            )
            print(
                f"  goal (≥ {GOAL_RPS}/s, p99 < {GOAL_P99_MS} ms, within 2× of the bare view): "
                f"{'met' if goal else 'NOT met'}"
            )
        print("  check: " + ("; ".join(problems) if problems else "no event lost or duplicated"))
        result["goal_met"] = goal

    for server, runs in results.items():
        if len(runs) > 1:
            rps = [r["webhook"]["ok_rps"] for r in runs]
            p99 = [r["webhook"]["p99_us"] / 1000 for r in runs]
            ratios = [r["webhook"]["ok_rps"] / r["bare"]["rps"] for r in runs if r["bare"]["rps"]]
            print(
                f"\n== {server}, {len(runs)} runs: {min(rps):.0f}-{max(rps):.0f} deliveries/s, p99 {min(p99):.0f}-"
                f"{max(p99):.0f} ms, webhook / bare {min(ratios):.2f}-{max(ratios):.2f}; goal met in "
                f"{sum(r['goal_met'] for r in runs)} of {len(runs)}"
            )

    if not args.no_drain:
        pending = CrmEvent.objects.filter(status=CrmEvent.Status.PENDING)
        total = pending.count()
        print(f"\n== django-q2 worker (qcluster, Q_WORKERS={env.get('Q_WORKERS', '2')}): draining {total} events …")
        log = work / "qcluster.log"
        started = time.monotonic()
        worker = start([sys.executable, "manage.py", "qcluster"], plain_env, log)
        try:
            left = total
            while left and time.monotonic() - started < args.drain_timeout:
                time.sleep(0.5)
                if worker.poll() is not None:
                    failures.append("the worker exited")
                    break
                left = pending.count()
            elapsed = time.monotonic() - started
        finally:
            stop(worker, timeout=60)
        connection.close()
        done_events = CrmEvent.objects.filter(status=CrmEvent.Status.DONE)
        span = None
        if done_events.exists():
            first = done_events.order_by("processed_at").values_list("processed_at", flat=True).first()
            last = done_events.order_by("-processed_at").values_list("processed_at", flat=True).first()
            span = (last - first).total_seconds()
        counts = {s: CrmEvent.objects.filter(status=s).count() for s in CrmEvent.Status.values}
        drain = {
            "events": total,
            "seconds_incl_startup": round(elapsed, 1),
            "processing_span_seconds": span,
            "events_per_second": round(counts["done"] / span, 1) if span else None,
            "statuses": counts,
        }
        results["drain"] = drain
        print(
            f"  {counts['done']} done, {counts['failed']} failed, {counts['pending']} pending after {elapsed:.1f} s "
            f"(incl. start-up); processing rate {drain['events_per_second']} events/s; log {log}"
        )
        if counts["pending"] or counts["failed"]:
            failures.append(f"worker: {counts['pending']} pending, {counts['failed']} failed")

    connection.close()
    if not args.keep_database:
        drop_database(database_url, args.database)
    print("\nBENCH_RESULT " + json.dumps(results, default=str))
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
