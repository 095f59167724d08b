"""KommoClient against Kommo-shaped answers: what it sends, what it returns, how it fails.

The answers are recorded shapes of the Kommo API v4 (tests/crm/fixtures/client_*.json).
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from crm.client import (
    Account,
    Contact,
    CreatedLead,
    CustomField,
    FieldEnum,
    FieldValue,
    KommoClient,
    Lead,
    LeadUpdate,
    Pipeline,
    RetryPolicy,
    Status,
    Tag,
    User,
    exchange_code,
    refresh_tokens,
)
from integrations import http
from integrations.errors import AuthError, NotFound, PermanentError, RateLimited, TransientError, Unconfirmed

BASE = "https://acme.kommo.com"
# shaped like Kommo's access tokens (a JWT), so that the scrubbing of look-alikes is exercised too
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJqdGkiOiJ0ZXN0LXRva2VuLTQyIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str):
    return json.loads((FIXTURES / f"client_{name}.json").read_text())


class Recorder(list):
    """Stands in for time.sleep (RetryPolicy) and the rate limiter (acquire)."""

    def __call__(self, *args) -> None:
        self.append(args[0] if args else None)


@pytest.fixture
def sleeps() -> Recorder:
    return Recorder()


@pytest.fixture
def acquired() -> Recorder:
    return Recorder()


@pytest.fixture
def client(sleeps, acquired) -> KommoClient:
    return KommoClient(BASE, TOKEN, acquire=acquired, retry=RetryPolicy(sleep=sleeps))


@pytest.fixture(autouse=True)
def kommo():
    with responses.RequestsMock() as mock:
        yield mock


def query(**params):
    return matchers.query_param_matcher({k: str(v) for k, v in params.items()})


def sent_json(call) -> object:
    return json.loads(call.request.body)


# --- Pagination, empty answers -------------------------------------------------------------


def test_a_listing_follows_links_next_across_three_pages(kommo, client):
    path = f"{BASE}/api/v4/leads/custom_fields"
    kommo.get(path, json=fixture("lead_fields_page1"), match=[query(limit=250)])
    kommo.get(path, json=fixture("lead_fields_page2"), match=[query(limit=250, page=2)])
    kommo.get(path, json=fixture("lead_fields_page3"), match=[query(limit=250, page=3)])

    fields = client.lead_custom_fields()

    assert [f.name for f in fields] == ["Budget source", "Delivery date", "utm_source", "Comment", "Interested in"]
    assert fields[0] == CustomField(
        id=1138421,
        name="Budget source",
        type="select",
        code=None,
        is_predefined=False,
        enums=(FieldEnum(id=963427, value="Own funds"), FieldEnum(id=963429, value="Bank loan")),
    )
    assert fields[2].code == "UTM_SOURCE"
    assert len(kommo.calls) == 3


def test_a_listing_that_counts_pages_without_a_next_link_is_read_by_page_number(kommo, client):
    first, second = fixture("lead_fields_page1"), fixture("lead_fields_page2")
    del first["_links"]["next"]
    second["_page_count"] = 2
    del second["_links"]["next"]
    path = f"{BASE}/api/v4/leads/custom_fields"
    kommo.get(path, json=first, match=[query(limit=250)])
    kommo.get(path, json=second, match=[query(limit=250, page=2)])

    assert [f.id for f in client.lead_custom_fields()] == [1138421, 1138423, 1138425, 1138427]


def test_a_next_link_is_followed_on_the_accounts_own_host(kommo, client):
    page = fixture("users")
    page["_links"]["next"] = {"href": "https://elsewhere.example/api/v4/users?limit=250&page=2"}
    kommo.get(f"{BASE}/api/v4/users", json=page, match=[query(limit=250)])
    kommo.get(f"{BASE}/api/v4/users", status=204, match=[query(limit=250, page=2)])

    assert len(client.users()) == 2
    assert all(call.request.url.startswith(BASE + "/") for call in kommo.calls)


def test_a_next_link_back_to_a_page_already_read_ends_the_listing(kommo, client):
    page = fixture("lead_tags")
    page["_links"]["next"] = {"href": f"{BASE}/api/v4/leads/tags?limit=250&page=2"}
    kommo.get(f"{BASE}/api/v4/leads/tags", json=page, match=[query(limit=250)])
    kommo.get(f"{BASE}/api/v4/leads/tags", json=page, match=[query(limit=250, page=2)])

    assert [t.name for t in client.lead_tags()] == ["hot", "ai-agent", "hot", "ai-agent"]
    assert len(kommo.calls) == 2


def test_a_listing_answered_204_is_empty(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts", status=204)

    assert client.find_contacts("nobody@example.com") == []


@pytest.mark.parametrize("status", [204, 404])
def test_a_lead_that_is_not_there_is_not_found(kommo, client, status):
    kommo.get(f"{BASE}/api/v4/leads/404404", status=status)

    with pytest.raises(NotFound) as caught:
        client.get_lead(404404)

    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == status
    assert len(kommo.calls) == 1


def test_a_contact_answered_204_is_not_found(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts/77", status=204)

    with pytest.raises(NotFound, match="contact 77 was not found"):
        client.get_contact(77)


# --- Errors and retries -------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_raises_auth_error_at_once(kommo, client, sleeps, status):
    kommo.get(f"{BASE}/api/v4/account", status=status, json=fixture("error_unauthorized"))

    with pytest.raises(AuthError) as caught:
        client.account()

    assert caught.value.status == status
    assert str(caught.value) == f"Kommo GET /api/v4/account: {status} Invalid user name or password"
    assert len(kommo.calls) == 1 and sleeps == []


def test_a_429_waits_as_long_as_retry_after_says_then_succeeds(kommo, client, sleeps, acquired):
    kommo.get(f"{BASE}/api/v4/account", status=429, headers={"Retry-After": "3"})
    kommo.get(f"{BASE}/api/v4/account", json=fixture("account"))

    assert client.account() == Account(id=30138751, name="Acme Sales", subdomain="acme")
    assert sleeps == [3.0]
    assert len(acquired) == 2  # the retry waits for its own rate-limit slot too


def test_a_retry_after_given_as_a_date_is_honoured(kommo, client, sleeps):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    kommo.get(f"{BASE}/api/v4/account", status=503, headers={"Retry-After": when})
    kommo.get(f"{BASE}/api/v4/account", json=fixture("account"))

    client.account()

    assert len(sleeps) == 1 and 3 <= sleeps[0] <= 5


def test_a_retry_after_longer_than_the_client_waits_goes_to_the_caller(kommo, client, sleeps):
    kommo.get(f"{BASE}/api/v4/users", status=429, headers={"Retry-After": "120"})

    with pytest.raises(RateLimited) as caught:
        client.users()

    assert caught.value.retry_after == 120
    assert sleeps == [] and len(kommo.calls) == 1


def test_a_429_that_persists_raises_rate_limited_after_the_last_attempt(kommo, client, sleeps):
    kommo.get(f"{BASE}/api/v4/users", status=429)

    with pytest.raises(RateLimited) as caught:
        client.users()

    assert caught.value.retry_after is None
    assert len(kommo.calls) == 4
    assert len(sleeps) == 3 and sleeps == sorted(sleeps)  # backing off


def test_a_5xx_on_a_get_is_retried_with_growing_backoff(kommo, client, sleeps):
    kommo.get(f"{BASE}/api/v4/leads/pipelines", status=502, body="<html>Bad Gateway</html>")
    kommo.get(f"{BASE}/api/v4/leads/pipelines", status=503)
    kommo.get(f"{BASE}/api/v4/leads/pipelines", json=fixture("pipelines"))

    assert [p.name for p in client.pipelines()] == ["Sales", "Partners"]
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_a_5xx_that_persists_raises_transient_error(kommo, client):
    kommo.get(f"{BASE}/api/v4/leads/18425309", status=500, json={"title": "Internal Server Error", "status": 500})

    with pytest.raises(TransientError, match="500 Internal Server Error") as caught:
        client.get_lead(18425309)

    assert caught.value.status == 500
    assert len(kommo.calls) == 4


def test_a_5xx_on_a_patch_is_retried(kommo, client):
    kommo.patch(f"{BASE}/api/v4/leads/18425309", status=503)
    kommo.patch(f"{BASE}/api/v4/leads/18425309", json=fixture("lead_updated"))

    client.update_lead(18425309, LeadUpdate(price=13000))

    assert len(kommo.calls) == 2


def test_a_5xx_on_a_post_is_not_retried_since_it_may_have_been_done(kommo, client, sleeps):
    kommo.post(f"{BASE}/api/v4/tasks", status=500)

    with pytest.raises(Unconfirmed, match="not confirmed") as caught:
        client.create_task(lead_id=18425309, text="Call back", complete_till=1700600000)

    assert caught.value.status == 500 and not isinstance(caught.value, TransientError)  # never retried blindly
    assert len(kommo.calls) == 1 and sleeps == []


def test_a_timeout_on_a_post_is_not_retried(kommo, client):
    kommo.post(f"{BASE}/api/v4/leads/18425309/notes", body=requests.ReadTimeout("read timed out"))

    with pytest.raises(Unconfirmed, match="timed out"):
        client.add_note(lead_id=18425309, text="The customer asked for a call")

    assert len(kommo.calls) == 1


def test_a_post_that_never_reached_kommo_is_retried(kommo, client):
    kommo.post(f"{BASE}/api/v4/leads/18425309/notes", body=requests.ConnectTimeout("connect timed out"))
    kommo.post(f"{BASE}/api/v4/leads/18425309/notes", json=fixture("note_created"))

    assert client.add_note(lead_id=18425309, text="The customer asked for a call") == 42709325
    assert len(kommo.calls) == 2


def refused(url: str) -> requests.ConnectionError:
    """What requests raises when the connection is refused: nothing was sent."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    return requests.ConnectionError(MaxRetryError(None, url, NewConnectionError(None, "Connection refused")))


def test_a_post_whose_connection_was_refused_is_retried_and_one_reset_after_sending_is_not(kommo, client):
    url = f"{BASE}/api/v4/leads/18425309/notes"
    kommo.post(url, body=refused(url))
    kommo.post(url, json=fixture("note_created"))
    assert client.add_note(lead_id=18425309, text="The customer asked for a call") == 42709325
    assert len(kommo.calls) == 2

    kommo.post(url, body=requests.ConnectionError("Connection aborted.", "RemoteDisconnected"))
    with pytest.raises(Unconfirmed, match="connection failed"):
        client.add_note(lead_id=18425309, text="Again")


def test_a_429_on_a_post_is_retried_since_it_was_refused(kommo, client, sleeps):
    kommo.post(f"{BASE}/api/v4/tasks", status=429, headers={"Retry-After": "1"})
    kommo.post(f"{BASE}/api/v4/tasks", json=fixture("task_created"))

    assert client.create_task(lead_id=18425309, text="Call back", complete_till=1700600000) == 4745251
    assert sleeps == [1.0]


def test_a_get_that_keeps_timing_out_raises_transient_error(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts/21542119", body=requests.ReadTimeout("read timed out"))

    with pytest.raises(TransientError, match=r"Kommo GET /api/v4/contacts/21542119: timed out"):
        client.get_contact(21542119)

    assert len(kommo.calls) == 4


def test_a_connection_error_raises_transient_error(kommo, client):
    kommo.get(f"{BASE}/api/v4/users", body=requests.ConnectionError("Connection refused"))

    with pytest.raises(TransientError, match="connection failed"):
        client.users()


def test_every_request_has_a_timeout(kommo, client, settings):
    kommo.get(f"{BASE}/api/v4/account", json=fixture("account"))
    kommo.patch(f"{BASE}/api/v4/leads/1", json=fixture("lead_updated"))

    client.account()
    client.update_lead(1, LeadUpdate(status_id=142))

    expected = (settings.HTTP_CONNECT_TIMEOUT_SECONDS, settings.HTTP_READ_TIMEOUT_SECONDS)
    assert [call.request.req_kwargs["timeout"] for call in kommo.calls] == [expected, expected]


def test_a_call_that_asks_for_no_timeout_still_gets_one(kommo, settings):
    kommo.get(f"{BASE}/api/v4/account", json=fixture("account"))

    http.session().get(f"{BASE}/api/v4/account", timeout=None)

    expected = (settings.HTTP_CONNECT_TIMEOUT_SECONDS, settings.HTTP_READ_TIMEOUT_SECONDS)
    assert kommo.calls[0].request.req_kwargs["timeout"] == expected


def test_an_answer_that_is_not_json_is_a_permanent_error(kommo, client, sleeps):
    kommo.get(f"{BASE}/api/v4/leads/18425309", body="<html>Maintenance</html>", content_type="text/html")

    with pytest.raises(PermanentError, match="the answer is not JSON"):
        client.get_lead(18425309)

    assert len(kommo.calls) == 1 and sleeps == []


def test_an_answer_of_the_wrong_shape_is_a_permanent_error(kommo, client):
    kommo.get(f"{BASE}/api/v4/leads/18425309", json={"name": "a lead without an id"})
    kommo.get(f"{BASE}/api/v4/users", json={"_embedded": {"users": [{"name": "no id"}]}})

    with pytest.raises(PermanentError, match="malformed"):
        client.get_lead(18425309)
    with pytest.raises(PermanentError, match="malformed"):
        client.users()


def test_a_validation_error_names_the_rejected_field(kommo, client):
    kommo.patch(f"{BASE}/api/v4/leads/18425309", status=400, json=fixture("error_validation"))

    with pytest.raises(PermanentError) as caught:
        client.update_lead(18425309, LeadUpdate(custom_fields={1138421: {"enum_id": 1}}))

    assert caught.value.status == 400
    assert str(caught.value) == (
        "Kommo PATCH /api/v4/leads/18425309: 400 Request validation failed "
        "(custom_fields_values.0.values.0.enum_id: NotSupportedChoice)"
    )
    assert len(kommo.calls) == 1


# --- Each operation: the request sent and the result ---------------------------------------


def test_account_gives_id_name_and_subdomain(kommo, client):
    kommo.get(f"{BASE}/api/v4/account", json=fixture("account"))

    assert client.account() == Account(id=30138751, name="Acme Sales", subdomain="acme")
    assert kommo.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_contact_custom_fields_include_the_predefined_phone_and_email(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts/custom_fields", json=fixture("contact_fields"), match=[query(limit=250)])

    fields = {f.code: f for f in client.contact_custom_fields()}

    assert fields["PHONE"].is_predefined and fields["PHONE"].type == "multitext"
    assert [e.value for e in fields["PHONE"].enums][:3] == ["WORK", "WORKDD", "MOB"]
    assert fields["EMAIL"].id == 563145
    assert fields[None].name == "Preferred language"


def test_pipelines_come_with_their_statuses(kommo, client):
    kommo.get(f"{BASE}/api/v4/leads/pipelines", json=fixture("pipelines"))

    sales, partners = client.pipelines()

    assert sales == Pipeline(
        id=7290366,
        name="Sales",
        is_main=True,
        statuses=(
            Status(id=61057618, name="Incoming leads", sort=10, type=1),
            Status(id=61057622, name="First contact", sort=20, type=0),
            Status(id=61057626, name="Offer sent", sort=30, type=0),
            Status(id=142, name="Closed - won", sort=10000, type=0),
            Status(id=143, name="Closed - lost", sort=11000, type=0),
        ),
    )
    assert not partners.is_main and [s.id for s in partners.statuses] == [61057650, 61057654, 142, 143]


def test_users_are_listed_with_their_emails(kommo, client):
    kommo.get(f"{BASE}/api/v4/users", json=fixture("users"), match=[query(limit=250)])

    assert client.users() == [
        User(id=9587231, name="Olga Petrova", email="olga@acme.example"),
        User(id=9587235, name="Mark Stone", email="mark@acme.example"),
    ]


def test_lead_and_contact_tags_are_listed_separately(kommo, client):
    kommo.get(f"{BASE}/api/v4/leads/tags", json=fixture("lead_tags"), match=[query(limit=250)])
    kommo.get(f"{BASE}/api/v4/contacts/tags", json=fixture("contact_tags"), match=[query(limit=250)])

    assert client.lead_tags() == [Tag(id=26703, name="hot", color="#FF8F92"), Tag(id=26705, name="ai-agent")]
    assert client.contact_tags() == [Tag(id=26711, name="newsletter")]


def test_get_lead_asks_for_its_contacts_and_knows_the_main_one(kommo, client):
    kommo.get(f"{BASE}/api/v4/leads/18425309", json=fixture("lead"), match=[query(**{"with": "contacts"})])

    lead = client.get_lead(18425309)

    assert lead == Lead(
        id=18425309,
        name="Solar panels for a house",
        price=12500,
        status_id=61057622,
        pipeline_id=7290366,
        responsible_user_id=9587231,
        custom_fields=(
            FieldValue(field_id=1138421, field_name="Budget source", values=("Bank loan",)),
            FieldValue(field_id=1138429, field_name="Interested in", values=("Solar panels", "Battery")),
        ),
        tags=(Tag(id=26703, name="hot", color="#FF8F92"),),
        contact_ids=(21542115, 21542119),
        main_contact_id=21542119,
        created_at=1700480400,
        updated_at=1700566800,
    )


def test_get_contact_gives_phones_emails_and_leads(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts/21542119", json=fixture("contact"), match=[query(**{"with": "leads"})])

    contact = client.get_contact(21542119)

    assert isinstance(contact, Contact)
    assert (contact.name, contact.first_name, contact.last_name) == ("Maria Lopez", "Maria", "Lopez")
    assert contact.phones == ("+1 (415) 555-0132", "+1 415 555 0199")
    assert contact.emails == ("maria.lopez@example.com",)
    assert contact.lead_ids == (18425309, 18425377)
    assert contact.responsible_user_id == 9587231


def test_find_contacts_sends_the_query(kommo, client):
    kommo.get(
        f"{BASE}/api/v4/contacts",
        json=fixture("contacts_search"),
        match=[query(limit=250, query="maria.lopez@example.com")],
    )

    assert [c.id for c in client.find_contacts("maria.lopez@example.com")] == [21542119, 21542233]


def test_find_contacts_by_phone_keeps_only_contacts_with_that_number(kommo, client):
    kommo.get(f"{BASE}/api/v4/contacts", json=fixture("contacts_search"), match=[query(limit=250, query="4155550132")])

    found = client.find_contacts_by_phone("+1 415-555-0132")

    assert [c.name for c in found] == ["Maria Lopez"]  # John Reed only mentions the number


def test_update_lead_patches_status_price_fields_and_tags(kommo, client):
    kommo.patch(f"{BASE}/api/v4/leads/18425309", json=fixture("lead_updated"))

    client.update_lead(
        18425309,
        LeadUpdate(
            status_id=61057626,
            pipeline_id=7290366,
            price=13000,
            custom_fields={1138427: "Wants a call after 6 pm", 1138429: [{"enum_id": 963431}, {"enum_id": 963433}],
                           1138423: None},
            tags_to_add=["ai-agent", "qualified"],
            tags_to_delete=["cold", 26711],
        ),
    )  # fmt: skip

    assert sent_json(kommo.calls[0]) == {
        "status_id": 61057626,
        "pipeline_id": 7290366,
        "price": 13000,
        "custom_fields_values": [
            {"field_id": 1138427, "values": [{"value": "Wants a call after 6 pm"}]},
            {"field_id": 1138429, "values": [{"enum_id": 963431}, {"enum_id": 963433}]},
            {"field_id": 1138423, "values": None},
        ],
        "tags_to_add": [{"name": "ai-agent"}, {"name": "qualified"}],
        "tags_to_delete": [{"name": "cold"}, {"id": 26711}],
    }


def test_an_update_that_changes_nothing_sends_nothing(kommo, client):
    client.update_lead(18425309, LeadUpdate())

    assert len(kommo.calls) == 0


def test_create_task_posts_one_task_on_the_lead(kommo, client):
    kommo.post(f"{BASE}/api/v4/tasks", json=fixture("task_created"))

    task_id = client.create_task(
        lead_id=18425309, text="Call back about the offer", complete_till=1700600000, responsible_user_id=9587235,
        task_type_id=1,
    )  # fmt: skip

    assert task_id == 4745251
    assert sent_json(kommo.calls[0]) == [
        {
            "entity_id": 18425309,
            "entity_type": "leads",
            "text": "Call back about the offer",
            "complete_till": 1700600000,
            "responsible_user_id": 9587235,
            "task_type_id": 1,
        }
    ]


def test_add_note_posts_a_common_note_to_the_lead(kommo, client):
    kommo.post(f"{BASE}/api/v4/leads/18425309/notes", json=fixture("note_created"))

    assert client.add_note(lead_id=18425309, text="AI agent: the customer wants a heat pump") == 42709325
    assert sent_json(kommo.calls[0]) == [
        {"note_type": "common", "params": {"text": "AI agent: the customer wants a heat pump"}}
    ]


def test_create_lead_with_contact_uses_the_complex_endpoint(kommo, client):
    kommo.post(f"{BASE}/api/v4/leads/complex", json=fixture("leads_complex"))

    created = client.create_lead_with_contact(
        lead_name="Heat pump, inbound chat",
        contact_name="Ann Berg",
        phone="+46 70 123 45 67",
        email="ann@example.se",
        pipeline_id=7290366,
        status_id=61057622,
        tags=["ai-agent"],
    )

    assert created == CreatedLead(lead_id=18425401, contact_id=21542301, merged=False)
    assert sent_json(kommo.calls[0]) == [
        {
            "name": "Heat pump, inbound chat",
            "pipeline_id": 7290366,
            "status_id": 61057622,
            "_embedded": {
                "contacts": [
                    {
                        "name": "Ann Berg",
                        "custom_fields_values": [
                            {"field_code": "PHONE", "values": [{"value": "+46 70 123 45 67", "enum_code": "WORK"}]},
                            {"field_code": "EMAIL", "values": [{"value": "ann@example.se", "enum_code": "WORK"}]},
                        ],
                    }
                ],
                "tags": [{"name": "ai-agent"}],
            },
        }
    ]


def test_a_complex_answer_without_a_lead_id_is_a_permanent_error(kommo, client):
    kommo.post(f"{BASE}/api/v4/leads/complex", json={"_embedded": {}})

    with pytest.raises(PermanentError, match="no lead id"):
        client.create_lead_with_contact(lead_name="x", contact_name="y")


# --- Secrets -------------------------------------------------------------------------------

ECHOING = {
    "title": "Bad Request",
    "status": 400,
    "detail": f"Header Authorization: Bearer {TOKEN} is not valid for this account",
    "validation-errors": [{"request_id": "0", "errors": [{"code": TOKEN, "path": f"token.{TOKEN}"}]}],
}


def _fail_401(kommo):
    kommo.get(f"{BASE}/api/v4/leads/1", status=401, json={**fixture("error_unauthorized"), "hint": TOKEN})


def _fail_400_echoing(kommo):
    kommo.get(f"{BASE}/api/v4/leads/1", status=400, json=ECHOING)


def _fail_500_echoing(kommo):
    kommo.get(f"{BASE}/api/v4/leads/1", status=500, json={"detail": f"upstream said {TOKEN}"})


def _fail_connection(kommo):
    kommo.get(f"{BASE}/api/v4/leads/1", body=requests.ConnectionError(f"refused (Authorization: Bearer {TOKEN})"))


def _fail_timeout(kommo):
    kommo.get(f"{BASE}/api/v4/leads/1", body=requests.ReadTimeout(f"timed out; headers were Bearer {TOKEN}"))


@pytest.mark.parametrize("fail", [_fail_401, _fail_400_echoing, _fail_500_echoing, _fail_connection, _fail_timeout])
def test_the_token_never_appears_in_errors_or_logs(kommo, client, caplog, fail):
    caplog.set_level(logging.DEBUG)
    fail(kommo)

    with pytest.raises((AuthError, PermanentError, TransientError)) as caught:
        client.get_lead(1)

    assert_secret_free(TOKEN, caught.value, caplog, client)


def test_a_token_that_breaks_the_header_is_not_quoted_back(kommo, caplog):
    # requests refuses such a header with an error that quotes its value
    leaky = f"{TOKEN}\r\nX-Injected: 1"
    client = KommoClient(BASE, leaky, retry=RetryPolicy(sleep=lambda s: None))

    with pytest.raises(PermanentError, match="could not be sent") as caught:
        client.account()

    assert_secret_free(TOKEN, caught.value, caplog, client)
    assert len(kommo.calls) == 0


@pytest.mark.parametrize("status", [400, 401])
def test_token_requests_never_show_the_code_secret_or_refresh_token(kommo, caplog, status):
    caplog.set_level(logging.DEBUG)
    code, secret, refresh = "def50200a1b2c3d4e5f60718293a4b5c6d7e8f90", "client-SECRET-value-123", "REFRESH-abc-987654"
    kommo.post(
        f"{BASE}/oauth2/access_token",
        status=status,
        json={"hint": f"code {code} / refresh {refresh} revoked", "title": "Bad Request", "detail": f"secret {secret}"},
    )

    with pytest.raises(AuthError) as exchanged:
        exchange_code(base_url=BASE, client_id="c1", client_secret=secret, redirect_uri="https://x/cb", code=code)
    with pytest.raises(AuthError) as refreshed:
        refresh_tokens(
            base_url=BASE, client_id="c1", client_secret=secret, redirect_uri="https://x/cb", refresh_token=refresh
        )

    for error in (exchanged.value, refreshed.value):
        assert error.status == status
        for value in (code, secret, refresh):
            assert_secret_free(value, error, caplog)


def test_a_token_request_that_fails_in_transit_is_transient_and_quiet(kommo, caplog):
    caplog.set_level(logging.DEBUG)
    kommo.post(f"{BASE}/oauth2/access_token", body=requests.ConnectionError("refresh_token=REFRESH-abc-987654"))

    with pytest.raises(TransientError) as caught:
        refresh_tokens(
            base_url=BASE, client_id="c1", client_secret="S" * 20, redirect_uri="https://x/cb",
            refresh_token="REFRESH-abc-987654",
        )  # fmt: skip

    assert_secret_free("REFRESH-abc-987654", caught.value, caplog)


def test_the_token_pair_does_not_print_its_tokens(kommo):
    kommo.post(
        f"{BASE}/oauth2/access_token",
        json={"token_type": "Bearer", "expires_in": 86400, "access_token": TOKEN, "refresh_token": "def50200ffff0000"},
    )

    pair = exchange_code(base_url=BASE, client_id="c1", client_secret="s" * 20, redirect_uri="https://x/cb", code="c")

    assert pair.access_token == TOKEN
    assert TOKEN not in repr(pair) and TOKEN not in str(pair) and "def50200ffff0000" not in repr(pair)


def assert_secret_free(secret: str, error: BaseException, caplog, client: KommoClient | None = None) -> None:
    shown = [str(error), repr(error), "".join(traceback.format_exception(error)), caplog.text]
    shown += [str(vars(record)) for record in caplog.records]  # extra={...} fields too
    if client is not None:
        shown.append(repr(client))
    leaks = [text for text in shown if secret in text]
    assert not leaks, leaks
