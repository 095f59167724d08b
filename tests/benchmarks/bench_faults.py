#!/usr/bin/env python
"""Faults: the CRM, the messenger and the AI provider fail 30 % of the time during a burst.

What it does, in one run:

1. a database of its own: a new SQLite file, or with ``--postgres`` a PostgreSQL server
   of its own (``initdb`` into a scratch directory, trust authentication, a free port on
   127.0.0.1, run as the ``postgres`` user when this script runs as root), so that
   restarting it disturbs nobody; Redis (``--redis-url``, never database 0) for the rate
   limiter and the cache, or the database without it;
2. a fake vendor server in a thread of this process: Kommo (lead reads, lead updates,
   tasks, notes, lead creation, and the look-ups a recovery makes), Telegram's
   sendMessage and an OpenAI-compatible chat completion. ``--failure-rate`` (30 %) of
   its answers are faults, decided from ``--seed`` and what the request is (the same
   run, the same faults): a 500, a timeout (the answer comes after the worker's read
   timeout, HTTP_READ_TIMEOUT_SECONDS / AI_TIMEOUT_SECONDS = ``--read-timeout``) or a
   429 with Retry-After, a third each. For a write, half the 500s and timeouts come
   AFTER the fake applied it (the task exists, the message went out, and the worker is
   told it failed): that is what makes "nothing twice" a real test. Every applied write
   is recorded under its identity (the operation, account or bot, lead or chat, text),
   with the answer each application got. Kommo's own allowance is enforced too: an 8th
   request in any second of one account gets a 429, counted apart from the injected ones;
3. ``--accounts`` (50) agents, each with its own Kommo account, Telegram bot and AI model
   (``openai:gpt-4o-mini`` at the fake, through OPENAI_BASE_URL) and three trigger rules
   on "lead moved": won → create a task, add a note, update a field, send a message
   (3 in 5 events); "offer sent" → start a sequence [delay 1 minute, send a message,
   create a task] (1 in 5); "thinking" → send a message the AI writes, add a note (1 in
   5). Each event's lead has a Telegram chat with its agent;
4. starts the real worker (``manage.py worker``, ``--workers`` django-q2 processes), then
   stores a burst of ``--events`` (1,000) lead-status deliveries through the webhook
   intake (``crm.intake.delivery_store``, one delivery each, round-robin over the
   accounts) and ``--messages`` (200) inbound Telegram messages (``inbound_store``; half
   from chats linked to a lead, half from new people, for whom the reply pipeline
   creates a lead), interleaved;
5. at ``--kill-at`` (30 %) of the work final, SIGKILLs the worker's whole process group
   and starts it again; at ``--db-restart-at`` (60 %) restarts the database
   (PostgreSQL: stopped with ``-m fast``, down ``--db-down`` seconds, started again;
   SQLite has no server to restart: skipped, or with ``--sqlite-lock N`` the file is
   locked for N seconds instead). For each it reports what the worker had in hand (tasks
   taken from the queue, the events its drains had claimed and those its retries named,
   actions, steps and replies under way) and how long until all of that ended done or
   failed;
6. waits until every CRM event, trigger firing, action, sequence run and inbound
   message is final (at most ``--timeout``; it stops earlier when nothing has changed
   for ``--stall`` seconds, longer than any recovery delay: what is left is stuck, and
   the pending events are told apart: never tried, a retry coming, or tried with no
   retry coming), then checks: every event done, or failed with a
   reason; no firing, action, run or message left open; every action, step and reply
   marked done is found in the fake (nothing lost); no non-idempotent write (task, note,
   message, lead creation) applied twice (a lead update applied twice sets the same
   value: counted, allowed); no 429 from Kommo's allowance. Exit status 1 when a check
   fails.

Recovery delays that are module constants are shortened inside the worker this script
starts, and only there, by a ``sitecustomize`` module on its PYTHONPATH that patches
them right after their modules are imported (printed at the start): retry backoff
``crm.dispatch.RETRY_BASE_SECONDS`` and ``sequences.runner.RETRY_BASE_SECONDS`` (30 s
→ ``--retry-base``), "a claimed action was interrupted"
``triggers.execution.ACTION_CLAIM_TIMEOUT`` (5 min → ``--recover-after``), "an inbound
message was lost" ``agents.conversations.LOST_AFTER`` (10 min → ``--recover-after``) and
"an event's retry was lost" ``crm.dispatch.SWEEP_AFTER`` (10 min, kept unless ``--sweep-after``;
also how long the sweeper lets never-tried events wait before it queues a drain, which the
dispatcher's ``crm.drain.drain_kick`` does after 2 s already). Not shortened: a killed
drain's claims are taken again after ``crm.drain.DRAIN_CLAIM_TIMEOUT`` (2 min).
Settings do the rest: Q_TIMEOUT (``--q-timeout``; django-q2 hands a task taken by a dead
worker to another after Q_TIMEOUT + 60 s) and SEQUENCE_STEP_TIMEOUT_SECONDS
(``--recover-after``), and the sweeps' schedules run every minute instead of five.
django-q2's scheduler, which runs the events' retries, still looks only every 30 s.

    .venv/bin/python tests/benchmarks/bench_faults.py                                   # SQLite
    .venv/bin/python tests/benchmarks/bench_faults.py --postgres --redis-url redis://127.0.0.1:6379/8
    … bench_faults.py --events 200 --messages 40 --accounts 10                         # a quick one
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from common import (
    ALLOWANCE,
    RESPONSIBLE,
    FakeServer,
    JsonHandler,
    Worker,
    check_redis_url,
    create_database,
    free_port,
    lead_status_delivery,
    setup_django,
    worker_env,
)

TOKEN = "bench-faults-token"
ACCOUNT_ID = 31416592
PIPELINE = 7310001
FIRST_STAGE, SEQ_STAGE, AI_STAGE, WON = 61000001, 61000002, 61000003, 142
CF_RESULT = 1044001
FIRST_LEAD = 300_000_000  # event n's lead: FIRST_LEAD + n
FIRST_CHAT = 7_000_000  # inbound message i's chat: FIRST_CHAT + i
LINKED_LEAD = 310_000_000  # the lead of a linked chat: LINKED_LEAD + i
FIRST_BOT = 810_000
DATABASE_NAME = "kommo_agents_bench_faults"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
EVENT_KINDS = ("won", "won", "won", "seq", "ai")  # event n is EVENT_KINDS[n % 5]

# a third each; for a write, half the 500s and timeouts come after the write was applied
WRITE_FAULTS = ("500", "500 after the write", "timeout", "timeout after the write", "429", "429")
READ_FAULTS = ("500", "timeout", "429")
IDEMPOTENT_WRITES = ("update lead",)  # the same value set again: no harm done
# whose write it is, by its text
SOURCES = [
    ("trigger action", re.compile(r"^(Call Lead \d+ about|Won: Lead|The agent followed up|Thank you for your order|"
                                  r"Is our offer still right)")),
    ("sequence step", re.compile(r"^(Follow up with Lead|Is the offer still of interest)")),
    ("reply pipeline", re.compile(r"^(Reply to «|Chat: Visitor|Lead: )")),
]  # fmt: skip


def source_of(identity: tuple) -> str:
    text = str(identity[-1])
    return next((name for name, pattern in SOURCES if pattern.search(text)), "other")

# --- the fake vendors ----------------------------------------------------------------------


class FaultyVendors(FakeServer):
    """Kommo (account n at ``/acct<n>``), Telegram (``/bot<id>:<secret>/sendMessage``) and
    an OpenAI-compatible ``/v1/chat/completions``, failing ``rate`` of the time."""

    def __init__(self, *, rate: float, seed: int, hang_seconds: float) -> None:
        super().__init__(Handler)
        self.rate, self.seed, self.hang = rate, seed, hang_seconds
        self.occurrences: Counter[str] = Counter()  # request identity → requests so far
        self.requests: Counter[str] = Counter()  # vendor → requests
        self.injected: Counter[tuple[str, str]] = Counter()  # (vendor, fault) → times
        self.applied: dict[tuple, list[str]] = {}  # write identity → the answer each application got
        # (kind, account, lead) → (id, text, when) of the tasks and notes made: for the look-ups
        self.items: dict[tuple[str, int, int], list[tuple[int, str, int]]] = {}
        self.faults_on = True

    def fault(self, vendor: str, identity: tuple, *, write: bool) -> str | None:
        """The fault this request gets, or None: from the seed, the request's identity and
        how many times it was asked before, so the same run meets the same faults."""
        key = repr(identity)
        with self.lock:
            self.requests[vendor] += 1
            n = self.occurrences[key]
            self.occurrences[key] += 1
            if not self.faults_on:
                return None
        rng = random.Random(f"{self.seed}|{key}|{n}")
        if rng.random() >= self.rate:
            return None
        kind = rng.choice(WRITE_FAULTS if write else READ_FAULTS)
        with self.lock:
            self.injected[(vendor, kind)] += 1
        return kind

    def apply(self, identity: tuple, answer: str, item: tuple[str, int, int, str] | None = None) -> int:
        """Record a write as done (``answer``: what the caller is told); a new id for it."""
        with self.lock:
            self.applied.setdefault(identity, []).append(answer)
            self.next_id += 1
            if item is not None:
                kind, account, lead, text = item
                self.items.setdefault((kind, account, lead), []).append((self.next_id, text, int(time.time())))
            return self.next_id

    def listed(self, kind: str, account: int, lead: int, since: int) -> list[tuple[int, str, int]]:
        with self.lock:
            return [entry for entry in self.items.get((kind, account, lead), []) if entry[2] >= since]


KOMMO = re.compile(r"/acct(\d+)/api/v4/(.+)")
SEND = re.compile(r"/bot(\d+):[A-Za-z0-9_-]+/sendMessage")
LEAD = re.compile(r"leads/(\d+)")
CONTACT = re.compile(r"contacts/(\d+)")
NOTES = re.compile(r"leads/(\d+)/notes")


class Handler(JsonHandler):
    server: FaultyVendors

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")

    def _route(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        try:
            body = self._body() if method != "GET" else None
            if path.endswith("/chat/completions") and method == "POST":
                return self._openai(body)
            if (match := SEND.fullmatch(path)) and method == "POST":
                return self._telegram(int(match[1]), body)
            if match := KOMMO.fullmatch(path):
                return self._kommo(method, int(match[1]), match[2], parse_qs(query), body)
            self._answer(404, {"title": "Not Found", "status": 404})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: a timeout

    # -- faults ----------------------------------------------------------------------------

    def _respond(self, vendor: str, identity: tuple, write: bool, do: Callable[[str], tuple[int, dict]]) -> None:
        """Answer with the fault this request gets; ``do(answer)`` does the operation (a
        write records itself with the answer the caller gets) and returns the success."""
        fault = self.server.fault(vendor, identity, write=write)
        if fault == "429":
            return self._error(vendor, 429)
        if fault == "500":
            return self._error(vendor, 500)
        if fault == "timeout":
            time.sleep(self.server.hang)
            return self._error(vendor, 504)
        status, data = do(fault or "200")
        if fault == "500 after the write":
            return self._error(vendor, 500)
        if fault == "timeout after the write":
            time.sleep(self.server.hang)
        self._answer(status, data)

    def _error(self, vendor: str, status: int) -> None:
        headers = {"Retry-After": "1"} if status == 429 else {}
        if vendor == "Telegram":
            data = {"ok": False, "error_code": status, "description": "Too Many Requests: retry after 1"}
            if status == 429:
                data["parameters"] = {"retry_after": 1}
            else:
                data["description"] = "Internal Server Error"
        elif vendor == "OpenAI":
            kind = "rate_limit_error" if status == 429 else "api_error"
            data = {"error": {"message": "injected fault", "type": kind, "param": None, "code": None}}
        else:
            data = {"title": "Too Many Requests" if status == 429 else "Internal Server Error", "status": status}
        self._answer(status, data, headers)

    # -- Kommo -----------------------------------------------------------------------------

    def _kommo(self, method: str, account: int, rest: str, query: dict, body) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._answer(401, {"title": "Unauthorized", "status": 401})
        if not self.server.admit(account):  # the account's own allowance
            return self._answer(429, {"title": "Too Many Requests", "status": 429}, {"Retry-After": "1"})
        server = self.server
        if method == "GET" and (match := LEAD.fullmatch(rest)):
            lead = int(match[1])
            return self._respond("Kommo", ("get lead", account, lead), False, lambda _: (200, lead_json(lead)))
        if method == "GET" and (match := CONTACT.fullmatch(rest)):
            contact = int(match[1])
            data = {"id": contact, "name": f"Contact {contact}", "custom_fields_values": None, "_embedded": {}}
            return self._respond("Kommo", ("get contact", account, contact), False, lambda _: (200, data))
        if method == "GET" and rest == "leads":  # find_leads: how a retry finds a lead it created
            wanted = (query.get("query") or [""])[0]
            since = int((query.get("filter[created_at][from]") or ["0"])[0])
            leads = [
                {**lead_json(i), "name": name, "_embedded": {"contacts": [{"id": i + 1, "is_main": True}]}}
                for i, name, _ in server.listed("lead", account, 0, since)
                if wanted in name
            ]
            data = {"_embedded": {"leads": leads}}
            return self._respond("Kommo", ("find leads", account, wanted), False, lambda _: (200, data))
        if method == "GET" and rest == "contacts":
            empty = {"_embedded": {"contacts": []}}
            return self._respond("Kommo", ("find contacts", account, str(query)), False, lambda _: (200, empty))
        if method == "GET" and rest == "tasks":  # recent_tasks: how a recovery finds a task it made
            lead = int((query.get("filter[entity_id][]") or ["0"])[0])
            since = int((query.get("filter[updated_at][from]") or ["0"])[0])
            found = [{"id": i, "text": t} for i, t, _ in server.listed("task", account, lead, since)]
            return self._respond(
                "Kommo", ("list tasks", account, lead), False, lambda _: (200, {"_embedded": {"tasks": found}})
            )
        if method == "GET" and (match := NOTES.fullmatch(rest)):
            lead = int(match[1])
            since = int((query.get("filter[updated_at][from]") or ["0"])[0])
            found = [{"id": i, "params": {"text": t}} for i, t, _ in server.listed("note", account, lead, since)]
            return self._respond(
                "Kommo", ("list notes", account, lead), False, lambda _: (200, {"_embedded": {"notes": found}})
            )
        if method == "PATCH" and (match := LEAD.fullmatch(rest)) and isinstance(body, dict):
            lead = int(match[1])
            identity = ("update lead", account, lead, json.dumps(body, sort_keys=True))

            def update(answer: str) -> tuple[int, dict]:
                server.apply(identity, answer)
                return 200, {"id": lead, "updated_at": int(time.time())}

            return self._respond("Kommo", identity, True, update)
        if method == "POST" and rest == "tasks" and isinstance(body, list) and body:
            lead, text = int(body[0].get("entity_id") or 0), str(body[0].get("text"))
            identity = ("create task", account, lead, text)

            def task(answer: str) -> tuple[int, dict]:
                task_id = server.apply(identity, answer, ("task", account, lead, text))
                return 200, {"_embedded": {"tasks": [{"id": task_id, "request_id": "0"}]}}

            return self._respond("Kommo", identity, True, task)
        if method == "POST" and (match := NOTES.fullmatch(rest)) and isinstance(body, list) and body:
            lead, text = int(match[1]), str((body[0].get("params") or {}).get("text"))
            identity = ("add note", account, lead, text)

            def note(answer: str) -> tuple[int, dict]:
                note_id = server.apply(identity, answer, ("note", account, lead, text))
                return 200, {"_embedded": {"notes": [{"id": note_id, "entity_id": lead}]}}

            return self._respond("Kommo", identity, True, note)
        if method == "POST" and rest == "leads/complex" and isinstance(body, list) and body:
            identity = ("create lead", account, str(body[0].get("name")))

            def create(answer: str) -> tuple[int, dict]:
                lead_id = server.apply(identity, answer, ("lead", account, 0, identity[2]))
                return 200, [{"id": lead_id, "contact_id": lead_id + 1, "merged": False}]

            return self._respond("Kommo", identity, True, create)
        self._answer(404, {"title": "Not Found", "status": 404})

    # -- Telegram and the AI ---------------------------------------------------------------

    def _telegram(self, bot: int, body) -> None:
        chat, text = int(body["chat_id"]), str(body["text"])
        identity = ("telegram send", bot, chat, text)

        def send(answer: str) -> tuple[int, dict]:
            message_id = self.server.apply(identity, answer)
            result = {"message_id": message_id, "chat": {"id": chat, "type": "private"}}
            return 200, {"ok": True, "result": result | {"date": int(time.time()), "text": text}}

        self._respond("Telegram", identity, True, send)

    def _openai(self, body) -> None:
        messages = body.get("messages") or []
        last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        text = "Is our offer still right for you?" if last.startswith("(Write your next") else f"Reply to «{last[:80]}»"
        answer = {
            "id": f"chatcmpl-{digest}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
        }
        self._respond("OpenAI", ("complete", digest), False, lambda _: (200, answer))


def lead_json(lead: int) -> dict:
    return {
        "id": lead,
        "name": f"Lead {lead}",
        "price": 15000,
        "responsible_user_id": RESPONSIBLE,
        "status_id": FIRST_STAGE,
        "pipeline_id": PIPELINE,
        "created_at": 1717000000,
        "updated_at": 1717000000,
        "custom_fields_values": None,
        "_embedded": {"tags": [], "companies": [], "contacts": []},
    }


# --- a database server of our own ----------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL server for this script alone (initdb into a scratch directory, trust
    authentication, a free port on 127.0.0.1): restarting it disturbs nobody."""

    def __init__(self, bindir: Path) -> None:
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="bench-faults-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "postgres.log"
        self.port = free_port()
        self.ids: tuple[int, int] | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            import pwd

            entry = pwd.getpwnam("postgres")
            self.ids = (entry.pw_uid, entry.pw_gid)
            os.chown(self.dir, *self.ids)
        self.running = False
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")  # fmt: skip
        self.start()

    def _as_owner(self) -> None:
        assert self.ids is not None
        os.setgid(self.ids[1])
        os.setuid(self.ids[0])

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / tool), *args],
            cwd=self.dir,
            preexec_fn=self._as_owner if self.ids else None,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def lock_sqlite(path: str, seconds: float) -> None:
    """Hold SQLite's write lock for ``seconds``: the nearest thing to a restart it has."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# --- the worker, patched -------------------------------------------------------------------


def sitecustomize(retry_base: float, recover_after: int, sweep_after: int) -> str:
    return f'''"""bench_faults.py: shorter recovery delays in the worker it starts, and only there.

They are module constants of the project (no setting changes them): each module is
patched right after it is first imported."""
import importlib.abc
import importlib.machinery
import sys
from datetime import timedelta

PATCHES = {{
    "crm.dispatch": {{"RETRY_BASE_SECONDS": {retry_base!r}, "SWEEP_AFTER": timedelta(seconds={sweep_after})}},
    "sequences.runner": {{"RETRY_BASE_SECONDS": {retry_base!r}}},
    "triggers.execution": {{"ACTION_CLAIM_TIMEOUT": timedelta(seconds={recover_after})}},
    "agents.conversations": {{"LOST_AFTER": timedelta(seconds={recover_after})}},
}}


class PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        values = PATCHES.get(name)
        if values is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            for key, value in values.items():
                if not hasattr(module, key):
                    raise AttributeError(f"bench_faults: {{name}}.{{key}} is gone; update the benchmark")
                setattr(module, key, value)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, PatchAfterImport())
'''


PATCH_CHECK = """
import django
django.setup()
import agents.conversations, crm.dispatch, sequences.runner, triggers.execution
print(crm.dispatch.RETRY_BASE_SECONDS, crm.dispatch.SWEEP_AFTER.total_seconds(),
      sequences.runner.RETRY_BASE_SECONDS, triggers.execution.ACTION_CLAIM_TIMEOUT.total_seconds(),
      agents.conversations.LOST_AFTER.total_seconds())
"""


# --- the workload --------------------------------------------------------------------------


def rules(sequence_id: int) -> list[dict]:
    def moved_to(status: int) -> list[dict]:
        return [{"field": "status", "operator": "changed_to", "value": {"pipeline_id": PIPELINE, "status_id": status}}]

    return [
        {
            "name": "Won: task, note, field and thanks",
            "conditions": moved_to(WON),
            "actions": [
                {"type": "create_task", "text": "Call {{lead.name}} about the delivery", "due_in_minutes": 60,
                 "responsible_user_id": RESPONSIBLE},
                {"type": "add_note", "text": "Won: {{lead.name}}"},
                {"type": "update_field", "field": f"lead.cf.{CF_RESULT}", "value": "won"},
                {"type": "send_message", "text": "Thank you for your order, {{lead.name}}!"},
            ],
        },  # fmt: skip
        {
            "name": "Offer sent: follow up",
            "conditions": moved_to(SEQ_STAGE),
            "actions": [{"type": "start_sequence", "sequence_id": sequence_id}],
        },
        {
            "name": "Thinking it over: the agent writes",
            "conditions": moved_to(AI_STAGE),
            "actions": [
                {"type": "send_message", "ai_instruction": "Ask whether the offer is still right for them."},
                {"type": "add_note", "text": "The agent followed up with {{lead.name}}"},
            ],
        },
    ]


SEQUENCE_STEPS = [
    {"type": "delay", "minutes": 1},
    {"type": "send_message", "text": "Is the offer still of interest, {{lead.name}}?"},
    {"type": "create_task", "text": "Follow up with {{lead.name}}", "due_in_minutes": 60,
     "responsible_user_id": RESPONSIBLE},
]  # fmt: skip


def telegram_update(i: int) -> bytes:
    chat = FIRST_CHAT + i
    message = {
        "message_id": 1,
        "date": int(time.time()),
        "chat": {"id": chat, "type": "private"},
        "from": {"id": chat, "is_bot": False, "first_name": "Visitor", "last_name": str(i)},
        "text": f"Hello! Order {i}: how much is delivery to Kazan?",
    }
    return json.dumps({"update_id": 500_000 + i, "message": message}).encode()


def build(args, base: str) -> dict:
    """Agents, integrations, triggers, sequences and the event leads' chats."""
    from django.contrib.auth import get_user_model

    from agents.models import Agent, Conversation
    from integrations.models import Integration
    from sequences.models import Sequence
    from sequences.schemas import check_steps
    from triggers.models import Trigger
    from triggers.schemas import check_actions, check_condition_list

    user_model = get_user_model()
    owners = user_model.objects.bulk_create(
        [user_model(username=f"bench-faults-{n}", password="!") for n in range(args.accounts)]
    )
    agents = Agent.objects.bulk_create(
        [
            Agent(owner=owner, name=f"Faults agent {n}", instructions="Sell politely.", ai_model="openai:gpt-4o-mini")
            for n, owner in enumerate(owners)
        ]
    )
    if problems := check_steps(SEQUENCE_STEPS):
        sys.exit(f"invalid sequence steps: {problems}")
    kommos, bots, sequences = [], [], []
    for n, agent in enumerate(agents):
        kommos.append(
            Integration.objects.create(
                agent=agent,
                integration_type="kommo",
                config={"base_url": f"{base}/acct{n}", "account_id": ACCOUNT_ID},
                credentials={"access_token": TOKEN},
                status=Integration.Status.CONNECTED,
            )
        )
        bots.append(
            Integration.objects.create(
                agent=agent,
                integration_type="telegram",
                config={"base_url": base},
                credentials={"bot_token": f"{FIRST_BOT + n}:bench-faults-{n}", "secret_token": "s"},
                status=Integration.Status.CONNECTED,
            )
        )
        sequence = Sequence.objects.create(agent=agent, name="Follow-up", steps=SEQUENCE_STEPS)
        sequences.append(sequence)
        for rule in rules(sequence.pk):
            problems = check_condition_list(rule["conditions"], event="lead_status_changed")
            problems += check_actions(rule["actions"])
            if problems:
                sys.exit(f"invalid rule {rule['name']}: {problems}")
            Trigger.objects.create(agent=agent, active=True, event="lead_status_changed", **rule)
    chats = [
        Conversation(
            agent=agents[n % args.accounts],
            integration=bots[n % args.accounts],
            chat_id=str(FIRST_LEAD + n),
            crm_lead_id=FIRST_LEAD + n,
            sender_name=f"Lead {FIRST_LEAD + n}",
        )
        for n in range(args.events)
    ]
    chats += [  # half the inbound messages come from chats linked to a lead already
        Conversation(
            agent=agents[i % args.accounts],
            integration=bots[i % args.accounts],
            chat_id=str(FIRST_CHAT + i),
            crm_lead_id=LINKED_LEAD + i,
            sender_name=f"Visitor {i}",
        )
        for i in range(0, args.messages, 2)
    ]
    Conversation.objects.bulk_create(chats, batch_size=500)
    return {"agents": agents, "kommos": kommos, "bots": bots, "sequences": sequences}


def burst(args, world: dict) -> tuple[int, int, float]:
    """Store the events and the inbound messages, interleaved, as fast as they come."""
    from agents.conversations import inbound_store
    from crm.intake import delivery_store
    from crm.webhooks import parse_delivery
    from integrations.channels import telegram

    kommos, bots = world["kommos"], world["bots"]

    def receive(i: int) -> None:
        inbound_store(integration=bots[i % args.accounts], message=telegram.parse_update(telegram_update(i)))

    started = time.monotonic()
    stored = messages = 0
    every = max(1, args.events // max(args.messages, 1))
    modified = int(time.time())
    for n in range(args.events):
        kind = EVENT_KINDS[n % len(EVENT_KINDS)]
        status = {"won": WON, "seq": SEQ_STAGE, "ai": AI_STAGE}[kind]
        lead = FIRST_LEAD + n
        body = lead_status_delivery(
            lead, name=f"Lead {lead}", pipeline_id=PIPELINE, status_id=status, old_status_id=FIRST_STAGE,
            price=15000, modified=modified + n, account_id=ACCOUNT_ID,
        )  # fmt: skip
        result = delivery_store(integration_id=kommos[n % args.accounts].pk, changes=parse_delivery(body).changes)
        stored += len(result.event_ids)
        if n % every == every - 1 and messages < args.messages:
            receive(messages)
            messages += 1
    while messages < args.messages:
        receive(messages)
        messages += 1
    return stored, messages, time.monotonic() - started


# --- watching ------------------------------------------------------------------------------

EVENT_FINAL = ("done", "failed")
MESSAGE_FINAL = ("answered", "failed", "skipped")
RUN_FINAL = ("done", "failed", "exited", "cancelled")


def state() -> dict:
    """Where the work stands, from the database."""
    from django.db.models import Count

    from agents.models import ConversationMessage
    from crm.models import CrmEvent
    from sequences.models import ACTIVE_RUN_STATUSES, SequenceRun
    from triggers.models import ActionRun, TriggerFiring

    def by_status(queryset) -> dict[str, int]:
        return dict(queryset.values_list("status").annotate(n=Count("id")).order_by())

    events = by_status(CrmEvent.objects.all())
    messages = by_status(ConversationMessage.objects.filter(direction="in"))
    runs = by_status(SequenceRun.objects.all())
    return {
        "events": events,
        "messages": messages,
        "runs": runs,
        "events_final": sum(events.get(s, 0) for s in EVENT_FINAL),
        "messages_final": sum(messages.get(s, 0) for s in MESSAGE_FINAL),
        "runs_final": sum(runs.get(s, 0) for s in RUN_FINAL),
        "runs_open": sum(runs.get(s, 0) for s in ACTIVE_RUN_STATUSES),
        "firings_open": TriggerFiring.objects.exclude(status__in=("done", "failed")).count(),
        "actions_open": ActionRun.objects.filter(status__in=("pending", "running")).count(),
    }


def in_hand() -> tuple[dict[str, set[int]], int]:
    """What the worker holds now: tasks taken from the queue, and the events, actions, steps
    and replies it has claimed; and how many tasks it has taken.

    Its events: those its drains claimed (pending, ``claimed_at`` within
    crm.drain.DRAIN_CLAIM_TIMEOUT: a live drain renews it, another takes them once it is
    older): never tried, or tried with no retry coming (written with the attempt, so only
    if the schedule was lost); and those named by the retries it took from the queue
    (``process_events``)."""
    from django.utils import timezone
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    from agents.models import ConversationMessage
    from crm.drain import DRAIN_CLAIM_TIMEOUT
    from crm.models import CrmEvent
    from sequences.models import SequenceStep
    from triggers.models import ActionRun

    held: dict[str, set[int]] = {"events": set(), "messages": set(), "steps": set(), "actions": set()}
    taken = 0
    for payload in OrmQ.objects.filter(lock__gt=timezone.now()).values_list("payload", flat=True):
        taken += 1
        try:
            task = SignedPackage.loads(payload)
        except Exception:  # not ours to judge: counted as taken all the same
            continue
        func, task_args = task.get("func"), task.get("args") or ()
        if func == "crm.tasks.process_events" and task_args:  # a retry, or the sweeper's
            held["events"].update(task_args[0])
        elif func == "agents.tasks.reply_to_message" and task_args:
            held["messages"].add(task_args[0])
        elif func == "sequences.tasks.run_step" and task_args:
            held["steps"].add(task_args[0])
    coming, _ = events_coming()
    claimed = CrmEvent.objects.filter(status="pending", claimed_at__gte=timezone.now() - DRAIN_CLAIM_TIMEOUT)
    held["events"] |= {pk for pk, attempts in claimed.values_list("id", "attempts") if not attempts or pk not in coming}
    held["actions"] = set(ActionRun.objects.filter(status="running").values_list("id", flat=True))
    held["steps"] |= set(SequenceStep.objects.filter(status="running").values_list("id", flat=True))
    held["messages"] |= set(
        ConversationMessage.objects.filter(direction="in", status="processing").values_list("id", flat=True)
    )
    return held, taken


def attempts_of(held: dict[str, set[int]]) -> dict[str, dict[int, int]]:
    """The attempts so far of what the worker holds (an attempt that ends counts one more)."""
    from agents.models import ConversationMessage
    from crm.models import CrmEvent
    from sequences.models import SequenceStep
    from triggers.models import ActionRun

    return {
        "events": dict(CrmEvent.objects.filter(id__in=held["events"]).values_list("id", "attempts")),
        "messages": dict(ConversationMessage.objects.filter(id__in=held["messages"]).values_list("id", "attempts")),
        "steps": dict(SequenceStep.objects.filter(id__in=held["steps"]).values_list("id", "attempts")),
        "actions": dict(ActionRun.objects.filter(id__in=held["actions"]).values_list("id", "attempts")),
    }


def not_taken_up(held: dict[str, set[int]], before: dict[str, dict[int, int]]) -> int:
    """Of what the worker held, how much nothing has tried again since (a claim or an
    attempt counted after the snapshot, or a final state)."""
    from agents.models import ConversationMessage
    from crm.models import CrmEvent
    from sequences.models import SequenceStep
    from triggers.models import ActionRun

    left = 0
    for model, kind, open_statuses in (
        (CrmEvent, "events", ("pending",)),
        (ConversationMessage, "messages", ("received", "processing")),
        (SequenceStep, "steps", ("running", "scheduled")),
        (ActionRun, "actions", ("running", "pending")),
    ):
        rows = model.objects.filter(id__in=held[kind]).values_list("id", "attempts", "status")
        left += sum(1 for pk, attempts, status in rows if status in open_statuses and attempts <= before[kind][pk])
    return left


def still_open(held: dict[str, set[int]]) -> int:
    from agents.models import ConversationMessage
    from crm.models import CrmEvent
    from sequences.models import SequenceStep
    from triggers.models import ActionRun

    return (
        CrmEvent.objects.filter(id__in=held["events"], status="pending").count()
        + ConversationMessage.objects.filter(id__in=held["messages"], status__in=("received", "processing")).count()
        + SequenceStep.objects.filter(id__in=held["steps"], status__in=("running", "scheduled")).count()
        + ActionRun.objects.filter(id__in=held["actions"], status__in=("pending", "running")).count()
    )


def held_text(snapshot: tuple[dict[str, set[int]], int] | None) -> str:
    if snapshot is None:
        return "what it held unknown"
    held, taken = snapshot
    return (
        f"{taken} tasks taken from the queue; {len(held['events'])} events, "
        f"{len(held['actions'])} actions, {len(held['steps'])} sequence steps and {len(held['messages'])} replies "
        "in its hands"
    )


def safely(read: Callable[[], object]) -> object | None:
    """A read that may meet the database restarting: None then (and a fresh connection next time)."""
    from django.db import Error, connection

    try:
        return read()
    except Error:
        connection.close()
        return None


class Disruption:
    """A kill or a restart: when, what the worker held, and when that was all tried again
    and all ended."""

    def __init__(self, started: float, at_progress: float, snapshot: tuple[dict[str, set[int]], int] | None) -> None:
        self.started, self.at_progress = started, at_progress
        self.held, self.taken = snapshot if snapshot is not None else (None, None)
        self.before = safely(lambda: attempts_of(self.held)) if self.held is not None else None
        self.back: float | None = None  # the worker or the database is back
        self.final_at_back: int | None = None
        self.resumed: float | None = None  # something new ended after it was back
        self.taken_up: float | None = None  # all it held tried again (or ended)
        self.recovered: float | None = None  # all it held ended

    @property
    def waiting(self) -> bool:
        return self.held is not None and self.before is not None and self.recovered is None

    def tick(self, now: float, final: int) -> None:
        if self.back is None:
            return
        if self.final_at_back is None:
            self.final_at_back = final
        elif self.resumed is None and final > self.final_at_back:
            self.resumed = now
        if self.waiting and self.taken_up is None and safely(lambda: not_taken_up(self.held, self.before)) == 0:
            self.taken_up = now
        if self.waiting and safely(lambda: still_open(self.held)) == 0:
            self.recovered = now

    def report(self) -> dict:
        def after(t: float | None) -> float | None:
            return round(t - self.started, 1) if t is not None else None

        held = {"tasks_taken": self.taken} | {k: len(v) for k, v in (self.held or {}).items()}
        return {
            "at_progress": round(self.at_progress, 3),
            "held": held,
            "back_after_s": after(self.back),
            "resumed_after_s": after(self.resumed),
            "everything_held_tried_again_after_s": after(self.taken_up),
            "everything_held_ended_after_s": after(self.recovered),
        }


def watch(args, worker_box: list[Worker], env, work: Path, totals: int, restart_db: Callable[[], None] | None) -> dict:
    """Until everything is final (or the timeout): the kill and the restart on the way."""
    started = time.monotonic()
    kill: Disruption | None = None
    restart: Disruption | None = None
    progress_log: list[tuple[float, float]] = []
    last: dict | None = None
    last_print = 0.0
    finished_at = None
    stalled = False
    restart_thread: threading.Thread | None = None
    changed, signature = started, None
    while time.monotonic() - started < args.timeout:
        time.sleep(1.0)
        now = time.monotonic()
        current = safely(state)
        if current is None:
            continue
        last = current
        final = current["events_final"] + current["messages_final"] + current["runs_final"]
        now_signature = (final, current["firings_open"], current["actions_open"], current["runs_open"])
        if now_signature != signature:
            changed, signature = now, now_signature
        elif now - changed > args.stall:
            stalled = True  # nothing moved for that long: what is left is stuck
            print(f"  nothing has changed for {args.stall:.0f} s: stopped waiting", flush=True)
            break
        progress = final / totals
        progress_log.append((round(now - started, 1), round(progress, 4)))
        for disruption in (kill, restart):
            if disruption is not None:
                disruption.tick(now, final)
        if now - last_print >= 15:
            last_print = now
            print(
                f"    {now - started:6.1f} s: {100 * progress:5.1f} % final — events {current['events']}, "
                f"replies {current['messages']}, runs {current['runs']}; open firings {current['firings_open']}, "
                f"actions {current['actions_open']}",
                flush=True,
            )
        if kill is None and args.kill_at < 1 and progress >= args.kill_at:
            held = safely(in_hand)
            worker_box[0].kill()
            kill = Disruption(time.monotonic(), progress, held)
            print(
                f"  → {kill.started - started:.1f} s, {100 * progress:.1f} % final: SIGKILL to the worker's process "
                f"group ({held_text(held)}); starting it again",
                flush=True,
            )
            worker_box[0] = Worker(env, work / "worker.log")
            kill.back = time.monotonic()
            continue
        if restart is None and restart_db is not None and args.db_restart_at < 1 and progress >= args.db_restart_at:
            held = safely(in_hand)
            restart = Disruption(time.monotonic(), progress, held)
            print(
                f"  → {restart.started - started:.1f} s, {100 * progress:.1f} % final: restarting the database "
                f"(the worker: {held_text(held)})",
                flush=True,
            )

            def run_restart(disruption: Disruption = restart) -> None:
                restart_db()
                disruption.back = time.monotonic()

            restart_thread = threading.Thread(target=run_restart, daemon=True)
            restart_thread.start()
            continue
        if not worker_box[0].alive():
            print(f"  the worker exited ({worker_box[0].process.returncode}); starting it again", flush=True)
            worker_box[0] = Worker(env, work / "worker.log")
        done = (
            current["events_final"] == args.events
            and current["messages_final"] == args.messages
            and not current["runs_open"]
            and not current["firings_open"]
            and not current["actions_open"]
        )
        waiting_for = [d for d in (kill, restart) if d is not None and d.waiting]
        if done and (restart_thread is None or not restart_thread.is_alive()) and not waiting_for:
            finished_at = now
            break
    if restart_thread is not None:
        restart_thread.join(timeout=120)
    return {
        "seconds": (finished_at or time.monotonic()) - started,
        "finished": finished_at is not None,
        "stalled": stalled,
        "state": last,
        "kill": kill.report() if kill else None,
        "restart": restart.report() if restart else None,
        "progress": progress_log,
    }


# --- the checks ----------------------------------------------------------------------------


def account_of(base_url: str) -> int:
    return int(base_url.rstrip("/").rsplit("acct", 1)[1])


def verdict(args, server: FaultyVendors, world: dict) -> dict:
    """What ended how, what the fake did, and the checks."""
    from django.db.models import Count, Max, Min

    from agents.models import Conversation, ConversationMessage
    from crm.models import CrmEvent
    from sequences.models import SequenceRun, SequenceStep
    from triggers.models import ActionRun, TriggerFiring

    account = {k.pk: account_of(k.config["base_url"]) for k in world["kommos"]}
    applied = dict(server.applied)
    sent = {(identity[2], identity[3]) for identity in applied if identity[0] == "telegram send"}  # (chat, text)
    problems: list[str] = []

    events = CrmEvent.objects.all()
    event_status = dict(events.values_list("status").annotate(n=Count("id")).order_by())
    failed_events = Counter(
        re.sub(r"\d+", "N", error)[:160] for error in events.filter(status="failed").values_list("error", flat=True)
    )
    unexplained = events.filter(status="failed", error="").count()
    if events.count() != args.events:
        problems.append(f"{events.count()} events stored, {args.events} sent")
    if event_status.get("pending"):
        never, unscheduled, waiting, drains = pending_events()
        problems.append(
            f"{event_status['pending']} events still pending: {len(never)} never tried (e.g. {never[:5]}; "
            f"{drains} drain tasks queued; crm.drain.drain_kick queues one when they wait unclaimed), "
            f"{len(waiting)} with a retry "
            f"scheduled or queued, {len(unscheduled)} tried and failed with NO retry scheduled or queued (e.g. "
            f"{unscheduled[:5]}; crm.dispatch.events_sweep re-queues those SWEEP_AFTER after their retry_at)"
        )
    if unexplained:
        problems.append(f"{unexplained} events failed without a reason")
    span = events.exclude(processed_at=None).aggregate(first=Min("received_at"), last=Max("processed_at"))

    firings = dict(TriggerFiring.objects.values_list("status").annotate(n=Count("id")).order_by())
    open_firings = sum(n for status, n in firings.items() if status not in ("done", "failed"))
    if open_firings:
        problems.append(f"{open_firings} trigger firings left open: {firings}")
    expected_firings = args.events - event_status.get("failed", 0)
    if sum(firings.values()) < expected_firings:
        problems.append(f"{sum(firings.values())} firings for {expected_firings} events that did not fail")

    runs = ActionRun.objects.select_related("firing__event")
    actions = Counter((run.type, run.status) for run in runs)
    action_status = Counter(run.status for run in runs)
    retried = sum(1 for run in runs if run.attempts > 1)
    interrupted = sum(1 for run in runs if run.status == "failed" and "interrupted" in run.error)
    action_errors = Counter(
        re.sub(r"\d+", "N", run.error)[:140] for run in runs if run.status == "failed"
    )
    if action_status.get("pending") or action_status.get("running"):
        problems.append(f"actions left open: {dict(action_status)}")

    # nothing lost: each action, step and reply marked done is found at the fake
    lost: list[str] = []
    failed_but_applied = 0
    chats = dict(Conversation.objects.values_list("id", "chat_id"))
    for run in runs:
        acct, lead = account[run.firing.event.integration_id], run.firing.crm_lead_id
        result = run.result or {}
        found = None
        if run.type == "create_task":
            found = ("create task", acct, lead, result.get("text", "")) in applied if run.status == "done" else any(
                i[:3] == ("create task", acct, lead) for i in applied
            )
        elif run.type == "add_note":
            found = ("add note", acct, lead, result.get("text", "")) in applied if run.status == "done" else any(
                i[:3] == ("add note", acct, lead) for i in applied
            )
        elif run.type == "update_field":
            found = any(i[:3] == ("update lead", acct, lead) for i in applied)
        elif run.type == "send_message":
            chat = int(chats.get(result.get("conversation_id"), lead))
            found = (chat, result.get("text", "")) in sent if run.status == "done" else any(
                c == lead for c, _ in sent
            )
        if found is None:
            continue
        if run.status == "done" and not found:
            lost.append(f"{run.type} of lead {lead} (action run {run.pk})")
        if run.status == "failed" and found:
            failed_but_applied += 1

    steps = SequenceStep.objects.select_related("run")
    step_status = Counter((step.type, step.status) for step in steps)
    for step in steps.filter(status="done", type__in=("send_message", "create_task")):
        out = step.output or {}
        lead = step.run.crm_lead_id
        if step.type == "send_message":
            ok = (int(chats.get(out.get("conversation_id"), lead)), out.get("text", "")) in sent
        else:
            ok = ("create task", account[step.run.integration_id], lead, out.get("text", "")) in applied
        if not ok:
            lost.append(f"sequence step {step.type} of lead {lead} (step {step.pk})")
    run_status = dict(SequenceRun.objects.values_list("status").annotate(n=Count("id")).order_by())
    run_errors = Counter(
        re.sub(r"\d+", "N", error)[:140]
        for error in SequenceRun.objects.filter(status="failed").values_list("error", flat=True)
    )
    open_runs = sum(n for status, n in run_status.items() if status not in RUN_FINAL)
    if open_runs:
        problems.append(f"{open_runs} sequence runs left open: {run_status}")
    seq_started = actions.get(("start_sequence", "done"), 0)
    if sum(run_status.values()) != seq_started:
        problems.append(f"{sum(run_status.values())} sequence runs for {seq_started} start_sequence actions done")

    inbound = ConversationMessage.objects.filter(direction="in")
    message_status = dict(inbound.values_list("status").annotate(n=Count("id")).order_by())
    message_errors = Counter(
        re.sub(r"\d+", "N", e)[:140] for e in inbound.filter(status="failed").values_list("error", flat=True)
    )
    if inbound.count() != args.messages:
        problems.append(f"{inbound.count()} inbound messages stored, {args.messages} sent")
    if message_status.get("received") or message_status.get("processing"):
        problems.append(f"inbound messages left open: {message_status}")
    # a reply left "sending" was not confirmed by the messenger: it may or may not be out
    replies = ConversationMessage.objects.filter(
        direction="out", reply_to__isnull=False, status="sent"
    ).select_related("conversation")
    for reply in replies:
        if (int(reply.conversation.chat_id), reply.text) not in sent:
            lost.append(f"reply {reply.pk} in chat {reply.conversation.chat_id}")
    answered = inbound.filter(status="answered").count()
    if replies.count() < answered:
        problems.append(f"{answered} messages answered, {replies.count()} replies stored")
    if lost:
        problems.append(f"{len(lost)} things marked done that the fake never got, e.g. {lost[:3]}")

    # nothing twice
    applications = Counter(identity[0] for identity, answers in applied.items() for _ in answers)
    twice = {identity: answers for identity, answers in applied.items() if len(answers) > 1}
    duplicates = {i: a for i, a in twice.items() if i[0] not in IDEMPOTENT_WRITES}
    harmless = {i: a for i, a in twice.items() if i[0] in IDEMPOTENT_WRITES}
    duplicate_kinds = Counter(identity[0] for identity in duplicates)
    duplicate_sources = Counter(f"{source_of(identity)}: {identity[0]}" for identity in duplicates)
    duplicate_causes = Counter(" → ".join(answers) for answers in duplicates.values())
    if duplicates:
        examples = [f"{identity} answered {answers}" for identity, answers in list(duplicates.items())[:4]]
        problems.append(f"{len(duplicates)} writes applied more than once: {dict(duplicate_kinds)}; e.g. {examples}")
    if server.refused:
        problems.append(f"{server.refused} requests over Kommo's allowance (429 not injected)")
    created = sum(1 for identity in applied if identity[0] == "create lead")
    return {
        "events": event_status,
        "event_failures": dict(failed_events.most_common(8)),
        "first_received_to_last_processed_s": (span["last"] - span["first"]).total_seconds() if span["last"] else None,
        "firings": firings,
        "actions": {f"{t} {s}": n for (t, s), n in sorted(actions.items())},
        "action_status": dict(action_status),
        "actions_retried": retried,
        "actions_interrupted": interrupted,
        "action_failures": dict(action_errors.most_common(8)),
        "actions_failed_but_applied": failed_but_applied,
        "runs": run_status,
        "run_failures": dict(run_errors.most_common(6)),
        "steps": {f"{t} {s}": n for (t, s), n in sorted(step_status.items())},
        "messages": message_status,
        "message_failures": dict(message_errors.most_common(6)),
        "leads_created_for_new_chats": created,
        "requests": dict(server.requests),
        "injected": {f"{vendor} {kind}": n for (vendor, kind), n in sorted(server.injected.items())},
        "refused_by_allowance": server.refused,
        "most_in_one_second_one_account": server.most_in_one_second(),
        "writes_applied": dict(applications),
        "duplicates": dict(duplicate_kinds),
        "duplicate_sources": dict(sorted(duplicate_sources.items())),
        "duplicate_causes": dict(duplicate_causes.most_common(8)),
        "duplicate_examples": [f"{i} answered {a}" for i, a in list(duplicates.items())[:6]],
        "idempotent_repeats": len(harmless),
        "lost": lost[:20],
        "problems": problems,
    }


def events_coming() -> tuple[set[int], int]:
    """The events a retry is coming for: named by a ``crm.tasks.process_events`` schedule
    not yet run or by such a task in the queue (taken or not); and how many drain tasks
    (``crm.tasks.drain_events``) are in the queue."""
    import ast

    from django_q.models import OrmQ, Schedule
    from django_q.signing import SignedPackage

    coming: set[int] = set()
    retries = Schedule.objects.filter(func="crm.tasks.process_events").exclude(repeats=0)
    for text in retries.values_list("args", flat=True):
        try:
            coming.update(ast.literal_eval(text or "()")[0])
        except (ValueError, SyntaxError, IndexError, TypeError):
            continue
    drains = 0
    for payload in OrmQ.objects.values_list("payload", flat=True):
        try:
            task = SignedPackage.loads(payload)
        except Exception:  # not ours to judge
            continue
        if task.get("func") == "crm.tasks.process_events" and task.get("args"):
            coming.update(task["args"][0])
        elif task.get("func") == "crm.tasks.drain_events":
            drains += 1
    return coming, drains


def pending_events() -> tuple[list[int], list[int], list[int], int]:
    """The pending events: never tried (drains take those: a queued ``crm.tasks.drain_events``,
    or the one the worker's dispatcher queues, ``crm.drain.drain_kick``); tried, and nothing
    will try again (no retry scheduled, no ``process_events`` task queued); tried, and a
    retry is scheduled or queued. And how many drain tasks are in the queue."""
    from crm.models import CrmEvent

    coming, drains = events_coming()
    never, unscheduled, waiting = [], [], []
    for pk, attempts in CrmEvent.objects.filter(status="pending").values_list("id", "attempts").order_by("id"):
        (never if not attempts else waiting if pk in coming else unscheduled).append(pk)
    return never, unscheduled, waiting, drains


def log_errors(log: Path) -> Counter[str]:
    """ERROR lines of the worker's log by their event name (the logger's dotted name)."""
    found: Counter[str] = Counter()
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        if " ERROR " in line:
            words = []
            for word in line.split(" ERROR ", 1)[1].split()[:6]:
                if "=" in word:  # the key=value part: the same event with other values
                    break
                words.append(word)
            found[" ".join(words)[:80]] += 1
    return found


# --- the run -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--events", type=int, default=1000, help="CRM events in the burst (1000)")
    parser.add_argument("--messages", type=int, default=200, help="inbound Telegram messages in the burst (200)")
    parser.add_argument("--accounts", type=int, default=50, help="agents, each its own Kommo account and bot (50)")
    parser.add_argument("--failure-rate", type=float, default=0.3, help="share of vendor answers that fail (0.3)")
    parser.add_argument("--seed", type=int, default=9, help="the faults' seed (9)")
    parser.add_argument("--read-timeout", type=float, default=1.0, help="the worker's HTTP and AI timeout, s (1)")
    parser.add_argument("--workers", type=int, default=4, help="django-q2 worker processes, Q_WORKERS (4)")
    parser.add_argument("--kill-at", type=float, default=0.3, help="SIGKILL the worker at this share done (0.3; 1: no)")
    parser.add_argument("--db-restart-at", type=float, default=0.6, help="restart the database there (0.6; 1: no)")
    parser.add_argument("--db-down", type=float, default=5, help="PostgreSQL: seconds it stays down (5)")
    parser.add_argument("--sqlite-lock", type=float, default=0, help="SQLite: hold its write lock this long instead")
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL server of the script's own, not SQLite")
    parser.add_argument("--pg-bin", default=str(PG_BIN), help=f"PostgreSQL's programs ({PG_BIN})")
    parser.add_argument("--redis-url", default="", help="Redis for the rate limiter and cache (never database 0)")
    parser.add_argument("--retry-base", type=float, default=1, help="retry backoff base in the worker, s (1; ships 30)")
    parser.add_argument("--recover-after", type=int, default=60, help="claims count as interrupted after, s (60)")
    parser.add_argument("--sweep-after", type=int, default=600, help="an event's retry counts as lost after, s (600)")
    parser.add_argument("--q-timeout", type=int, default=60, help="Q_TIMEOUT; a dead worker's task returns +60 s (60)")
    parser.add_argument("--log-level", default="INFO", help="the worker's LOG_LEVEL (INFO)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for everything to end (1800)")
    parser.add_argument(
        "--stall", type=float, default=None,
        help="stop waiting when nothing changed this long (default: --sweep-after + 120, longer than any recovery)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    args = parser.parse_args(argv)
    if args.stall is None:  # a lost event is swept SWEEP_AFTER after it was due, on a minute schedule
        args.stall = args.sweep_after + 120
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_redis_url(args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    cleanup: list[Callable[[], None]] = []

    def stop_on_signal(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    worker_box: list[Worker] = []
    try:
        return run(args, work, cleanup, worker_box)
    finally:
        for worker in worker_box:
            worker.stop()
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception as exc:  # the rest still runs
                print(f"cleanup: {exc}", file=sys.stderr)


def run(args, work: Path, cleanup: list, worker_box: list[Worker]) -> int:
    restart_db: Callable[[], None] | None = None
    if args.postgres:
        pg = PrivatePostgres(Path(args.pg_bin))
        cleanup.append(pg.destroy)
        create_database(pg.url("postgres"), DATABASE_NAME)
        database_url = pg.url(DATABASE_NAME)

        def restart_postgres() -> None:
            pg.stop("fast")
            time.sleep(args.db_down)
            pg.start()

        restart_db = restart_postgres
        database = f"PostgreSQL of its own (port {pg.port}, data in {pg.data})"
    else:
        path = work / "bench.sqlite3"
        database_url = f"sqlite:///{path}"
        if args.sqlite_lock:
            restart_db = lambda: lock_sqlite(str(path), args.sqlite_lock)  # noqa: E731

        database = f"SQLite {path}"
    if not args.keep:
        cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))

    server = FaultyVendors(rate=args.failure_rate, seed=args.seed, hang_seconds=args.read_timeout + 0.5).start()
    cleanup.append(server.shutdown)
    (work / "sitecustomize.py").write_text(sitecustomize(args.retry_base, args.recover_after, args.sweep_after))
    env = worker_env(
        database_url=database_url,
        redis_url=args.redis_url,
        workers=args.workers,
        log_level=args.log_level,
        pythonpath=[str(work)],
        extra={
            "Q_SYNC": "false",
            "Q_TIMEOUT": str(args.q_timeout),
            "HTTP_READ_TIMEOUT_SECONDS": str(args.read_timeout),
            "AI_TIMEOUT_SECONDS": str(args.read_timeout),
            "OPENAI_API_KEY": "bench-faults-key",
            "OPENAI_BASE_URL": f"{server.url}/v1",
            "SEQUENCE_STEP_TIMEOUT_SECONDS": str(args.recover_after),
            "CACHE_KEY_PREFIX": f"bench-faults-{os.getpid()}",
            "CHANNELS_PREFIX": f"bench-faults-{os.getpid()}",
        },
    )
    setup_django(env)
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django_q.models import Schedule

    call_command("migrate", verbosity=0, interactive=False)
    swept = Schedule.objects.filter(
        func__in=("crm.tasks.sweep_pending_events", "agents.tasks.sweep_lost_messages")
    ).update(minutes=1)
    patched = subprocess.run(
        [sys.executable, "-c", PATCH_CHECK], cwd=Path(__file__).resolve().parents[2], env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if patched.returncode:
        sys.exit(f"the worker's patch does not load:\n{patched.stderr[-3000:]}")
    world = build(args, server.url)
    seq_events = sum(1 for n in range(args.events) if EVENT_KINDS[n % len(EVENT_KINDS)] == "seq")
    print(
        f"database: {database}; rate limiter and cache in "
        f"{'Redis ' + args.redis_url if args.redis_url else 'the database and each process'}; {os.cpu_count()} cores "
        f"shared with the worker, the database, the fake vendors and other people's runs (load average "
        f"{os.getloadavg()[0]:.1f}); logs in {work}",
        flush=True,
    )
    print(
        f"{args.accounts} agents (Kommo account, Telegram bot, {world['agents'][0].ai_model} at the fake); burst of "
        f"{args.events} lead-status events (won: task + note + field + message; offer sent: a sequence [delay 1 min, "
        f"message, task]; thinking: AI message + note) and {args.messages} inbound messages (half from new people: "
        f"a lead is created)",
        flush=True,
    )
    print(
        f"faults: {100 * args.failure_rate:g} % of answers, seed {args.seed}: 500 / timeout (answer after "
        f"{args.read_timeout + 0.5:g} s; the worker waits {args.read_timeout:g} s) / 429 with Retry-After 1, a third "
        "each; for writes half the 500s and timeouts after the write was applied; Kommo's 7 a second per account "
        "enforced besides",
        flush=True,
    )
    print(
        f"in the worker only (sitecustomize on its PYTHONPATH; checked: {patched.stdout.strip()}): retry backoff base "
        f"{args.retry_base:g} s instead of 30 (crm.dispatch, sequences.runner), an action claim interrupted after "
        f"{args.recover_after} s instead of 300 (triggers.execution.ACTION_CLAIM_TIMEOUT), a reply lost after "
        f"{args.recover_after} s instead of 600 (agents.conversations.LOST_AFTER), an event's retry lost after "
        f"{args.sweep_after} s (shipped: 600; crm.dispatch.SWEEP_AFTER); settings: Q_TIMEOUT={args.q_timeout} "
        f"(a dead worker's task comes back after {args.q_timeout + 60} s), SEQUENCE_STEP_TIMEOUT_SECONDS="
        f"{args.recover_after}; {swept} sweep schedules every minute instead of 5; Q_WORKERS={args.workers}, "
        f"KOMMO_RATE_LIMIT_PER_SECOND={settings.KOMMO_RATE_LIMIT_PER_SECOND:g}",
        flush=True,
    )

    connection.close()
    worker_box.append(Worker(env, work / "worker.log"))
    from django_q.tasks import async_task

    async_task("math.floor", 1.5, save=False)  # the worker is up once this is done
    from django_q.models import OrmQ

    deadline = time.monotonic() + 120
    while OrmQ.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stored, messages, store_seconds = burst(args, world)
    print(
        f"\n== burst: {stored} events and {messages} messages stored in {store_seconds:.1f} s through the webhook "
        f"intake; the worker at them already",
        flush=True,
    )
    totals = args.events + args.messages + seq_events
    outcome = watch(args, worker_box, env, work, totals, restart_db)
    for worker in worker_box:
        worker.stop()
    worker_box.clear()
    if not outcome["finished"]:
        why = "nothing moved" if outcome["stalled"] else f"not within {args.timeout:.0f} s"
        print(f"  NOT everything ended ({why})", flush=True)
    result = safely(lambda: verdict(args, server, world))
    if result is None:
        sys.exit("the database did not answer for the checks")
    errors = log_errors(work / "worker.log")
    connection.close()

    show(args, outcome, result, errors, store_seconds, restart_db is not None)
    results = {"outcome": {k: v for k, v in outcome.items() if k != "progress"}, "verdict": result}
    results["worker_log_errors"] = dict(errors.most_common(10))
    print("\nBENCH_RESULT " + json.dumps(results, default=str))
    problems = list(result["problems"])
    if not outcome["finished"]:
        problems.insert(0, "not everything ended: " + ("stuck" if outcome["stalled"] else f"{args.timeout:.0f} s"))
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    return 0


def show(args, outcome: dict, r: dict, errors: Counter, store_seconds: float, restarted: bool) -> None:
    progress = outcome["progress"]

    def when(share: float) -> str:
        t = next((t for t, p in progress if p >= share), None)
        return f"{t:.0f} s" if t is not None else "-"

    seconds = outcome["seconds"]
    ended = "everything ended" if outcome["finished"] else "STUCK" if outcome["stalled"] else "TIMED OUT"
    print(f"\n== outcome after {seconds:.1f} s ({ended})")
    print(
        f"  work final (events + replies + sequence runs): 50 % after {when(0.5)}, 90 % after {when(0.9)}, "
        f"99 % after {when(0.99)}, all after {when(1.0)}; {args.events / seconds:.1f} events/s overall "
        f"(retries wait out their backoff and django-q2's 30 s schedule look-up)"
    )
    for name in ("kill", "restart"):
        d = outcome.get(name)
        if d is None:
            if name == "restart" and not restarted:
                print("  database restart: none (SQLite has no server to restart; --sqlite-lock N locks the file)")
            continue
        label = "worker SIGKILLed" if name == "kill" else "database restarted"
        print(
            f"  {label} at {100 * d['at_progress']:.0f} % final, the worker holding {d['held']}: back after "
            f"{d['back_after_s']} s; work ending again {d['resumed_after_s']} s after; everything held tried again "
            f"{d['everything_held_tried_again_after_s']} s after, and ended (done or failed) "
            f"{d['everything_held_ended_after_s']} s after"
        )
    print(f"  events: {r['events']}; firings: {r['firings']}")
    if r["event_failures"]:
        print(f"    event failures: {r['event_failures']}")
    print(
        f"  actions: {r['action_status']} ({r['actions_retried']} needed more than one attempt, "
        f"{r['actions_interrupted']} failed as interrupted, {r['actions_failed_but_applied']} failed although the "
        "fake had applied the write)"
    )
    print(f"    by type: {r['actions']}")
    if r["action_failures"]:
        print(f"    action failures: {r['action_failures']}")
    print(f"  sequence runs: {r['runs']}; steps: {r['steps']}")
    if r["run_failures"]:
        print(f"    run failures: {r['run_failures']}")
    print(f"  inbound messages: {r['messages']}; leads created for new chats: {r['leads_created_for_new_chats']}")
    if r["message_failures"]:
        print(f"    reply failures: {r['message_failures']}")
    print(
        f"  the fake: requests {r['requests']}; faults injected {r['injected']}; refused by the allowance "
        f"{r['refused_by_allowance']}; most to one account in any second {r['most_in_one_second_one_account']} "
        f"(allowance {ALLOWANCE})"
    )
    print(
        f"  writes applied: {r['writes_applied']}; lead updates applied twice (same value, harmless): "
        f"{r['idempotent_repeats']}"
    )
    if r["duplicates"]:
        print(f"  DONE TWICE: {r['duplicates']}; by whom: {r['duplicate_sources']}")
        print(f"    what each application was answered, in order: {r['duplicate_causes']}")
        for example in r["duplicate_examples"]:
            print(f"    {example}")
    if errors:
        print(f"  worker log: {sum(errors.values())} ERROR lines: {dict(errors.most_common(6))}")
    print("  check: " + ("; ".join(r["problems"]) if r["problems"] else
                         "every event, action, run and reply ended done or failed with a reason; nothing twice, "
                         "nothing lost"))


if __name__ == "__main__":
    sys.exit(main())
