"""The quick start: prepare the database and static files, then run the ASGI server
(uvicorn) and the task worker (`manage.py worker`: django-q2 and the sequence
dispatcher) side by side until stopped."""
from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

ADMIN_USERNAME = "admin"
STOP_TIMEOUT_SECONDS = 10  # after this, children still running are killed


def write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (also when it exists already)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text + "\n")


def _die_with_parent():
    """On Linux, a child gets SIGTERM when serve itself dies without cleaning up (kill -9)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, called after it
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Command(BaseCommand):
    help = (
        "Quick start: migrate, collect static files, create the 'admin' superuser and the demo data if "
        "missing, then run the web server (uvicorn, HTTP and WebSockets) and the task worker "
        "(django-q2 + sequence dispatcher) "
        "until Ctrl+C or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
        parser.add_argument("--no-worker", action="store_true", help="do not start the task worker")
        parser.add_argument("--no-demo", action="store_true", help="do not create the demo user and agent")

    def handle(self, *args, host: str, port: int, workers: int, no_worker: bool, no_demo: bool, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        self.check_port_free(host, port)
        self.stdout.write("Migrating the database and collecting static files…")
        call_command("migrate", interactive=False, verbosity=max(options["verbosity"] - 1, 0))
        call_command("collectstatic", interactive=False, verbosity=0)
        lines = [self.ensure_admin()]
        if not no_demo:
            lines.append(self.ensure_demo())
        connections.close_all()  # the children open their own

        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
        url = f"http://{shown}:{port}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Admin:     {url}/admin/",
                    f"  API docs:  {url}/api/docs/",
                    *(f"  {line}" for line in lines),
                    "  Worker:    "
                    + ("off (--no-worker)" if no_worker else "manage.py worker (django-q2 + sequence dispatcher)"),
                    "",
                ]
            )
        )
        self.stdout.flush()
        self.run_children(host=host, port=port, workers=workers, with_worker=not no_worker, url=url)

    # --- preparation -----------------------------------------------------------------

    def check_port_free(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None

    def local_file(self, name: str) -> Path:
        return Path(getattr(settings, "LOCAL_DIR", Path(settings.BASE_DIR) / ".local")) / name

    def shown_path(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def ensure_admin(self) -> str:
        User = get_user_model()
        password_file = self.local_file("admin-password.txt")
        existing = User.objects.filter(username=ADMIN_USERNAME).first()
        if existing is not None:
            if not existing.is_superuser:
                self.stderr.write(f"Warning: user {ADMIN_USERNAME!r} exists but is not a superuser; left as it is.")
            where = (
                f"password in {self.shown_path(password_file)}"
                if password_file.exists()
                else "password unchanged (existing user)"
            )
            return f"Superuser: {ADMIN_USERNAME}, {where}"
        password = os.environ.get("ADMIN_PASSWORD")
        if password:
            User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", password)
            return f"Superuser: {ADMIN_USERNAME}, password from ADMIN_PASSWORD"
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", password)
        write_secret(password_file, password)
        self.stdout.write(
            f"Created superuser {ADMIN_USERNAME!r} with password {password} "
            f"(saved in {self.shown_path(password_file)})"
        )
        return f"Superuser: {ADMIN_USERNAME}, password in {self.shown_path(password_file)}"

    def ensure_demo(self) -> str:
        from agents.management.commands.seed_demo import DEMO_USERNAME, seed_demo

        password_file = self.local_file("demo-password.txt")
        result = seed_demo()
        if result.created:
            self.stdout.write("Demo data created: " + ", ".join(result.created) + ".")
        if result.password_generated:
            write_secret(password_file, result.password)
            self.stdout.write(
                f"Demo user {DEMO_USERNAME!r}, password {result.password} (saved in {self.shown_path(password_file)})"
            )
            where = f"password in {self.shown_path(password_file)}"
        elif result.password:
            where = "password from DEMO_PASSWORD"
        elif password_file.exists():
            where = f"password in {self.shown_path(password_file)}"
        else:
            where = "password unchanged (existing user)"
        return f"Demo user: {DEMO_USERNAME} (staff, not a superuser), {where}"

    # --- the two processes ---------------------------------------------------------------

    def child_commands(
        self, *, host: str, port: int, workers: int, with_worker: bool
    ) -> list[tuple[str, list[str], dict[str, str]]]:
        web = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port)]
        web += ["--lifespan", "off"]  # Channels' router has no lifespan handler; this avoids a misleading log line
        if workers > 1:
            web += ["--workers", str(workers)]
        # config/asgi.py turns the psycopg pool on for the web server unless DATABASE_POOL is set.
        children = [("web server (uvicorn)", web, dict(os.environ))]
        if with_worker:
            worker_env = dict(os.environ)
            # The psycopg pool stalls django-q2's forked workers (shared/notes/measured-here.md).
            worker_env.setdefault("DATABASE_POOL", "false")
            if worker_env["DATABASE_POOL"].lower() in ("1", "true", "yes", "on"):
                self.stderr.write(
                    "Warning: DATABASE_POOL is set to true and is passed to the worker as well; "
                    "django-q2's forked workers stall with the psycopg pool."
                )
            manage_py = str(Path(settings.BASE_DIR) / "manage.py")
            children.append(("worker", [sys.executable, manage_py, "worker"], worker_env))
        return children

    def run_children(self, *, host: str, port: int, workers: int, with_worker: bool, url: str) -> None:
        running: list[tuple[str, subprocess.Popen]] = []
        stop_signal: list[int] = []

        def forward(signum, frame):
            stop_signal.append(signum)
            for _, process in running:
                if process.poll() is None:
                    process.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for name, argv, env in self.child_commands(host=host, port=port, workers=workers, with_worker=with_worker):
                if stop_signal:
                    break
                # Own session: a Ctrl+C in the terminal reaches serve only, which forwards it once.
                process = subprocess.Popen(
                    argv, env=env, cwd=settings.BASE_DIR, start_new_session=True, preexec_fn=_die_with_parent()
                )
                running.append((name, process))

            ready = False
            while not stop_signal:
                ended = [(name, p) for name, p in running if p.poll() is not None]
                if ended:
                    name, process = ended[0]
                    self.stop(running, signal.SIGTERM)
                    raise CommandError(
                        f"the {name} exited with code {process.returncode}; stopped the rest",
                        returncode=process.returncode if process.returncode and process.returncode > 0 else 1,
                    )
                if not ready and self.accepts_connections(host, port):
                    ready = True
                    self.stdout.write(f"Ready: {url}/admin/  (Ctrl+C stops the server and the worker)")
                    self.stdout.flush()
                time.sleep(0.2)
            self.stop(running, None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def accepts_connections(self, host: str, port: int) -> bool:
        target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        try:
            with socket.create_connection((target, port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, running: list[tuple[str, subprocess.Popen]], signum: int | None) -> None:
        """Send ``signum`` (None: already forwarded) and wait; kill what is left after the timeout."""
        if signum is not None:
            for _, process in running:
                if process.poll() is None:
                    process.send_signal(signum)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for name, process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The {name} did not stop within {STOP_TIMEOUT_SECONDS} s; killing it.")
                self.signal_group(process, signal.SIGKILL)
                process.wait()
            # A child that died abruptly (kill -9, out of memory) leaves its own children
            # behind (the cluster's sentinel and workers); they share its process group.
            self.signal_group(process, signal.SIGTERM)

    def signal_group(self, process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)  # each child leads its own session, so its group id is its pid
        except (ProcessLookupError, PermissionError):
            pass
