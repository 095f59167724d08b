"""The live activity page and the admin's live integration health in a real browser:
headless Chromium (Playwright) against uvicorn serving config.asgi on the test database.

Events are raised in this process the way the worker raises them (a stored CRM event run
through the triggers, a service changing an integration's status): they reach the pages
through Redis when REDIS_URL is set, else through the server's database relay.
"""
from __future__ import annotations

import asyncio
import re

import pytest
from channels.db import database_sync_to_async
from playwright.async_api import Browser, Page, expect

from agents.models import LiveEvent
from integrations.services import integration_set_status
from tests.factories import PASSWORD, make_agent, make_integration, make_user

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),  # the browser's loop
]

WAIT_MS = 10_000  # an event reaches a page within the relay's 0.1 s poll; a restart takes ~2 s
ROWS = "#activity-rows tr"
ACTIVITY_TYPES = ["trigger.fired", "sequence.step", "integration.status"]

# ORM work off the event loop's thread (and its connection closed after), as in a worker
set_status = database_sync_to_async(integration_set_status)


@database_sync_to_async
def activity_ids(user) -> list[int]:
    """The user's activity events, newest first: what their page should show."""
    events = LiveEvent.objects.filter(owner=user, type__in=ACTIVITY_TYPES).order_by("-id")
    return list(events.values_list("id", flat=True))


def watched(page: Page) -> Page:
    """``page.problems``: its uncaught script errors and Content-Security-Policy refusals."""
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("console", lambda message: "Content Security Policy" in message.text and page.problems.append(message.text))
    return page


async def sign_in(browser: Browser, site, user, *, csp: bool = False) -> Page:
    """A new browser session: the activity page sends it to the admin login, and back.
    ``csp``: the page is then served with a strict Content-Security-Policy."""
    context = await browser.new_context(base_url=site.origin)
    page = watched(await context.new_page())
    await page.goto("/activity/")
    await expect(page).to_have_url(re.compile(r"/admin/login/\?next=/activity/$"))
    await page.fill("#id_username", user.username)
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await expect(page).to_have_url(f"{site.origin}/activity/")
    if csp:
        policy = f"default-src 'self'; connect-src 'self' ws://127.0.0.1:{site.port}; img-src 'self' data:"

        async def with_policy(route):
            response = await route.fetch()
            await route.fulfill(response=response, headers={**response.headers, "content-security-policy": policy})

        await page.route("**/activity/", with_policy)
        await page.goto("/activity/")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await page.evaluate("window.notReloaded = true")
    return page


async def shown_ids(page: Page) -> list[int]:
    return [int(i) for i in await page.eval_on_selector_all(ROWS, "rows => rows.map(row => row.dataset.eventId)")]


async def assert_still_the_same_page(page: Page) -> None:
    assert await page.evaluate("window.notReloaded") is True, "the page was reloaded"
    assert page.problems == []


@pytest.fixture
def owner(transactional_db):
    return make_user(is_staff=True)


@pytest.fixture
def stranger(transactional_db):
    return make_user(is_staff=True)


@pytest.fixture
def telegram(owner):
    return make_integration(make_agent(owner=owner, name="Support bot"), integration_type="telegram")


@pytest.fixture
def thank_you(owner, kommo_for, thank_you_for):
    """The owner's "Won → thank you" trigger and the Kommo account it listens to."""
    trigger = thank_you_for(make_agent(owner=owner, name="Sales bot"))
    return trigger, kommo_for(trigger.agent)


@pytest.fixture
def strangers_bot(stranger):
    return make_integration(make_agent(owner=stranger, name="Their bot"), integration_type="telegram")


async def test_a_trigger_firing_appears_live_for_its_owner_and_nobody_else(
    browser, live_site, owner, stranger, thank_you, strangers_bot, crm_api, leads_won
):
    trigger, kommo = thank_you
    owner_page = await sign_in(browser, live_site, owner, csp=True)
    stranger_page = await sign_in(browser, live_site, stranger)
    await expect(owner_page.locator("#activity-empty")).to_be_visible()

    await database_sync_to_async(leads_won)(kommo)  # what the worker does with Kommo's delivery

    fired = owner_page.locator(ROWS, has_text="Trigger “Won → thank you” fired for lead 23416597: 2 actions done")
    await expect(fired).to_be_visible(timeout=WAIT_MS)
    await expect(fired).to_contain_text("Sales bot")
    await expect(fired.get_by_role("link")).to_have_attribute("href", f"/admin/triggers/trigger/{trigger.id}/change/")
    await expect(owner_page.locator("#activity-empty")).to_be_hidden()
    # the stranger's page is live too: it gets their own news, and none of the owner's
    await set_status(integration=strangers_bot, status="failing", detail="Forbidden: bot was blocked")
    await expect(stranger_page.locator(ROWS, has_text="Telegram is failing: Forbidden: bot was blocked")).to_be_visible(
        timeout=WAIT_MS
    )
    await expect(stranger_page.locator("#activity-rows")).not_to_contain_text("Won → thank you")
    owner_ids = await activity_ids(owner)
    await expect(owner_page.locator(ROWS)).to_have_count(len(owner_ids), timeout=WAIT_MS)
    # each event once (announced on the socket and fetched), newest first, only the owner's
    assert await shown_ids(owner_page) == owner_ids
    assert await shown_ids(stranger_page) == await activity_ids(stranger)
    await assert_still_the_same_page(owner_page)
    await assert_still_the_same_page(stranger_page)


async def test_the_page_opens_with_recent_events_and_catches_up_after_the_server_restarts(
    browser, live_site, owner, telegram
):
    await set_status(integration=telegram, status="connected")
    page = await sign_in(browser, live_site, owner)
    await expect(page.locator(ROWS)).to_have_text([re.compile("Telegram is connected")])  # loaded on open
    state = page.locator("#live-state")

    await asyncio.to_thread(live_site.stop)  # a deploy: the socket drops
    await expect(state).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    await set_status(integration=telegram, status="failing", detail="Telegram answered 502 Bad Gateway")
    await asyncio.to_thread(live_site.start)  # same port

    await expect(state).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(page.locator(ROWS).first).to_contain_text(
        "Telegram is failing: Telegram answered 502 Bad Gateway", timeout=WAIT_MS
    )
    assert await shown_ids(page) == await activity_ids(owner)
    # live again: news after the reconnect arrive on the new socket
    await set_status(integration=telegram, status="connected")
    await expect(page.locator(ROWS).first).to_contain_text("Telegram is connected", timeout=WAIT_MS)
    assert await shown_ids(page) == await activity_ids(owner)
    await assert_still_the_same_page(page)


async def test_the_admin_shows_an_integrations_new_health_without_a_reload(browser, live_site, owner, telegram):
    await set_status(integration=telegram, status="connected")
    change_page = await sign_in(browser, live_site, owner)
    await change_page.goto(f"/admin/integrations/integration/{telegram.id}/change/")
    list_page = watched(await change_page.context.new_page())
    await list_page.goto("/admin/integrations/integration/")
    for page in (change_page, list_page):
        badge = page.locator(f'[data-integration-health-status="{telegram.id}"]')
        await expect(badge).to_have_text("Connected")
        await expect(badge).to_have_attribute("data-live", "live", timeout=WAIT_MS)
        await page.evaluate("window.notReloaded = true")

    await set_status(integration=telegram, status="needs_reconnect", detail="Unauthorized: the bot token was revoked")

    await database_sync_to_async(telegram.refresh_from_db)()
    for page in (change_page, list_page):
        badge = page.locator(f'[data-integration-health-status="{telegram.id}"]')
        await expect(badge).to_have_text("Needs re-connection", timeout=WAIT_MS)
        await expect(badge).to_have_class(re.compile(r"\bhealth-needs_reconnect\b"))
        await expect(page.locator(f'[data-integration-health-detail="{telegram.id}"]')).to_have_text(
            "Unauthorized: the bot token was revoked"
        )
        await expect(page.locator(f'[data-integration-health-since="{telegram.id}"]')).to_have_attribute(
            "datetime", telegram.status_changed_at.isoformat()
        )
        await assert_still_the_same_page(page)
