"""Queueing django-q2 tasks together with the rows they work on."""
from __future__ import annotations

import logging

from django.db import DEFAULT_DB_ALIAS, transaction
from django_q.conf import Conf
from django_q.tasks import async_task

logger = logging.getLogger(__name__)


def queues_in_database(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether a task queued now is written into ``using`` (django-q2's ORM broker on that
    database, not running tasks synchronously)."""
    return Conf.ORM == using and not Conf.SYNC and not Conf.BROKER_CLASS


def enqueue_with_transaction(func: str, *args, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """Queue ``func`` so that it exists only if the current transaction commits.

    django-q2's ORM broker writes the task into the same database: queued inside the
    transaction it commits or rolls back with the caller's rows, and costs ~0.5 ms instead
    of a connection check (shared/notes/measured-here.md). Any other broker, or
    synchronous tasks (tests), cannot join the transaction: those are queued once it
    commits. ``save=False`` unless given: the rows a task works on record its outcome, and
    saving every success costs the worker more than the task; failures are kept anyway.
    """
    kwargs.setdefault("save", False)
    if queues_in_database(using) and not transaction.get_autocommit(using=using):
        async_task(func, *args, **kwargs)
    else:
        transaction.on_commit(lambda: async_task(func, *args, **kwargs), using=using)


def task_queue_size() -> int | None:
    """How many tasks django-q2's queue holds (on the ORM broker, those being run too), or
    None when the broker cannot tell (Redis down). Tasks are taken oldest first: callers
    use it to tell "still waiting in a backlog" from "its task was lost"."""
    from django_q.brokers import get_broker

    try:
        return get_broker().queue_size()
    except Exception:
        logger.warning("tasks.queue_size_unknown", exc_info=True)
        return None
