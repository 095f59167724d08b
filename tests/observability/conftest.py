"""Fixtures of the live activity tests: a trigger fired the way the worker fires it, and
for the browser tests a real Chromium (installed here when missing) and the real ASGI
server on the test database, with the static files it serves."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import responses
from django.core.management import call_command
from django.test import override_settings

from crm.intake import delivery_store
from crm.tasks import process_events
from crm.webhooks import parse_delivery
from tests.crm.webhook_helpers import ACCOUNT_ID, body
from tests.factories import make_integration, make_trigger
from tests.live_server import AsgiServer

CRM = "https://acme.kommo.com"
WON = 142
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # a response fulfilled by the test (a page given a Content-Security-Policy) has no
    # address, so Chromium would take it for a public page and refuse its loopback socket
    "--disable-features=LocalNetworkAccessChecks",
]  # fmt: skip
APT_TIMEOUT = 900  # seconds; a first install downloads ~100 MB


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (Playwright) against uvicorn")


# --- a trigger fired by a stored CRM event, as in the worker -------------------------------


@pytest.fixture
def kommo_for(settings) -> Callable:
    """``kommo_for(agent)``: the agent's Kommo integration, CRM events going to triggers only."""
    settings.CRM_EVENT_HANDLERS = ["triggers.execution.run_triggers"]

    def kommo_for(agent):
        return make_integration(
            agent,
            integration_type="kommo",
            config={"base_url": CRM, "account_id": ACCOUNT_ID},
            credentials={"access_token": "crm-token"},
        )

    return kommo_for


@pytest.fixture
def crm_api() -> Iterator[responses.RequestsMock]:
    """Kommo answering the "thank you" trigger's task and note."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(f"{CRM}/api/v4/tasks", json={"_embedded": {"tasks": [{"id": 9001}]}})
        mock.post(re.compile(rf"{CRM}/api/v4/leads/\d+/notes"), json={"_embedded": {"notes": [{"id": 7001}]}})
        yield mock


@pytest.fixture
def thank_you_for() -> Callable:
    """``thank_you_for(agent)``: the agent's "Won → thank you" trigger (a task and a note)."""
    return _thank_you_trigger


@pytest.fixture
def leads_won() -> Callable:
    """``leads_won(kommo)``: Kommo's real "status changed" delivery (leads 23416597 and
    23416601 won), stored and processed as the webhook view and the worker do."""
    return _deliver_leads_won


def _thank_you_trigger(agent):
    return make_trigger(
        agent,
        name="Won → thank you",
        event="lead_status_changed",
        conditions=[{"field": "status", "operator": "changed_to", "value": {"status_id": WON}}],
        actions=[
            {"type": "create_task", "text": "Thank {{lead.name}}", "due_in_minutes": 30},
            {"type": "add_note", "text": "Won: thanked by the trigger"},
        ],
    )


def _deliver_leads_won(integration) -> list[int]:
    stored = delivery_store(integration_id=integration.id, changes=parse_delivery(body("lead_status_changed")).changes)
    process_events(list(stored.event_ids))
    return list(stored.event_ids)


# --- the browser ---------------------------------------------------------------------------


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *args],
        env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True, text=True, timeout=APT_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def install_chromium() -> str | None:
    """Install Debian's chromium; None when it is there, else why it could not be."""
    if os.path.exists(CHROMIUM):
        return None
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not Debian/Ubuntu)"
    if os.geteuid() != 0:
        return "installing it needs root: run `apt-get install chromium` as root"
    try:
        result = _apt_get("install", "chromium")
        if result.returncode != 0:  # stale or missing package lists
            _apt_get("update")
            result = _apt_get("install", "chromium")
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"apt-get install chromium failed: {error}"
    if result.returncode != 0 or not os.path.exists(CHROMIUM):
        return f"apt-get install chromium failed ({result.returncode}): {(result.stderr or result.stdout)[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    problem = install_chromium()
    if problem:
        pytest.skip(f"no headless browser for the browser tests: {CHROMIUM} is missing and {problem}")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium):
    """Playwright's async API: its sync API keeps an event loop running in the test's
    thread, where Django then refuses the ORM and async_to_sync (the Redis push) fails."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


# --- the server ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def static_root(tmp_path_factory) -> Path:
    """The static files collected (as links), for WhiteNoise in the server process."""
    root = tmp_path_factory.mktemp("static")
    with override_settings(STATIC_ROOT=root):
        call_command("collectstatic", interactive=False, link=True, verbosity=0)
    return root


class LiveSite:
    """uvicorn serving config.asgi on the test database. ``stop()`` then ``start()`` is a
    restart on the same port, which open pages reconnect to."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.starts = 0
        self.server: AsgiServer | None = None

    def start(self) -> None:
        self.starts += 1
        port = self.server.port if self.server else None
        self.server = AsgiServer.start(log_path=self.log_dir / f"uvicorn-{self.starts}.log", port=port)

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    @property
    def origin(self) -> str:
        return self.server.origin

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture(scope="module")
def live_site(django_db_setup, static_root, tmp_path_factory) -> Iterator[LiveSite]:
    site = LiveSite(tmp_path_factory.mktemp("uvicorn"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STATIC_ROOT", str(static_root))  # read by the server's settings
        site.start()
        try:
            yield site
        finally:
            site.stop()  # before the test database is dropped
