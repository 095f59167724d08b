#!/usr/bin/env python
"""Benchmark: follow-up sequences run by ``manage.py worker`` on django-q2's ORM broker.

What it does, in one run:

1. creates a throwaway database (a new SQLite file by default; with DATABASE_URL or
   ``--database-url`` a PostgreSQL database on that server, ``kommo_agents_bench_seq``
   unless the URL names one containing "bench", dropped and created again) and migrates it;
2. creates ``--agents`` agents (100), each with a Kommo integration (its own account, so
   its own 7 requests/second allowance) and a Telegram integration (its own bot: 30
   messages/s), both pointing at a local fake server, and a sequence
   [delay 1 day, send_message, create_task]. Each lead gets its own Telegram chat
   (one message a second per chat), and leads go round-robin over the agents;
3. does ``--inline-runs`` (50) runs' steps in this process, without the queue, to give
   a step's own time and its SQL statements (``--show-queries`` prints them);
4. starts the real worker, ``manage.py worker`` (the django-q2 cluster with
   Q_WORKERS=``--workers`` (1), the ORM broker, and the dispatcher thread every
   SEQUENCE_DISPATCH_SECONDS), with ``config.settings.local``, DEBUG off, LOG_LEVEL INFO
   as deployed (``--q-cluster KEY=VALUE`` overrides a Q_CLUSTER option for the run);
5. measures django-q2's raw throughput on that cluster: ``--trivial`` (3,000) trivial
   tasks (``math.floor``, ``save=False`` like the sequence tasks) queued in one
   transaction, and the time the cluster takes to drain them. Again at the end, since
   the machine is shared and its speed drifts;
6. for each ``--spread`` (default 0 s, a thundering herd, and 60 s): starts ``--runs``
   (10,000) runs with ``sequences.runner.run_start`` while the worker runs (each queues
   its step 0 on commit; the worker does the delay step, which leaves it "waiting" until
   its wake time), then, once every run waits, moves the wake times forward so that all
   delays end at one moment (spread 0) or evenly over the spread, 15 s from now: the
   benchmark cannot wait a day, and a campaign that started 10,000 runs at once wakes
   them together the next day. Only the wake time is written; everything after it (the
   dispatcher finding the due steps, the queue, the worker running the delay's end, the
   send and the task inline) is the real code path;
7. reads from the SequenceStep rows every step's start lateness, claimed_at − due_at,
   and gives p50 / p95 / p99 / max per step kind (the delay's end; the send and the task,
   whose due time is set when the step before them finishes, and also counted from the
   delay's end), the steps per second, the run_step tasks the worker ran (more than one
   a run when the dispatcher handed a step again) and the CPU used, and checks that
   every run is done, and that the fake server got exactly one message per chat and one
   task per lead, nothing twice;
8. the steady state: ``--steady-runs`` (as many as ``--runs``: 10,000) runs whose delays
   end evenly at ``--steady-load`` (0.6) × the runs a second the worker managed in the
   herd, so over as long as that takes (``--steady-seconds`` instead fixes the span and
   derives the number of runs);
9. a herd of ``--single-account-runs`` (100) runs, all on one Kommo account, to show its
   7 requests/second allowance as the limit.

The goal (issue: "steps start within p99 < 5 s of their due time") is reported, not
asserted: a thundering herd of N runs needs N × 3 steps done before the last one starts,
so it cannot meet it once N × 3 / (steps a second) > 5 s; the steady run shows the
lateness below capacity. ``--profile SECONDS`` records the worker's processes with
py-spy during the herd and prints where the task process's time went.

Step texts have no template variables by default and the task names its responsible
user, so a run costs one Kommo request (the task) and one Telegram message;
``--lead-variables`` puts {{lead.name}} in both texts and leaves the responsible user to
the lead: one more Kommo request a run (the lead, read once and cached), right before
the task on the same account.

The exit status is 1 when a correctness check fails (not when the goal is missed).

    .venv/bin/python tests/benchmarks/bench_sequences.py                       # SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kommo_agents_bench_seq \\
        .venv/bin/python tests/benchmarks/bench_sequences.py
    … bench_sequences.py --runs 2000 --spread 0 --profile 30      # a smaller herd, profiled
    … bench_sequences.py --runs 2000 --spread 0 --workers 2 --q-cluster bulk=10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from importlib import metadata
from pathlib import Path

from common import (
    ALLOWANCE,
    FakeServer,
    JsonHandler,
    Worker,
    percentile,
    prepare_database,
    process_cpu,
    setup_django,
    summary,
    worker_env,
)
from common import show as show_summary

DEFAULT_DATABASE = "kommo_agents_bench_seq"
GOAL_P99_SECONDS = 5.0
TOKEN = "bench-crm-token"
RESPONSIBLE = 8374811
TRIVIAL_TASK = "math.floor"
RUN_STEP_DONE = "Processed 'sequences.tasks.run_step'"  # django-q2's log line for each task done
FINAL_RUN = ("done", "failed", "exited", "cancelled")
LEAD_IN_SECONDS = 15.0  # the moved wake times start this far ahead of the update that moves them

# --- the fake vendors ----------------------------------------------------------------------


class FakeVendors(FakeServer):
    """Telegram's sendMessage and Kommo's lead read and task creation, for many bots and
    accounts at once: Kommo account n is ``http://127.0.0.1:<port>/acct<n>``. Counts what
    it did, and answers 429 to a Kommo request that would make more than ALLOWANCE in any
    second of one account, as Kommo does."""

    def __init__(self) -> None:
        super().__init__(Handler)

    def record(self, operation: str, owner: int | str, item: int | str) -> int:
        return self.count(operation, (operation, owner, item))


LEAD_PATH = re.compile(r"/acct(\d+)/api/v4/leads/(\d+)")
TASKS_PATH = re.compile(r"/acct(\d+)/api/v4/tasks")
SEND_PATH = re.compile(r"/bot(\d+):[A-Za-z0-9_-]+/sendMessage")


class Handler(JsonHandler):
    server: FakeVendors

    def _kommo_admitted(self, account: int) -> bool:
        return super()._kommo_admitted(account, TOKEN)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        match = LEAD_PATH.fullmatch(self.path.split("?")[0])
        if not match:
            return self._answer(404, {"title": "Not Found", "status": 404})
        account, lead = int(match[1]), int(match[2])
        if self._kommo_admitted(account):
            self.server.record("get lead", account, lead)
            self._answer(
                200,
                {
                    "id": lead,
                    "name": f"Lead {lead}",
                    "price": 12500,
                    "responsible_user_id": RESPONSIBLE,
                    "status_id": 61057622,
                    "pipeline_id": 7290366,
                    "created_at": 1700480400,
                    "updated_at": 1700566800,
                    "custom_fields_values": None,
                    "_embedded": {"tags": [], "companies": [], "contacts": []},
                },
            )

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if match := SEND_PATH.fullmatch(self.path):
            chat = int(body["chat_id"])
            message_id = self.server.record("telegram send", int(match[1]), chat)
            result = {"message_id": message_id, "chat": {"id": chat, "type": "private"}}
            result |= {"date": int(time.time()), "text": body["text"]}
            return self._answer(200, {"ok": True, "result": result})
        if (match := TASKS_PATH.fullmatch(self.path)) and isinstance(body, list) and body:
            account, lead = int(match[1]), int(body[0].get("entity_id") or 0)
            if self._kommo_admitted(account):
                task_id = self.server.record("create task", account, lead)
                self._answer(200, {"_embedded": {"tasks": [{"id": task_id, "request_id": "0"}]}})
            return
        self._answer(404, {"title": "Not Found", "status": 404})


# --- measuring -----------------------------------------------------------------------------


def show(name: str, s: dict[str, float]) -> None:
    show_summary(name, s, unit="s", width=44, places=7, extra=f"({s.get('n')} steps)")


class Meter:
    """Wall time and the CPU of the worker and of this benchmark's PostgreSQL backends.
    A backend that ends takes its CPU time with it (nobody in the group waits for it), so
    each is followed by pid from sample to sample: call ``tick`` now and then."""

    def __init__(self, worker: Worker, database: str | None) -> None:
        self.worker, self.database = worker, database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def tick(self) -> None:
        if self.database:
            for pid, cpu in process_cpu(cmdline=self.database).items():
                self.first.setdefault(pid, cpu if not self.last else 0.0)  # a new backend: from 0
                self.last[pid] = cpu

    def __enter__(self):
        self.started = time.monotonic()
        self.worker0 = self.worker.cpu()
        self.tick()
        self.last = self.last or {0: 0.0}  # later backends are new ones
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.started
        self.worker_cpu = self.worker.cpu() - self.worker0
        self.tick()
        used = sum(self.last[pid] - self.first[pid] for pid in self.first)
        self.db_cpu = used if self.database else None


def drain_trivial(worker: Worker, count: int, database: str | None, timeout: float) -> dict:
    """Queue ``count`` trivial tasks in one transaction; time the cluster draining them."""
    from django.db import transaction
    from django_q.models import OrmQ
    from django_q.tasks import async_task

    wait_empty(timeout)
    started = time.monotonic()
    with transaction.atomic():
        for _ in range(count):
            async_task(TRIVIAL_TASK, 1.5, save=False)
    enqueue = time.monotonic() - started
    with Meter(worker, database) as meter:
        left = count
        while left and meter.started + timeout > time.monotonic() and worker.alive():
            time.sleep(0.1)
            left = OrmQ.objects.count()
            meter.tick()
    return {
        "tasks": count,
        "enqueue_seconds": enqueue,
        "drain_seconds": meter.seconds,
        "tasks_per_second": count / meter.seconds,
        "left": left,
        "worker_cpu_seconds": meter.worker_cpu,
        "postgres_cpu_seconds": meter.db_cpu,
    }


def wait_empty(timeout: float) -> None:
    from django_q.models import OrmQ

    deadline = time.monotonic() + timeout
    while OrmQ.objects.exists():
        if time.monotonic() > deadline:
            sys.exit(f"the task queue did not empty within {timeout:.0f} s")
        time.sleep(0.2)


def inline_cost(ctx: dict, server: FakeVendors, runs: int, first_lead: int, show_queries: bool = False) -> dict:
    """One run's steps done in this process, one after another, without the queue: the
    SQL statements a step makes and the time a step takes by itself. Before the worker
    starts, so that nothing else runs; the tasks run_start queues are deleted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone
    from django_q.models import OrmQ

    from agents.models import Conversation
    from sequences.models import SequenceStep
    from sequences.runner import run_start, step_run

    agents, sequences, kommos, bots = ctx["agents"], ctx["sequences"], ctx["kommos"], ctx["bots"]
    count = len(ctx["sequences"]) - 1
    leads = [(first_lead + n, n % count) for n in range(runs)]
    Conversation.objects.bulk_create(
        [Conversation(agent=agents[a], integration=bots[a], chat_id=str(lead), crm_lead_id=lead) for lead, a in leads]
    )
    started = time.perf_counter()
    made = [
        run_start(
            sequence=sequences[a], lead_id=lead, started_by="api", started_ref="bench:inline", integration=kommos[a]
        )
        for lead, a in leads
    ]
    run_start_ms = 1000 * (time.perf_counter() - started) / runs
    OrmQ.objects.all().delete()  # done here instead
    first = dict(SequenceStep.objects.filter(run__in=made, index=0).values_list("run_id", "id"))
    measured: dict[str, dict[str, list[float]]] = {}
    for phase in ("start (delay step)", "wake (delay end, send, task)"):
        if phase.startswith("wake"):
            SequenceStep.objects.filter(id__in=first.values()).update(due_at=timezone.now())
        times, queries = [], []
        for n, run in enumerate(made):
            if n < min(10, runs // 2):  # the statements of a few; the time of the others, uncounted
                with CaptureQueriesContext(connection) as captured:
                    step_run(first[run.pk])
                queries.append(len(captured.captured_queries))
                if show_queries and n == 1:
                    print(f"\n-- the SQL of one {phase}:")
                    for q in captured.captured_queries:
                        print("   ", re.sub(r"\s+", " ", q["sql"])[:220])
            else:
                started = time.perf_counter()
                step_run(first[run.pk])
                times.append(1000 * (time.perf_counter() - started))
        measured[phase] = {"ms": times, "queries": queries}
    done = SequenceStep.objects.filter(run__in=made, status=SequenceStep.Status.DONE).count()
    server.reset()
    result = {
        "runs": runs,
        "run_start_ms": run_start_ms,
        "steps_done": done,
        **{
            phase: {"ms": summary(m["ms"]), "queries": statistics.median(m["queries"])}
            for phase, m in measured.items()
        },
    }
    print(
        f"\n== one run's steps in this process, no queue ({runs} runs, {done} of {runs * 3} steps done): "
        f"run_start {run_start_ms:.1f} ms",
        flush=True,
    )
    for phase in measured:
        r = result[phase]
        print(
            f"  {phase:30} p50 {r['ms']['p50']:6.1f} ms  p95 {r['ms']['p95']:6.1f} ms  "
            f"{r['queries']:.0f} SQL statements",
            flush=True,
        )
    return result


# --- a scenario ----------------------------------------------------------------------------


def scenario(
    label: str,
    args: argparse.Namespace,
    ctx: dict,
    worker: Worker,
    server: FakeVendors,
    agent_indexes: list[int],
    runs: int,
    spread: float,
    first_lead: int,
) -> dict:
    from django.db import transaction
    from django.db.models import Max, Min
    from django.utils import timezone
    from django_q.models import OrmQ

    from agents.models import Conversation, ConversationMessage
    from sequences.models import SequenceRun, SequenceStep
    from sequences.runner import CLAIMABLE, REQUEUE_AFTER, run_start

    database = ctx["database"]
    agents, sequences, kommos, bots = ctx["agents"], ctx["sequences"], ctx["kommos"], ctx["bots"]
    accounts = len(agent_indexes)
    print(
        f"\n== {label}: {runs} runs over {accounts} agent(s) / Kommo account(s) / Telegram bot(s), "
        f"{'all delays ending at one moment' if not spread else f'delays ending evenly over {spread:g} s'}",
        flush=True,
    )
    server.reset()
    wait_empty(args.timeout)
    leads = [(first_lead + n, agent_indexes[n % accounts]) for n in range(runs)]
    Conversation.objects.bulk_create(
        [
            Conversation(agent=agents[a], integration=bots[a], chat_id=str(lead), crm_lead_id=lead)
            for lead, a in leads
        ],
        batch_size=1000,
    )

    # 1. start the runs while the worker runs; it does each run's delay step (→ waiting)
    log0 = worker.log_size()
    with Meter(worker, database) as starting:
        for n, (lead, a) in enumerate(leads):
            run_start(
                sequence=sequences[a],
                lead_id=lead,
                started_by="api",
                started_ref=f"bench:{label}:{n}",
                integration=kommos[a],
            )
        created_seconds = time.monotonic() - starting.started
        ids = SequenceRun.objects.filter(crm_lead_id__gte=first_lead, crm_lead_id__lt=first_lead + runs)
        span = ids.aggregate(first=Min("id"), last=Max("id"))
        run_range = (span["first"], span["last"])
        steps = SequenceStep.objects.filter(run_id__gte=run_range[0], run_id__lte=run_range[1])
        waiting = 0
        while waiting < runs and time.monotonic() - starting.started < args.timeout and worker.alive():
            time.sleep(0.5)
            waiting = steps.filter(index=0, status=SequenceStep.Status.WAITING).count()
            starting.tick()
    if waiting < runs:
        sys.exit(f"{label}: only {waiting} of {runs} runs reached their delay; worker log {worker.log}")
    starts = [
        (claimed - created).total_seconds()
        for created, claimed in steps.filter(index=0).values_list("run__created_at", "claimed_at")
    ]
    start_tasks = worker.log_since(log0).count(RUN_STEP_DONE)
    print(
        f"  started {runs} runs in {created_seconds:.1f} s ({runs / created_seconds:.0f}/s) while the worker did "
        f"their delay steps; all waiting after {starting.seconds:.1f} s; worker CPU {starting.worker_cpu:.1f} s",
        flush=True,
    )
    show("step 0 (delay) started after run_start", summary(starts))

    # 2. the delays end now: at one moment, or evenly over the spread
    moved = time.monotonic()
    rows = list(steps.filter(index=0).order_by("run_id").values_list("id", "run_id"))
    t0 = timezone.now() + timedelta(seconds=LEAD_IN_SECONDS)
    wake = {run_id: t0 + timedelta(seconds=spread * i / max(len(rows) - 1, 1)) for i, (_, run_id) in enumerate(rows)}
    with transaction.atomic():
        SequenceStep.objects.bulk_update(
            [SequenceStep(id=step_id, due_at=wake[run_id]) for step_id, run_id in rows], ["due_at"], batch_size=500
        )
        SequenceRun.objects.bulk_update(
            [SequenceRun(id=run_id, next_due_at=due) for run_id, due in wake.items()], ["next_due_at"], batch_size=500
        )
    moved = time.monotonic() - moved
    if moved > LEAD_IN_SECONDS:
        print(f"  warning: moving the wake times took {moved:.1f} s, more than the {LEAD_IN_SECONDS:g} s lead-in")

    # 3. the worker does the rest; watch the backlog (from the first wake time on)
    time.sleep(max(0.0, (t0 - timezone.now()).total_seconds()))
    profile = None
    if args.profile and not spread and label != "one account":
        profile = start_profile(worker, args.profile, ctx["work"] / f"profile-{label.replace(' ', '-')}.txt")
    log1 = worker.log_size()
    series = []
    with Meter(worker, database) as working:
        finished = 0
        while finished < runs and time.monotonic() - working.started < args.timeout and worker.alive():
            time.sleep(1.0)
            working.tick()
            now = timezone.now()
            finished = SequenceRun.objects.filter(id__range=run_range, status__in=FINAL_RUN).count()
            due = steps.filter(status__in=CLAIMABLE, due_at__lte=now)
            point = {
                "t": round(time.monotonic() - working.started, 1),
                "finished": finished,
                "due_not_queued": due.filter(queued_at__isnull=True).count(),
                "queued": due.filter(queued_at__isnull=False).count(),
                "queue_rows": OrmQ.objects.count(),
            }
            series.append(point)
            if len(series) % 15 == 0:
                print(
                    f"    {point['t']:6.1f} s: {finished} runs finished; due steps not handed to the queue "
                    f"{point['due_not_queued']}, handed and waiting {point['queued']}; "
                    f"task queue rows {point['queue_rows']}",
                    flush=True,
                )
    profile_result = finish_profile(profile) if profile else None
    # the queue may still hold tasks for steps already done: the dispatcher hands a step
    # again when it has waited in the queue longer than REQUEUE_AFTER; each is a no-op
    leftover = OrmQ.objects.count()
    with Meter(worker, database) as draining:
        while OrmQ.objects.exists() and time.monotonic() - draining.started < args.timeout and worker.alive():
            time.sleep(0.5)
            draining.tick()
    wake_log = worker.log_since(log1)

    # 4. lateness, rate, correctness
    data = list(
        steps.values_list("run_id", "index", "type", "status", "due_at", "claimed_at", "finished_at", "attempts")
    )
    by_run: dict[int, dict[int, tuple]] = {}
    for row in data:
        by_run.setdefault(row[0], {})[row[1]] = row
    late: dict[str, list[float]] = {"delay end": [], "send_message": [], "create_task": []}
    since_delay: dict[str, list[float]] = {"send_message": [], "create_task": []}
    for run_steps in by_run.values():
        delay_due = run_steps[0][4]
        for index, (_, _, kind, _, due, claimed, _, _) in run_steps.items():
            if claimed is None or due is None:
                continue
            late["delay end" if index == 0 else kind].append((claimed - due).total_seconds())
            if index:
                since_delay[kind].append((claimed - delay_due).total_seconds())
    claims = [row[5] for row in data if row[5] is not None]
    ends = [row[6] for row in data if row[6] is not None]
    executed = sum(1 for row in data if row[3] == SequenceStep.Status.DONE)
    span_seconds = (max(ends) - min(claims)).total_seconds() if claims and ends else 0.0
    steps_per_second = executed / span_seconds if span_seconds else 0.0
    run_statuses = Counter(SequenceRun.objects.filter(id__range=run_range).values_list("status", flat=True))
    sent_rows = ConversationMessage.objects.filter(
        conversation__crm_lead_id__gte=first_lead,
        conversation__crm_lead_id__lt=first_lead + runs,
        direction=ConversationMessage.Direction.OUTBOUND,
    ).count()
    problems = []
    if run_statuses.get("done", 0) != runs:
        problems.append(f"runs not done: {dict(run_statuses)}")
    want = {"telegram send": runs, "create task": runs}
    got = {k: server.done.get(k, 0) for k in want}
    if got != want:
        problems.append(f"the fake server did {dict(server.done)}, expected {want}")
    twice = [key for key, times in server.seen.items() if times > 1]
    if twice:
        problems.append(f"{len(twice)} chats or leads got the same thing more than once, e.g. {twice[:3]}")
    if len({key[2] for key in server.seen if key[0] == "create task"}) != runs:
        problems.append("tasks were not one per lead")
    if sent_rows != runs:
        problems.append(f"{sent_rows} messages stored, {runs} expected")
    if server.refused:
        problems.append(f"{server.refused} Kommo requests refused with 429")
    errors = [line for line in wake_log.splitlines() if " ERROR " in line or "Traceback" in line]
    if errors:
        problems.append(f"{len(errors)} error lines in the worker log {worker.log}: {errors[:3]}")
    if not worker.alive():
        problems.append(f"the worker exited ({worker.process.returncode})")
    wake_tasks = wake_log.count(RUN_STEP_DONE)
    result = {
        "runs": runs,
        "accounts": accounts,
        "spread_seconds": spread,
        "start": {
            "create_seconds": created_seconds,
            "runs_per_second": runs / created_seconds,
            "all_waiting_seconds": starting.seconds,
            "step0_tasks": start_tasks,
            "step0_lateness": summary(starts),
            "worker_cpu_seconds": starting.worker_cpu,
        },
        "lateness": {kind: summary(values) for kind, values in late.items()},
        "since_delay_end": {kind: summary(values) for kind, values in since_delay.items()},
        "all_steps_p99": percentile([v for values in late.values() for v in values], 0.99),
        "steps_done": executed,
        "span_seconds": span_seconds,
        "steps_per_second": steps_per_second,
        "wake_tasks_run": wake_tasks,
        "queue_rows_left_when_done": leftover,
        "left_drain_seconds": draining.seconds if leftover else 0.0,
        "wake_seconds": working.seconds,
        "worker_cpu_seconds": working.worker_cpu,
        "postgres_cpu_seconds": working.db_cpu,
        "max_due_not_queued": max((p["due_not_queued"] for p in series), default=0),
        "max_queued": max((p["queued"] for p in series), default=0),
        "max_queue_rows": max((p["queue_rows"] for p in series), default=0),
        "requests": dict(server.done),
        "refused_429": server.refused,
        "most_in_one_second_one_account": server.most_in_one_second(),
        "problems": problems,
        "profile": profile_result,
    }
    busy = working.worker_cpu / working.seconds if working.seconds else 0
    pg = f", PostgreSQL {working.db_cpu:.1f} s" if working.db_cpu is not None else ""
    print(
        f"  delays ended; {executed} steps done in {span_seconds:.1f} s (first claim → last finish): "
        f"{steps_per_second:.1f} steps/s; worker CPU {working.worker_cpu:.1f} s ({busy:.2f} cores){pg}",
        flush=True,
    )
    print(
        f"  {wake_tasks} run_step tasks for {runs} wakes: {wake_tasks - runs} no-ops, steps handed to the queue "
        f"again after waiting there {REQUEUE_AFTER.total_seconds():.0f} s; {leftover} queue rows were left when "
        f"the last run finished, drained in {draining.seconds:.1f} s",
        flush=True,
    )
    print(
        f"  backlog at most: {result['max_due_not_queued']} due steps not yet handed to the queue, "
        f"{result['max_queued']} handed and not started, {result['max_queue_rows']} task queue rows"
    )
    print("  start lateness, claimed_at − due_at:")
    for kind, values in late.items():
        show(kind + (" (its own due time)" if kind != "delay end" else ""), summary(values))
    for kind, values in since_delay.items():
        show(f"{kind} (from the delay's end)", summary(values))
    print(
        f"  requests: {dict(server.done)}; 429s: {server.refused}; most to one Kommo account in any second: "
        f"{result['most_in_one_second_one_account']} (allowance {ALLOWANCE})"
    )
    print("  check: " + ("; ".join(problems) if problems else f"{runs} runs done, one message and one task each"))
    if profile_result:
        show_profile(profile_result)
    return result


# --- profiling -----------------------------------------------------------------------------


def start_profile(worker: Worker, seconds: float, output: Path) -> dict:
    """py-spy on every process of the worker, idle threads included: the task process
    runs one task at a time, so its wall time (waiting included) is what the steps wait for."""
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(worker.pid), "--subprocesses", "--idle"]
    argv += ["--duration", str(int(seconds)), "--rate", str(PROFILE_RATE), "--format", "raw"]
    argv += ["--output", str(output), "--nonblocking"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {"process": process, "output": output, "seconds": seconds}


PROFILE_RATE = 100  # samples a second
# the processes of the cluster, by a frame on their stacks
PROFILE_ROLES = [
    ("task process", "worker (django_q/worker.py"),
    ("pusher (takes tasks from the ORM queue)", "pusher (django_q/pusher.py"),
    ("monitor (acknowledges: deletes the queue row)", "monitor (django_q/monitor.py"),
    ("dispatcher thread", "Dispatcher.run (agents/management/commands/worker.py"),
]
# the task process's wall time, by the innermost frame on the stack that matches
PROFILE_BUCKETS = [
    ("waiting for the next task from the pusher", re.compile(r"Queue\.get \(multiprocessing/queues\.py")),
    ("SQL statements (executing, waiting for the database)",
     re.compile(r"django/db/backends/(sqlite3|postgresql)/|django/db/backends/utils\.py|psycopg/|sqlite3/")),
    ("Django ORM (compiling queries, making model instances)", re.compile(r"django/db/")),
    ("HTTP to the fake vendors (requests, urllib3, sockets)",
     re.compile(r"requests/|urllib3/|http/client\.py|socket\.py")),
    ("rate limiter (its SQL counted above)", re.compile(r"integrations/ratelimit\.py")),
    ("logging", re.compile(r"logging/")),
    ("django-q2 around the task (pickling, signing, signals)", re.compile(r"django_q/|pickle|django/core/signing")),
    ("the rest of our code (runner, actions, channels, clients)",
     re.compile(r"\((sequences|triggers|agents|crm|integrations|config)/")),
]


def finish_profile(profile: dict) -> dict:
    process: subprocess.Popen = profile["process"]
    try:
        _, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        return {"error": "py-spy did not finish"}
    output: Path = profile["output"]
    if not output.exists():
        return {"error": (err or b"").decode(errors="replace")[-500:]}
    roles: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    task_samples = 0
    for line in output.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        role = next((name for name, marker in PROFILE_ROLES if marker in stack), "main process and sentinel")
        roles[role] += n
        if role != "task process":
            continue
        task_samples += n
        frames = stack.split(";")
        below = frames[next(i for i, f in enumerate(frames) if f.startswith("worker (django_q/worker.py")) + 1 :]
        for frame in reversed(frames):
            bucket = next((name for name, pattern in PROFILE_BUCKETS if pattern.search(frame)), None)
            if bucket:
                buckets[bucket] += n
                break
        else:
            buckets["other"] += n
        for frame in {re.sub(r":\d+\)$", ")", f) for f in below}:
            functions[frame] += n
    if not task_samples:
        return {"error": "no samples of the task process"}
    wall = profile["seconds"] * PROFILE_RATE
    return {
        "file": str(output),
        "seconds": profile["seconds"],
        "task_process_samples": task_samples,
        "roles": {k: round(100 * v / wall, 1) for k, v in roles.most_common()},
        "buckets": {k: round(100 * v / task_samples, 1) for k, v in buckets.most_common()},
        "inclusive": [(f, round(100 * n / task_samples, 1)) for f, n in functions.most_common(45)],
    }


def show_profile(p: dict) -> None:
    if "error" in p:
        print(f"  profile: {p['error']}")
        return
    print(f"  profile, {p['seconds']:g} s with py-spy --idle (raw stacks in {p['file']}):")
    print("    samples by process, % of the wall time (a thread sampled all the time = 100 %; with --idle every")
    print("    thread is sampled, CPU-bound or waiting; the task process has one thread):")
    for role, share in p["roles"].items():
        print(f"    {share:6.1f} %  {role}")
    print("    the task process's wall time, by the innermost frame that matches:")
    for bucket, share in p["buckets"].items():
        print(f"    {share:6.1f} %  {bucket}")
    print("    the task process's wall time, inclusive, by function (≥ 2 %):")
    for frame, share in p["inclusive"]:
        if share >= 2:
            print(f"    {share:6.1f} %  {frame}")


# --- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--runs", type=int, default=10_000, help="runs per spread (10000)")
    parser.add_argument(
        "--spread",
        type=float,
        action="append",
        help="seconds over which the delays end; repeatable (default: 0, a thundering herd, and 60)",
    )
    parser.add_argument(
        "--steady-runs",
        type=int,
        default=None,
        help="then this many runs whose delays end evenly at --steady-load × the herd's rate (--runs; 0: skip)",
    )
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=0,
        help="instead: delays ending evenly over this long at that rate (the runs follow from it)",
    )
    parser.add_argument("--steady-load", type=float, default=0.6, help="share of the herd's runs/s offered (0.6)")
    parser.add_argument(
        "--q-cluster",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a Q_CLUSTER option for this run (e.g. bulk=10, queue_limit=10); repeatable",
    )
    parser.add_argument("--inline-runs", type=int, default=50, help="runs done in this process first (50; 0: skip)")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of one run's steps, done inline")
    parser.add_argument("--agents", type=int, default=100, help="agents, each its own Kommo account and bot (100)")
    parser.add_argument("--single-account-runs", type=int, default=100, help="runs on one Kommo account (100; 0: skip)")
    parser.add_argument("--workers", type=int, default=1, help="django-q2 worker processes, Q_WORKERS (1)")
    parser.add_argument("--trivial", type=int, default=3000, help="trivial tasks for the raw throughput (3000)")
    parser.add_argument("--lead-variables", action="store_true", help="{{lead.name}} in the texts: +1 Kommo read a run")
    parser.add_argument("--profile", type=float, default=0, help="py-spy the worker this many seconds in the herd")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL server (default DATABASE_URL; none: a new SQLite file)",
    )
    parser.add_argument("--log-level", default="INFO", help="the worker's LOG_LEVEL (INFO, as deployed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for any one phase (1800)")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    return parser.parse_args(argv)


def sequence_steps(lead_variables: bool) -> list[dict]:
    if lead_variables:
        return [
            {"type": "delay", "days": 1},
            {"type": "send_message", "text": "{{lead.name}}: is our offer still of interest? Ask me anything."},
            {"type": "create_task", "text": "Call {{lead.name}} back about the offer", "due_in_minutes": 60},
        ]
    return [
        {"type": "delay", "days": 1},
        {"type": "send_message", "text": "Hello again! Is our offer still of interest? Ask me anything."},
        {"type": "create_task", "text": "Call the lead back about the offer", "due_in_minutes": 60,
         "responsible_user_id": RESPONSIBLE},
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spreads = args.spread if args.spread is not None else [0.0, 60.0]
    database_url, pg_name, drop_database = prepare_database(
        args.database_url, scratch_prefix="bench-seq-", default_name=DEFAULT_DATABASE
    )
    work = Path(tempfile.mkdtemp(prefix="bench-seq-logs-"))
    settings_module = "config.settings.local"
    if args.q_cluster:
        # the options given, over the project's (the worker reads them from this module too)
        options = {}
        for item in args.q_cluster:
            key, _, value = item.partition("=")
            try:
                options[key] = json.loads(value)
            except json.JSONDecodeError:
                options[key] = value
        (work / "bench_seq_settings.py").write_text(
            "from config.settings.local import *  # noqa: F403\n"
            "from config.settings.local import Q_CLUSTER\n\n"
            f"Q_CLUSTER = {{**Q_CLUSTER, **{options!r}}}\n"
        )
        settings_module = "bench_seq_settings"
    env = worker_env(
        database_url=database_url,
        redis_url=os.environ.get("REDIS_URL", ""),
        workers=args.workers,
        log_level=args.log_level,
        settings_module=settings_module,
        pythonpath=[str(work)],
        extra={"Q_SYNC": "false"},
    )
    setup_django(env, [str(work)])
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    setup_started = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    from agents.models import Agent
    from integrations.models import Integration
    from sequences.models import Sequence
    from sequences.schemas import check_steps

    steps = sequence_steps(args.lead_variables)
    if problems := check_steps(steps):
        sys.exit(f"invalid sequence steps: {problems}")
    server = FakeVendors().start()
    base = server.url

    count = args.agents + 1  # the last one: the single-account variant
    user_model = get_user_model()
    owners = user_model.objects.bulk_create([user_model(username=f"bench-seq-{n}", password="!") for n in range(count)])
    agents = Agent.objects.bulk_create(
        [Agent(owner=owners[n], name=f"Bench agent {n}", instructions="Sell politely.") for n in range(count)]
    )
    kommos, bots, sequences = [], [], []
    for n, agent in enumerate(agents):
        kommos.append(
            Integration.objects.create(
                agent=agent,
                integration_type="kommo",
                config={"base_url": f"{base}/acct{n}"},
                credentials={"access_token": TOKEN},
                status=Integration.Status.CONNECTED,  # in use: a call does not write its status
            )
        )
        bots.append(
            Integration.objects.create(
                agent=agent,
                integration_type="telegram",
                config={"base_url": base},
                credentials={"bot_token": f"{700000 + n}:bench-token-{n}", "secret_token": "s"},
                status=Integration.Status.CONNECTED,
            )
        )
        sequences.append(Sequence.objects.create(agent=agent, name="Follow-up", steps=steps))
    ctx = {"database": pg_name, "agents": agents, "sequences": sequences, "kommos": kommos, "bots": bots, "work": work}
    db_version = ""
    if connection.vendor == "sqlite":
        import sqlite3

        db_version = f" {sqlite3.sqlite_version}"
    else:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            db_version = f" {cursor.fetchone()[0]}"
    q = settings.Q_CLUSTER
    print(
        f"database: {connection.vendor}{db_version} ({connection.settings_dict['NAME']}); "
        f"{os.cpu_count()} cores shared by the worker, the database, this script and its fake vendors, and "
        f"whatever else runs (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}); "
        f"Python {platform.python_version()}, django-q2 {metadata.version('django-q2')}",
        flush=True,
    )
    per_run = 2 if args.lead_variables else 1
    print(
        f"worker: manage.py worker, Q_WORKERS={q['workers']}, ORM broker, poll {q['poll']} s, bulk "
        f"{q.get('bulk', 1)}, queue_limit {q.get('queue_limit', q['workers'] ** 2)}, dispatcher every "
        f"{settings.SEQUENCE_DISPATCH_SECONDS:g} s; rate limiter in "
        f"{'Redis' if env['REDIS_URL'] else 'the database'}, KOMMO_RATE_LIMIT_PER_SECOND="
        f"{settings.KOMMO_RATE_LIMIT_PER_SECOND:g}",
        flush=True,
    )
    print(
        f"{args.agents} agents, each with its own Kommo account and Telegram bot, leads round-robin over them: a run "
        f"makes {per_run} Kommo request(s) and 1 Telegram message, so the accounts allow "
        f"{args.agents * settings.KOMMO_RATE_LIMIT_PER_SECOND / per_run:.0f} runs/s and the bots "
        f"{args.agents * 30} messages/s, far above what one worker does; set up in "
        f"{time.monotonic() - setup_started:.1f} s; logs in {work}",
        flush=True,
    )
    print(f"sequence: {json.dumps(steps, ensure_ascii=False)}", flush=True)

    results: dict = {"database": connection.vendor, "runs": args.runs, "agents": args.agents, "workers": args.workers}
    results["q_cluster"] = {k: v for k, v in q.items() if k in ("workers", "poll", "bulk", "queue_limit", "recycle")}
    failures: list[str] = []
    if args.inline_runs:
        results["inline"] = inline_cost(ctx, server, args.inline_runs, 50_000_000, args.show_queries)
    connection.close()
    worker = Worker(env, work / "worker.log")
    try:
        from django_q.tasks import async_task

        async_task(TRIVIAL_TASK, 1.5, save=False)  # the worker is up once this is done
        wait_empty(120)
        raw = drain_trivial(worker, args.trivial, pg_name, args.timeout)
        results["raw before"] = raw
        print(
            f"\n== raw django-q2 throughput: {raw['tasks']} trivial tasks queued in one transaction in "
            f"{raw['enqueue_seconds']:.2f} s, drained in {raw['drain_seconds']:.1f} s: "
            f"{raw['tasks_per_second']:.0f} tasks/s (worker CPU {raw['worker_cpu_seconds']:.1f} s)",
            flush=True,
        )
        first_lead = 100_000_000
        for spread in spreads:
            label = "herd" if not spread else f"spread {spread:g} s"
            r = scenario(label, args, ctx, worker, server, list(range(args.agents)), args.runs, spread, first_lead)
            results[label] = r
            failures += [f"{label}: {p}" for p in r["problems"]]
            first_lead += 10_000_000
        herd = results.get("herd")
        steady_runs = args.runs if args.steady_runs is None else args.steady_runs
        if (args.steady_seconds or steady_runs) and herd and herd["steps_per_second"]:
            rate = args.steady_load * herd["steps_per_second"] / 3
            if args.steady_seconds:
                runs, seconds = max(round(rate * args.steady_seconds), 10), args.steady_seconds
            else:
                runs, seconds = steady_runs, steady_runs / rate
            label = f"steady {rate:.1f} runs/s"
            print(
                f"\n(steady: {runs} runs at {args.steady_load:g} × the herd's {herd['steps_per_second'] / 3:.1f} "
                f"runs/s, over {seconds:.0f} s)"
            )
            everyone = list(range(args.agents))
            r = scenario(label, args, ctx, worker, server, everyone, runs, seconds, first_lead)
            results[label] = r
            failures += [f"{label}: {p}" for p in r["problems"]]
            first_lead += 10_000_000
        if args.single_account_runs:
            r = scenario(
                "one account", args, ctx, worker, server, [args.agents], args.single_account_runs, 0, first_lead
            )
            results["one account"] = r
            failures += [f"one account: {p}" for p in r["problems"]]
        raw = drain_trivial(worker, args.trivial, pg_name, args.timeout)
        results["raw after"] = raw
        print(
            f"\n== raw django-q2 throughput again: {raw['tasks']} trivial tasks drained in "
            f"{raw['drain_seconds']:.1f} s: {raw['tasks_per_second']:.0f} tasks/s",
            flush=True,
        )
    finally:
        worker.stop()

    print("\n== summary (start lateness = claimed_at − due_at, seconds)")
    raw_rates = [results[k]["tasks_per_second"] for k in ("raw before", "raw after") if k in results]
    print(f"  raw django-q2, trivial tasks: {' / '.join(f'{x:.0f}' for x in raw_rates)} tasks/s (before / after)")
    for label in [k for k in results if k.startswith(("herd", "spread", "steady", "one account"))]:
        r = results[label]
        p99 = {kind: s.get("p99", 0) for kind, s in r["lateness"].items()}
        worst = max(p99.values())
        offered = f"over {r['spread_seconds']:g} s" if r["spread_seconds"] else "at once"
        cpu = f"{1000 * r['worker_cpu_seconds'] / r['runs']:.0f} ms worker CPU"
        if r["postgres_cpu_seconds"] is not None:
            cpu += f" + {1000 * r['postgres_cpu_seconds'] / r['runs']:.0f} ms PostgreSQL"
        print(
            f"  {label:20} {r['runs']:6} runs {offered:10}: {r['steps_per_second']:6.1f} steps/s "
            f"({cpu} a run); p99 lateness: delay end {p99['delay end']:.2f}, "
            f"send {p99['send_message']:.2f}, task {p99['create_task']:.2f}"
            f" → goal p99 < {GOAL_P99_SECONDS:g} s {'met' if worst < GOAL_P99_SECONDS else 'NOT met'}"
        )
    print(f"  machine load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    server.shutdown()
    if not args.keep_database:
        connection.close()
        drop_database()
    print("\nBENCH_RESULT " + json.dumps(results, default=str))
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
