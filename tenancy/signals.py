"""Receivers that keep the database's scope right around requests, migrations and tasks."""
from __future__ import annotations

from django.apps import apps
from django.core.signals import request_finished
from django.db import connections
from django.db.models.signals import post_migrate
from django.dispatch import receiver
from django_q.signals import post_execute_in_worker, pre_execute

from . import context

# django-q2 task id → the token of the scope its run started (sync tasks nest)
_task_tokens: dict[str, object] = {}


@receiver(request_finished, dispatch_uid="tenancy.request_finished")
def release_connections(sender, **kwargs) -> None:
    """A persistent connection outlives its request: it keeps no user's rights after it.
    (A pooled one is cleared as it goes back to the pool: tenancy/backends/postgresql.)"""
    for connection in connections.all(initialized_only=True):
        release = getattr(connection, "tenancy_release", None)
        if release is not None:
            release()


@receiver(post_migrate, dispatch_uid="tenancy.post_migrate")
def end_owner_mode(sender, using, **kwargs) -> None:
    """migrate works as the tables' owner from prepare_database on, through every app's
    post_migrate (content types, permissions); after the last app's, the rest of the
    process (a test run, `manage.py serve`) works as the application role again."""
    connection = connections[using]
    if getattr(connection, "tenancy_owner", False) and sender is _last_app_migrated():
        connection.tenancy_owner = False


def _last_app_migrated():
    # migrate sends post_migrate for each app with models, in INSTALLED_APPS order
    return [config for config in apps.get_app_configs() if config.models_module is not None][-1]


@receiver(pre_execute, dispatch_uid="tenancy.task_started")
def task_in_system_context(sender, func, task, **kwargs) -> None:
    """A django-q2 task runs in system context, in the worker and when run at once (the
    test settings' sync mode, inside a request): the worker serves every tenant. A task
    about one owner may narrow it with ``tenancy.acting_for(owner_id)``."""
    _task_tokens[task["id"]] = context.enter(context.SYSTEM)


@receiver(post_execute_in_worker, dispatch_uid="tenancy.task_finished")
def task_finished(sender, func, task, **kwargs) -> None:
    token = _task_tokens.pop(task["id"], None)
    if token is not None:
        context.leave(token)
