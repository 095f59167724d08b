"""django-q2 tasks of the sequences app: thin functions that call services."""
from __future__ import annotations

from .runner import dispatch_due, step_run


def run_step(step_id: int) -> str:
    """Do one due step of a run, and the steps after it that are due at once."""
    return step_run(step_id)


def dispatch_due_steps() -> int:
    """Every minute (a django-q2 schedule): queue the steps that have come due. The
    worker command does the same every SEQUENCE_DISPATCH_SECONDS; this one keeps runs
    going under a plain qcluster too."""
    return dispatch_due()
