"""Metrics: after a known sequence of events, /metrics (Prometheus) and the admin's
monitoring page show exactly the expected numbers; /metrics answers only a scraper with
the token or on an allowed network; counts from several processes add up; old buckets
are folded into totals."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
import time

import pytest
import responses
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from agents import ai
from agents.ai import base as ai_base
from agents.ai.base import usage_for_agent
from agents.ai.errors import AITransientError
from agents.models import Conversation, ConversationMessage
from crm.client import KommoClient
from crm.models import CrmEvent
from integrations.channels.telegram import TelegramClient
from integrations.errors import AuthError, PermanentError
from integrations.http import RetryPolicy
from integrations.services import integration_set_status
from observability import metrics, recorder
from observability.models import MetricBucket
from observability.services import metric_buckets_compact
from sequences.models import SequenceRun, SequenceStep
from tests.factories import make_agent, make_integration, make_sequence, make_trigger, make_user
from tests.fake_ai_server import FakeAIServer
from tests.live_server import ROOT, process_env
from triggers.models import ActionRun, TriggerFiring

TOKEN = "metrics-scrape-token-3b9f1c"
CRM = "https://acme.kommo.com"
TELEGRAM = "https://telegram.test"
BOT_TOKEN = "123456:metrics-test-bot-token"
MODEL = "openai:gpt-4o-mini"


@pytest.fixture(autouse=True)
def _fresh_counts(settings):
    """Counts other tests left pending in this process are not this test's."""
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    recorder.default.discard()
    yield
    recorder.default.discard()


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, frozenset], float]:
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, sample_name: str, /, **labels) -> float | None:
    return samples.get((sample_name, frozenset(labels.items())))


# --- the known sequence of events ------------------------------------------------------------


def ago(**delta) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def crm_event(agent) -> CrmEvent:
    kommo = agent.integrations.filter(integration_type="kommo").first() or make_integration(
        agent, integration_type="kommo", config={"base_url": CRM}, credentials={}
    )
    return CrmEvent.objects.create(
        integration=kommo, kind="lead_status_changed", entity_type="lead", dedupe_key=f"k{CrmEvent.objects.count()}"
    )


def fire(trigger, outcome: str, action_type: str, *, finished=None) -> TriggerFiring:
    firing = TriggerFiring.objects.create(
        trigger=trigger,
        event=crm_event(trigger.agent),
        agent=trigger.agent,
        status=outcome,
        finished_at=finished or timezone.now(),
    )
    ActionRun.objects.create(firing=firing, index=0, type=action_type, status=outcome, finished_at=firing.finished_at)
    return firing


def run(sequence, outcome: str, steps: list[tuple[str, str]] = ()) -> SequenceRun:
    sequence_run = SequenceRun.objects.create(
        sequence=sequence,
        agent=sequence.agent,
        crm_lead_id=SequenceRun.objects.count() + 1,
        status=outcome,
        started_by="api",
        finished_at=timezone.now(),
    )
    for index, (kind, status) in enumerate(steps):
        SequenceStep.objects.create(run=sequence_run, index=index, type=kind, status=status, finished_at=timezone.now())
    return sequence_run


def reply(conversation: Conversation, *, asked: datetime.datetime, answered: datetime.datetime) -> None:
    lead = ConversationMessage.objects.create(
        conversation=conversation, direction="in", author="lead", text="Hi", status="answered"
    )
    agent = ConversationMessage.objects.create(
        conversation=conversation, direction="out", author="agent", text="Hello", status="sent", reply_to=lead
    )
    ConversationMessage.objects.filter(pk=lead.pk).update(created_at=asked)
    ConversationMessage.objects.filter(pk=agent.pk).update(created_at=answered)


@pytest.fixture
def ai_server(settings):
    with FakeAIServer() as server:
        settings.OPENAI_API_KEY = "sk-metrics-test-key-0123456789"
        settings.OPENAI_BASE_URL = server.url + "/v1"
        settings.AI_MAX_RETRIES = 0
        ai_base.clear_client_cache()
        yield server
        ai_base.clear_client_cache()


def ask(server, *, input_tokens: int, output_tokens: int) -> None:
    server.input_tokens, server.output_tokens = input_tokens, output_tokens
    ai.complete(MODEL, "Sell.", [ai.ChatMessage("user", "Hi")])


@pytest.fixture
def world(ai_server):
    """Two tenants: ``owner`` with an active and a switched-off agent, ``other`` with one."""
    owner, other = make_user(is_staff=True), make_user(is_staff=True)
    mine = make_agent(owner=owner, name="Mine", ai_model=MODEL)
    make_agent(owner=owner, name="Switched off", active=False)
    theirs = make_agent(owner=other, name="Theirs", ai_model=MODEL)
    telegram = make_integration(mine, integration_type="telegram", credentials={"bot_token": BOT_TOKEN})
    their_telegram = make_integration(theirs, integration_type="telegram", credentials={"bot_token": BOT_TOKEN})

    # trigger firings (one three days ago: in the 7-day window only) and their actions
    trigger = make_trigger(mine)
    for _ in range(3):
        fire(trigger, "done", "create_task")
    fire(trigger, "failed", "add_note")
    fire(trigger, "done", "create_task", finished=ago(days=3))
    fire(make_trigger(theirs), "done", "create_task")
    # still retrying: not finished, not counted
    TriggerFiring.objects.create(trigger=trigger, event=crm_event(mine), agent=mine, status="retrying")

    # sequence runs and steps
    sequence = make_sequence(mine)
    run(sequence, "done", [("delay", "done"), ("create_task", "done")])
    run(sequence, "done", [("delay", "done")])
    run(sequence, "failed", [("send_message", "failed")])
    run(sequence, "exited")
    run(make_sequence(theirs), "failed")

    # replies: 3 s and 45 s for mine, 2 s for theirs; a staff test chat is not a lead
    chat = Conversation.objects.create(agent=mine, integration=telegram, chat_id="1")
    reply(chat, asked=ago(seconds=10), answered=ago(seconds=7))
    reply(chat, asked=ago(seconds=100), answered=ago(seconds=55))
    their_chat = Conversation.objects.create(agent=theirs, integration=their_telegram, chat_id="2")
    reply(their_chat, asked=ago(seconds=5), answered=ago(seconds=3))
    test_chat = Conversation.objects.create(agent=mine, integration=None, chat_id="test:1")
    reply(test_chat, asked=ago(seconds=30), answered=ago(seconds=1))

    # AI requests: through the real SDK against the fake server
    with usage_for_agent(mine.pk):
        ask(ai_server, input_tokens=31, output_tokens=14)
        ask(ai_server, input_tokens=31, output_tokens=14)
        ai_server.fail(500)
        with pytest.raises(AITransientError):
            ask(ai_server, input_tokens=0, output_tokens=0)
    with usage_for_agent(theirs.pk):
        ask(ai_server, input_tokens=10, output_tokens=5)
    ask(ai_server, input_tokens=7, output_tokens=3)  # made for no agent
    recorder.default.count(  # AI tokens of mine three days ago
        metrics.AI_TOKENS.name,
        {"provider": "openai", "model": "gpt-4o-mini", "agent": str(mine.pk), "direction": "input"},
        100,
        at=time.time() - 3 * 86400,
    )

    # calls to outside services failing, and an integration turning "failing"
    with responses.RequestsMock() as mock:
        mock.get(f"{CRM}/api/v4/leads/1", status=401, json={"title": "Unauthorized"})
        mock.post(f"{TELEGRAM}/bot{BOT_TOKEN}/sendMessage", status=400, json={"ok": False, "description": "Bad"})
        with pytest.raises(AuthError):
            KommoClient(CRM, "token", retry=RetryPolicy(attempts=1)).get_lead(1)
        with pytest.raises(PermanentError):
            TelegramClient(BOT_TOKEN, TELEGRAM, retry=RetryPolicy(attempts=1)).send_message(1, "Hello")
    integration_set_status(integration=telegram, status="failing", detail="Telegram: 502")

    # API requests: two answered, a 404 and a 401
    api = APIClient()
    api.force_authenticate(owner)
    assert api.get("/api/agents/").status_code == 200
    assert api.get("/api/agents/").status_code == 200
    assert api.get("/api/agents/999999/").status_code == 404
    assert APIClient().get("/api/agents/").status_code == 401

    recorder.default.flush()
    return {"owner": owner, "other": other, "mine": mine, "theirs": theirs}


# --- /metrics ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_show_the_known_events(world):
    mine, theirs = str(world["mine"].pk), str(world["theirs"].pk)

    samples = scrape()

    assert value(samples, "kommo_agents_active") == 2
    assert value(samples, "kommo_agent_info", agent=mine, name="Mine", owner=str(world["owner"].pk), active="true") == 1
    assert value(samples, "kommo_integrations", integration_type="telegram", status="failing") == 1
    assert value(samples, "kommo_integrations", integration_type="telegram", status="new") == 1
    # triggers and sequences, from their rows
    assert value(samples, "kommo_trigger_firings_total", agent=mine, status="done") == 4
    assert value(samples, "kommo_trigger_firings_total", agent=mine, status="failed") == 1
    assert value(samples, "kommo_trigger_firings_total", agent=theirs, status="done") == 1
    assert value(samples, "kommo_trigger_actions_total", agent=mine, type="create_task", status="done") == 4
    assert value(samples, "kommo_trigger_actions_total", agent=mine, type="add_note", status="failed") == 1
    assert value(samples, "kommo_sequence_runs_total", agent=mine, status="done") == 2
    assert value(samples, "kommo_sequence_runs_total", agent=mine, status="failed") == 1
    assert value(samples, "kommo_sequence_runs_total", agent=mine, status="exited") == 1
    assert value(samples, "kommo_sequence_runs_total", agent=theirs, status="failed") == 1
    assert value(samples, "kommo_sequence_steps_total", agent=mine, type="delay", status="done") == 2
    assert value(samples, "kommo_sequence_steps_total", agent=mine, type="send_message", status="failed") == 1
    # reply times: 3 s and 45 s (the test chat's reply is not counted)
    assert value(samples, "kommo_reply_duration_seconds_count", agent=mine) == 2
    assert value(samples, "kommo_reply_duration_seconds_sum", agent=mine) == pytest.approx(48, abs=0.01)
    assert value(samples, "kommo_reply_duration_seconds_bucket", agent=mine, le="2.0") == 0
    assert value(samples, "kommo_reply_duration_seconds_bucket", agent=mine, le="5.0") == 1
    assert value(samples, "kommo_reply_duration_seconds_bucket", agent=mine, le="30.0") == 1
    assert value(samples, "kommo_reply_duration_seconds_bucket", agent=mine, le="60.0") == 2
    assert value(samples, "kommo_reply_duration_seconds_bucket", agent=mine, le="+Inf") == 2
    assert value(samples, "kommo_reply_duration_seconds_count", agent=theirs) == 1
    # AI requests and tokens, per agent (and those made for no agent)
    model = {"provider": "openai", "model": "gpt-4o-mini"}
    assert value(samples, "kommo_ai_requests_total", **model, agent=mine, outcome="success") == 2
    assert value(samples, "kommo_ai_requests_total", **model, agent=mine, outcome="transient_error") == 1
    assert value(samples, "kommo_ai_requests_total", **model, agent=theirs, outcome="success") == 1
    assert value(samples, "kommo_ai_requests_total", **model, agent="", outcome="success") == 1
    assert value(samples, "kommo_ai_tokens_total", **model, agent=mine, direction="input") == 62 + 100
    assert value(samples, "kommo_ai_tokens_total", **model, agent=mine, direction="output") == 28
    assert value(samples, "kommo_ai_tokens_total", **model, agent=theirs, direction="input") == 10
    assert value(samples, "kommo_ai_tokens_total", **model, agent="", direction="output") == 3
    # outside services and integration health
    assert value(samples, "kommo_integration_errors_total", integration_type="kommo", kind="auth") == 1
    assert value(samples, "kommo_integration_errors_total", integration_type="telegram", kind="permanent") == 1
    assert value(samples, "kommo_integration_status_changes_total", integration_type="telegram", status="failing",
                 agent=mine) == 1  # fmt: skip
    # API requests by view and status class, and their durations
    assert value(samples, "kommo_http_requests_total", view="agent-list", method="GET", status_class="2xx") == 2
    assert value(samples, "kommo_http_requests_total", view="agent-list", method="GET", status_class="4xx") == 1
    assert value(samples, "kommo_http_requests_total", view="agent-detail", method="GET", status_class="4xx") == 1
    assert value(samples, "kommo_http_request_duration_seconds_count", view="agent-list") == 3
    assert value(samples, "kommo_http_request_duration_seconds_bucket", view="agent-list", le="+Inf") == 3


@pytest.mark.django_db
def test_counts_still_pending_in_a_process_are_not_shown_until_flushed(settings):
    settings.METRICS_CACHE_SECONDS = 0
    metrics.count(metrics.INTEGRATION_ERRORS, integration_type="kommo", kind="transient")

    assert value(scrape(), "kommo_integration_errors_total", integration_type="kommo", kind="transient") is None

    recorder.default.flush()
    assert value(scrape(), "kommo_integration_errors_total", integration_type="kommo", kind="transient") == 1


@pytest.mark.django_db
def test_a_scrape_is_rendered_once_per_cache_period(settings):
    settings.METRICS_CACHE_SECONDS = 60
    first = scrape()
    metrics.count(metrics.INTEGRATION_ERRORS, integration_type="kommo", kind="transient")
    recorder.default.flush()

    assert scrape() == first


# --- who may scrape ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_without_a_token_or_networks_metrics_do_not_exist(settings):
    settings.METRICS_TOKEN = ""

    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Token {TOKEN}", f"Bearer {TOKEN}x"])
def test_a_scrape_without_the_right_token_is_refused(authorization):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = Client().get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"kommo_" not in response.content


@pytest.mark.django_db
def test_a_scrape_with_the_token_is_answered():
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("networks", "address", "status"),
    [
        (["10.0.0.0/8"], "10.1.2.3", 200),
        (["10.0.0.0/8", "192.168.0.0/16"], "192.168.7.7", 200),
        (["10.0.0.0/8"], "172.16.0.1", 401),  # the token is still asked for
        (["fd00::/8"], "fd00::1", 200),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", 200),
    ],
)
def test_an_allowed_network_needs_no_token(networks, address, status, settings):
    settings.METRICS_ALLOWED_NETWORKS = networks

    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == status


@pytest.mark.django_db
def test_with_only_networks_allowed_another_address_is_forbidden(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]

    assert Client(REMOTE_ADDR="10.9.9.9").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="8.8.8.8").get("/metrics", HTTP_AUTHORIZATION="Bearer x").status_code == 403


# --- the monitoring page -----------------------------------------------------------------------


def page(user, **query):
    client = Client()
    client.force_login(user)
    response = client.get("/admin/monitoring/", query)
    return response


@pytest.mark.django_db
def test_the_page_shows_a_staff_member_the_numbers_of_their_own_agents(world):
    response = page(world["owner"])

    assert response.status_code == 200
    day, week = response.context["windows"]
    assert (day["key"], week["key"]) == ("24h", "7d")
    assert day["agents_active"] == week["agents_active"] == 1
    assert day["triggers"] == {
        "done": 3, "failed": 1, "success_rate": 75.0, "actions_done": 3, "actions_failed": 1,
    }  # fmt: skip
    assert (week["triggers"]["done"], week["triggers"]["success_rate"]) == (4, 80.0)
    assert day["sequences"] == week["sequences"] == {
        "done": 2, "failed": 1, "exited": 1, "cancelled": 0, "success_rate": 66.7, "steps_done": 3, "steps_failed": 1,
    }  # fmt: skip
    assert (day["replies"]["count"], day["replies"]["average_seconds"]) == (2, pytest.approx(24, abs=0.01))
    assert [bar["count"] for bar in day["replies"]["bars"]] == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert (day["ai"]["requests"], day["ai"]["failed"]) == (3, 1)
    assert (day["ai"]["input_tokens"], day["ai"]["output_tokens"]) == (62, 28)
    assert (week["ai"]["input_tokens"], week["ai"]["output_tokens"]) == (162, 28)
    assert day["status_changes"] == [{"integration_type": "telegram", "status": "failing", "count": 1}]
    assert "system" not in day  # API and outside-service numbers are everyone's: superusers only
    assert response.context["integrations_now"] == [
        {"integration_type": "kommo", "status": "new", "count": 1},
        {"integration_type": "telegram", "status": "failing", "count": 1},
    ]
    timeline = day["timeline"]["bars"]
    assert len(timeline) == 24 and len(week["timeline"]["bars"]) == 7
    assert sum(bar["replies"] for bar in timeline) == 2
    assert (sum(b["firings_done"] for b in timeline), sum(b["firings_failed"] for b in timeline)) == (3, 1)
    assert sum(bar["tokens"] for bar in week["timeline"]["bars"]) == 190
    assert [a.name for a in response.context["agents"]] == ["Mine", "Switched off"]
    assert "Theirs" not in response.content.decode()


@pytest.mark.django_db
def test_a_superuser_sees_every_agent_and_the_system(world):
    response = page(make_user(is_staff=True, is_superuser=True))

    day = response.context["windows"][0]
    assert day["agents_active"] == 2
    assert (day["triggers"]["done"], day["triggers"]["failed"]) == (4, 1)
    assert (day["sequences"]["done"], day["sequences"]["failed"]) == (2, 2)
    assert day["replies"]["count"] == 3
    assert (day["ai"]["requests"], day["ai"]["input_tokens"], day["ai"]["output_tokens"]) == (5, 79, 36)
    assert "<tr><th>API 4xx / 5xx</th><td class=\"n\">2 / 0</td><td class=\"n\">2 / 0</td></tr>" in (
        response.content.decode()
    )
    system = day["system"]
    assert system["requests"] == 4
    assert system["by_class"] == {"2xx": 2, "4xx": 2}
    assert system["errors_by_view"] == [
        {"view": "agent-detail", "status_class": "4xx", "count": 1},
        {"view": "agent-list", "status_class": "4xx", "count": 1},
    ]
    assert system["durations"]["count"] == 4
    assert system["integration_errors"] == [
        {"integration_type": "kommo", "kind": "auth", "count": 1},
        {"integration_type": "telegram", "kind": "permanent", "count": 1},
    ]


@pytest.mark.django_db
def test_the_page_shows_one_agent_when_asked(world):
    superuser = make_user(is_staff=True, is_superuser=True)

    day = page(superuser, agent=world["theirs"].pk).context["windows"][0]

    assert (day["triggers"]["done"], day["ai"]["requests"], day["replies"]["count"]) == (1, 1, 1)
    assert page(world["owner"], agent=world["theirs"].pk).status_code == 404


@pytest.mark.django_db
def test_the_page_is_for_staff_and_linked_from_the_admin_index():
    staff = make_user(is_staff=True)
    client = Client()
    client.force_login(staff)

    assert 'href="/admin/monitoring/"' in client.get("/admin/").content.decode()
    assert client.get("/admin/monitoring/").status_code == 200  # no agents yet: zeros
    outsider = Client()
    outsider.force_login(make_user())
    assert outsider.get("/admin/monitoring/").status_code == 302  # to the admin's login


# --- recording: in memory, then in batches ---------------------------------------------------------


@pytest.mark.django_db
def test_recording_costs_no_statement_and_a_flush_one():
    with CaptureQueriesContext(connection) as recording:
        for i in range(200):
            metrics.http_request(view="agent-list", method="GET", status=200 + (i % 2) * 204, seconds=0.02)
    with CaptureQueriesContext(connection) as flushing:
        recorder.default.flush()

    assert len(recording) == 0
    assert sum("INSERT" in q["sql"] for q in flushing.captured_queries) == 1
    totals = dict(MetricBucket.objects.filter(le="").values_list("labels", "count"))
    assert sorted(totals.values()) == [100, 100, 200]  # 2xx, 4xx requests; their durations


@pytest.mark.django_db
def test_a_failed_flush_keeps_the_counts_for_the_next(monkeypatch):
    metrics.count(metrics.INTEGRATION_ERRORS, integration_type="kommo", kind="auth", value=3)

    def refuse(pending):
        raise RuntimeError("database gone")

    monkeypatch.setattr(recorder, "write", refuse)
    with pytest.raises(RuntimeError):
        recorder.default.flush()
    monkeypatch.undo()
    recorder.default.flush()

    assert MetricBucket.objects.get(metric="integration_errors").total == 3


def test_a_forked_process_starts_without_its_parents_counts():
    metrics.count(metrics.INTEGRATION_ERRORS, integration_type="kommo", kind="auth")
    pid = os.fork()
    if pid == 0:  # the child: only reads memory, then leaves at once
        os._exit(0 if recorder.default.pending() == {} else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert len(recorder.default.pending()) == 1


@pytest.mark.django_db(transaction=True)
def test_threads_flushing_the_same_rows_at_once_lose_no_increment():
    """Eight recorders (as eight processes would have) in eight threads, each with its own
    database connection, adding to the same rows ten times."""
    start = threading.Barrier(8)
    errors = []

    def work():
        own = recorder.Recorder()
        try:
            start.wait()
            for _ in range(10):
                for _ in range(5):
                    own.count("integration_errors", {"integration_type": "kommo", "kind": "auth"})
                    own.observe("http_request_duration_seconds", {"view": "v"}, 0.3, metrics.HTTP_BUCKETS)
                own.flush()
        except Exception as exc:  # reported below, from the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert MetricBucket.objects.get(metric="integration_errors").count == 400
    histogram = dict(MetricBucket.objects.filter(metric="http_request_duration_seconds").values_list("le", "count"))
    assert histogram == {"": 400, "0.5": 400}


PROCESS_SCRIPT = """
import sys
from observability import recorder
own = recorder.default
labels = {"provider": "openai", "model": "m", "agent": "", "direction": "input"}
for _ in range(int(sys.argv[1])):
    for _ in range(10):
        own.count("ai_tokens", labels, 7)
    own.flush()
if sys.argv[2] == "exit":
    own.count("ai_tokens", labels, 1000)
if sys.argv[2] == "fork-exit":  # as django-q2 runs its workers: forked, leaving through os._exit
    import multiprocessing
    from django.db import connection
    connection.close()
    def work():
        recorder.default.count("ai_tokens", labels, 500)
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    child.join()
    sys.exit(child.exitcode)
"""


def start_process(*args: str, flush_seconds: str = "0") -> subprocess.Popen:
    script = "import django\ndjango.setup()\n" + PROCESS_SCRIPT
    env = process_env() | {"METRICS_FLUSH_SECONDS": flush_seconds}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.django_db(transaction=True)
def test_two_processes_flushing_at_once_lose_no_increment():
    processes = [start_process("30", "-") for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()

    row = MetricBucket.objects.get(metric="ai_tokens")
    assert (row.count, row.total) == (2 * 30 * 10, 2 * 30 * 10 * 7)


@pytest.mark.django_db(transaction=True)
def test_a_process_writes_what_is_pending_when_it_exits():
    # a long flush period: only the exit can write the last count in time
    process = start_process("1", "exit", flush_seconds="3600")
    assert process.wait(timeout=120) == 0, process.stderr.read()

    assert MetricBucket.objects.get(metric="ai_tokens").total == 10 * 7 + 1000


@pytest.mark.django_db(transaction=True)
def test_a_forked_worker_writes_what_is_pending_when_it_exits():
    process = start_process("1", "fork-exit", flush_seconds="3600")
    assert process.wait(timeout=120) == 0, process.stderr.read()

    assert MetricBucket.objects.get(metric="ai_tokens").total == 10 * 7 + 500


# --- retention ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_old_buckets_are_folded_into_totals_that_metrics_still_show(settings, world):
    settings.METRICS_RETENTION_DAYS = 30
    settings.METRICS_CACHE_SECONDS = 0
    labels = {"integration_type": "kommo", "kind": "transient"}
    for days in (40, 35, 31):
        recorder.default.count("integration_errors", labels, 2, at=time.time() - days * 86400)
        recorder.default.observe("http_request_duration_seconds", {"view": "old"}, 0.3, metrics.HTTP_BUCKETS,
                                 at=time.time() - days * 86400)  # fmt: skip
    recorder.default.count("integration_errors", labels, 1)
    recorder.default.flush()
    before = scrape()

    folded = metric_buckets_compact()

    assert folded == 3 * 3  # three hours: a counter row, a histogram's count row and bucket row each
    assert MetricBucket.objects.filter(hour__lt=timezone.now() - datetime.timedelta(days=30)).exclude(
        hour=recorder.EPOCH
    ).count() == 0
    assert scrape() == before
    assert value(before, "kommo_integration_errors_total", **labels) == 7
    assert value(before, "kommo_http_request_duration_seconds_bucket", view="old", le="0.5") == 3
    assert metric_buckets_compact() == 0  # nothing left to fold
    # the page's windows never reach that far
    superuser = make_user(is_staff=True, is_superuser=True)
    week = page(superuser).context["windows"][1]
    assert {"integration_type": "kommo", "kind": "transient", "count": 1} in week["system"]["integration_errors"]
