"""`manage.py worker`: django-q2's cluster plus the dispatcher.

The cluster runs the tasks (CRM event drains, replies, sequence steps). The dispatcher, a
thread of this process started after the cluster has forked its processes, runs every
SEQUENCE_DISPATCH_SECONDS:

* it hands the sequence steps that have come due to the queue, so a step starts within a
  second or two of its time; django-q2's own scheduler looks at schedules only every 30
  seconds. Several workers may run at once: each due step is handed over once
  (sequences/runner.py);
* it queues a drain when CRM events have waited a few seconds with none coming for them
  (crm/drain.py, ``drain_kick``).

Before the cluster forks, and again in each worker process as it starts, the code the
tasks run is imported and the heap is frozen (``settle_heap``): the garbage collector's
full passes then skip the ~100,000 objects of the start-up (Django, DRF, the clients),
which otherwise stall a task for 25-90 ms every hundred events or so, and the forked
processes share those pages instead of copying them as the collector touches them.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection
from django.utils.module_loading import import_string
from django_q.signals import post_spawn

import tenancy

logger = logging.getLogger(__name__)


# The modules of the worker's tasks, by dotted path as the tasks are queued (crm/dispatch.py
# PROCESS_TASK, crm/drain.py DRAIN_TASK, agents/conversations.py REPLY_TASK,
# sequences/runner.py RUN_STEP_TASK).
TASK_MODULES = ("crm.tasks", "agents.tasks", "sequences.tasks")


def settle_heap(**kwargs) -> None:
    """Import what the tasks run, then move every object alive now out of the garbage
    collector's reach (``gc.freeze``). What a task creates is still collected; what the
    process started with is never freed anyway. A receiver of django-q2's ``post_spawn``
    (a worker process started, or recycled after its tasks), and called before forking."""
    for module in TASK_MODULES:
        import_module(module)
    for path in (*settings.CRM_EVENT_HANDLERS, *settings.INBOUND_MESSAGE_HANDLERS):
        import_string(path)
    gc.collect()
    gc.freeze()


class Dispatcher(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="sequence-dispatcher", daemon=True)
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        from crm.drain import drain_kick
        from sequences.runner import dispatch_due

        with tenancy.system():  # due work of every tenant (row-level security, tenancy/)
            while not self.stopping.is_set():
                started = time.monotonic()
                for work, error in ((dispatch_due, "sequences.dispatcher.error"), (drain_kick, "crm.drain.kick_error")):
                    try:
                        close_old_connections()
                        work()
                    except Exception:  # the database restarting, say: try again next round
                        logger.exception(error)
                        connection.close()
                self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
            connection.close()

    def stop(self) -> None:
        self.stopping.set()


class Command(BaseCommand):
    help = "Run the task worker: django-q2's cluster and the sequence dispatcher, until stopped."

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-dispatcher",
            action="store_true",
            help=(
                "Only the cluster: due sequence steps are then queued by the minute schedule, and CRM "
                "events a drain missed by the sweeper within minutes."
            ),
        )

    def handle(self, *args, no_dispatcher: bool = False, **options):
        from django_q.cluster import Cluster

        settle_heap()
        post_spawn.connect(settle_heap, dispatch_uid="worker.settle_heap")
        cluster = Cluster()
        cluster.start()  # forks the sentinel and the workers; returns once they run
        dispatcher = None
        if not no_dispatcher:
            dispatcher = Dispatcher(settings.SEQUENCE_DISPATCH_SECONDS)
            dispatcher.start()
        try:
            while cluster.sentinel is not None and cluster.sentinel.is_alive():
                time.sleep(0.5)  # SIGTERM/SIGINT: the cluster's handler stops the sentinel
        finally:
            if dispatcher is not None:
                dispatcher.stop()
                dispatcher.join(timeout=5)
