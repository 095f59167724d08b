"""Admin for agents, and the admin plumbing the other apps share.

Staff edits behave like API edits: every save goes through the app's services, JSON
columns are checked by the validators on the model fields, and a staff member who is not
a superuser works on their own agents (and what hangs off them) only.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.db import models
from django.db.models import Count, QuerySet
from django.forms.fields import InvalidJSONInput
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from crm.services import field_names_for_agent
from integrations.models import Integration
from integrations.services import INTEGRATION_FIELDS, integration_create, integration_update
from sequences.models import Sequence
from sequences.services import SEQUENCE_FIELDS, sequence_create, sequence_update
from triggers.models import Trigger
from triggers.services import TRIGGER_FIELDS, trigger_create, trigger_update

from .conversations import conversation_hand_back, conversation_hand_off, message_retry
from .models import Agent, AgentCrmAccess, Conversation, ConversationMessage, ExecutionLog, LiveEvent, Meeting
from .pipeline import test_chat_send
from .selectors import owned
from .services import (
    AGENT_FIELDS,
    CRM_ACCESS_FIELDS,
    agent_create,
    agent_delete,
    agent_duplicate,
    agent_set_active,
    agent_update,
)

# --- JSON columns: edited as indented JSON -----------------------------------------------


class TestChatForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), label="Message")
    crm_lead_id = forms.IntegerField(
        required=False, min_value=1, label="CRM lead id", help_text="Optional: answer as if this lead wrote."
    )


class JSONTextarea(forms.Textarea):
    """A monospace textarea as tall as the JSON in it (within reason)."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        base = {"class": "vLargeTextField", "style": "font-family: monospace", "spellcheck": "false"}
        super().__init__(base | (attrs or {}))

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        lines = str(context["widget"]["value"] or "").count("\n") + 2
        context["widget"]["attrs"]["rows"] = min(max(lines, 3), 30)
        return context


class PrettyJSONField(forms.JSONField):
    """Django's JSON form field, shown indented instead of on one line.

    An emptied textarea means the column's empty value (``[]``, ``{}``), not NULL, which
    the columns do not take.
    """

    widget = JSONTextarea

    def __init__(self, *, empty_json: Any = None, **kwargs: Any) -> None:
        self.empty_json = empty_json
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if not self.disabled and value in self.empty_values:
            return copy.deepcopy(self.empty_json)
        return super().to_python(value)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)


class PrettyJSONMixin:
    """JSON columns of a model admin or inline as indented JSON textareas."""

    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField, "widget": JSONTextarea}}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, models.JSONField) and not db_field.null:
            kwargs.setdefault("empty_json", db_field.get_default())
        return super().formfield_for_dbfield(db_field, request, **kwargs)


def pretty_json(value: Any) -> str:
    """A read-only JSON value, indented."""
    return format_html(
        '<pre style="margin: 0; white-space: pre-wrap">{}</pre>', json.dumps(value, ensure_ascii=False, indent=2)
    )


# --- Saving through the services ---------------------------------------------------------


def form_data(form: forms.ModelForm, allowed: Iterable[str]) -> dict[str, Any]:
    """The form's cleaned values of the fields a service accepts (read-only ones are absent)."""
    return {name: form.cleaned_data[name] for name in allowed if name in form.cleaned_data}


def adopt(target: models.Model, saved: models.Model) -> None:
    """Make the form's instance the row a service created.

    The admin keeps using the instance it built the form with (inlines hang off it, the
    history and the redirect need its id), while create services build their own.
    """
    for field in saved._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


class ServiceInlineFormSet(BaseInlineFormSet):
    """Saves each inline object through its app's service instead of ``form.save()``."""

    allowed: tuple[str, ...] = ()

    def create(self, data: dict[str, Any]) -> models.Model:
        raise NotImplementedError

    def update(self, obj: models.Model, data: dict[str, Any]) -> models.Model:
        raise NotImplementedError

    def service_data(self, form: forms.ModelForm) -> dict[str, Any]:
        data = form_data(form, self.allowed)
        if self.fk.name in self.allowed:
            data[self.fk.name] = self.instance
        return data

    def save_new(self, form, commit=True):
        if not commit:
            return super().save_new(form, commit=commit)
        return self.create(self.service_data(form))

    def save_existing(self, form, obj, commit=True):
        if not commit:
            return super().save_existing(form, obj, commit=commit)
        return self.update(obj, self.service_data(form))


class CrmAccessFormSet(ServiceInlineFormSet):
    allowed = CRM_ACCESS_FIELDS

    def create(self, data):
        return agent_update(agent=self.instance, data={}, crm_access=data).crm_access

    def update(self, obj, data):
        return self.create(data)


class TriggerFormSet(ServiceInlineFormSet):
    allowed = TRIGGER_FIELDS

    def create(self, data):
        return trigger_create(data=data)

    def update(self, obj, data):
        return trigger_update(trigger=obj, data=data)


class SequenceFormSet(ServiceInlineFormSet):
    allowed = SEQUENCE_FIELDS

    def create(self, data):
        return sequence_create(data=data)

    def update(self, obj, data):
        return sequence_update(sequence=obj, data=data)


class IntegrationFormSet(ServiceInlineFormSet):
    # no credentials here: they are set on the integration's own page
    allowed = tuple(name for name in INTEGRATION_FIELDS if name != "credentials")

    def create(self, data):
        return integration_create(data=data)

    def update(self, obj, data):
        return integration_update(integration=obj, data=data)


# --- Tenancy -------------------------------------------------------------------------------


def is_admin_user(user) -> bool:
    return bool(user.is_active and user.is_staff)


def owner_id_of(obj: models.Model, owner_path: str) -> int | None:
    *hops, last = owner_path.split("__")
    for hop in hops:
        obj = getattr(obj, hop)
    return getattr(obj, f"{last}_id")


class ReadOnlyInline(admin.TabularInline):
    """The rows of a history inside their parent's page (action runs of a firing, steps
    of a run): shown to whoever may see the parent, never added, changed or deleted."""

    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        return is_admin_user(request.user)  # shown only inside a parent the user may see

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OwnedAdminMixin(PrettyJSONMixin):
    """Superusers manage everything; other active staff manage their own agents and what
    hangs off them, without Django model permissions.

    The queryset is scoped to the user, so another user's object reads as "doesn't exist".
    ``editable = False`` makes a history: viewable, deletable by superusers only.
    """

    owner_path = "agent__owner"
    editable = True

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return owned(queryset, request.user, owner_path=self.owner_path)

    def owns(self, request: HttpRequest, obj: models.Model | None) -> bool:
        return obj is None or request.user.is_superuser or owner_id_of(obj, self.owner_path) == request.user.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_admin_user(request.user)

    def has_view_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return is_admin_user(request.user) and self.owns(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.editable and is_admin_user(request.user)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self.editable and self.has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        if not self.editable:
            return is_admin_user(request.user) and request.user.is_superuser
        return self.has_view_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        # What cascades from an object the user may delete (its CRM access, its execution
        # log) goes with it; per-model delete permissions do not apply to it.
        return deleted, counts, set(), protected

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Agent and not request.user.is_superuser:
            kwargs["queryset"] = Agent.objects.filter(owner=request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class AgentPartInline(PrettyJSONMixin):
    """An inline on the agent page: who may change the agent may change its parts."""

    extra = 0

    def _allowed(self, request: HttpRequest, agent: Agent | None) -> bool:
        user = request.user
        return is_admin_user(user) and (agent is None or user.is_superuser or agent.owner_id == user.pk)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, obj)

    def has_add_permission(self, request, obj):
        return self._allowed(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request, obj)


def keys_set(integration: Integration | None) -> str:
    """The names of the stored secrets, never their values."""
    if integration is None or integration.pk is None:
        return "—"
    return ", ".join(integration.credential_keys) or "—"


# --- Agent ---------------------------------------------------------------------------------


class CrmFieldPicker(forms.TypedMultipleChoiceField):
    """CRM fields picked by name from the CRM snapshot; their ids are stored."""

    def __init__(self, *, names: dict[int, str], label: str, **kwargs: Any) -> None:
        super().__init__(
            coerce=int,
            required=False,
            label=label,
            widget=FilteredSelectMultiple(label, is_stacked=False),
            choices=sorted(((field_id, f"{name} ({field_id})") for field_id, name in names.items()), key=_by_name),
            help_text="Only these fields of a lead or contact ever reach the AI model. Names come from the "
            "last CRM sync (manage.py sync_crm_fields).",
            **kwargs,
        )
        self.names = names

    def valid_value(self, value: Any) -> bool:
        # an id stored before the field was removed from the CRM stays valid (shown as unknown)
        return super().valid_value(value) or str(value).isdigit()

    def prepare_value(self, value: Any) -> Any:
        ids = value if isinstance(value, list) else []
        missing = [(i, f"unknown field ({i})") for i in ids if isinstance(i, int) and i not in self.names]
        if missing:
            self.choices = list(self.choices) + missing
        return value


def _by_name(choice: tuple[int, str]) -> str:
    return choice[1].lower()


class CrmAccessInline(AgentPartInline, admin.StackedInline):
    model = AgentCrmAccess
    formset = CrmAccessFormSet
    fields = ["lead_fields", "contact_fields"]
    min_num = 1
    max_num = 1
    can_delete = False

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        names = field_names_for_agent(obj.pk) if obj is not None and obj.pk else None
        if names:
            for column, label in (("lead_fields", "Lead fields"), ("contact_fields", "Contact fields")):
                formset.form.base_fields[column] = CrmFieldPicker(names=names[column], label=label)
        return formset


class IntegrationInline(AgentPartInline, admin.TabularInline):
    model = Integration
    formset = IntegrationFormSet
    fields = ["integration_type", "active", "config", "credentials_set"]
    readonly_fields = ["credentials_set"]
    show_change_link = True

    @admin.display(description="credentials set")
    def credentials_set(self, integration: Integration | None) -> str:
        return keys_set(integration)


class TriggerInline(AgentPartInline, admin.StackedInline):
    model = Trigger
    formset = TriggerFormSet
    fields = ["name", "active", "event", "conditions", "actions"]
    show_change_link = True


class SequenceInline(AgentPartInline, admin.StackedInline):
    model = Sequence
    formset = SequenceFormSet
    fields = ["name", "active", "description", "trigger_config", "steps", "exit_rules"]
    show_change_link = True


@admin.register(Agent)
class AgentAdmin(OwnedAdminMixin, admin.ModelAdmin):
    owner_path = "owner"
    list_display = ["name", "owner", "active", "model", "trigger_count", "sequence_count", "updated_at"]
    list_display_links = ["name"]
    list_filter = ["active", "ai_model", "language_detection"]
    search_fields = ["name", "instructions"]
    list_select_related = ["owner"]
    readonly_fields = ["created_at", "updated_at", "test_chat_link"]
    fieldsets = [
        (None, {"fields": ["owner", "name", "active", "ai_model"]}),
        ("Conversation", {"fields": ["instructions", "language_detection", "default_language"]}),
        ("Working hours and handoff", {"fields": ["schedule", "outside_hours", "away_message", "handoff_minutes"]}),
        ("History", {"fields": ["created_at", "updated_at", "test_chat_link"]}),
    ]
    inlines = [CrmAccessInline, IntegrationInline, TriggerInline, SequenceInline]
    actions = ["activate", "deactivate", "duplicate"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                trigger_count=Count("triggers", distinct=True),
                sequence_count=Count("sequences", distinct=True),
            )
        )

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if request.user.is_superuser else [name for name in shown if name != "owner"]

    def get_list_filter(self, request):
        shown = list(super().get_list_filter(request))
        return shown + [("owner", admin.RelatedOnlyFieldListFilter)] if request.user.is_superuser else shown

    def get_search_fields(self, request):
        shown = list(super().get_search_fields(request))
        return shown + ["owner__username", "owner__email"] if request.user.is_superuser else shown

    @admin.display(description="test chat")
    def test_chat_link(self, agent: Agent) -> str:
        if not agent.pk:
            return "—"
        return format_html('<a href="{}">Talk to this agent as a lead would</a>', f"../{agent.pk}/test-chat/")

    def get_urls(self):
        return [
            path(
                "<path:object_id>/test-chat/",
                self.admin_site.admin_view(self.test_chat_view),
                name="agents_agent_test_chat",
            ),
            *super().get_urls(),
        ]

    def test_chat_view(self, request: HttpRequest, object_id: str):
        agent = self.get_object(request, object_id)
        if agent is None or not self.has_view_permission(request, agent):
            raise Http404("No such agent")
        chat_id = f"test:{request.user.pk}"
        conversation = Conversation.objects.filter(agent=agent, integration=None, chat_id=chat_id).first()
        form = TestChatForm(request.POST or None, initial={"crm_lead_id": conversation and conversation.crm_lead_id})
        if request.method == "POST":
            if "reset" in request.POST:
                if conversation is not None:
                    conversation.delete()
                return redirect(request.path)
            if form.is_valid():
                test_chat_send(
                    agent=agent,
                    chat_id=chat_id,
                    sender_name=request.user.get_username(),
                    text=form.cleaned_data["text"],
                    crm_lead_id=form.cleaned_data["crm_lead_id"],
                )
                return redirect(request.path)
        shown = conversation.messages.order_by("id") if conversation else []
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "agent": agent,
            "form": form,
            "messages_shown": shown,
            "title": f"Test chat with {agent}",
        }
        return TemplateResponse(request, "admin/agents/test_chat.html", context)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.is_superuser:
            return fieldsets
        # the owner of a staff member's agent is that staff member
        return [(name, {**opts, "fields": [f for f in opts["fields"] if f != "owner"]}) for name, opts in fieldsets]

    @admin.display(description="AI model", ordering="ai_model")
    def model(self, agent: Agent) -> str:
        return agent.ai_model

    @admin.display(description="triggers", ordering="trigger_count")
    def trigger_count(self, agent: Agent) -> int:
        return agent.trigger_count

    @admin.display(description="sequences", ordering="sequence_count")
    def sequence_count(self, agent: Agent) -> int:
        return agent.sequence_count

    def save_model(self, request, obj, form, change):
        data = form_data(form, AGENT_FIELDS)
        if change:
            agent_update(agent=obj, data=data)
        else:
            owner = form.cleaned_data.get("owner") if request.user.is_superuser else None
            adopt(obj, agent_create(owner=owner or request.user, data=data))

    def delete_model(self, request, obj):
        agent_delete(agent=obj)

    def delete_queryset(self, request, queryset):
        for agent in self._plain(queryset):
            agent_delete(agent=agent)

    @staticmethod
    def _plain(queryset: QuerySet[Agent]) -> QuerySet[Agent]:
        # the changelist's queryset is grouped (the counts), which SELECT … FOR UPDATE refuses
        return Agent.objects.filter(pk__in=list(queryset.values_list("pk", flat=True)))

    def _report(self, request, count: int, what: str) -> None:
        self.message_user(request, f"{count} {model_ngettext(self.opts, count)} {what}.", messages.SUCCESS)

    @admin.action(description="Activate selected agents", permissions=["change"])
    def activate(self, request, queryset):
        self._report(request, agent_set_active(agents=self._plain(queryset), active=True), "activated")

    @admin.action(description="Deactivate selected agents", permissions=["change"])
    def deactivate(self, request, queryset):
        self._report(request, agent_set_active(agents=self._plain(queryset), active=False), "deactivated")

    @admin.action(description="Duplicate selected agents (copies are inactive)", permissions=["add"])
    def duplicate(self, request, queryset):
        copies = [agent_duplicate(agent=agent) for agent in self._plain(queryset)]
        self._report(request, len(copies), "duplicated")


@admin.register(AgentCrmAccess)
class AgentCrmAccessAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Which CRM fields each agent reads; created with the agent, edited here or on its page."""

    list_display = ["agent", "lead_field_count", "contact_field_count", "updated_at"]
    list_select_related = ["agent"]
    search_fields = ["agent__name"]
    fields = ["agent", "lead_fields", "contact_fields", "updated_at"]
    readonly_fields = ["agent", "updated_at"]

    def has_add_permission(self, request):
        return False  # every agent gets its CRM access when it is created

    def has_delete_permission(self, request, obj=None):
        return is_admin_user(request.user) and request.user.is_superuser

    @admin.display(description="lead fields")
    def lead_field_count(self, access: AgentCrmAccess) -> int:
        return len(access.lead_fields or [])

    @admin.display(description="contact fields")
    def contact_field_count(self, access: AgentCrmAccess) -> int:
        return len(access.contact_fields or [])

    def save_model(self, request, obj, form, change):
        agent_update(agent=obj.agent, data={}, crm_access=form_data(form, CRM_ACCESS_FIELDS))


# --- Histories -----------------------------------------------------------------------------


@admin.register(ExecutionLog)
class ExecutionLogAdmin(OwnedAdminMixin, admin.ModelAdmin):
    editable = False
    list_display = ["created_at", "agent", "kind", "status", "lead", "ref", "duration", "error_excerpt"]
    list_filter = ["kind", "status", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["crm_lead_id__exact", "agent__name", "ref_type", "error"]
    list_select_related = ["agent"]
    date_hierarchy = "created_at"
    fields = [
        "agent",
        "kind",
        "status",
        "ref_type",
        "ref_id",
        "crm_lead_id",
        "detail_pretty",
        "error",
        "duration_ms",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields

    @admin.display(description="CRM lead", ordering="crm_lead_id")
    def lead(self, log: ExecutionLog) -> int | None:
        return log.crm_lead_id

    @admin.display(description="ref")
    def ref(self, log: ExecutionLog) -> str:
        if not log.ref_type:
            return "—"
        return f"{log.ref_type} #{log.ref_id}" if log.ref_id is not None else log.ref_type

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, log: ExecutionLog) -> str:
        return "—" if log.duration_ms is None else f"{log.duration_ms} ms"

    @admin.display(description="error")
    def error_excerpt(self, log: ExecutionLog) -> str:
        return Truncator(log.error).chars(80)

    @admin.display(description="detail")
    def detail_pretty(self, log: ExecutionLog) -> str:
        return pretty_json(log.detail)


@admin.register(LiveEvent)
class LiveEventAdmin(OwnedAdminMixin, admin.ModelAdmin):
    owner_path = "owner"
    editable = False
    list_display = ["created_at", "type", "owner", "payload_excerpt"]
    list_filter = ["type"]
    search_fields = ["type"]
    list_select_related = ["owner"]
    fields = ["owner", "type", "payload_pretty", "created_at"]
    readonly_fields = fields
    ordering = ["-id"]

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if request.user.is_superuser else [name for name in shown if name != "owner"]

    @admin.display(description="payload")
    def payload_excerpt(self, event: LiveEvent) -> str:
        return Truncator(json.dumps(event.payload, ensure_ascii=False)).chars(100)

    @admin.display(description="payload")
    def payload_pretty(self, event: LiveEvent) -> str:
        return pretty_json(event.payload)


class ConversationMessageInline(admin.TabularInline):
    """The exchange, both sides, with how each reply was made."""

    model = ConversationMessage
    extra = 0
    can_delete = False
    fields = ["created_at", "author", "text", "status", "model_used", "tokens", "latency", "error"]
    readonly_fields = fields
    ordering = ["id"]

    def has_view_permission(self, request, obj=None):
        return True  # shown only inside a conversation the user may see (ConversationAdmin)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="model")
    def model_used(self, message: ConversationMessage) -> str:
        return f"{message.ai_provider}:{message.ai_model}" if message.ai_model else "—"

    @admin.display(description="tokens in / out")
    def tokens(self, message: ConversationMessage) -> str:
        if message.input_tokens is None and message.output_tokens is None:
            return "—"
        return f"{message.input_tokens or 0} / {message.output_tokens or 0}"

    @admin.display(description="latency")
    def latency(self, message: ConversationMessage) -> str:
        return "—" if message.latency_ms is None else f"{message.latency_ms} ms"


@admin.register(Conversation)
class ConversationAdmin(OwnedAdminMixin, admin.ModelAdmin):
    editable = False
    list_display = ["updated_at", "who", "agent", "integration", "crm_lead_id", "handed_off", "last_inbound_at"]
    list_filter = [("agent", admin.RelatedOnlyFieldListFilter), "integration__integration_type"]
    search_fields = ["crm_lead_id__exact", "sender_name", "phone", "chat_id"]
    list_select_related = ["agent", "integration__agent"]
    fields = [
        "agent",
        "integration",
        "chat_id",
        "sender_name",
        "phone",
        "language",
        "crm_contact_id",
        "crm_lead_id",
        "handoff_until",
        "handoff_reason",
        "away_sent_at",
        "last_inbound_at",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields
    inlines = [ConversationMessageInline]
    actions = ["hand_off", "hand_back"]

    @admin.action(description="Hand off to the team (the agent stays quiet for its handoff time)")
    def hand_off(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        for conversation in queryset.select_related("agent"):
            conversation_hand_off(conversation=conversation, reason="staff")
        self.message_user(request, f"{queryset.count()} conversation(s) handed off to the team.")

    @admin.action(description="Hand back to the agent (it answers the next message)")
    def hand_back(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        for conversation in queryset:
            conversation_hand_back(conversation=conversation)
        self.message_user(request, f"{queryset.count()} conversation(s) handed back to the agent.")

    @admin.display(description="who", ordering="sender_name")
    def who(self, conversation: Conversation) -> str:
        return conversation.sender_name or conversation.phone or conversation.chat_id

    @admin.display(description="handed off", boolean=True)
    def handed_off(self, conversation: Conversation) -> bool:
        return bool(conversation.handoff_until and conversation.handoff_until > timezone.now())


@admin.register(ConversationMessage)
class ConversationMessageAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Every message, to find the ones that failed and retry them."""

    owner_path = "conversation__agent__owner"
    editable = False
    list_display = ["created_at", "conversation", "author", "excerpt", "status", "attempts", "error_excerpt"]
    list_filter = ["status", "direction", ("conversation__agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["conversation__crm_lead_id__exact", "text", "error"]
    list_select_related = ["conversation__agent"]
    fields = [
        "conversation",
        "direction",
        "author",
        "text",
        "status",
        "attempts",
        "error",
        "external_id",
        "reply_to",
        "ai_provider",
        "ai_model",
        "input_tokens",
        "output_tokens",
        "latency_ms",
        "sent_at",
        "created_at",
        "claimed_at",
        "processed_at",
    ]
    readonly_fields = fields
    actions = ["retry"]

    @admin.display(description="text")
    def excerpt(self, message: ConversationMessage) -> str:
        return Truncator(message.text).chars(80)

    @admin.display(description="error")
    def error_excerpt(self, message: ConversationMessage) -> str:
        return Truncator(message.error).chars(80)

    @admin.action(description="Retry the failed messages")
    def retry(self, request: HttpRequest, queryset: QuerySet[ConversationMessage]) -> None:
        retried = sum(message_retry(message=message) for message in queryset)
        skipped = queryset.count() - retried
        self.message_user(
            request,
            f"{retried} message(s) queued again" + (f"; {skipped} not failed, left as they are." if skipped else "."),
            messages.SUCCESS if retried else messages.WARNING,
        )


@admin.register(Meeting)
class MeetingAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Meetings booked in the agents' Google Calendars (read-only: the calendar is the truth)."""

    editable = False
    list_display = ["start", "end", "summary", "agent", "crm_lead_id", "booked_by", "crm_error"]
    list_filter = ["booked_by", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["crm_lead_id__exact", "summary", "agent__name"]
    list_select_related = ["agent"]
    date_hierarchy = "start"
    fields = [
        "agent",
        "calendar",
        "crm_lead_id",
        "start",
        "end",
        "summary",
        "html_link",
        "event_id",
        "booked_by",
        "key",
        "crm_error",
        "created_at",
    ]
    readonly_fields = fields
