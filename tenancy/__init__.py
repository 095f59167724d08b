"""Row-level security on PostgreSQL: whose rows the database shows (see context.py)."""
from .context import NOBODY, SYSTEM, Scope, acting_for, current, nobody, scope_for_user, system

__all__ = ["NOBODY", "SYSTEM", "Scope", "acting_for", "current", "nobody", "scope_for_user", "system"]
