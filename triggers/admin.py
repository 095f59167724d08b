"""Admin for triggers: the rule editor with the agent's CRM names to pick from and the
rule in words, a dry run ("Test"), and the firings, read-only.

Saves go through the services like every admin (agents/admin.py); the JSON columns are
checked by the model, so a wrong condition shows at its field.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.text import Truncator

from agents.admin import (
    JSONTextarea,
    OwnedAdminMixin,
    PrettyJSONField,
    ReadOnlyInline,
    adopt,
    form_data,
    pretty_json,
)
from agents.models import Agent
from crm.models import CrmSnapshot
from integrations.models import Integration

from .api.serializers import SampleEventSerializer
from .dryrun import CrmUnavailable, trigger_dry_run
from .execution import agent_zone
from .models import ActionRun, Trigger, TriggerFiring
from .schemas import EVENTS, LOST, WON, custom_field_of
from .services import TRIGGER_FIELDS, trigger_create, trigger_update
from .validation import CrmCatalogue

MAX_PICKER_AGENTS = 10  # snapshots offered on the add page before an agent is chosen
RECENT_FIRINGS = 5

# --- The rule in words ---------------------------------------------------------------------

SUBJECT_WORDS = {
    "pipeline": "pipeline",
    "status": "status",
    "previous_status": "previous status",
    "price": "price",
    "name": "lead name",
    "tags": "lead tags",
    "responsible_user": "responsible user",
    "contact.name": "contact name",
    "contact.tags": "contact tags",
    "message.text": "message",
    "note.text": "note",
    "time_of_day": "time of day",
    "weekday": "weekday",
}
OPERATOR_WORDS = {
    "equals": "is",
    "not_equals": "is not",
    "in": "is one of",
    "not_in": "is none of",
    "contains": "contains",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "is_empty": "is empty",
    "is_not_empty": "is not empty",
    "changed": "changed",
    "changed_to": "changed to",
    "changed_from": "changed from",
}
CLOSING_STAGES = {WON: "won", LOST: "lost"}


def _quoted(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return f"“{value}”"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class RuleWords:
    """Conditions and actions as a reader says them, with the CRM's names for its ids
    (from the agent's snapshot; bare ids when there is none)."""

    def __init__(self, crm: CrmCatalogue | None) -> None:
        self.crm = crm or CrmCatalogue()

    @classmethod
    def for_agent(cls, agent_id: int | None) -> RuleWords:
        return cls(CrmCatalogue.for_agent(agent_id))

    # -- names --------------------------------------------------------------------------

    def pipeline(self, pipeline_id: Any) -> str:
        return self.crm.pipelines.get(pipeline_id) or f"pipeline {pipeline_id}"

    def user(self, user_id: Any) -> str:
        return self.crm.users.get(user_id) or f"user {user_id}"

    def stage(self, value: Any) -> str:
        if not isinstance(value, Mapping):
            return _quoted(value)
        pipeline, status = value.get("pipeline_id"), value.get("status_id")
        name = self.crm.statuses.get(pipeline, {}).get(status) if pipeline is not None else None
        if not name and status in CLOSING_STAGES:
            shown = {n for statuses in self.crm.statuses.values() for s, n in statuses.items() if s == status and n}
            name = shown.pop() if len(shown) == 1 else CLOSING_STAGES[status]
        where = "any pipeline" if pipeline is None else f"pipeline {self.crm.pipelines.get(pipeline) or pipeline}"
        return f"{name or f'status {status}'} ({where})"

    def custom_field(self, entity: str, field_id: int) -> str:
        names = self.crm.lead_fields if entity == "lead" else self.crm.contact_fields
        name = names.get(field_id)
        return f"{entity} field “{name}”" if name else f"{entity} field {field_id}"

    def subject(self, field: Any) -> str:
        parsed = custom_field_of(str(field))
        if parsed:
            return self.custom_field(*parsed)
        return SUBJECT_WORDS.get(str(field), str(field))

    def value(self, field: Any, value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(self.value(field, item) for item in value)
        if field in ("status", "previous_status"):
            return self.stage(value)
        if field == "pipeline":
            return self.pipeline(value)
        if field == "responsible_user":
            return self.user(value)
        return _quoted(value)

    # -- conditions and actions ---------------------------------------------------------

    def condition(self, item: Mapping[str, Any]) -> str:
        field, operator = item.get("field"), str(item.get("operator"))
        words = f"{self.subject(field)} {OPERATOR_WORDS.get(operator, operator)}"
        if item.get("value") is not None:
            words += f" {self.value(field, item['value'])}"
        return words

    def conditions(self, items: Any) -> list[tuple[str, list]]:
        """(words, nested) for each test or group."""
        tree: list[tuple[str, list]] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping):
                tree.append((_quoted(item), []))
            elif "any" in item or "all" in item:
                key = "any" if "any" in item else "all"
                tree.append((f"{key} of:", self.conditions(item[key])))
            else:
                tree.append((self.condition(item), []))
        return tree

    def action(self, action: Any) -> str:
        if not isinstance(action, Mapping):
            return _quoted(action)
        kind = action.get("type")
        if kind == "send_message":
            words = (
                f"send the message {_quoted(action['text'])}"
                if action.get("text")
                else f"send a message the AI writes from {_quoted(action.get('ai_instruction'))}"
            )
            return words + (f" on integration {action['integration_id']}" if action.get("integration_id") else "")
        if kind == "create_task":
            who = self.user(action["responsible_user_id"]) if action.get("responsible_user_id") else None
            words = f"create a task {_quoted(action.get('text'))} for {who or 'the lead’s responsible user'}"
            words += f", due in {action.get('due_in_minutes', 60)} minutes"
            return words + (" (within working hours)" if action.get("within_working_hours") else "")
        if kind == "change_stage":
            return "move the lead to " + self.stage(
                {"pipeline_id": action.get("pipeline_id"), "status_id": action.get("status_id")}
            )
        if kind == "update_field":
            field = action.get("field")
            target = {"name": "the lead name", "price": "the price"}.get(field) or self.subject(field)
            if action.get("value") is None:
                return f"clear {target}"
            return f"set {target} to {_quoted(action['value'])}"
        if kind in ("add_tags", "remove_tags"):
            verb = "add" if kind == "add_tags" else "remove"
            return f"{verb} the tags " + ", ".join(_quoted(tag) for tag in action.get("tags") or [])
        if kind == "add_note":
            return f"add the note {_quoted(action.get('text'))}"
        return json.dumps(action, ensure_ascii=False)


def _tree_html(tree: list[tuple[str, list]]) -> str:
    items = format_html_join("", "<li>{}{}</li>", ((w, _tree_html(nested) if nested else "") for w, nested in tree))
    return format_html('<ul style="margin: 0 0 0 1.2em; padding: 0">{}</ul>', items)


def rule_in_words(trigger: Trigger, words: RuleWords) -> str:
    event = EVENTS.get(trigger.event, trigger.event or "—")
    conditions = words.conditions(trigger.conditions)
    actions = [words.action(action) for action in trigger.actions or []]
    steps = format_html_join("", "<li>{}</li>", ((action,) for action in actions))
    steps = format_html('<ol style="margin: 0 0 0 1.2em; padding: 0">{}</ol>', steps)
    return format_html(
        '<div class="rule-in-words"><p><strong>When</strong> {}</p><p><strong>if</strong> {}</p>'
        "<p><strong>then</strong> {}</p></div>",
        event[0].lower() + event[1:],
        _tree_html(conditions) if conditions else "always (no conditions)",
        steps if actions else "nothing (no actions)",
    )


# --- CRM names to pick from ------------------------------------------------------------------


def _snippet(value: Mapping[str, Any] | None) -> str:
    return json.dumps(value, ensure_ascii=False) if value is not None else ""


def _item(
    label: str,
    item_id: Any,
    *,
    condition: Mapping[str, Any] | None = None,
    action: Mapping[str, Any] | None = None,
    change_event: str = "",
    indent: bool = False,
    title: str = "",
    also_found_by: str = "",
) -> dict[str, Any]:
    return {
        "label": label or str(item_id),
        "id": item_id,
        "search": f"{label} {item_id} {also_found_by}".strip().lower(),
        "condition": _snippet(condition),
        "action": _snippet(action),
        "change_event": change_event,
        "indent": indent,
        "title": title,
    }


def _field_title(field: Mapping[str, Any]) -> str:
    enums = [str(e.get("value")) for e in field.get("enums") or [] if isinstance(e, Mapping)]
    title = str(field.get("type") or "")
    return f"{title}: {', '.join(enums)}" if enums else title


def picker_sections(snapshot: CrmSnapshot) -> list[dict[str, Any]]:
    """The snapshot's names grouped for the picker, each with the condition and action
    it inserts (the value left to fill in where the CRM has no single answer)."""
    stages: list[dict[str, Any]] = []
    for pipeline in snapshot.pipelines or []:
        pipeline_id = int(pipeline["id"])
        stages.append(
            _item(
                pipeline.get("name") or "",
                pipeline_id,
                condition={"field": "pipeline", "operator": "equals", "value": pipeline_id},
            )
        )
        for status in pipeline.get("statuses") or []:
            stage = {"pipeline_id": pipeline_id, "status_id": int(status["id"])}
            stages.append(
                _item(
                    status.get("name") or "",
                    int(status["id"]),
                    condition={"field": "status", "operator": "changed_to", "value": stage},
                    change_event="lead_status_changed",
                    action={"type": "change_stage", **stage},
                    indent=True,
                    also_found_by=pipeline.get("name") or "",  # "sales" shows the pipeline's statuses
                )
            )
    lead_fields = [
        _item(
            f.get("name") or "",
            int(f["id"]),
            condition={"field": f"lead.cf.{f['id']}", "operator": "equals", "value": ""},
            action={"type": "update_field", "field": f"lead.cf.{f['id']}", "value": ""},
            title=_field_title(f),
        )
        for f in snapshot.lead_fields or []
    ]
    contact_fields = [
        _item(
            f.get("name") or "",
            int(f["id"]),
            condition={"field": f"contact.cf.{f['id']}", "operator": "equals", "value": ""},
            title=_field_title(f),
        )
        for f in snapshot.contact_fields or []
    ]
    users = [
        _item(
            u.get("name") or "",
            int(u["id"]),
            condition={"field": "responsible_user", "operator": "changed_to", "value": int(u["id"])},
            change_event="lead_responsible_changed",
            action={
                "type": "create_task",
                "text": "Call {{contact.name}} about {{lead.name}}",
                "responsible_user_id": int(u["id"]),
                "due_in_minutes": 60,
            },
            title=str(u.get("email") or ""),
        )
        for u in snapshot.users or []
    ]
    lead_tags = [
        _item(
            t["name"],
            t.get("id"),
            condition={"field": "tags", "operator": "contains", "value": t["name"]},
            action={"type": "add_tags", "tags": [t["name"]]},
        )
        for t in snapshot.lead_tags or []
        if t.get("name")
    ]
    contact_tags = [
        _item(t["name"], t.get("id"), condition={"field": "contact.tags", "operator": "contains", "value": t["name"]})
        for t in snapshot.contact_tags or []
        if t.get("name")
    ]
    sections = [
        ("Pipelines and statuses", stages, len(snapshot.pipelines or [])),
        ("Lead fields", lead_fields, len(lead_fields)),
        ("Contact fields", contact_fields, len(contact_fields)),
        ("Users", users, len(users)),
        ("Lead tags", lead_tags, len(lead_tags)),
        ("Contact tags", contact_tags, len(contact_tags)),
    ]
    return [
        {"title": title, "items": items, "count": count, "open": index == 0}
        for index, (title, items, count) in enumerate(sections)
        if items
    ]


def kommo_snapshots(agents: QuerySet[Agent], *, limit: int) -> dict[int, CrmSnapshot]:
    """Agent id → the snapshot of its Kommo integration (the active one synced last, as
    the validation reads it), for at most ``limit`` agents."""
    rows = (
        CrmSnapshot.objects.filter(
            integration__agent__in=agents,
            integration__integration_type=Integration.Type.KOMMO,
            synced_at__isnull=False,
        )
        .select_related("integration__agent")
        .order_by("-integration__active", "-synced_at", "-id")
    )
    found: dict[int, CrmSnapshot] = {}
    for snapshot in rows.iterator(chunk_size=limit):
        found.setdefault(snapshot.integration.agent_id, snapshot)
        if len(found) >= limit:
            break
    return found


def _as_id(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


# --- Trigger -------------------------------------------------------------------------------


@admin.register(Trigger)
class TriggerAdmin(OwnedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "agent", "event", "active", "condition_count", "action_count", "updated_at"]
    list_filter = ["active", "event", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "agent__name"]
    list_select_related = ["agent"]
    readonly_fields = ["created_at", "updated_at", "in_words", "recent_firings"]
    fieldsets = [
        (None, {"fields": ["agent", "name", "active"]}),
        ("Rule", {"fields": ["event", "conditions", "actions", "in_words"]}),
        ("History", {"fields": ["created_at", "updated_at", "recent_firings"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None:
            return fieldsets
        # a new trigger has nothing saved to put in words, and no history
        hidden = {"in_words", "recent_firings", "created_at", "updated_at"}
        shown = [(name, {**opts, "fields": [f for f in opts["fields"] if f not in hidden]}) for name, opts in fieldsets]
        return [(name, opts) for name, opts in shown if opts["fields"]]

    @admin.display(description="conditions")
    def condition_count(self, trigger: Trigger) -> int:
        return len(trigger.conditions or [])

    @admin.display(description="actions")
    def action_count(self, trigger: Trigger) -> int:
        return len(trigger.actions or [])

    @admin.display(description="in words (as saved)")
    def in_words(self, trigger: Trigger) -> str:
        if not trigger.pk:
            return "—"
        return rule_in_words(trigger, RuleWords.for_agent(trigger.agent_id))

    @admin.display(description="recent firings")
    def recent_firings(self, trigger: Trigger) -> str:
        if not trigger.pk:
            return "—"
        firings = list(trigger.firings.order_by("-id")[:RECENT_FIRINGS])
        all_firings = reverse("admin:triggers_triggerfiring_changelist") + "?" + urlencode(
            {"trigger__id__exact": trigger.pk}
        )
        log = reverse("admin:agents_executionlog_changelist") + "?" + urlencode(
            {"ref_type": "trigger", "ref_id": trigger.pk}
        )
        links = format_html(
            '<p><a href="{}">All firings of this trigger</a> · <a href="{}">Its execution log</a></p>', all_firings, log
        )
        if not firings:
            return format_html("<p>It has not fired yet.</p>{}", links)
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:triggers_triggerfiring_change", args=[firing.pk]),
                    timezone.localtime(firing.created_at).strftime("%Y-%m-%d %H:%M:%S"),
                    firing.crm_lead_id if firing.crm_lead_id is not None else "—",
                    firing.get_status_display(),
                    Truncator(firing.error).chars(80),
                )
                for firing in firings
            ),
        )
        return format_html(
            "<table><thead><tr><th>When</th><th>CRM lead</th><th>Status</th><th>Error</th></tr></thead>"
            "<tbody>{}</tbody></table>{}",
            rows,
            links,
        )

    # -- the CRM names next to the JSON ---------------------------------------------------

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        form = context["adminform"].form
        if "agent" in form.fields:
            context["crm_picker"] = self.crm_picker(form, obj)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def crm_picker(self, form: forms.ModelForm, obj: Trigger | None) -> dict[str, Any]:
        """The snapshots to offer: the chosen agent's and, on a new trigger, those of the
        agents the user may choose (the page shows the chosen agent's alone)."""
        choosable = form.fields["agent"].queryset
        selected = _as_id(form["agent"].value())
        wanted = {i for i in (selected, obj.agent_id if obj is not None else None) if i}
        snapshots = kommo_snapshots(choosable.filter(pk__in=wanted), limit=len(wanted) or 1) if wanted else {}
        if obj is None:
            for agent_id, snapshot in kommo_snapshots(choosable, limit=MAX_PICKER_AGENTS).items():
                snapshots.setdefault(agent_id, snapshot)
        panels = [
            {
                "agent_id": agent_id,
                "agent": snapshot.integration.agent,
                "synced_at": snapshot.synced_at,
                "sections": picker_sections(snapshot),
                "shown": selected in (None, agent_id),
            }
            for agent_id, snapshot in snapshots.items()
        ]
        panels.sort(key=lambda panel: (panel["agent_id"] != selected, panel["agent"].name.lower()))
        missing = selected not in snapshots if selected else not panels
        return {"panels": panels, "selected": selected, "missing": missing}

    # -- saving ---------------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        data = form_data(form, TRIGGER_FIELDS)
        if change:
            trigger_update(trigger=obj, data=data)
        else:
            adopt(obj, trigger_create(data=data))

    # -- the dry run ----------------------------------------------------------------------

    def get_urls(self):
        return [
            path("<path:object_id>/test/", self.admin_site.admin_view(self.test_view), name="triggers_trigger_test"),
            *super().get_urls(),
        ]

    def test_view(self, request: HttpRequest, object_id: str):
        trigger = self.get_object(request, object_id)
        if trigger is None or not self.has_view_permission(request, trigger):
            raise Http404("No such trigger")
        zone = agent_zone(trigger.agent)
        form = DryRunForm(request.POST if request.method == "POST" else None, zone=zone)
        report, crm_error = None, ""
        if form.is_bound:
            with timezone.override(zone):  # the "at" typed is the agent's local time
                valid = form.is_valid()
            if valid:
                data = form.cleaned_data
                try:
                    report = trigger_dry_run(
                        trigger=trigger, lead_id=data["lead_id"], sample=data["sample"], at=data["at"]
                    )
                except ValidationError as exc:
                    add_errors(form, exc)
                except CrmUnavailable as exc:
                    crm_error = str(exc)
        words = RuleWords.for_agent(trigger.agent_id)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": trigger,
            "form": form,
            "rule": rule_in_words(trigger, words),
            "report": report,
            "condition_rows": condition_rows(report["conditions"], words) if report else [],
            "action_rows": action_rows(report["actions"], words) if report else [],
            "crm_error": crm_error,
            "title": f"Test “{trigger}”",
        }
        return TemplateResponse(request, "admin/triggers/trigger/test.html", context)


# --- The dry run page ------------------------------------------------------------------------

SAMPLE_EXAMPLE = json.dumps(
    {
        "lead": {"id": 23416597, "pipeline_id": 6213074, "status_id": 142, "price": 15000, "tags": ["hot"]},
        "previous": {"status_id": 48293914},
        "contact": {"name": "Maria Lopez", "phone": "+14155550132"},
        "text": "Hello, is it still available?",
    },
    indent=2,
    ensure_ascii=False,
)


def _messages(errors: Any, where: str = "") -> Iterable[str]:
    """DRF's nested errors as "lead.price: A valid number is required." lines."""
    if isinstance(errors, Mapping):
        for key, nested in errors.items():
            inner = where if key == "non_field_errors" else (f"{where}.{key}" if where else str(key))
            yield from _messages(nested, inner)
    elif isinstance(errors, list):
        for nested in errors:
            yield from _messages(nested, where)
    else:
        yield f"{where}: {errors}" if where else str(errors)


class SampleTextarea(JSONTextarea):
    """Tall enough for the example shown in it while empty."""

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["attrs"]["rows"] = max(context["widget"]["attrs"]["rows"], SAMPLE_EXAMPLE.count("\n") + 1)
        return context


class DryRunForm(forms.Form):
    lead_id = forms.IntegerField(
        required=False, min_value=1, label="CRM lead id", help_text="A lead of the agent's CRM, read now."
    )
    sample = PrettyJSONField(
        required=False,
        label="or a sample event",
        widget=SampleTextarea(attrs={"placeholder": SAMPLE_EXAMPLE}),
        help_text='Keys: "lead" and "previous" (id, name, price, pipeline_id, status_id, responsible_user_id, '
        'tags, custom_fields as {"field id": value}), "contact" (id, name, first_name, phone, email, tags, '
        'custom_fields), "text" (the message or note). With a lead id, give only "text".',
    )
    at = forms.DateTimeField(
        required=False,
        label="At",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def __init__(self, *args: Any, zone: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["at"].help_text = (
            f"When the event happens, for time-of-day and weekday tests, in the agent's time zone ({zone}); "
            "now when empty."
        )

    def clean_sample(self) -> dict[str, Any] | None:
        value = self.cleaned_data.get("sample")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValidationError('expected an object such as {"lead": {"status_id": 142}}')
        serializer = SampleEventSerializer(data=value)
        if not serializer.is_valid():
            raise ValidationError(list(_messages(serializer.errors)))
        return serializer.validated_data

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        lead_id, sample = data.get("lead_id"), data.get("sample")
        if "lead_id" in self.errors or "sample" in self.errors:
            return data
        if lead_id is None and sample is None:
            raise ValidationError("Give a CRM lead id or a sample event.")
        if lead_id is not None and sample is not None and set(sample) - {"text"}:
            self.add_error(
                "sample",
                'with a CRM lead id, a sample gives only "text" (the message or note); '
                "to test a sample lead, leave the lead id empty",
            )
        return data


def add_errors(form: forms.Form, error: ValidationError) -> None:
    """The dry run's refusal (an unknown lead, no CRM connection) at the form's field."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, messages in error.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)


NAMED_VALUES = {"status", "previous_status", "pipeline", "responsible_user"}  # ids the CRM names


def condition_rows(results: Any, words: RuleWords, depth: int = 0) -> list[dict[str, Any]]:
    """An evaluation (``Result.as_dict()`` children) as table rows, groups followed by
    their members one level in."""
    rows: list[dict[str, Any]] = []
    for result in results if isinstance(results, list) else []:
        row: dict[str, Any] = {
            "indent": f"{depth * 1.5}em",
            "path": result.get("path", ""),
            "passed": bool(result.get("passed")),
            "reason": result.get("reason", ""),
        }
        if "field" in result:
            field, value = result.get("field"), result.get("value")
            row.update(
                field=field,
                field_words=words.subject(field) if custom_field_of(str(field)) else "",
                operator=result.get("operator", ""),
                value="" if value is None else json.dumps(value, ensure_ascii=False),
                value_words=words.value(field, value) if field in NAMED_VALUES and value is not None else "",
                seen=result.get("seen", ""),
            )
        else:
            row["group"] = "any of" if str(row["path"]).endswith(".any") else "all of"
        rows.append(row)
        rows += condition_rows(result.get("children"), words, depth + 1)
    return rows


_SHOWN_APART = {"index", "type", "text", "would_fail"}
DETAIL_LABELS = {"responsible_user_id": "responsible user", "ai_instruction": "AI instruction", "to": "to"}


def _detail(key: str, value: Any, words: RuleWords) -> str:
    if value is None:
        return "—"
    if key == "responsible_user_id":
        return f"{words.user(value)} ({value})"
    if key == "to" and isinstance(value, Mapping):
        return f"{value.get('channel')} chat “{value.get('chat')}” (conversation {value.get('conversation_id')})"
    if key == "field":
        return f"{words.subject(value)} ({value})" if custom_field_of(str(value)) else str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def action_rows(planned: Any, words: RuleWords) -> list[dict[str, Any]]:
    return [
        {
            "index": item.get("index"),
            "type": item.get("type"),
            "text": item.get("text"),
            "details": [
                (DETAIL_LABELS.get(key, key.replace("_", " ")), _detail(key, value, words))
                for key, value in item.items()
                if key not in _SHOWN_APART
            ],
            "would_fail": item.get("would_fail", ""),
        }
        for item in planned or []
    ]


# --- Firings -------------------------------------------------------------------------------


class ActionRunInline(ReadOnlyInline):
    """The firing's actions, one row each, as far as they got."""

    model = ActionRun
    fields = ["index", "type", "status", "attempts", "result_pretty", "error", "claimed_at", "finished_at"]
    readonly_fields = fields
    ordering = ["index"]

    @admin.display(description="result")
    def result_pretty(self, run: ActionRun) -> str:
        return pretty_json(run.result) if run.result else "—"


@admin.register(TriggerFiring)
class TriggerFiringAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Each time a trigger matched a CRM event, and what its actions did."""

    editable = False
    list_display = ["trigger", "agent", "crm_lead_id", "status", "created_at", "finished_at"]
    list_filter = ["status", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["crm_lead_id__exact", "trigger__name"]
    list_select_related = ["trigger", "agent"]
    date_hierarchy = "created_at"
    fields = [
        "trigger",
        "agent",
        "event",
        "crm_lead_id",
        "status",
        "error",
        "depth",
        "why",
        "actions_pretty",
        "log",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields
    inlines = [ActionRunInline]

    @admin.display(description="why it matched")
    def why(self, firing: TriggerFiring) -> str:
        explanation = firing.explanation or {}
        rows = condition_rows(explanation.get("children"), RuleWords.for_agent(firing.agent_id))
        if not rows:
            return explanation.get("reason") or "—"
        return render_to_string("admin/triggers/conditions_table.html", {"rows": rows})

    @admin.display(description="actions when it matched")
    def actions_pretty(self, firing: TriggerFiring) -> str:
        return pretty_json(firing.actions)
