"""Kommo webhook bodies, as Kommo sends them, parsed into normalized changes."""
from __future__ import annotations

import pytest

from crm.webhooks import UNTIMED_DEDUPE_WINDOW_SECONDS, WebhookParseError, parse_delivery
from tests.crm.webhook_helpers import ACCOUNT_ID, KINDS, body, form

LEAD, OTHER_LEAD, CONTACT = 23416597, 23416601, 40211873

# fixture → [(kind, entity_type, entity_id, lead_id), …]
EXPECTED = {
    "lead_added": [("lead_added", "lead", LEAD, LEAD)],
    "lead_updated": [("lead_updated", "lead", LEAD, LEAD)],
    "lead_status_changed": [
        ("lead_status_changed", "lead", LEAD, LEAD),
        ("lead_status_changed", "lead", OTHER_LEAD, OTHER_LEAD),
    ],
    "lead_responsible_changed": [("lead_responsible_changed", "lead", LEAD, LEAD)],
    "lead_deleted": [("lead_deleted", "lead", LEAD, LEAD)],
    "lead_restored": [("lead_restored", "lead", LEAD, LEAD)],
    "lead_note_added": [("note_added", "note", 98811234, LEAD)],
    "contact_added": [("contact_added", "contact", CONTACT, LEAD)],
    # linked to two leads: which one is meant is the handler's call, from data
    "contact_updated": [("contact_updated", "contact", CONTACT, None)],
    "contact_deleted": [("contact_deleted", "contact", CONTACT, None)],
    # a chat message's id is a UUID: it stays in data, the event has no numeric id
    "incoming_message": [("incoming_message", "message", None, LEAD)],
    # written on the account's side (a manager, a Kommo bot): its own kind, which nothing answers
    "outgoing_message": [("outgoing_message", "message", None, LEAD)],
}


def test_every_fixture_has_an_expectation():
    assert sorted(EXPECTED) == KINDS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_kommo_event_kind_is_parsed_into_its_changes(name):
    delivery = parse_delivery(body(name))

    assert [(c.kind, c.entity_type, c.entity_id, c.lead_id) for c in delivery.changes] == EXPECTED[name]
    assert delivery.account_id == ACCOUNT_ID
    assert delivery.subdomain == "acmesales"


def test_a_lead_change_keeps_the_lead_as_kommo_sent_it_with_custom_fields_nested():
    (change,) = parse_delivery(body("lead_updated")).changes

    data = change.data
    assert data["id"] == "23416597"  # numbers stay the strings Kommo sent
    assert data["name"] == "Заявка с сайта"
    assert data["last_modified"] == "1717078901"
    assert data["modified_user_id"] == "8374811"
    assert data["tags"] == {"0": {"id": "10523", "name": "website"}}
    fields = data["custom_fields"]
    assert fields["0"] == {
        "id": "1033471",
        "name": "Бюджет",
        "values": {"0": {"value": "10k-20k", "enum": "729455"}},
    }
    assert fields["1"]["values"] == {"0": "1717362000"}  # a date field's value comes bare
    assert fields["2"]["values"]["0"]["value"] == "Call after 18:00 & not on Fridays"


def test_a_status_change_carries_the_old_and_new_status():
    first, second = parse_delivery(body("lead_status_changed")).changes

    assert (first.data["old_status_id"], first.data["status_id"], first.data["pipeline_id"]) == (
        "48293914",
        "142",
        "6213074",
    )
    assert second.data["old_status_id"] == "48293911"


def test_a_responsible_change_carries_the_previous_responsible_user():
    (change,) = parse_delivery(body("lead_responsible_changed")).changes

    assert change.data["old_responsible_user_id"] == "8374811"


def test_a_note_belongs_to_the_lead_it_was_added_to():
    (change,) = parse_delivery(body("lead_note_added")).changes

    assert change.data["note"]["text"] == "Client asked for a call back tomorrow at 10:00"
    assert change.data["note"]["note_type"] == "4"


def test_a_note_on_a_contact_has_no_lead():
    delivery = parse_delivery(
        form(
            ("contacts[note][0][note][id]", "5"),
            ("contacts[note][0][note][element_type]", "1"),
            ("contacts[note][0][note][element_id]", "40211873"),
            ("contacts[note][0][note][text]", "VIP"),
        )
    )

    assert [(c.kind, c.entity_id, c.lead_id) for c in delivery.changes] == [("note_added", 5, None)]


def test_an_incoming_message_keeps_its_chat_talk_contact_and_author():
    (change,) = parse_delivery(body("incoming_message")).changes

    data = change.data
    assert data["id"] == "d3bac6d3-1b5e-40c2-a054-4e0cfe283edb"
    assert (data["chat_id"], data["talk_id"], data["contact_id"]) == (
        "844cb9e6-3dd4-4068-abe4-c569090048c1",
        "6718",
        "40211873",
    )
    assert data["text"] == "Hola, ¿cuánto cuesta el plan anual?"
    assert data["author"]["type"] == "external"


def test_an_outgoing_message_is_its_own_kind_so_it_is_never_taken_for_the_leads():
    (change,) = parse_delivery(body("outgoing_message")).changes

    assert change.kind == "outgoing_message"
    assert change.data["author"]["type"] == "internal"


def test_a_message_that_is_neither_incoming_nor_outgoing_is_skipped():
    delivery = parse_delivery(
        form(("message[add][0][id]", "0f1e2d3c"), ("message[add][0][type]", "system"), ("message[add][0][text]", "x"))
    )

    assert (delivery.changes, delivery.skipped) == ((), 1)


def test_a_message_in_a_chat_without_a_lead_has_no_lead():
    delivery = parse_delivery(
        form(
            ("message[add][0][id]", "a1b2"),
            ("message[add][0][chat_id]", "c3d4"),
            ("message[add][0][contact_id]", "40211873"),
            ("message[add][0][text]", "hi"),
            ("message[add][0][entity_type]", "contact"),
            ("message[add][0][entity_id]", "40211873"),
            ("message[add][0][type]", "incoming"),
        )
    )

    assert [(c.kind, c.lead_id) for c in delivery.changes] == [("incoming_message", None)]


def test_items_come_out_in_kommos_index_order_not_text_order():
    pairs = []
    for index in range(11, -1, -1):  # 11, 10, …, 0: "10" sorts before "2" as text
        pairs += [(f"leads[status][{index}][id]", str(1000 + index)), (f"leads[status][{index}][status_id]", "142")]

    delivery = parse_delivery(form(*pairs))

    assert [c.entity_id for c in delivery.changes] == [1000 + i for i in range(12)]


def test_changes_we_do_not_handle_are_skipped_not_refused():
    delivery = parse_delivery(
        form(
            ("unsorted[add][0][uid]", "abc"),
            ("task[add][0][id]", "77"),
            ("leads[update][0][id]", "1"),
            ("leads[update][0][last_modified]", "1717078901"),
            ("leads[merge][0][id]", "2"),
        )
    )

    assert [c.kind for c in delivery.changes] == ["lead_updated"]
    assert delivery.skipped == 3


def test_a_body_with_only_the_account_has_no_changes():
    delivery = parse_delivery(form())

    assert delivery.changes == ()
    assert delivery.account_id == ACCOUNT_ID


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'{"leads": {"status": []}}', "not form data"),
        (b"hello=world", "no account"),
        (b"leads[status][0][id]=1&&account[id]=2", "bad syntax"),
        (b"leads[status]0][id]=1", "unbalanced brackets"),
        (b"leads[status][0][id]=1&leads[status][0]=2", "both a value and a group"),
        (b"leads[status][0]=2&leads[status][0][id]=1", "both a value and a group"),
        (b"a[1][2][3][4][5][6][7][8][9][10]=1", "too deep"),
        (b"leads[status][0][name]=no+id&account[id]=1", "without an id"),
        (b"leads[status][0][id]=twelve&account[id]=1", "without an id"),
        (b"message[add][0][text]=hi&message[add][0][type]=incoming&account[id]=1", "without an id"),
        (b"&".join([b"a=1"] * 20_001), "too many fields"),
    ],
)
def test_a_body_that_is_not_a_kommo_webhook_is_refused_with_a_reason(raw, reason):
    with pytest.raises(WebhookParseError, match=reason):
        parse_delivery(raw)


def test_the_same_change_delivered_twice_has_the_same_dedupe_key():
    (first,) = parse_delivery(body("lead_updated")).changes
    (again,) = parse_delivery(body("lead_updated")).changes

    assert first.dedupe_key(7) == again.dedupe_key(7)
    assert len(first.dedupe_key(7)) == 64


def test_another_change_of_the_same_lead_or_another_integration_has_another_key():
    (update,) = parse_delivery(body("lead_updated")).changes
    (added,) = parse_delivery(body("lead_added")).changes
    (later,) = parse_delivery(body("lead_updated").replace(b"1717078901", b"1717078999")).changes

    assert len({update.dedupe_key(7), added.dedupe_key(7), later.dedupe_key(7), update.dedupe_key(8)}) == 4


def test_a_deletion_repeated_within_the_hour_is_one_change_and_an_hour_later_a_new_one():
    # a deletion carries no timestamp: deleted, restored and deleted again looks the same
    (deleted,) = parse_delivery(body("lead_deleted")).changes
    start = 1717079000 // UNTIMED_DEDUPE_WINDOW_SECONDS * UNTIMED_DEDUPE_WINDOW_SECONDS

    assert deleted.dedupe_key(7, received_at=start) == deleted.dedupe_key(7, received_at=start + 3599)
    assert deleted.dedupe_key(7, received_at=start) != deleted.dedupe_key(7, received_at=start + 3600)


def test_a_timed_change_does_not_depend_on_when_it_arrived():
    (update,) = parse_delivery(body("lead_updated")).changes

    assert update.dedupe_key(7, received_at=0) == update.dedupe_key(7, received_at=10**9)
