#!/usr/bin/env python
"""Scale-out: two ASGI servers and two django-q2 clusters on one PostgreSQL and Redis.

What it does, in one run:

1. creates its own database on the PostgreSQL server of ``--database-url`` (default
   DATABASE_URL; ``kommo_agents_bench_scale`` unless the URL names a database with
   "bench" in its name), dropped and created again and dropped at the end, and uses
   Redis ``--redis-url`` (database 8 by default, never 0) for the rate limiter, the cache
   and the channel layer, under a key prefix of this run;
2. creates ``--accounts`` (20) agents, each with its own Kommo integration (its own
   account at a local fake Kommo and its own webhook key) and one trigger: a lead won →
   create a task and add a note (2 CRM requests an event). The fake Kommo runs in a
   thread of this script, counts every request per account over a sliding second and
   answers 429 to an 8th, as Kommo does, and records every task and note by (account,
   lead, text), so a thing done twice shows;
3. for each topology — two servers and two workers, then one of each — starts the
   servers the way ``manage.py serve`` does (``uvicorn config.asgi:application``, one
   process each, the psycopg pool on) and the workers (``manage.py worker``, Q_WORKERS
   ``--q-workers`` (2) each), then:
   - **spread**: ``--deliveries`` (2,000) lead-won deliveries, one lead each, round-robin
     over the accounts, POSTed to ``/api/webhooks/crm/<key>`` by ``--senders`` (8)
     threads per server, the servers taking turns; every ``--redeliver-every``-th (10th)
     delivery is sent again to the other server (with one server: to it again), as
     Kommo does when an answer is late. It waits until every event is done;
   - **one account**: ``--hot-deliveries`` (100) deliveries for a single account, fed the
     same way: its 7 requests a second are the limit, and two clusters must share it;
4. reports deliveries/s accepted, events/s end to end (first delivery received → last
   event done) and while draining, actions/s, the CPU of servers and workers, and
   checks: every delivery stored once (a redelivery is not a second event), every event
   done, one firing and two actions done per event, no task or note made twice, no 429,
   at most 7 requests to one account in any second.

The exit status is 1 when a check fails. The load generator, both servers, both workers,
PostgreSQL and Redis share this machine's cores: with 2 cores, two of everything adds
processes, not CPU, so the comparison shows the cost of coordination (the shared queue,
the shared limiter, row claims), not the gain of a second machine.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kommo_agents_bench_scale \\
        .venv/bin/python tests/benchmarks/bench_scale_out.py
    … bench_scale_out.py --deliveries 500 --hot-deliveries 50        # a quicker one
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    ALLOWANCE,
    RESPONSIBLE,
    FakeServer,
    JsonHandler,
    Worker,
    check_redis_url,
    cpu_seconds,
    free_port,
    lead_status_delivery,
    percentile,
    prepare_database,
    setup_django,
    start_process,
    stop_group,
    wait_http_ok,
    worker_env,
)

DEFAULT_DATABASE = "kommo_agents_bench_scale"
TOKEN = "bench-scale-token"
ACCOUNT_ID = 31416592
PIPELINE, FIRST_STAGE, WON = 7320001, 62000001, 142

# --- the fake Kommo ------------------------------------------------------------------------


class FakeKommo(FakeServer):
    """Tasks and notes for many accounts (account n at ``/acct<n>``): counts each by
    (operation, account, lead, text), and every request's arrival per account."""

    def __init__(self, latency: float) -> None:
        super().__init__(Handler)
        self.latency = latency

    def requests_per_account(self) -> Counter[int]:
        with self.lock:
            return Counter({account: len(times) for account, times in self.arrivals.items()})

    def span(self, account: int) -> float:
        with self.lock:
            times = self.arrivals.get(account) or [0.0]
            return max(times) - min(times)


TASKS = re.compile(r"/acct(\d+)/api/v4/tasks")
NOTES = re.compile(r"/acct(\d+)/api/v4/leads/(\d+)/notes")


class Handler(JsonHandler):
    server: FakeKommo

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self._body()
        if (match := TASKS.fullmatch(self.path)) and isinstance(body, list) and body:
            account, lead, text = int(match[1]), int(body[0].get("entity_id") or 0), str(body[0].get("text"))
            if self._admitted(account):
                task_id = self.server.count("create task", ("create task", account, lead, text))
                self._answer(200, {"_embedded": {"tasks": [{"id": task_id, "request_id": "0"}]}})
            return
        if (match := NOTES.fullmatch(self.path)) and isinstance(body, list) and body:
            account, lead = int(match[1]), int(match[2])
            text = str((body[0].get("params") or {}).get("text"))
            if self._admitted(account):
                note_id = self.server.count("add note", ("add note", account, lead, text))
                self._answer(200, {"_embedded": {"notes": [{"id": note_id, "entity_id": lead}]}})
            return
        self._answer(404, {"title": "Not Found", "status": 404})

    def _admitted(self, account: int) -> bool:
        if not self._kommo_admitted(account, TOKEN):
            return False
        if self.server.latency:
            time.sleep(self.server.latency)
        return True


# --- the processes -------------------------------------------------------------------------


class Topology:
    """``servers`` uvicorn processes and ``workers`` worker processes, started together."""

    def __init__(self, servers: int, workers: int, env: dict[str, str], work: Path, label: str) -> None:
        self.label = label
        self.server_env = {k: v for k, v in env.items() if k != "DATABASE_POOL"}  # config/asgi.py: the pool on
        self.servers: list[tuple[int, object, Path]] = []
        self.workers: list[Worker] = []
        try:
            for n in range(servers):
                port, log = free_port(), work / f"{label}-server-{n}.log"
                argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1"]
                argv += ["--port", str(port), "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
                process = start_process(argv, self.server_env, log)
                self.servers.append((port, process, log))
            for port, process, log in self.servers:
                wait_http_ok(f"http://127.0.0.1:{port}/healthz", process, log)
            for n in range(workers):
                self.workers.append(Worker(env, work / f"{label}-worker-{n}.log"))
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [port for port, _, _ in self.servers]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the servers and of the workers (their process groups)."""
        return (
            sum(cpu_seconds(process.pid) for _, process, _ in self.servers),
            sum(cpu_seconds(worker.pid) for worker in self.workers),
        )

    def alive(self) -> bool:
        return all(process.poll() is None for _, process, _ in self.servers) and all(w.alive() for w in self.workers)

    def error_lines(self) -> int:
        logs = [log for _, _, log in self.servers] + [worker.log for worker in self.workers]
        return sum(
            1
            for log in logs
            if log.exists()
            for line in log.read_text(errors="replace").splitlines()
            if " ERROR " in line or "Traceback" in line
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for _, process, _ in self.servers:
            stop_group(process, 20)


# --- feeding -------------------------------------------------------------------------------


def feed(ports: list[int], jobs: list[tuple[int, str, bytes]], senders: int) -> dict:
    """POST every job (server index, path, body) from ``senders`` threads per server,
    each with a keep-alive connection; the answers' statuses and latencies."""
    queues = [queue.SimpleQueue() for _ in ports]
    for job in jobs:
        queues[job[0]].put(job)
    statuses: Counter[int | str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        port = ports[index]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[tuple[int | str, float]] = []
        while True:
            try:
                _, path, body = queues[index].get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
                response = conn.getresponse()
                response.read()
                mine.append((response.status, time.perf_counter() - started))
            except (OSError, http.client.HTTPException) as exc:
                mine.append((type(exc).__name__, time.perf_counter() - started))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        with lock:
            for status, took in mine:
                statuses[status] += 1
                latencies.append(took * 1000)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(ports)) for _ in range(senders)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    return {
        "requests": len(jobs),
        "seconds": seconds,
        "statuses": dict(statuses),
        "accepted_per_second": statuses.get(200, 0) / seconds if seconds else 0.0,
        "p50_ms": percentile(latencies, 0.5) if latencies else None,
        "p99_ms": percentile(latencies, 0.99) if latencies else None,
    }


def deliveries(integrations: list, accounts: list[int], count: int, first_lead: int) -> list[tuple[int, str, bytes]]:
    """(account index, webhook path, body) of ``count`` lead-won deliveries."""
    out = []
    modified = int(time.time())
    for n in range(count):
        account = accounts[n % len(accounts)]
        lead = first_lead + n
        body = lead_status_delivery(
            lead, name=f"Lead {lead}", pipeline_id=PIPELINE, status_id=WON, old_status_id=FIRST_STAGE,
            price=15000, modified=modified, account_id=ACCOUNT_ID,
        )  # fmt: skip
        out.append((account, urlsplit(integrations[account].webhook_url).path, body))
    return out


def jobs_for(plan: list[tuple[int, str, bytes]], servers: int, redeliver_every: int) -> list[tuple[int, str, bytes]]:
    """Delivery n to server n mod servers; every ``redeliver_every``-th again to the next
    server (the same one when there is one): Kommo redelivering after a late answer."""
    jobs = []
    for n, (_, path, body) in enumerate(plan):
        jobs.append((n % servers, path, body))
        if redeliver_every and n % redeliver_every == redeliver_every - 1:
            jobs.append(((n + 1) % servers, path, body))
    return jobs


# --- a phase -------------------------------------------------------------------------------


def phase(name: str, topology: Topology, server: FakeKommo, world: dict, accounts: list[int], count: int,
          first_lead: int, args) -> dict:  # fmt: skip
    from django.db.models import Count, Max, Min

    from crm.models import CrmEvent
    from triggers.models import ActionRun, TriggerFiring

    server.reset()
    plan = deliveries(world["integrations"], accounts, count, first_lead)
    jobs = jobs_for(plan, len(topology.ports), args.redeliver_every)
    cpu0 = topology.cpu()
    fed = feed(topology.ports, jobs, args.senders)
    events = CrmEvent.objects.filter(lead_id__gte=first_lead, lead_id__lt=first_lead + count)
    started = time.monotonic()
    left = count
    while time.monotonic() - started < args.timeout and topology.alive():
        left = events.exclude(status__in=("done", "failed")).count() + max(0, count - events.count())
        if not left:
            break
        time.sleep(0.5)
    drained = time.monotonic() - started
    time.sleep(1)  # the last answers reach the fake's books
    cpu1 = topology.cpu()
    stored = events.count()
    statuses = dict(events.values_list("status").annotate(n=Count("id")).order_by())
    times = events.aggregate(
        first_in=Min("received_at"), last_done=Max("processed_at"), first_done=Min("processed_at")
    )
    end_to_end = (times["last_done"] - times["first_in"]).total_seconds() if times["last_done"] else 0.0
    draining = (times["last_done"] - times["first_done"]).total_seconds() if times["last_done"] else 0.0
    firings = TriggerFiring.objects.filter(event__in=events)
    per_event = Counter(firings.values_list("event_id", flat=True))
    runs = ActionRun.objects.filter(firing__event__in=events)
    action_status = dict(runs.values_list("status").annotate(n=Count("id")).order_by())
    action_times = runs.filter(status="done").aggregate(first=Min("claimed_at"), last=Max("finished_at"))
    action_seconds = (action_times["last"] - action_times["first"]).total_seconds() if action_times["last"] else 0.0
    done_actions = action_status.get("done", 0)
    twice = {identity: n for identity, n in server.seen.items() if n > 1}
    processed_twice = events.filter(attempts__gt=1).count()
    claimed_twice = runs.filter(attempts__gt=1).count()
    per_account = server.requests_per_account()
    problems = []
    if fed["statuses"].get(200, 0) != fed["requests"]:
        problems.append(f"answers {fed['statuses']} for {fed['requests']} requests")
    if stored != count:
        problems.append(f"{stored} events stored for {count} deliveries ({len(jobs) - count} of them redelivered)")
    if statuses.get("done", 0) != count:
        problems.append(f"events: {statuses} ({left} not done after {drained:.0f} s)")
    if len(per_event) != count or max(per_event.values(), default=0) != 1:
        problems.append(f"{sum(per_event.values())} firings for {count} events ({len(per_event)} events fired)")
    if done_actions != 2 * count or set(action_status) - {"done"}:
        problems.append(f"actions {action_status}, {2 * count} expected done")
    if twice:
        problems.append(f"{len(twice)} tasks or notes made more than once, e.g. {list(twice)[:3]}")
    if dict(server.done) != {"create task": done_actions // 2, "add note": done_actions // 2}:
        problems.append(f"the fake did {dict(server.done)}, the action rows say {done_actions} done")
    if server.refused:
        problems.append(f"{server.refused} requests refused with 429")
    if server.most_in_one_second() > ALLOWANCE:
        problems.append(f"{server.most_in_one_second()} requests to one account within a second")
    if not topology.alive():
        problems.append("a server or worker exited")
    busiest = max(per_account, key=per_account.get) if per_account else None
    _, densest = server.densest_second()
    return {
        "phase": name,
        "topology": topology.label,
        "deliveries": count,
        "requests": len(jobs),
        "redelivered": len(jobs) - count,
        "feed": fed,
        "events_stored": stored,
        "events": statuses,
        "drain_wait_seconds": drained,
        "end_to_end_seconds": end_to_end,
        "events_per_second_end_to_end": count / end_to_end if end_to_end else None,
        "events_per_second_draining": (count - 1) / draining if draining else None,
        "actions_done": done_actions,
        "actions_per_second": (done_actions - 1) / action_seconds if action_seconds else None,
        "server_cpu_seconds": cpu1[0] - cpu0[0],
        "worker_cpu_seconds": cpu1[1] - cpu0[1],
        "kommo_requests": sum(per_account.values()),
        "busiest_account_requests_per_second": (
            per_account[busiest] / server.span(busiest) if busiest is not None and server.span(busiest) else None
        ),
        "most_in_one_second_one_account": server.most_in_one_second(),
        "densest_second_ms": [round(1000 * t) for t in densest],
        "refused_429": server.refused,
        "events_processed_more_than_once": processed_twice,
        "actions_claimed_more_than_once": claimed_twice,
        "done_twice": len(twice),
        "problems": problems,
    }


def show(r: dict) -> None:
    fed = r["feed"]
    eps = r["events_per_second_end_to_end"]
    drain = r["events_per_second_draining"]
    aps = r["actions_per_second"]
    print(f"\n== {r['topology']}, {r['phase']}: {r['deliveries']} deliveries + {r['redelivered']} redelivered")
    print(
        f"  accepted {fed['accepted_per_second']:.0f} deliveries/s over HTTP (answers {fed['statuses']}, p50 "
        f"{fed['p50_ms']:.1f} ms, p99 {fed['p99_ms']:.1f} ms, {fed['seconds']:.1f} s); {r['events_stored']} events "
        "stored"
    )
    print(
        f"  processed {eps or 0:.1f} events/s end to end ({r['end_to_end_seconds']:.1f} s from the first delivery to "
        f"the last event done), {drain or 0:.1f} events/s between the first and the last done; {aps or 0:.1f} actions/s"
    )
    print(
        f"  CPU: servers {r['server_cpu_seconds']:.1f} s, workers {r['worker_cpu_seconds']:.1f} s "
        f"({1000 * r['worker_cpu_seconds'] / max(r['deliveries'], 1):.1f} ms an event)"
    )
    busiest = r["busiest_account_requests_per_second"]
    print(
        f"  the fake Kommo: {r['kommo_requests']} requests; busiest account {busiest or 0:.2f} requests/s; most to one "
        f"account in any second {r['most_in_one_second_one_account']} (allowance {ALLOWANCE}); 429s {r['refused_429']}"
    )
    if r["most_in_one_second_one_account"] > ALLOWANCE:
        print(f"  the requests of that second arrived at (ms after its first): {r['densest_second_ms']}")
    print(
        f"  handled once: events processed more than once {r['events_processed_more_than_once']}, actions claimed more "
        f"than once {r['actions_claimed_more_than_once']}, tasks or notes made twice {r['done_twice']}"
    )
    print("  check: " + ("; ".join(r["problems"]) if r["problems"] else "every delivery stored once, every event "
                         "done once, nothing twice, the allowance held"))


# --- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/" + DEFAULT_DATABASE),
        help=f"PostgreSQL server (default DATABASE_URL; the database is {DEFAULT_DATABASE} unless it names one "
        "with 'bench')",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8", help="Redis (never database 0; default 8)")
    parser.add_argument("--accounts", type=int, default=20, help="agents, each its own Kommo account (20)")
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries spread over the accounts (2000)")
    parser.add_argument("--hot-deliveries", type=int, default=100, help="deliveries for one account (100; 0: skip)")
    parser.add_argument("--redeliver-every", type=int, default=10, help="every n-th delivery sent twice (10)")
    parser.add_argument("--senders", type=int, default=8, help="sending threads per server (8)")
    parser.add_argument("--q-workers", type=int, default=2, help="Q_WORKERS of each worker (2)")
    parser.add_argument("--latency", type=float, default=0, help="the fake Kommo's answer time, ms (0)")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of servers and workers (INFO)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a phase's events (600)")
    parser.add_argument("--single-first", action="store_true", help="measure one server and worker first")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        sys.exit("--database-url / DATABASE_URL: a PostgreSQL server (several processes share the database)")
    if not args.redis_url:
        sys.exit("--redis-url: Redis is needed (the rate limiter and cache shared by every process)")
    check_redis_url(args.redis_url)
    database_url, name, drop_database = prepare_database(
        args.database_url, scratch_prefix="bench-scale-", default_name=DEFAULT_DATABASE
    )
    work = Path(tempfile.mkdtemp(prefix="bench-scale-logs-"))
    server = FakeKommo(args.latency / 1000).start()
    prefix = f"bench-scale-{os.getpid()}"
    env = worker_env(
        database_url=database_url,
        redis_url=args.redis_url,
        workers=args.q_workers,
        log_level=args.log_level,
        extra={"Q_SYNC": "false", "CACHE_KEY_PREFIX": prefix, "CHANNELS_PREFIX": prefix},
    )
    topology: Topology | None = None
    try:
        setup_django(env)
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)
        world = build(args, server.url)
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        print(
            f"database: PostgreSQL {version} ({name}); Redis {args.redis_url} (rate limiter, cache, channel layer; "
            f"prefix {prefix}); {os.cpu_count()} cores shared by the servers, the workers, PostgreSQL, Redis, this "
            f"script's {args.senders} senders a server and fake Kommo, and other people's runs (load average "
            f"{os.getloadavg()[0]:.1f}); logs in {work}",
            flush=True,
        )
        print(
            f"{args.accounts} agents, each its own Kommo account and webhook key; one trigger each: a lead won → a "
            f"task and a note (2 CRM requests an event, KOMMO_RATE_LIMIT_PER_SECOND=7 per account across every "
            f"process); servers: uvicorn config.asgi:application, 1 process each, psycopg pool on; workers: manage.py "
            f"worker, Q_WORKERS={args.q_workers} each, ORM broker",
            flush=True,
        )
        connection.close()
        results = []
        shapes = [("2 servers + 2 workers", 2, 2), ("1 server + 1 worker", 1, 1)]
        if args.single_first:
            shapes.reverse()
        first_lead = 400_000_000
        everyone = list(range(args.accounts))
        for label, servers, workers in shapes:
            topology = Topology(servers, workers, env, work, label.replace(" ", "").replace("+", "-"))
            topology.label = label
            try:
                results.append(phase("spread", topology, server, world, everyone, args.deliveries, first_lead, args))
                show(results[-1])
                first_lead += 10_000_000
                if args.hot_deliveries:
                    results.append(
                        phase("one account", topology, server, world, [0], args.hot_deliveries, first_lead, args)
                    )
                    show(results[-1])
                    first_lead += 10_000_000
                errors = topology.error_lines()
                if errors:
                    results[-1]["problems"].append(f"{errors} ERROR lines in the logs of {label} ({work})")
                    print(f"  {errors} ERROR lines in the logs ({work})")
            finally:
                topology.stop()
                topology = None
        summary(results)
        print("\nBENCH_RESULT " + json.dumps(results, default=str))
        failures = [f"{r['topology']}, {r['phase']}: {p}" for r in results for p in r["problems"]]
        if failures:
            print("FAILED: " + "; ".join(failures))
            return 1
        return 0
    finally:
        if topology is not None:
            topology.stop()
        server.shutdown()
        if not args.keep_database:
            from django.db import connections

            connections.close_all()
            drop_database()


def build(args, base: str) -> dict:
    from django.contrib.auth import get_user_model

    from agents.models import Agent
    from integrations.models import Integration
    from triggers.models import Trigger
    from triggers.schemas import check_actions

    actions = [
        {"type": "create_task", "text": "Call {{lead.name}} back", "due_in_minutes": 60,
         "responsible_user_id": RESPONSIBLE},
        {"type": "add_note", "text": "Won: {{lead.name}}"},
    ]  # fmt: skip
    if problems := check_actions(actions):
        sys.exit(f"invalid actions: {problems}")
    user_model = get_user_model()
    owners = user_model.objects.bulk_create(
        [user_model(username=f"bench-scale-{n}", password="!") for n in range(args.accounts)]
    )
    agents = Agent.objects.bulk_create(
        [Agent(owner=owner, name=f"Scale agent {n}", instructions="Sell politely.") for n, owner in enumerate(owners)]
    )
    integrations = []
    for n, agent in enumerate(agents):
        integrations.append(
            Integration.objects.create(
                agent=agent,
                integration_type="kommo",
                config={"base_url": f"{base}/acct{n}", "account_id": ACCOUNT_ID},
                credentials={"access_token": TOKEN},
                status=Integration.Status.CONNECTED,
            )
        )
        Trigger.objects.create(
            agent=agent,
            active=True,
            name="Won: a task and a note",
            event="lead_status_changed",
            conditions=[
                {"field": "status", "operator": "changed_to", "value": {"pipeline_id": PIPELINE, "status_id": WON}}
            ],
            actions=actions,
        )
    return {"agents": agents, "integrations": integrations}


def summary(results: list[dict]) -> None:
    print("\n== summary (spread phase; the same machine, 2 cores, for both)")
    spread = {r["topology"]: r for r in results if r["phase"] == "spread"}
    for label, r in spread.items():
        print(
            f"  {label:22} {r['feed']['accepted_per_second']:6.0f} deliveries/s accepted, "
            f"{r['events_per_second_end_to_end'] or 0:5.1f} events/s end to end "
            f"({r['events_per_second_draining'] or 0:5.1f} draining), {r['actions_per_second'] or 0:5.1f} actions/s, "
            f"{1000 * r['worker_cpu_seconds'] / r['deliveries']:.1f} ms worker CPU an event; most in one second to "
            f"one account {r['most_in_one_second_one_account']}, 429s {r['refused_429']}, done twice {r['done_twice']}"
        )
    hot = {r["topology"]: r for r in results if r["phase"] == "one account"}
    for label, r in hot.items():
        print(
            f"  {label:22} one account: {r['busiest_account_requests_per_second'] or 0:.2f} requests/s, most in one "
            f"second {r['most_in_one_second_one_account']}, 429s {r['refused_429']}"
        )


if __name__ == "__main__":
    sys.exit(main())
