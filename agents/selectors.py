"""Reads scoped to a tenant: a user sees only their own agents and what hangs off them."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Model, QuerySet

from .models import Agent, Conversation, ExecutionLog


def owned(queryset: QuerySet, user: AbstractBaseUser, *, owner_path: str = "agent__owner") -> QuerySet:
    """The part of ``queryset`` that belongs to ``user`` (nothing for an anonymous user)."""
    if not user.is_authenticated:
        return queryset.none()
    return queryset.filter(**{owner_path: user})


def agent_list(*, user: AbstractBaseUser) -> QuerySet[Agent]:
    return owned(Agent.objects.select_related("crm_access"), user, owner_path="owner")


def execution_log_list(*, user: AbstractBaseUser) -> QuerySet[ExecutionLog]:
    return owned(ExecutionLog.objects.select_related("agent"), user)


def conversation_list(*, user: AbstractBaseUser) -> QuerySet[Conversation]:
    return owned(Conversation.objects.select_related("agent", "integration"), user)


def owner_path_of(model: type[Model]) -> str:
    return "owner" if model is Agent else "agent__owner"
