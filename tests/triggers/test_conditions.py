"""The condition engine on its own: facts built by hand or from real Kommo webhook bodies,
every operator on the subjects it applies to, groups, time zones and the explanations."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm.client import FieldValue, Lead, Tag
from crm.webhooks import parse_delivery
from triggers.engine import Facts, contact_from_webhook, evaluate, first_failure, lead_from_api, lead_from_webhook
from triggers.engine import test as run_test  # not named test_*: pytest would collect it

FIXTURES = Path(__file__).parent.parent / "crm" / "fixtures"
PIPELINE, OTHER_PIPELINE, NEW, WON, LOST = 6213074, 7700001, 48293914, 142, 143
BUDGET, PREFERRED_DATE, COMMENT = 1033471, 1033475, 1033479
THURSDAY_AFTERNOON = datetime(2024, 5, 30, 14, 31, tzinfo=UTC)
BERLIN, SAO_PAULO = ZoneInfo("Europe/Berlin"), ZoneInfo("America/Sao_Paulo")


def webhook(name: str, index: int = 0) -> dict:
    """The data of one change in a stored Kommo webhook body."""
    return parse_delivery((FIXTURES / f"{name}.txt").read_bytes()).changes[index].data


def a_lead(**overrides) -> dict:
    lead = {
        "id": 23416597,
        "name": " Big Deal ",
        "price": 15000,
        "pipeline_id": PIPELINE,
        "status_id": WON,
        "responsible_user_id": 8374811,
        "tags": ["VIP", "website"],
        "cf": {
            "1": ["Red", "Blue"],  # a multiselect
            "2": ["1"],  # a checkbox, ticked
            "3": ["0"],  # a checkbox, not ticked
            "4": ["15 000"],  # a number as Kommo's webhooks send it: text
            "5": ["1,5"],
            "6": ["10k-20k"],
        },
    }
    return lead | overrides


def facts(event: str = "lead_field_changed", *, at: datetime = THURSDAY_AFTERNOON, zone=BERLIN, **fields) -> Facts:
    fields.setdefault("lead", a_lead())
    return Facts(event=event, at=at, zone=zone, **fields)


def check(field: str, operator: str, value=None, on: Facts | None = None):
    return run_test({"field": field, "operator": operator, "value": value}, on or facts(), "conditions[0]")


# --- stages --------------------------------------------------------------------------------

ANY_WON, ANY_LOST = {"status_id": WON}, {"status_id": LOST}
NEW_HERE, NEW_THERE = {"pipeline_id": PIPELINE, "status_id": NEW}, {"pipeline_id": OTHER_PIPELINE, "status_id": NEW}


@pytest.mark.parametrize(
    ("pipeline", "status", "operator", "value", "passed"),
    [
        (PIPELINE, WON, "equals", ANY_WON, True),
        (OTHER_PIPELINE, WON, "equals", ANY_WON, True),  # 142 is "won" in every pipeline
        (OTHER_PIPELINE, LOST, "equals", ANY_LOST, True),
        (PIPELINE, WON, "equals", ANY_LOST, False),
        (PIPELINE, WON, "equals", {"pipeline_id": PIPELINE, "status_id": WON}, True),
        (PIPELINE, WON, "equals", {"pipeline_id": OTHER_PIPELINE, "status_id": WON}, False),
        (PIPELINE, NEW, "equals", NEW_HERE, True),
        (PIPELINE, NEW, "equals", NEW_THERE, False),  # the same status id, another pipeline
        (PIPELINE, NEW, "not_equals", NEW_THERE, True),
        (PIPELINE, NEW, "not_equals", NEW_HERE, False),
        (PIPELINE, WON, "in", [ANY_LOST, ANY_WON], True),
        (PIPELINE, NEW, "in", [ANY_WON, NEW_THERE], False),
        (PIPELINE, NEW, "not_in", [ANY_WON, ANY_LOST], True),
        (OTHER_PIPELINE, LOST, "not_in", [ANY_WON, ANY_LOST], False),
    ],
)
def test_a_stage_matches_by_status_and_by_pipeline_when_one_is_given(pipeline, status, operator, value, passed):
    on = facts(lead=a_lead(pipeline_id=pipeline, status_id=status))

    assert check("status", operator, value, on).passed is passed


def test_the_stage_of_a_real_status_change_webhook_is_won_in_its_pipeline():
    on = facts("lead_status_changed", lead=lead_from_webhook(webhook("lead_status_changed")))

    result = check("status", "equals", {"pipeline_id": PIPELINE, "status_id": WON}, on)

    assert result.passed
    assert result.seen == f"status 142 in pipeline {PIPELINE}"
    assert result.reason == (
        f"The lead's stage (pipeline and status) is status 142 in pipeline {PIPELINE}: "
        f"equal to status 142 in pipeline {PIPELINE}"
    )


# --- ids, numbers, texts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value", "passed"),
    [
        ("pipeline", "equals", PIPELINE, True),
        ("pipeline", "not_equals", PIPELINE, False),
        ("pipeline", "in", [OTHER_PIPELINE, PIPELINE], True),
        ("pipeline", "not_in", [OTHER_PIPELINE], True),
        ("responsible_user", "equals", 8374811, True),
        ("responsible_user", "equals", 1, False),
        ("responsible_user", "is_not_empty", None, True),
        ("responsible_user", "is_empty", None, False),
    ],
)
def test_ids_compare_as_numbers(field, operator, value, passed):
    on = facts(lead=lead_from_webhook(webhook("lead_updated")))  # ids arrive as text

    assert check(field, operator, value, on).passed is passed


@pytest.mark.parametrize(
    ("operator", "value", "passed"),
    [
        ("equals", 15000, True),
        ("equals", 15000.0, True),
        ("not_equals", 15000, False),
        ("in", [100, 15000], True),
        ("not_in", [100, 200], True),
        ("gt", 14999.5, True),
        ("gt", 15000, False),
        ("gte", 15000, True),
        ("lt", 15000, False),
        ("lt", 15000.5, True),
        ("lte", 15000, True),
        ("is_empty", None, False),
        ("is_not_empty", None, True),
    ],
)
def test_the_price_of_a_real_webhook_compares_as_a_number(operator, value, passed):
    on = facts("lead_added", lead=lead_from_webhook(webhook("lead_added")))  # price=15000 as text

    assert check("price", operator, value, on).passed is passed


def test_a_lead_without_a_price_is_empty_and_not_greater_than_anything():
    on = facts(lead=a_lead(price=None))

    assert check("price", "is_empty", on=on).passed
    result = check("price", "gt", 0, on)
    assert not result.passed
    assert result.seen == "empty"
    assert result.reason == "The lead's price (budget) has no value (empty), so not greater than 0"


@pytest.mark.parametrize(
    ("operator", "value", "passed"),
    [
        ("equals", "big deal", True),  # case and surrounding spaces do not count
        ("equals", "  BIG DEAL", True),
        ("equals", "big", False),
        ("not_equals", "Big Deal", False),
        ("not_equals", "Small deal", True),
        ("in", ["small deal", "BIG DEAL"], True),
        ("not_in", ["small deal", "BIG DEAL"], False),
        ("contains", "DEAL", True),
        ("contains", "ig de", True),
        ("contains", "small", False),
        ("is_empty", None, False),
        ("is_not_empty", None, True),
    ],
)
def test_a_text_compares_without_case_and_surrounding_spaces(operator, value, passed):
    assert check("name", operator, value).passed is passed


@pytest.mark.parametrize("name", ["", "   "])
def test_a_blank_name_is_empty(name):
    assert check("name", "is_empty", on=facts(lead=a_lead(name=name))).passed
    assert not check("name", "is_not_empty", on=facts(lead=a_lead(name=name))).passed


def test_cyrillic_and_accented_texts_of_real_webhooks_compare_without_case():
    lead = facts("lead_added", lead=lead_from_webhook(webhook("lead_added")))  # "Заявка с сайта"
    message = facts("incoming_message", message_text=webhook("incoming_message")["text"])

    assert check("name", "equals", "ЗАЯВКА С САЙТА", lead).passed
    assert check("name", "contains", "САЙТ", lead).passed
    assert check("message.text", "contains", "CUÁNTO CUESTA", message).passed
    assert not check("message.text", "contains", "precio", message).passed


def test_the_text_of_a_real_note_webhook_is_the_notes():
    note = webhook("lead_note_added")["note"]["text"]
    on = facts("note_added", lead=None, note_text=note)

    assert check("note.text", "contains", "call back", on).passed
    assert check("note.text", "not_equals", "call back", on).passed


# --- tags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "passed"),
    [
        ("contains", "vip", True),  # has that tag, in any case
        ("contains", "web", False),  # a whole tag, not a part of one
        ("in", ["cold", "Website"], True),
        ("in", ["cold", "warm"], False),
        ("not_in", ["cold", "warm"], True),
        ("not_in", ["cold", "vip"], False),
        ("is_empty", None, False),
        ("is_not_empty", None, True),
    ],
)
def test_tags_match_whole_names_without_case(operator, value, passed):
    assert check("tags", operator, value).passed is passed


def test_a_lead_without_tags_is_empty():
    on = facts(lead=a_lead(tags=[]))

    assert check("tags", "is_empty", on=on).passed
    assert not check("tags", "contains", "website", on).passed


def test_contact_subjects_come_from_a_real_contact_webhook():
    contact = contact_from_webhook(webhook("contact_updated")) | {"tags": ["Partner"]}
    on = facts("contact_updated", lead=None, contact=contact)

    assert check("contact.name", "equals", "мария лопес", on).passed
    assert check("contact.tags", "contains", "partner", on).passed
    assert check("contact.cf.512333", "contains", "@example.com", on).passed
    assert check("contact.cf.512331", "equals", "+52 1 55 1234 5678", on).passed
    assert check("contact.cf.999", "is_empty", on=on).passed


# --- custom fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value", "passed"),
    [
        # several values: one of them is enough, none of them for the negative forms
        ("lead.cf.1", "equals", "blue", True),
        ("lead.cf.1", "equals", "green", False),
        ("lead.cf.1", "not_equals", "BLUE", False),
        ("lead.cf.1", "not_equals", "green", True),
        ("lead.cf.1", "in", ["green", "RED"], True),
        ("lead.cf.1", "not_in", ["green", "yellow"], True),
        ("lead.cf.1", "not_in", ["green", "red"], False),
        ("lead.cf.1", "contains", "lu", True),
        # checkboxes arrive as "1" / "0"
        ("lead.cf.2", "equals", True, True),
        ("lead.cf.2", "equals", False, False),
        ("lead.cf.3", "equals", False, True),
        ("lead.cf.3", "equals", True, False),
        ("lead.cf.3", "not_equals", True, True),
        # numbers arrive as text, with thousands spaces or decimal commas
        ("lead.cf.4", "equals", 15000, True),
        ("lead.cf.4", "equals", 15001, False),
        ("lead.cf.4", "gt", 14999, True),
        ("lead.cf.4", "gt", "100", True),
        ("lead.cf.4", "lte", 15000, True),
        ("lead.cf.4", "lt", 15000, False),
        ("lead.cf.5", "gt", 1.4, True),
        ("lead.cf.5", "gte", 1.5, True),
        ("lead.cf.5", "lt", 2, True),
        ("lead.cf.5", "equals", 1.5, True),
        ("lead.cf.6", "in", [1, "10K-20K"], True),
        ("lead.cf.6", "is_not_empty", None, True),
        # a field the lead has no value in
        ("lead.cf.77", "is_empty", None, True),
        ("lead.cf.77", "is_not_empty", None, False),
        ("lead.cf.77", "equals", "x", False),
        ("lead.cf.77", "not_equals", "x", True),
    ],
)
def test_custom_fields_with_several_values_checkboxes_and_numbers_as_text(field, operator, value, passed):
    assert check(field, operator, value).passed is passed


def test_a_custom_field_that_is_not_a_number_fails_an_order_test_and_says_so():
    result = check("lead.cf.6", "gt", 1)

    assert not result.passed
    assert result.seen == "'10k-20k'"
    assert result.reason == "Lead field 6 is not a number ('10k-20k'), so not greater than 1"


def test_the_custom_fields_of_a_real_lead_webhook():
    on = facts("lead_added", lead=lead_from_webhook(webhook("lead_added")))

    assert check(f"lead.cf.{BUDGET}", "equals", "10K-20K", on).passed
    assert check(f"lead.cf.{PREFERRED_DATE}", "gt", 1717000000, on).passed  # a date: a unix time as text
    assert check(f"lead.cf.{COMMENT}", "contains", "not on fridays", on).passed


def test_values_read_from_the_api_compare_like_the_same_values_from_a_webhook():
    api_lead = Lead(
        id=1,
        name="Big Deal",
        price=15000,
        status_id=WON,
        pipeline_id=PIPELINE,
        responsible_user_id=5,
        custom_fields=(FieldValue(2, (True,)), FieldValue(4, (15000.0,)), FieldValue(1, ("Red", "Blue", None))),
        tags=(Tag(1, "VIP"),),
    )
    on = facts(lead=lead_from_api(api_lead))

    for field, value in (("lead.cf.2", True), ("lead.cf.2", "1"), ("lead.cf.4", 15000), ("lead.cf.4", "15000")):
        assert check(field, "equals", value, on).passed, (field, value)
    assert check("lead.cf.1", "in", ["blue"], on).passed
    # the webhook showed the same values as text before: nothing changed
    before = facts(lead=lead_from_api(api_lead), previous={"lead.cf.2": ["1"], "lead.cf.4": ["15000"]})
    assert not check("lead.cf.2", "changed", on=before).passed
    assert not check("lead.cf.4", "changed", on=before).passed


# --- time of day and weekday, in the agent's time zone ------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "passed"),
    [
        ("equals", "16:31", True),  # 14:31 UTC is 16:31 in Berlin in summer
        ("equals", "14:31", False),
        ("gt", "16:30", True),
        ("gt", "16:31", False),
        ("gte", "16:31", True),
        ("lt", "09:00", False),
        ("lt", "16:32", True),
        ("lte", "16:31", True),
    ],
)
def test_time_of_day_is_in_the_agents_time_zone(operator, value, passed):
    assert check("time_of_day", operator, value).passed is passed


@pytest.mark.parametrize(
    ("operator", "value", "passed"),
    [
        ("equals", "thu", True),
        ("not_equals", "thu", False),
        ("in", ["sat", "sun"], False),
        ("not_in", ["sat", "sun"], True),
    ],
)
def test_the_weekday_is_the_agents(operator, value, passed):
    assert check("weekday", operator, value).passed is passed


@pytest.mark.parametrize(
    ("at", "zone", "time", "weekday"),
    [
        # Berlin springs forward on the last Sunday of March: 02:00 CET → 03:00 CEST
        (datetime(2025, 3, 30, 0, 59, tzinfo=UTC), BERLIN, "01:59", "sun"),
        (datetime(2025, 3, 30, 1, 0, tzinfo=UTC), BERLIN, "03:00", "sun"),
        # … and falls back on the last Sunday of October: 02:30 happens twice
        (datetime(2025, 10, 26, 0, 30, tzinfo=UTC), BERLIN, "02:30", "sun"),
        (datetime(2025, 10, 26, 1, 30, tzinfo=UTC), BERLIN, "02:30", "sun"),
        (datetime(2025, 1, 15, 23, 30, tzinfo=UTC), BERLIN, "00:30", "thu"),  # already the next day there
        # São Paulo kept summer time until 2019 (midnight → 01:00 on 2018-11-04) and is UTC-3 since
        (datetime(2018, 11, 4, 2, 59, tzinfo=UTC), SAO_PAULO, "23:59", "sat"),
        (datetime(2018, 11, 4, 3, 0, tzinfo=UTC), SAO_PAULO, "01:00", "sun"),
        (datetime(2024, 6, 1, 1, 30, tzinfo=UTC), SAO_PAULO, "22:30", "fri"),  # still Friday there
    ],
)
def test_time_and_weekday_follow_the_zones_clock_across_daylight_saving_changes(at, zone, time, weekday):
    on = facts(at=at, zone=zone)

    assert check("time_of_day", "equals", time, on).seen == f"'{time}'"
    assert check("time_of_day", "equals", time, on).passed
    assert check("weekday", "equals", weekday, on).passed


def test_a_window_across_the_skipped_hour_ends_when_the_clock_jumps():
    before, after = datetime(2025, 3, 30, 0, 59, tzinfo=UTC), datetime(2025, 3, 30, 1, 0, tzinfo=UTC)
    night = [{"field": "time_of_day", "operator": "lt", "value": "03:00"}]

    assert evaluate(night, facts(at=before)).passed
    result = evaluate(night, facts(at=after))
    assert not result.passed
    assert result.reason == "The time the event happened, in the agent's time zone is '03:00', not less than '03:00'"


# --- changes -------------------------------------------------------------------------------

# Kommo's status webhook names the old status: that is all that is known from before
STATUS_WEBHOOK_PREVIOUS = {"status": [[PIPELINE, NEW]]}


@pytest.mark.parametrize(
    ("operator", "value", "passed", "reason"),
    [
        (
            "changed",
            None,
            True,
            f"changed from status {NEW} in pipeline {PIPELINE} to status 142 in pipeline {PIPELINE}",
        ),
        (
            "changed_to",
            ANY_WON,
            True,
            f"changed from status {NEW} in pipeline {PIPELINE} to status 142 in pipeline {PIPELINE}",
        ),
        (
            "changed_to",
            ANY_LOST,
            False,
            f"changed from status {NEW} in pipeline {PIPELINE} to status 142 in pipeline {PIPELINE}, "
            "not to status 143 in any pipeline",
        ),
        ("changed_from", NEW_HERE, True, f"changed from status {NEW} in pipeline {PIPELINE}"),
        (
            "changed_from",
            NEW_THERE,
            False,
            f", not from status {NEW} in pipeline {OTHER_PIPELINE}",
        ),
    ],
)
def test_a_stage_change_from_a_real_status_webhook(operator, value, passed, reason):
    on = facts(
        "lead_status_changed",
        lead=lead_from_webhook(webhook("lead_status_changed")),
        previous=STATUS_WEBHOOK_PREVIOUS,
        previous_complete=False,
    )

    result = check("status", operator, value, on)

    assert result.passed is passed
    assert reason in result.reason


@pytest.mark.parametrize(
    ("field", "before", "operator", "value", "passed"),
    [
        ("price", [10000], "changed", None, True),
        ("price", [15000.0], "changed", None, False),
        ("price", [10000], "changed_to", 15000, True),
        ("price", [10000], "changed_from", 10000, True),
        ("price", [10000], "changed_from", 5000, False),
        ("pipeline", [OTHER_PIPELINE], "changed_from", OTHER_PIPELINE, True),
        ("responsible_user", [1], "changed_to", 8374811, True),
        ("name", ["big deal"], "changed", None, False),  # only the case differs
        ("name", ["Small deal"], "changed_to", "BIG DEAL", True),
        ("tags", ["website", "vip"], "changed", None, False),  # the same tags in another order and case
        ("tags", ["website"], "changed", None, True),
        ("lead.cf.1", ["Blue", "Red"], "changed", None, False),
        ("lead.cf.1", ["Red"], "changed_to", "blue", True),
        ("lead.cf.1", ["Red"], "changed_from", "blue", False),
        ("lead.cf.4", ["15 000"], "changed", None, False),
        ("lead.cf.4", ["14 000"], "changed_from", 14000, True),
    ],
)
def test_changes_compare_with_the_values_before(field, before, operator, value, passed):
    on = facts(previous={field: before})

    assert check(field, operator, value, on).passed is passed


def test_a_custom_field_the_lead_had_no_value_in_before_changed_from_empty():
    on = facts(previous={"price": [15000]}, previous_complete=True)

    result = check("lead.cf.6", "changed_to", "10k-20k", on)

    assert result.passed
    assert result.reason == "Lead field 6 changed from empty to '10k-20k'"


def test_a_change_test_without_the_previous_value_fails_and_says_why():
    first_seen = facts(previous=None)
    status_only = facts(previous=STATUS_WEBHOOK_PREVIOUS, previous_complete=False)

    for on, field in ((first_seen, "price"), (status_only, "price"), (status_only, "lead.cf.6")):
        result = check(field, "changed", on=on)
        assert not result.passed
        assert "the previous value is not known (the first event seen for this lead)" in result.reason
    assert check("price", "changed", on=first_seen).seen == "15000"


def test_kommo_reporting_a_responsible_change_to_the_same_user_is_no_change():
    data = webhook("lead_responsible_changed")
    on = facts(
        "lead_responsible_changed",
        lead=lead_from_webhook(data),
        previous={"responsible_user": [int(data["old_responsible_user_id"])]},
        previous_complete=False,
    )

    result = check("responsible_user", "changed", on=on)

    assert not result.passed
    assert result.reason == "The lead's responsible user did not change (still 8374811)"


def test_a_contact_change_is_told_from_its_previous_values():
    on = facts(
        "contact_updated",
        lead=None,
        contact=contact_from_webhook(webhook("contact_updated")),
        previous={"contact.name": ["Maria"], "contact.cf.512331": ["+52 1 55 1234 5678"]},
    )

    assert check("contact.name", "changed_to", "Мария Лопес", on).passed
    assert check("contact.name", "changed_from", "maria", on).passed
    assert not check("contact.cf.512331", "changed", on=on).passed


@pytest.mark.parametrize(
    ("previous", "value", "passed", "reason"),
    [
        (
            STATUS_WEBHOOK_PREVIOUS,
            NEW_HERE,
            True,
            f"The stage the lead left is status {NEW} in pipeline {PIPELINE}: "
            f"equal to status {NEW} in pipeline {PIPELINE}",
        ),
        (
            STATUS_WEBHOOK_PREVIOUS,
            ANY_WON,
            False,
            f"The stage the lead left is status {NEW} in pipeline {PIPELINE}, not equal to status 142 in any pipeline",
        ),
        (
            None,
            NEW_HERE,
            False,
            "The stage the lead left is unknown: the previous stage is not known (the first event seen for this lead)",
        ),
    ],
)
def test_the_previous_stage_is_known_only_when_the_event_or_an_earlier_one_told_it(previous, value, passed, reason):
    on = facts("lead_status_changed", previous=previous, previous_complete=False)

    result = check("previous_status", "equals", value, on)

    assert (result.passed, result.reason) == (passed, reason)


# --- what an event does not tell ----------------------------------------------------------


def test_a_message_text_on_a_lead_event_is_unknown_and_every_test_of_it_fails():
    on = facts("lead_added")

    for operator, value in (("contains", "price"), ("is_empty", None), ("not_equals", "x")):
        result = check("message.text", operator, value, on)
        assert not result.passed
        assert result.seen == "unknown"
        assert result.reason == "The message's text is unknown: not part of this event"


def test_the_contact_is_loaded_once_when_a_lead_event_asks_about_it():
    loads = []
    contact = contact_from_webhook(webhook("contact_added"))
    on = facts(load_contact=lambda: loads.append(1) or contact)

    assert check("contact.name", "contains", "мария", on).passed
    assert check("contact.cf.512333", "is_not_empty", on=on).passed
    assert loads == [1]


def test_a_lead_the_event_does_not_carry_and_that_cannot_be_read_is_unknown():
    on = facts("incoming_message", lead=None, message_text="hi", load_lead=lambda: None)

    result = check("price", "gt", 0, on)

    assert not result.passed
    assert result.reason == "The lead's price (budget) is unknown: this event does not tell it"
    assert check("lead.cf.1", "is_empty", on=on).seen == "unknown"


# --- groups and explanations ---------------------------------------------------------------

PRICE_OK = {"field": "price", "operator": "gt", "value": 1000}
PRICE_LOW = {"field": "price", "operator": "lt", "value": 1000}
NAME_OTHER = {"field": "name", "operator": "equals", "value": "Other"}
TAGGED_VIP = {"field": "tags", "operator": "contains", "value": "vip"}
CONTACT_NAMED = {"field": "contact.name", "operator": "equals", "value": "Maria"}


@pytest.mark.parametrize(
    ("conditions", "passed"),
    [
        ([], True),
        ([PRICE_OK, TAGGED_VIP], True),
        ([PRICE_OK, PRICE_LOW], False),
        ([{"any": [PRICE_LOW, NAME_OTHER]}], False),
        ([{"any": [PRICE_LOW, TAGGED_VIP]}], True),
        ([{"all": [PRICE_OK, TAGGED_VIP]}], True),
        ([{"all": [PRICE_OK, NAME_OTHER]}], False),
        ([PRICE_OK, {"any": [NAME_OTHER, {"all": [TAGGED_VIP, PRICE_OK]}]}], True),
        ([PRICE_OK, {"any": [NAME_OTHER, {"all": [TAGGED_VIP, PRICE_LOW]}]}], False),
    ],
)
def test_any_and_all_groups_combine_and_nest(conditions, passed):
    assert evaluate(conditions, facts()).passed is passed
    assert evaluate(conditions, facts(), explain_all=True).passed is passed


def test_no_conditions_match_every_event():
    assert evaluate([], facts()).reason == "no conditions: every event of this kind matches"


def test_evaluation_stops_at_the_first_failure_unless_everything_is_explained():
    loads = []
    conditions = [PRICE_LOW, CONTACT_NAMED]

    quick = evaluate(conditions, facts(load_contact=lambda: loads.append(1)))
    assert [child.path for child in quick.children] == ["conditions[0]"]
    assert loads == []  # the contact was not read for a trigger that already failed

    full = evaluate(conditions, facts(load_contact=lambda: loads.append(1)), explain_all=True)
    assert [child.path for child in full.children] == ["conditions[0]", "conditions[1]"]
    assert [child.passed for child in full.children] == [False, False]
    assert full.reason == quick.reason == "The lead's price (budget) is 15000, not less than 1000"


def test_an_any_group_stops_at_the_first_test_that_holds():
    conditions = [{"any": [PRICE_LOW, TAGGED_VIP, NAME_OTHER]}]

    quick = evaluate(conditions, facts())
    full = evaluate(conditions, facts(), explain_all=True)

    assert [child.path for child in quick.children[0].children] == ["conditions[0].any[0]", "conditions[0].any[1]"]
    assert len(full.children[0].children) == 3
    assert quick.children[0].reason == "The lead's tags are 'VIP', 'website': containing 'vip'"


def test_first_failure_is_the_failing_test_with_what_it_saw():
    conditions = [TAGGED_VIP, {"all": [PRICE_OK, {"field": "lead.cf.6", "operator": "equals", "value": "20k+"}]}]

    for explain_all in (False, True):
        failure = first_failure(evaluate(conditions, facts(), explain_all=explain_all))
        assert failure.path == "conditions[1].all[1]"
        assert failure.field == "lead.cf.6"
        assert failure.seen == "'10k-20k'"
        assert failure.reason == "Lead field 6 is '10k-20k', not equal to '20k+'"


def test_a_failed_any_group_is_its_own_first_failure_and_lists_every_reason():
    conditions = [PRICE_OK, {"any": [PRICE_LOW, NAME_OTHER]}]

    result = evaluate(conditions, facts())
    failure = first_failure(result)

    assert failure.path == "conditions[1].any"
    assert failure.reason == result.reason == (
        "none of these holds: The lead's price (budget) is 15000, not less than 1000; "
        "The lead's name is ' Big Deal ', not equal to 'Other'"
    )
    assert [child.seen for child in failure.children] == ["15000", "' Big Deal '"]


def test_first_failure_of_a_passing_evaluation_is_none():
    assert first_failure(evaluate([PRICE_OK], facts())) is None


def test_explanations_show_the_stage_and_unknown_values_in_words():
    on = facts("lead_status_changed", lead=a_lead(status_id=NEW), previous=None)
    conditions = [
        {"field": "status", "operator": "in", "value": [ANY_WON, ANY_LOST]},
        {"field": "previous_status", "operator": "equals", "value": NEW_HERE},
    ]

    result = evaluate(conditions, on, explain_all=True)

    assert [child.as_dict() for child in result.children] == [
        {
            "path": "conditions[0]",
            "passed": False,
            "reason": f"The lead's stage (pipeline and status) is status {NEW} in pipeline {PIPELINE}, "
            "not one of [status 142 in any pipeline, status 143 in any pipeline]",
            "field": "status",
            "operator": "in",
            "value": [ANY_WON, ANY_LOST],
            "seen": f"status {NEW} in pipeline {PIPELINE}",
        },
        {
            "path": "conditions[1]",
            "passed": False,
            "reason": "The stage the lead left is unknown: the previous stage is not known "
            "(the first event seen for this lead)",
            "field": "previous_status",
            "operator": "equals",
            "value": NEW_HERE,
            "seen": "unknown",
        },
    ]
