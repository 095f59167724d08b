"""Shared by the webhook tests: fixture bodies, a Kommo integration, posting a delivery."""
from __future__ import annotations

import ast
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from django.utils.module_loading import import_string
from django_q.models import Schedule

from tests.factories import make_integration

FIXTURES = Path(__file__).parent / "fixtures"
FORM = "application/x-www-form-urlencoded"
ACCOUNT_ID = 31416592  # account[id] of every fixture

KINDS = sorted(path.stem for path in FIXTURES.glob("*.txt"))


def body(name: str) -> bytes:
    """A delivery exactly as Kommo posts it (tests/crm/fixtures/<name>.txt)."""
    return (FIXTURES / f"{name}.txt").read_bytes()


def form(*pairs: tuple[str, str], account_id: int = ACCOUNT_ID) -> bytes:
    return urlencode([*pairs, ("account[subdomain]", "acmesales"), ("account[id]", str(account_id))]).encode()


def make_kommo_integration(agent, **overrides):
    fields = {"integration_type": "kommo", "config": {"account_id": ACCOUNT_ID}, "credentials": {}} | overrides
    return make_integration(agent, **fields)


def webhook_path(integration) -> str:
    return urlsplit(integration.webhook_url).path


def post(client, integration, data: bytes, content_type: str = FORM, **extra):
    return client.post(webhook_path(integration), data=data, content_type=content_type, **extra)


def run_schedule(schedule: Schedule):
    """Run a one-off django-q2 schedule the way the cluster's scheduler would, and drop it."""
    args = ast.literal_eval(schedule.args) if schedule.args else ()
    kwargs = ast.literal_eval(schedule.kwargs) if schedule.kwargs else {}
    if not isinstance(args, tuple):
        args = (args,)
    schedule.delete()
    return import_string(schedule.func)(*args, **kwargs)
