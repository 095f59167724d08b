from __future__ import annotations

import django_filters


class AgentFilter(django_filters.FilterSet):
    """``?agent=<id>``: a plain number, so another user's agent id and an unknown id both
    just find nothing (a choice filter would answer 400 for one and 200 for the other,
    confirming which ids exist)."""

    agent = django_filters.NumberFilter(field_name="agent_id")


def agent_filterset(model, extra: list[str]) -> type[django_filters.FilterSet]:
    meta = type("Meta", (), {"model": model, "fields": ["agent", *extra]})
    return type(f"{model.__name__}Filter", (AgentFilter,), {"Meta": meta})
