"""A worker killed at any moment (SIGKILL) loses no run and repeats no message, task or
note: a real ``manage.py worker`` (django-q2's cluster and the sequence dispatcher) runs
sequences for many leads against fake Kommo and Telegram servers, is killed several
times in the middle, whole process group at once, and started again.

The child gets short recovery times through the environment (config/settings/base.py):
SEQUENCE_STEP_TIMEOUT_SECONDS (a step "running" this long was interrupted) and
SEQUENCE_REQUEUE_SECONDS (a step queued this long ago and not started is queued
again), which sequences/runner.py reads instead of its 10 and 2 minutes. The timeout
stays well above the longest step here (a fake vendor call of LATENCY): a step still
being done must not be taken for an interrupted one.

PostgreSQL only: the worker runs on the test database as a separate process, so the
test commits what it creates (``transaction=True``), and a killed process's open
transactions are rolled back by the server, as in production.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.conf import Conf

from agents.models import Conversation, ConversationMessage
from sequences.models import ACTIVE_RUN_STATUSES, SequenceRun, SequenceStep
from sequences.runner import run_start
from tests.factories import make_agent, make_integration, make_sequence
from tests.live_server import ROOT, _die_with_parent, process_env
from tests.sequences.fake_vendors import FakeVendors

ON_POSTGRES = "postgresql" in settings.DATABASES["default"]["ENGINE"]
HAS_PROC = Path("/proc/self/stat").exists()

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not ON_POSTGRES,
        reason="needs PostgreSQL (DATABASE_URL=postgres://…): a real worker process on the test database, killed "
        "with its transactions open",
    ),
    pytest.mark.skipif(not HAS_PROC, reason="finds the killed worker's processes in /proc"),
]

RUNS = 60
SEQUENCES = 5  # delays of 1, 1.25 … 2 seconds, so that runs do not move in lockstep
STEPS = ("delay", "send_message", "create_task", "add_note")
WRITES = RUNS * 3  # a message, a task and a note a run
KILL_AT_WRITES = (0.25, 0.5, 0.75)  # kills after the first one (during the delays): share of WRITES done
LATENCY = 0.1  # each vendor write is done this long before the worker hears of it
STEP_TIMEOUT_SECONDS = 4
REQUEUE_SECONDS = 2
FINISH_WITHIN = 60  # seconds, after the last start
INTERRUPTED_SEND = "interrupted while sending"
TASK_TEXT, NOTE_TEXT = "Call the lead back", "Follow-up sent"
FIRST_LEAD, FIRST_CHAT = 31_000_000, 710_000_000

CHILD_ENV = {
    "Q_SYNC": "false",  # config/settings/test.py runs tasks inline by default
    "Q_WORKERS": "4",
    "Q_POLL": "0.05",
    "SEQUENCE_DISPATCH_SECONDS": "0.2",
    "SEQUENCE_STEP_TIMEOUT_SECONDS": str(STEP_TIMEOUT_SECONDS),
    "SEQUENCE_REQUEUE_SECONDS": str(REQUEUE_SECONDS),
}


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


class Worker:
    """``manage.py worker`` in a process group of its own: SIGKILL to the group reaches
    the cluster's sentinel, pusher, monitor and task processes at once, as when a
    container is killed."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # a file, not a pipe: a full pipe would block it
            log.write(f"\n--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "worker"], cwd=ROOT, env=process_env() | CHILD_ENV,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.starts += 1

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to every process of the worker; returns once none is left."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group is named after its leader
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        deadline = time.monotonic() + 10
        while process_group(pgid):
            assert time.monotonic() < deadline, f"processes of the killed worker still alive: {process_group(pgid)}"
            time.sleep(0.01)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture
def worker(transactional_db, tmp_path):
    worker = Worker(tmp_path / "worker.log")
    try:
        yield worker
    finally:
        worker.kill()  # before the test database is flushed


def wait_until(condition: Callable[[], bool], *, what: str, worker: Worker, timeout: float, every=0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.running(), f"the worker exited ({worker.process and worker.process.returncode}):\n{worker.log()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s ({progress()})\n{worker.log()}"
        time.sleep(every)


def steps_of_delay(seconds: float) -> list[dict]:
    return [
        # seconds are not in the schema (whole minutes and more): set on the row directly
        {"type": "delay", "minutes": seconds / 60},
        {"type": "send_message", "text": "Still interested in the offer?"},
        {"type": "create_task", "text": TASK_TEXT, "due_in_minutes": 30, "responsible_user_id": 8374811},
        {"type": "add_note", "text": NOTE_TEXT},
    ]


def start_runs(vendors: FakeVendors) -> dict[int, int]:
    """RUNS runs queued for the worker (none started yet); returns chat id → lead id."""
    agent = make_agent()
    make_integration(
        agent, integration_type="kommo", config={"base_url": vendors.url, "account_id": 31416592},
        credentials={"access_token": "crm-token"},
    )  # fmt: skip
    telegram = make_integration(
        agent, integration_type="telegram", config={"base_url": vendors.url},
        credentials={"bot_token": "123456:ABC-def", "secret_token": "s"},
    )  # fmt: skip
    sequences = [
        make_sequence(agent, trigger_config={}, steps=steps_of_delay(1 + k / (SEQUENCES - 1)))
        for k in range(SEQUENCES)
    ]
    chats = {}
    for n in range(RUNS):
        lead, chat = FIRST_LEAD + n, FIRST_CHAT + n
        Conversation.objects.create(
            agent=agent, integration=telegram, crm_lead_id=lead, chat_id=str(chat), last_inbound_at=timezone.now()
        )
        run_start(sequence=sequences[n % SEQUENCES], lead_id=lead, started_by="api")
        chats[chat] = lead
    return chats


def progress() -> str:
    runs = Counter(SequenceRun.objects.values_list("status", flat=True))
    steps = Counter(SequenceStep.objects.values_list("type", "status"))
    return f"runs {dict(runs)}, steps {dict(steps)}"


def running_steps() -> set[int]:
    return set(SequenceStep.objects.filter(status="running").values_list("id", flat=True))


def test_a_worker_killed_mid_run_loses_no_step_and_repeats_none(worker, monkeypatch):
    # the runs' first steps go to the queue for the worker, not inline in this process
    monkeypatch.setattr(Conf, "SYNC", False)
    began = time.monotonic()
    with FakeVendors(latency=LATENCY) as vendors:
        chats = start_runs(vendors)
        interrupted: set[int] = set()  # steps a kill left "running"
        lifetimes: list[float] = []

        def run_worker_until(condition, what: str, *, every: float = 0.05, timeout: float = 30) -> None:
            started = time.monotonic()
            worker.start()
            wait_until(condition, what=what, worker=worker, timeout=timeout, every=every)
            worker.kill()
            interrupted.update(running_steps())
            lifetimes.append(time.monotonic() - started)

        # killed first while the runs go into their delays,
        run_worker_until(
            lambda: SequenceStep.objects.filter(index=0, status__in=("waiting", "done")).count() >= RUNS // 3,
            "runs waiting in their delays",
        )
        # then each time the moment a vendor has done a write that the worker has not heard of yet,
        for share in KILL_AT_WRITES:
            run_worker_until(
                lambda share=share: vendors.count() >= share * WRITES, f"{share:.0%} of the writes", every=0.002
            )
        # and at last left to finish
        run_worker_until(
            lambda: not SequenceRun.objects.filter(status__in=ACTIVE_RUN_STATUSES).exists(),
            "every run finished",
            timeout=FINISH_WITHIN,
        )
        writes = list(vendors.writes)
    elapsed = time.monotonic() - began

    # nothing left half-done
    assert not SequenceStep.objects.filter(status="running").exists()
    assert interrupted, "no kill caught a step in the middle: the test proved nothing"

    # nothing repeated: one write at most for each (run, step)
    lead_of = {("message", chat): lead for chat, lead in chats.items()}
    per_step = Counter((w.kind, lead_of.get((w.kind, w.target), w.target)) for w in writes)
    assert {key: n for key, n in per_step.items() if n > 1} == {}
    assert {lead for _, lead in per_step} <= set(chats.values()), "a write for no run's lead"
    stored = Counter(
        ConversationMessage.objects.filter(direction="outbound").values_list("conversation__crm_lead_id", flat=True)
    )
    assert {lead: n for lead, n in stored.items() if n > 1} == {}

    # nothing lost: every run done with each write once, or failed visibly on a send it cannot tell about
    runs = SequenceRun.objects.all()
    assert len(runs) == RUNS
    vendor_ids = {(w.kind, lead_of.get((w.kind, w.target), w.target)): w.id for w in writes}
    failed = []
    for run in runs:
        steps = {s.index: s for s in SequenceStep.objects.filter(run=run)}
        lead = run.crm_lead_id
        if run.status == "done":
            assert [steps[i].status for i in range(len(STEPS))] == ["done"] * len(STEPS), run
            assert {kind for kind, of in per_step if of == lead} == {"message", "task", "note"}, run
            message = ConversationMessage.objects.get(pk=steps[1].output["message_id"])
            assert message.external_id == str(vendor_ids["message", lead])
            assert steps[2].output["task_id"] == vendor_ids["task", lead]
            assert steps[3].output["note_id"] == vendor_ids["note", lead]
        else:
            assert run.status == "failed", f"run of lead {lead} ended {run.status}: {run.error}"
            assert steps[1].status == "failed" and steps[1].error.startswith(INTERRUPTED_SEND), steps[1].error
            assert [steps[i].status for i in (0, 2, 3)] == ["done", "pending", "pending"]
            assert per_step[("task", lead)] == per_step[("note", lead)] == 0
            failed.append(per_step[("message", lead)])

    # every step a kill interrupted was redone, found done, or (a send) failed visibly
    redone = found = 0
    for step in SequenceStep.objects.filter(id__in=interrupted):
        if step.status == "failed":
            assert step.type == "send_message" and step.error.startswith(INTERRUPTED_SEND)
        else:
            assert step.status == "done", step
            found += bool(step.output.get("recovered"))
            redone += step.attempts > 1
    print(
        f"\n{RUNS} runs, {worker.starts} worker starts, {len(interrupted)} steps interrupted "
        f"({found} found done, {redone} done again, {len(failed)} sends failed visibly, "
        f"{failed.count(0)} of them not sent at all), "
        f"{len(writes)} writes, {vendors.lookups} look-ups, {elapsed:.1f} s "
        f"(the worker lived {', '.join(f'{t:.1f}' for t in lifetimes)} s)"
    )
