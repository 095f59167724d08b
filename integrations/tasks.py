"""django-q2 tasks of the integrations app: thin functions that call services."""

from __future__ import annotations

from collections import Counter

from .rotation import tokens_rotate_due


def rotate_oauth_tokens() -> str:
    """Daily (a django-q2 schedule): renew the OAuth refresh tokens that have come due.
    Each integration's outcome is logged and in its agent's execution log; the summary
    is the task's result in the admin."""
    counts = Counter(result.outcome for result in tokens_rotate_due())
    return ", ".join(f"{number} {outcome}" for outcome, number in sorted(counts.items())) or "nothing due"
