"""Schemathesis against /api/schema/: every operation, valid and invalid input, in-process.

The app runs through its WSGI handler on the test's own database connection; each request
runs in a savepoint that is rolled back, so every generated case meets the same data (and a
failing case replays the same way). Nothing leaves the process: every outgoing `requests`
call gets a 503, the AI SDKs point at a closed local port, and any other attempt to resolve
a host that is not this machine fails the test.
"""
from __future__ import annotations

import re
import socket
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import hypothesis
import pytest
import responses
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from agents.models import Conversation, ConversationMessage
from config.wsgi import application
from crm.models import CrmSnapshot
from sequences.models import SequenceRun, SequenceStep
from tests.factories import make_agent, make_integration, make_log, make_sequence, make_trigger, make_user

pytestmark = pytest.mark.django_db

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": 50, "deterministic": True},
        # an upstream outage is answered 502/503 where the operation documents it: any 5xx
        # still fails not_a_server_error but these, and an undocumented one fails
        # status_code_conformance
        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503"]}},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
    }
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    unsupported_method,
]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_hosts(settings) -> set[str | None]:
    """This machine, and the database and Redis wherever the run's settings put them."""
    hosts = {None, "localhost", "127.0.0.1", "::1", urlsplit(settings.REDIS_URL).hostname}
    return hosts | {database.get("HOST") or None for database in settings.DATABASES.values()}


@pytest.fixture
def offline(settings, monkeypatch):
    """Every vendor call stays in the process and fails like a vendor that is down."""
    closed = f"http://127.0.0.1:{closed_port()}"
    settings.OPENAI_BASE_URL = f"{closed}/v1"
    settings.ANTHROPIC_BASE_URL = closed
    settings.GEMINI_BASE_URL = closed
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = "fuzz-key"
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = "fuzz.apps.googleusercontent.com", "fuzz-secret"
    escaped: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    allowed = local_hosts(settings)

    def local_only(host, *args, **kwargs):
        if host not in allowed:
            escaped.append(str(host))
            raise socket.gaierror(f"{host}: outgoing connections are blocked in the fuzz test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as vendors:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            # down for an hour: longer than any client waits, so none of them retries
            vendors.add(
                method,
                re.compile(r".*"),
                status=503,
                headers={"Retry-After": "3600"},
                json={"error": "down for the fuzz test"},
            )
        yield escaped


@pytest.fixture
def owned(db):
    """A user with one of everything, and another user's agent next to it."""
    user = make_user()
    agent = make_agent(owner=user)
    kommo = make_integration(
        agent,
        integration_type="kommo",
        config={"base_url": "https://fuzz.kommo.com"},
        credentials={
            "access_token": "fuzz-access",
            "refresh_token": "fuzz-refresh",
            "client_id": "fuzz-client",
            "client_secret": "fuzz-secret",
        },
    )
    CrmSnapshot.objects.create(
        integration=kommo,
        lead_fields=[{"id": 101, "name": "Budget", "type": "numeric", "code": None, "enums": []}],
        synced_at=timezone.now(),
    )
    google = make_integration(
        agent,
        integration_type="google_calendar",
        credentials={
            "access_token": "ya29.fuzz",
            "refresh_token": "1//fuzz",
            "expiry": (timezone.now() + timedelta(hours=1)).isoformat(),
        },
    )
    telegram = make_integration(agent, integration_type="telegram", credentials={"bot_token": "123456:FUZZ"})
    make_integration(
        agent,
        integration_type="whatsapp_cloud",
        config={"phone_number_id": "1055"},
        credentials={"access_token": "EAAfuzz", "app_secret": "s", "verify_token": "v"},
    )
    make_integration(
        agent,
        integration_type="twilio_whatsapp",
        config={"from_number": "+14155238886"},
        credentials={"account_sid": "ACfuzz", "auth_token": "t"},
    )
    trigger = make_trigger(agent)
    sequence = make_sequence(agent)
    run = SequenceRun.objects.create(
        sequence=sequence,
        agent=agent,
        integration=kommo,
        crm_lead_id=777,
        status="failed",
        steps=sequence.steps,
        started_by="api",
        error="the CRM said no",
    )
    SequenceStep.objects.create(run=run, index=0, type="delay", status="done", finished_at=timezone.now())
    SequenceStep.objects.create(run=run, index=1, type="create_task", status="failed", error="no")
    conversation = Conversation.objects.create(
        agent=agent, integration=telegram, chat_id="42", crm_lead_id=777, last_inbound_at=timezone.now()
    )
    ConversationMessage.objects.create(
        conversation=conversation, direction="in", author="lead", text="Hi", status="answered", external_id="1"
    )
    ConversationMessage.objects.create(
        conversation=conversation, direction="out", author="agent", text="Hello!", status="sent"
    )
    log = make_log(agent, ref_type="trigger", ref_id=trigger.id, detail={"matched": True})
    make_agent(owner=make_user())  # someone else's
    ids = {
        "/api/agents/": agent.id,
        "/api/triggers/": trigger.id,
        "/api/sequences/": sequence.id,
        "/api/sequence-runs/": run.id,
        "/api/integrations/": kommo.id,
        "/api/execution-logs/": log.id,
        "/api/conversations/": conversation.id,
    }
    return {"user": user, "token": Token.objects.create(user=user).key, "ids": ids, "google": google.id}


@pytest.fixture
def same_connection():
    """Like Django's test client: the app must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzzed(request):
    """Each operation's test sends it requests (not only requests for other methods)."""
    sent = Counter()
    yield sent
    label = getattr(request.node, "operation_label", None)
    assert sent[label] > 0, f"{label}: no request was sent"
    assert not request.getfixturevalue("offline"), "calls tried to leave the process"


schema = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)


@contextmanager
def rolled_back():
    savepoint = transaction.savepoint()
    try:
        yield
    finally:
        transaction.savepoint_rollback(savepoint)


def point_at_own_object(case, ids, google_id) -> None:
    """Half of the generated ids (the even ones) name the user's own object, so detail routes
    are exercised past their 404."""
    value = (case.path_parameters or {}).get("id", (case.path_parameters or {}).get("integration_id"))
    if not isinstance(value, int) or isinstance(value, bool) or value % 2:
        return
    if "integration_id" in case.path_parameters:
        case.path_parameters["integration_id"] = google_id
        return
    for prefix, own_id in ids.items():
        if case.path.startswith(prefix):
            case.path_parameters["id"] = own_id


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    # each case runs in its own savepoint, so the function-scoped data is the same for all
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
def test_the_api_answers_every_request_as_its_schema_says(case, owned, offline, same_connection, fuzzed):
    point_at_own_object(case, owned["ids"], owned["google"])
    if case.method.upper() == case.operation.method.upper():  # not a probe with another method
        fuzzed[case.operation.label] += 1
    with rolled_back():
        response = case.call(headers={"Authorization": f"Token {owned['token']}"})
    case.validate_response(response, checks=CHECKS, headers={"Authorization": f"Token {owned['token']}"})


def test_every_operation_of_the_schema_is_fuzzed(request):
    declared = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    fuzz_tests = [
        getattr(item, "operation_label", None)
        for item in request.session.items
        if item.name.partition("[")[0] == test_the_api_answers_every_request_as_its_schema_says.__name__
    ]

    # run with the fuzz tests: deselecting some of them leaves operations untested
    assert len(fuzz_tests) == len(declared) == len(schema)
    assert set(fuzz_tests) == declared
