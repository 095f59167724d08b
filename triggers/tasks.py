"""django-q2 tasks of the triggers app: thin functions that call services."""
from __future__ import annotations

from .loops import forget_old_changes


def forget_own_changes() -> int:
    """Daily (a django-q2 schedule): delete recorded trigger changes past any use."""
    return forget_old_changes()
