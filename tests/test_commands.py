"""Management commands: generate_encryption_key, seed_demo, serve (the quick start)."""
from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from agents.models import Agent, AgentCrmAccess, LiveEvent
from integrations import crypto
from integrations.models import Integration
from sequences.models import Sequence
from triggers.models import Trigger

BASE_DIR = Path(settings.BASE_DIR)


def run(name: str, *args: str, **options) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, **options)
    return out.getvalue()


# --- generate_encryption_key ---------------------------------------------------------------


def test_generate_encryption_key_prints_an_entry_named_after_today():
    entry = run("generate_encryption_key").strip()

    assert re.fullmatch(rf"k{timezone.localdate():%Y%m%d}:[A-Za-z0-9_-]{{43}}=", entry)
    with override_settings(ENCRYPTION_KEYS=[entry]):
        assert crypto.keyring().current == f"k{timezone.localdate():%Y%m%d}"


def test_generate_encryption_key_takes_an_id_and_never_repeats_a_key():
    first = run("generate_encryption_key", "--id", "prod-2026")
    second = run("generate_encryption_key", "--id", "prod-2026")
    assert first.startswith("prod-2026:") and second.startswith("prod-2026:")
    assert first != second


def test_generate_encryption_key_refuses_a_bad_id():
    with pytest.raises(CommandError, match="--id 'no spaces please'"):
        run("generate_encryption_key", "--id", "no spaces please")


# --- seed_demo --------------------------------------------------------------------------------


def demo_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (get_user_model(), Agent, AgentCrmAccess, Trigger, Sequence, Integration)
    }


def test_seed_demo_creates_a_staff_user_with_a_working_agent(db):
    out = run("seed_demo", "--password", "demo-pass-123")

    demo = get_user_model().objects.get(username="demo")
    assert demo.is_staff and not demo.is_superuser
    assert demo.check_password("demo-pass-123")

    agent = Agent.objects.get(owner=demo, name="Demo sales agent")
    assert agent.instructions
    assert agent.schedule["timezone"] == "Europe/Moscow"
    assert sorted(agent.schedule["days"]) == ["fri", "mon", "thu", "tue", "wed"]
    assert agent.crm_access.lead_fields and agent.crm_access.contact_fields

    telegram = agent.integrations.get(integration_type="telegram")
    assert telegram.credentials == {"bot_token": "demo-not-a-real-token"}
    assert agent.triggers.get().actions[0]["type"] == "create_task"
    steps = agent.sequences.get().steps
    assert [step["type"] for step in steps] == ["delay", "generate_message", "send_message", "create_task"]
    assert steps[2]["integration_id"] == telegram.id and steps[2]["use_generated"] is True
    # written through the services, which tell open browsers about the change
    assert LiveEvent.objects.filter(owner=demo, type="agent.changed").exists()
    assert "Demo data created" in out


def test_seed_demo_twice_creates_nothing_more_and_says_so(db):
    run("seed_demo", "--password", "demo-pass-123")
    counts = demo_counts()

    out = run("seed_demo")

    assert demo_counts() == counts
    assert "already present, nothing created" in out
    assert get_user_model().objects.get(username="demo").check_password("demo-pass-123")


def test_seed_demo_without_a_password_prints_a_generated_one_once(db, monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)

    out = run("seed_demo")

    password = re.search(r"Demo login: demo / (\S+)", out).group(1)
    assert get_user_model().objects.get(username="demo").check_password(password)
    assert "Demo login" not in run("seed_demo")


def test_seed_demo_takes_the_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "from-the-env-42")
    out = run("seed_demo")
    assert "from-the-env-42" not in out
    assert get_user_model().objects.get(username="demo").check_password("from-the-env-42")


# --- serve: preparation and the children's environment ------------------------------------------


def serve_command():
    from agents.management.commands.serve import Command

    return Command(stdout=StringIO(), stderr=StringIO())


def test_serve_creates_admin_with_a_generated_password_in_a_private_file(db, tmp_path, monkeypatch):
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    command = serve_command()
    with override_settings(LOCAL_DIR=tmp_path):
        command.ensure_admin()
        password_file = tmp_path / "admin-password.txt"
        password = password_file.read_text().strip()
        admin = get_user_model().objects.get(username="admin")
        assert admin.is_superuser and admin.check_password(password)
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password in command.stdout.getvalue()

        command.ensure_admin()  # the second start keeps the user and the password
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert password_file.read_text().strip() == password


def test_serve_uses_admin_password_from_the_environment_and_writes_no_file(db, tmp_path, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", "admin-from-env-42")
    with override_settings(LOCAL_DIR=tmp_path):
        serve_command().ensure_admin()
    assert get_user_model().objects.get(username="admin").check_password("admin-from-env-42")
    assert not (tmp_path / "admin-password.txt").exists()


def test_serve_keeps_the_psycopg_pool_away_from_the_worker(monkeypatch):
    monkeypatch.delenv("DATABASE_POOL", raising=False)
    (web_name, web, web_env), (worker_name, worker, worker_env) = serve_command().child_commands(
        host="127.0.0.1", port=8123, workers=3, with_worker=True
    )
    assert web[:4] == [sys.executable, "-m", "uvicorn", "config.asgi:application"]
    assert web[web.index("--port") + 1] == "8123" and web[web.index("--workers") + 1] == "3"
    assert "DATABASE_POOL" not in web_env  # config/asgi.py decides for the web server
    assert worker[-1] == "worker" and worker_env["DATABASE_POOL"] == "false"


def test_serve_passes_an_explicit_database_pool_setting_to_both(monkeypatch):
    monkeypatch.setenv("DATABASE_POOL", "true")
    (_, web, web_env), (_, _, worker_env) = serve_command().child_commands(
        host="127.0.0.1", port=8123, workers=1, with_worker=True
    )
    assert "--workers" not in web
    assert web_env["DATABASE_POOL"] == worker_env["DATABASE_POOL"] == "true"


def test_serve_without_worker_starts_only_the_web_server():
    children = serve_command().child_commands(host="127.0.0.1", port=8123, workers=1, with_worker=False)
    assert [name for name, _, _ in children] == ["web server (uvicorn)"]


# --- serve, for real ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return found


def descendants(pid: int) -> dict[int, str]:
    table = processes()
    found: dict[int, str] = {}
    parents = {pid}
    while parents:
        children = {child for child, (ppid, _, _) in table.items() if ppid in parents and child not in found}
        found.update({child: table[child][2] for child in children})
        parents = children
    return found


def alive(pids) -> list[int]:
    table = processes()
    return [pid for pid in pids if pid in table and table[pid][1] != "Z"]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


class Serve:
    """``manage.py serve`` in a subprocess on its own SQLite file and a free port."""

    def __init__(self, tmp_path: Path, *args: str):
        self.tmp_path = tmp_path
        self.base = f"http://127.0.0.1:{free_port()}"
        unset = ("DATABASE_POOL", "ENCRYPTION_KEYS", "LOG_LEVEL")
        env = {key: value for key, value in os.environ.items() if key not in unset}
        env |= {
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
            "STATIC_ROOT": str(tmp_path / "static"),
            "ADMIN_PASSWORD": "e2e-admin-password-1",
            "DEMO_PASSWORD": "e2e-demo-password-1",  # so that no password file is written into .local/
            "PYTHONUNBUFFERED": "1",
        }
        self.log = (tmp_path / "serve.log").open("w")
        self.seen: set[int] = set()  # every process of the tree seen, killed at the end if still there
        argv = [sys.executable, "manage.py", "serve", "--port", self.base.rsplit(":", 1)[1], *args]
        self.process = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return (self.tmp_path / "serve.log").read_text()

    def wait_until_healthy(self, timeout: float = 25) -> float:
        started = time.monotonic()
        while True:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() - started < timeout, f"no answer on /healthz within {timeout} s:\n{self.output()}"
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    self.tree()
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            time.sleep(0.1)

    def tree(self) -> dict[int, str]:
        found = descendants(self.process.pid)
        self.seen |= set(found)
        return found

    def children(self) -> dict[int, str]:
        table = processes()
        return {pid: cmd for pid, (ppid, _, cmd) in table.items() if ppid == self.process.pid}

    def child(self, marker: str) -> int:
        found = [pid for pid, cmd in self.children().items() if marker in cmd]
        assert len(found) == 1, self.children()
        return found[0]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # its children get SIGTERM through PR_SET_PDEATHSIG
            self.process.wait()
        for pid in alive(self.seen):  # a failed test must not leave workers behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture
def serve_factory(tmp_path):
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        started.append(Serve(tmp_path, *args))
        return started[-1]

    yield start
    for serve in started:
        serve.close()


def admin_session(base: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    login = session.get(f"{base}/admin/login/", timeout=5)
    assert login.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    logged_in = session.post(
        f"{base}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/"},
        timeout=5,
    )
    assert logged_in.status_code == 200 and "/admin/login/" not in logged_in.url, f"{username} could not log in"
    return session


proc_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


@pytest.mark.e2e
@proc_only
def test_serve_runs_the_web_server_and_the_worker_and_stops_on_sigterm(serve_factory):
    serve = serve_factory()
    serve.wait_until_healthy()

    for username, password in [("admin", "e2e-admin-password-1"), ("demo", "e2e-demo-password-1")]:
        session = admin_session(serve.base, username, password)
        agents_page = session.get(f"{serve.base}/admin/agents/agent/", timeout=5)
        assert agents_page.status_code == 200
        assert "Demo sales agent" in agents_page.text

    web = serve.child("-m uvicorn config.asgi:application")
    worker = serve.child("manage.py worker")
    # the pool stays with the web server (config/asgi.py) and away from django-q2's forked workers
    assert "DATABASE_POOL" not in environ_of(web)
    assert environ_of(worker)["DATABASE_POOL"] == "false"

    tree = serve.tree()
    stopping = time.monotonic()
    serve.process.send_signal(signal.SIGTERM)
    serve.process.wait(timeout=15)
    while alive(tree) and time.monotonic() - stopping < 15:
        time.sleep(0.1)
    assert not alive(tree), f"still running after SIGTERM: {alive(tree)}"
    assert serve.process.returncode == 0, serve.output()
    # both stopped on the forwarded signal, not on the kill after the timeout
    output = serve.output()
    assert "has stopped" in output and "Finished server process" in output and "killing" not in output


@pytest.mark.e2e
@proc_only
def test_serve_stops_the_web_server_and_fails_when_the_worker_dies(serve_factory):
    serve = serve_factory("--no-demo")
    serve.wait_until_healthy()
    worker = serve.child("manage.py worker")
    deadline = time.monotonic() + 10
    while len(descendants(worker)) < 2 and time.monotonic() < deadline:  # its sentinel and a worker
        time.sleep(0.1)
    assert len(descendants(worker)) >= 2, serve.output()
    tree = serve.tree()

    os.kill(worker, signal.SIGKILL)  # as the out-of-memory killer would

    serve.process.wait(timeout=15)
    assert serve.process.returncode != 0
    assert "the worker exited with code -9; stopped the rest" in serve.output()
    deadline = time.monotonic() + 5
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(tree), f"left running: {alive(tree)}"


# --- worker ------------------------------------------------------------------------------------
def test_the_worker_freezes_its_start_up_heap_before_forking_and_in_each_worker_process(monkeypatch):
    import gc

    from django_q.signals import post_spawn

    seen: dict[str, int] = {}

    class Cluster:  # django-q2's cluster, without its processes
        sentinel = None

        def start(self) -> None:
            seen["frozen at fork"] = gc.get_freeze_count()

    monkeypatch.setattr("django_q.cluster.Cluster", Cluster)
    gc.unfreeze()
    try:
        run("worker", "--no-dispatcher")
        assert seen["frozen at fork"] > 10_000  # Django and the task code, imported before
        assert {"crm.tasks", "agents.tasks", "sequences.tasks", "triggers.execution"} <= set(sys.modules)
        gc.unfreeze()
        # a worker process, started or recycled, freezes what it holds as it starts
        post_spawn.send(sender="django_q", proc_name="Process-1:1")
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        post_spawn.disconnect(dispatch_uid="worker.settle_heap")
