"""A trigger that cannot work is refused with messages that say where and why: through the
API (400 {"field": ["path: message"]}) and through the model (full_clean, as the admin)."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from crm.models import CrmSnapshot
from tests.factories import make_agent, make_integration
from triggers.models import Trigger

pytestmark = pytest.mark.django_db

PIPELINE, OTHER_PIPELINE, NEW, WON, LOST = 6213074, 7700001, 48293914, 142, 143
BUDGET, COMMENT, PHONE = 1033471, 1033479, 512331
SALES_MANAGER, CONTACTED = 8374811, 55501
KNOWN_PIPELINES = f"(known: Sales ({PIPELINE}), Partners ({OTHER_PIPELINE}))"
PRICE_IS = "actions[0].value: the price is a whole number ≥ 0,"
TASK = {"type": "create_task", "text": "Call {{contact.name}}", "due_in_minutes": 30}
KNOWN_FIELDS = (
    "pipeline, status, previous_status, price, name, tags, responsible_user, contact.name, contact.tags, "
    "message.text, note.text, time_of_day, weekday, lead.cf.<field id>, contact.cf.<field id>"
)
KNOWN_VARIABLES = (
    "lead.id, lead.name, lead.price, lead.status, lead.pipeline, contact.name, contact.first_name, contact.phone, "
    "contact.email, responsible.name, agent.name, lead.cf.<field id>, contact.cf.<field id>"
)


@pytest.fixture(params=["api", "model"])
def refused(request, agent, api):
    """The errors by field for a trigger of the agent (an empty dict: it was accepted)."""

    def errors(**fields) -> dict[str, list[str]]:
        data = {"name": "Won → task", "event": "lead_status_changed", "conditions": [], "actions": [TASK]} | fields
        if request.param == "api":
            response = api.post("/api/triggers/", {"agent": agent.id, **data}, format="json")
            if response.status_code == 201:
                return {}
            assert response.status_code == 400, response.content
            return response.json()
        try:
            Trigger(agent=agent, **data).full_clean()
        except ValidationError as exc:
            return exc.message_dict
        return {}

    return errors


def conditions_error(refused, *conditions, event: str = "lead_status_changed") -> list[str]:
    errors = refused(conditions=list(conditions), event=event)
    assert set(errors) == {"conditions"}, errors
    return errors["conditions"]


def actions_error(refused, *actions) -> list[str]:
    errors = refused(actions=list(actions))
    assert set(errors) == {"actions"}, errors
    return errors["actions"]


def test_a_good_trigger_is_accepted(refused):
    conditions = [
        {"field": "status", "operator": "changed_to", "value": {"status_id": WON}},
        {"field": "price", "operator": "gte", "value": 1000},
        {
            "any": [
                {"field": "tags", "operator": "contains", "value": "vip"},
                {
                    "all": [
                        {"field": f"lead.cf.{BUDGET}", "operator": "in", "value": ["10k-20k", 15000, True]},
                        {"field": "time_of_day", "operator": "lt", "value": "18:00"},
                    ]
                },
            ]
        },
        {"field": "weekday", "operator": "not_in", "value": ["sat", "sun"]},
    ]
    actions = [
        TASK,
        {"type": "send_message", "text": "Hello {{ contact.first_name }}, about {{lead.cf.1033471}}"},
        {"type": "update_field", "field": f"lead.cf.{BUDGET}", "value": None},
        {"type": "add_tags", "tags": ["won", "vip"]},
    ]

    assert refused(conditions=conditions, actions=actions) == {}


# --- conditions: shapes --------------------------------------------------------------------


def test_an_unknown_subject_lists_the_known_ones(refused):
    assert conditions_error(refused, {"field": "status_id", "operator": "equals", "value": 142}) == [
        f'conditions[0].field: unknown field "status_id" (known: {KNOWN_FIELDS})'
    ]


def test_an_unknown_operator_lists_the_known_ones(refused):
    assert conditions_error(refused, {"field": "price", "operator": "greater", "value": 1}) == [
        'conditions[0].operator: unknown operator "greater" (known: equals, not_equals, in, not_in, contains, '
        "gt, gte, lt, lte, is_empty, is_not_empty, changed, changed_to, changed_from)"
    ]


def test_an_operator_that_does_not_apply_to_the_subject_names_those_that_do(refused):
    assert conditions_error(refused, {"field": "tags", "operator": "gt", "value": "vip"}) == [
        "conditions[0].operator: 'gt' does not apply to the lead's tags "
        "(use in, not_in, contains, is_empty, is_not_empty, changed)"
    ]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"field": "price", "operator": "equals", "value": "100"}, 'conditions[0].value: expected a number, got "100"'),
        ({"field": "price", "operator": "gt", "value": True}, "conditions[0].value: expected a number, got true"),
        (
            {"field": "name", "operator": "equals", "value": ["a", "b"]},
            "conditions[0].value: operator 'equals' takes one value, not a list (use 'in' for several)",
        ),
        (
            {"field": "status", "operator": "equals", "value": {"status_id": NEW}},
            "conditions[0].value.pipeline_id: this field is required: status ids belong to a pipeline "
            "(only 142 won and 143 lost are the same in every pipeline)",
        ),
        (
            {"field": "time_of_day", "operator": "gt", "value": "9:00"},
            'conditions[0].value: expected a time of day as "HH:MM" (00:00–23:59), got "9:00"',
        ),
        (
            {"field": "weekday", "operator": "equals", "value": "monday"},
            'conditions[0].value: expected one of mon, tue, wed, thu, fri, sat, sun, got "monday"',
        ),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_in_words(refused, condition, message):
    assert conditions_error(refused, condition) == [message]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"field": "price", "operator": "in", "value": 100}, "operator 'in' needs a non-empty list of values, got 100"),
        ({"field": "price", "operator": "not_in", "value": []}, "operator 'not_in' needs a non-empty list"),
        ({"field": "price", "operator": "in", "value": [1, "2"]}, 'value[1]: expected a number, got "2"'),
        ({"field": "price", "operator": "is_empty", "value": 0}, "value: operator 'is_empty' takes no value"),
        ({"field": "price", "operator": "changed", "value": 1}, "value: operator 'changed' takes no value"),
        ({"field": "price", "operator": "gt"}, "value: operator 'gt' needs a value: a number"),
        ({"field": "name", "operator": "contains", "value": "  "}, 'value: expected a text, got "  "'),
        ({"field": "responsible_user", "operator": "equals", "value": 0}, "expected an id (a whole number), got 0"),
        ({"field": "pipeline", "operator": "equals", "value": "6213074"}, "expected an id (a whole number)"),
        ({"field": "status", "operator": "equals", "value": WON}, "expected a stage such as {"),
        (
            {"field": "status", "operator": "equals", "value": {"pipeline_id": PIPELINE, "status_id": "142"}},
            'value.status_id: expected a status id (a whole number), got "142"',
        ),
        ({"field": "status", "operator": "equals", "value": {"status_id": WON, "x": 1}}, "value.x: unknown key"),
        (
            {"field": "status", "operator": "in", "value": [{"status_id": WON}, {"status_id": NEW}]},
            "conditions[0].value[1].pipeline_id: this field is required",
        ),
        ({"field": "time_of_day", "operator": "lt", "value": "24:00"}, 'got "24:00"'),
        ({"field": "time_of_day", "operator": "lt", "value": "09:00\n"}, 'got "09:00\\n"'),
        ({"field": "time_of_day", "operator": "lt", "value": 900}, "got 900"),
        ({"field": "time_of_day", "operator": "is_empty"}, "'is_empty' does not apply to the time the event"),
        ({"field": "weekday", "operator": "in", "value": ["sat", "Sun"]}, 'value[1]: expected one of mon,'),
        ({"field": "weekday", "operator": "gt", "value": "mon"}, "(use equals, not_equals, in, not_in)"),
        ({"field": f"lead.cf.{BUDGET}", "operator": "gt", "value": False}, "'gt' needs a number or a text, got false"),
        ({"field": f"lead.cf.{BUDGET}", "operator": "equals", "value": {"a": 1}}, "expected a text, number or"),
        ({"field": "lead.cf.0", "operator": "is_empty"}, 'unknown field "lead.cf.0"'),
        ({"field": "lead.cf.5\n", "operator": "is_empty"}, 'unknown field "lead.cf.5\\n"'),
        ({"field": "deal.cf.5", "operator": "is_empty"}, 'unknown field "deal.cf.5"'),
        ({"field": 5, "operator": "is_empty"}, "conditions[0].field: input should be a valid string, got 5"),
        ({"operator": "is_empty"}, "conditions[0].field: this field is required"),
        ({"field": "price", "operator": "gt", "value": 1, "note": "x"}, "conditions[0].note: unknown key"),
        ("price > 1", 'conditions[0]: expected a condition or a group, got "price > 1"'),
    ],
)
def test_condition_problems_are_located_and_explained(refused, condition, message):
    (error,) = conditions_error(refused, condition)
    assert message in error


def test_every_problem_of_a_list_is_reported_at_once(refused):
    errors = conditions_error(
        refused,
        {"field": "price", "operator": "gt", "value": 1},
        {"field": "price", "operator": "gt", "value": "1"},
        {"field": "colour", "operator": "equals", "value": "red"},
    )

    assert [error.split(":")[0] for error in errors] == ["conditions[1].value", "conditions[2].field"]


def test_conditions_are_a_list(refused):
    errors = refused(conditions={"field": "price", "operator": "gt", "value": 1})

    assert errors["conditions"] == [
        'conditions: expected a list of conditions, got {"field": "price", "operator": "gt", "value": 1}'
    ]


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"any": []}, "conditions[0].any: a group needs at least one condition"),
        ({"all": []}, "conditions[0].all: a group needs at least one condition"),
        (
            {"any": [{"field": "price", "operator": "gt", "value": 1}], "all": []},
            'conditions[0]: a group has exactly one of "any" or "all"',
        ),
        ({"any": "price > 1"}, 'conditions[0].any: input should be a valid list, got "price > 1"'),
        ({"any": [{"field": "price", "operator": "gt", "value": 1}], "name": "x"}, "conditions[0].name: unknown key"),
        (
            {"any": [{"all": [{"any": [{"field": "price", "operator": "gt", "value": 1}]}]}]},
            "conditions[0].any[0].all[0]: groups nest at most 2 deep",
        ),
        (
            {"all": [{"field": "price", "operator": "gt", "value": 1}, {"any": [{"field": "price", "operator": "x"}]}]},
            'conditions[0].all[1].any[0].operator: unknown operator "x"',
        ),
    ],
)
def test_group_problems_are_located(refused, group, message):
    (error,) = conditions_error(refused, group)
    assert error.startswith(message)


def test_groups_nested_two_deep_are_accepted(refused):
    deepest = {"all": [{"field": "price", "operator": "gt", "value": 1}, {"field": "tags", "operator": "is_empty"}]}

    assert refused(conditions=[{"any": [{"field": "name", "operator": "is_empty"}, deepest]}]) == {}


# --- conditions against the event ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "condition", "message"),
    [
        (
            "lead_added",
            {"field": "message.text", "operator": "contains", "value": "price"},
            "conditions[0].field: the message's text is only known for incoming_message, not for lead_added",
        ),
        (
            "incoming_message",
            {"field": "note.text", "operator": "is_empty"},
            "conditions[0].field: the note's text is only known for note_added, not for incoming_message",
        ),
        (
            "note_added",
            {"field": "previous_status", "operator": "equals", "value": {"status_id": WON}},
            "conditions[0].field: the stage the lead left is only known for lead_field_changed, "
            "lead_responsible_changed, lead_status_changed, not for note_added",
        ),
        (
            "note_added",
            {"field": "price", "operator": "changed"},
            "conditions[0].operator: 'changed' needs a lead or contact event, not note_added",
        ),
        (
            "incoming_message",
            {"field": "status", "operator": "changed_to", "value": {"status_id": WON}},
            "conditions[0].operator: 'changed_to' needs a lead or contact event, not incoming_message",
        ),
        (
            "contact_updated",
            {"field": "price", "operator": "changed_from", "value": 1},
            "conditions[0].operator: 'changed_from' on a contact event applies to contact fields only",
        ),
        (
            "lead_field_changed",
            {"field": f"contact.cf.{PHONE}", "operator": "changed"},
            "conditions[0].operator: 'changed' on a lead event applies to lead fields only",
        ),
    ],
)
def test_a_condition_the_event_cannot_answer_is_refused(refused, event, condition, message):
    assert conditions_error(refused, condition, event=event) == [message]


def test_event_problems_inside_groups_are_located(refused):
    conditions = [
        {"field": "price", "operator": "gt", "value": 1},
        {"any": [{"field": "tags", "operator": "is_empty"}, {"field": "note.text", "operator": "is_empty"}]},
    ]

    assert conditions_error(refused, *conditions, event="lead_added") == [
        "conditions[1].any[1].field: the note's text is only known for note_added, not for lead_added"
    ]


@pytest.mark.parametrize(
    ("event", "condition"),
    [
        ("incoming_message", {"field": "message.text", "operator": "contains", "value": "price"}),
        ("note_added", {"field": "note.text", "operator": "contains", "value": "call"}),
        ("note_added", {"field": "time_of_day", "operator": "gt", "value": "09:00"}),
        ("contact_added", {"field": "weekday", "operator": "equals", "value": "mon"}),
        ("contact_updated", {"field": "contact.name", "operator": "changed"}),
        ("contact_updated", {"field": "contact.cf.512333", "operator": "changed_to", "value": "a@b.c"}),
        ("incoming_message", {"field": "price", "operator": "gt", "value": 1}),  # the lead is read
    ],
)
def test_a_condition_the_event_can_answer_is_accepted(refused, event, condition):
    assert refused(event=event, conditions=[condition]) == {}


def test_an_unknown_event_is_refused(agent, api):
    response = api.post(
        "/api/triggers/", {"agent": agent.id, "name": "t", "event": "lead_won", "actions": [TASK]}, format="json"
    )
    with pytest.raises(ValidationError) as raised:
        Trigger(agent=agent, name="t", event="lead_won", actions=[TASK]).full_clean()

    assert response.status_code == 400
    assert response.json() == {"event": ['"lead_won" is not a valid choice.']}
    assert raised.value.message_dict == {"event": ["Value 'lead_won' is not a valid choice."]}


# --- actions -------------------------------------------------------------------------------


def test_an_unknown_action_type_lists_the_known_ones(refused):
    assert actions_error(refused, {"type": "send_sms", "text": "hi"}) == [
        'actions[0].type: unknown action "send_sms" (known: add_note, add_tags, change_stage, create_calendar_event, '
        "create_task, remove_tags, send_message, start_sequence, stop_sequence, update_field)"
    ]


@pytest.mark.parametrize(
    "action",
    [
        {"type": "send_message", "text": "Hi", "ai_instruction": "Greet the lead"},
        {"type": "send_message"},
        {"type": "send_message", "integration_id": None},
    ],
)
def test_a_message_is_either_a_text_or_an_instruction(refused, action):
    assert actions_error(refused, action) == [
        "actions[0]: give either text (a template) or ai_instruction (to generate it), not both"
    ]


def test_an_unknown_template_variable_lists_the_known_ones(refused):
    assert actions_error(refused, {"type": "send_message", "text": "Hi {{lead.foo}}"}) == [
        f"actions[0].text: unknown variable {{{{lead.foo}}}} (known: {KNOWN_VARIABLES})"
    ]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"type": "send_message", "text": "Hi {{contact.name"}, "actions[0].text: a variable is not closed"),
        (
            {"type": "send_message", "text": "Hi {{Contact.Name}}"},
            "actions[0].text: a variable is not closed or not written as {{name}}",
        ),
        ({"type": "create_task", "text": "Call {{lead.phone}}"}, "actions[0].text: unknown variable {{lead.phone}}"),
        ({"type": "add_note", "text": "{{ lead.name }} {{"}, "actions[0].text: a variable is not closed"),
        ({"type": "update_field", "field": "name", "value": "{{lead.nam}}"}, "actions[0].value: unknown variable"),
        (
            {"type": "update_field", "field": f"lead.cf.{COMMENT}", "value": "{{agent}}"},
            "actions[0].value: unknown variable {{agent}}",
        ),
    ],
)
def test_templates_are_checked_in_every_text(refused, action, message):
    (error,) = actions_error(refused, action)
    assert error.startswith(message)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            {"type": "update_field", "field": "status", "value": "won"},
            'actions[0].field: expected "name", "price" or "lead.cf.<field id>", got "status"',
        ),
        (
            {"type": "update_field", "field": f"contact.cf.{PHONE}", "value": "+1"},
            f'actions[0].field: expected "name", "price" or "lead.cf.<field id>", got "contact.cf.{PHONE}"',
        ),
        ({"type": "update_field", "field": "price", "value": "100"}, f'{PRICE_IS} got "100"'),
        ({"type": "update_field", "field": "price", "value": -1}, f"{PRICE_IS} got -1"),
        ({"type": "update_field", "field": "price", "value": 1.5}, f"{PRICE_IS} got 1.5"),
        ({"type": "update_field", "field": "price", "value": None}, f"{PRICE_IS} got null"),
        (
            {"type": "update_field", "field": "name", "value": " "},
            'actions[0].value: the name is a non-empty text, got " "',
        ),
        (
            {"type": "update_field", "field": f"lead.cf.{BUDGET}", "value": ["a", "b"]},
            'actions[0].value: expected a text, a number, true/false or null, got ["a", "b"]',
        ),
        ({"type": "update_field", "field": f"lead.cf.{BUDGET}"}, "actions[0].value: this field is required"),
    ],
)
def test_update_field_names_a_lead_field_and_a_value_it_can_hold(refused, action, message):
    assert actions_error(refused, action) == [message]


@pytest.mark.parametrize(
    ("tags", "messages"),
    [
        (["VIP", "won", "vip "], ['actions[0].tags[2]: "vip " is listed twice']),
        (["won", " "], ["actions[0].tags[1]: a tag name cannot be empty"]),
        ([], ["actions[0].tags: list should have at least 1 item after validation, not 0, got []"]),
        ("vip", ['actions[0].tags: input should be a valid list, got "vip"']),
    ],
)
@pytest.mark.parametrize("kind", ["add_tags", "remove_tags"])
def test_tag_lists_have_no_empty_or_repeated_names(refused, kind, tags, messages):
    assert actions_error(refused, {"type": kind, "tags": tags}) == messages


def test_actions_are_checked_each_in_its_place(refused):
    errors = actions_error(
        refused,
        TASK,
        {"type": "change_stage", "pipeline_id": PIPELINE},
        {"type": "create_task", "text": "x", "due_in_minutes": -5},
    )

    assert errors == [
        "actions[1].status_id: this field is required",
        "actions[2].due_in_minutes: input should be greater than or equal to 0, got -5",
    ]


# --- against the agent's CRM ---------------------------------------------------------------


@pytest.fixture
def kommo(agent):
    integration = make_integration(agent, integration_type="kommo", config={"base_url": "https://acme.kommo.com"})
    CrmSnapshot.objects.create(
        integration=integration,
        lead_fields=[{"id": BUDGET, "name": "Бюджет"}, {"id": COMMENT, "name": "Comment"}],
        contact_fields=[{"id": PHONE, "name": "Phone"}],
        pipelines=[
            {
                "id": PIPELINE,
                "name": "Sales",
                "statuses": [
                    {"id": 48293911, "name": "Incoming"},
                    {"id": NEW, "name": "New lead"},
                    {"id": WON, "name": "Won"},
                    {"id": LOST, "name": "Lost"},
                ],
            },
            {"id": OTHER_PIPELINE, "name": "Partners", "statuses": [{"id": CONTACTED, "name": "Contacted"}]},
        ],
        users=[{"id": SALES_MANAGER, "name": "Ana"}],
        synced_at=timezone.now(),
    )
    return integration


def test_an_unknown_lead_field_lists_the_fields_the_crm_has(refused, kommo):
    assert conditions_error(refused, {"field": "lead.cf.999", "operator": "is_empty"}) == [
        f"conditions[0].field: lead field 999 is not in the CRM (known: Бюджет ({BUDGET}), Comment ({COMMENT}))"
    ]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            {"field": "contact.cf.998", "operator": "is_not_empty"},
            f"conditions[0].field: contact field 998 is not in the CRM (known: Phone ({PHONE}))",
        ),
        (
            {"field": "status", "operator": "changed_to", "value": {"pipeline_id": OTHER_PIPELINE, "status_id": NEW}},
            f"conditions[0].value.status_id: status {NEW} is not in pipeline “Partners” "
            f"(known: Contacted ({CONTACTED}))",
        ),
        (
            {"field": "previous_status", "operator": "equals", "value": {"pipeline_id": 1, "status_id": NEW}},
            f"conditions[0].value.pipeline_id: pipeline 1 is not in the CRM {KNOWN_PIPELINES}",
        ),
        (
            {"field": "pipeline", "operator": "in", "value": [PIPELINE, 2]},
            f"conditions[0].value[1]: pipeline 2 is not in the CRM {KNOWN_PIPELINES}",
        ),
        (
            {"field": "responsible_user", "operator": "changed_to", "value": 3},
            f"conditions[0].value: user 3 is not in the CRM (known: Ana ({SALES_MANAGER}))",
        ),
        (
            {"any": [{"field": "tags", "operator": "is_empty"}, {"field": "lead.cf.7", "operator": "is_empty"}]},
            "conditions[0].any[1].field: lead field 7 is not in the CRM",
        ),
    ],
)
def test_conditions_naming_what_the_crm_does_not_have_are_refused(refused, kommo, condition, message):
    (error,) = conditions_error(refused, condition)
    assert error.startswith(message)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (
            {"type": "change_stage", "pipeline_id": OTHER_PIPELINE, "status_id": NEW},
            f"actions[0].status_id: status {NEW} is not in pipeline “Partners” (known: Contacted ({CONTACTED}))",
        ),
        (
            {"type": "change_stage", "pipeline_id": 1, "status_id": WON},
            f"actions[0].pipeline_id: pipeline 1 is not in the CRM {KNOWN_PIPELINES}",
        ),
        (
            {"type": "create_task", "text": "Call", "responsible_user_id": 3},
            f"actions[0].responsible_user_id: user 3 is not in the CRM (known: Ana ({SALES_MANAGER}))",
        ),
        (
            {"type": "update_field", "field": "lead.cf.999", "value": "x"},
            f"actions[0].field: lead field 999 is not in the CRM (known: Бюджет ({BUDGET}), Comment ({COMMENT}))",
        ),
    ],
)
def test_actions_naming_what_the_crm_does_not_have_are_refused(refused, kommo, action, message):
    assert actions_error(refused, action) == [message]


def test_what_the_crm_has_is_accepted(refused, kommo):
    conditions = [
        {
            "field": "status",
            "operator": "in",
            "value": [{"status_id": LOST}, {"pipeline_id": OTHER_PIPELINE, "status_id": CONTACTED}],
        },
        {"field": "previous_status", "operator": "equals", "value": {"pipeline_id": PIPELINE, "status_id": NEW}},
        {"field": "responsible_user", "operator": "equals", "value": SALES_MANAGER},
        {"field": f"contact.cf.{PHONE}", "operator": "is_not_empty"},
    ]
    actions = [
        # won and lost are in every pipeline even when the snapshot does not list them
        {"type": "change_stage", "pipeline_id": OTHER_PIPELINE, "status_id": WON},
        {"type": "create_task", "text": "Thank them", "responsible_user_id": SALES_MANAGER},
        {"type": "update_field", "field": f"lead.cf.{COMMENT}", "value": "won"},
    ]

    assert refused(conditions=conditions, actions=actions) == {}


def test_a_long_list_of_choices_is_cut_short(refused, kommo):
    CrmSnapshot.objects.filter(integration=kommo).update(users=[{"id": n, "name": f"User {n}"} for n in range(1, 12)])

    (error,) = actions_error(refused, {"type": "create_task", "text": "Call", "responsible_user_id": 99})

    assert error.endswith("(known: User 1 (1), User 2 (2), User 3 (3), User 4 (4), User 5 (5), User 6 (6), "
                          "User 7 (7), User 8 (8) and 3 more)")


def test_without_a_synced_snapshot_the_crm_ids_are_accepted(refused, agent):
    never_synced = make_integration(agent, integration_type="kommo", config={"base_url": "https://acme.kommo.com"})
    CrmSnapshot.objects.create(integration=never_synced, lead_fields=[{"id": BUDGET, "name": "Бюджет"}])
    conditions = [
        {"field": "lead.cf.999", "operator": "is_empty"},
        {"field": "status", "operator": "equals", "value": {"pipeline_id": 1, "status_id": 2}},
        {"field": "responsible_user", "operator": "equals", "value": 3},
    ]
    actions = [
        {"type": "change_stage", "pipeline_id": 1, "status_id": 2},
        {"type": "update_field", "field": "lead.cf.9", "value": 1},
    ]

    assert refused(conditions=conditions, actions=actions) == {}


def test_another_agents_snapshot_does_not_apply(refused, other_user):
    theirs = make_integration(make_agent(owner=other_user), integration_type="kommo", config={})
    CrmSnapshot.objects.create(
        integration=theirs, lead_fields=[{"id": BUDGET, "name": "Бюджет"}], synced_at=timezone.now()
    )

    assert refused(conditions=[{"field": "lead.cf.999", "operator": "is_empty"}]) == {}


# --- the agent's messengers ---------------------------------------------------------------


def test_a_message_goes_through_one_of_the_agents_messengers(refused, agent, kommo):
    telegram = make_integration(agent)
    whatsapp = make_integration(agent, integration_type="whatsapp_cloud", credentials={})

    for integration in (telegram, whatsapp):
        action = {"type": "send_message", "integration_id": integration.id, "text": "Hi"}
        assert refused(actions=[action]) == {}


def test_a_message_through_an_integration_that_is_not_the_agents_messenger_is_refused(
    refused, agent, kommo, other_user
):
    telegram = make_integration(agent)
    theirs = make_integration(make_agent(owner=other_user))
    expected = f"is not one of this agent's messengers (its messengers: {telegram.id})"

    for integration in (theirs, kommo):  # another user's messenger; the agent's CRM
        action = {"type": "send_message", "integration_id": integration.id, "ai_instruction": "Thank them"}
        assert actions_error(refused, action) == [f"actions[0].integration_id: integration {integration.id} {expected}"]


def test_the_messenger_check_needs_no_crm_snapshot(refused, other_user):
    theirs = make_integration(make_agent(owner=other_user))

    errors = actions_error(refused, {"type": "send_message", "integration_id": theirs.id, "text": "Hi"})

    assert errors == [
        f"actions[0].integration_id: integration {theirs.id} is not one of this agent's messengers "
        "(its messengers: none)"
    ]
