"""Real processes for end-to-end tests, on the database of the running test.

``AsgiServer.start()`` runs uvicorn with ``config.asgi:application`` (the deployed entry
point) on a free local port; ``run_worker_script()`` runs Python code in a fresh process
with Django set up, standing in for the django-q2 worker. Both get the environment of the
test run (``REDIS_URL`` included) with ``DATABASE_URL`` pointing at the *test* database,
so they only see rows the test has committed: use ``django_db(transaction=True)``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from django.test import Client

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 30.0

# Loopback only: a proxy from the environment must not see these requests.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def database_url() -> str:
    """DATABASE_URL of the database this test run uses (not the one in the environment)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"  # NAME is absolute: sqlite:////work/…
    if connection.vendor == "postgresql":
        auth = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = quote(db["HOST"] or "localhost", safe="")  # a socket directory becomes %2F…
        port = f":{db['PORT']}" if db["PORT"] else ""
        return f"postgres://{auth}@{host}{port}/{quote(db['NAME'], safe='')}"
    raise NotImplementedError(f"no DATABASE_URL for {connection.vendor}")


def process_env() -> dict[str, str]:
    return os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "PYTHONUNBUFFERED": "1",
    }


def login_cookie(user) -> str:
    """A session cookie header value for ``user`` (the session row is written now)."""
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


if sys.platform == "linux":
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not import

    def _die_with_parent() -> None:
        """In the child: SIGTERM when pytest dies, so that no server outlives a killed run
        (holding the port and, on PostgreSQL, the test database)."""
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
else:
    _die_with_parent = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AsgiServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @classmethod
    def start(cls, log_path: Path, port: int | None = None) -> AsgiServer:
        """On ``port`` when given (a restart that open pages reconnect to), else a free one."""
        port = port or free_port()
        command = [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", "127.0.0.1", "--port", str(port),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block it
            process = subprocess.Popen(
                command, cwd=ROOT, env=process_env(), stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        server = cls(process=process, port=port, log_path=log_path)
        try:
            server.wait_until_healthy()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                with _http.open(f"{self.origin}/healthz", timeout=1) as response:
                    if json.load(response) == {"status": "ok"}:
                        return
            except OSError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn not healthy after {SERVER_START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_worker_script(code: str, *args: str, timeout: float = 60) -> str:
    """Run ``code`` after ``django.setup()`` in a new process; returns its stdout."""
    script = "import django\ndjango.setup()\n" + code
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT, env=process_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"worker script failed ({result.returncode}):\n{result.stderr[-5000:]}")
    return result.stdout
