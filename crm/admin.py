"""Admin for what the CRM sent (events) and what we know of it (snapshots): read-only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.text import Truncator
from django_q.tasks import async_task

from agents.admin import OwnedAdminMixin, pretty_json

from .dispatch import PROCESS_TASK
from .models import CrmEvent, CrmSnapshot


@admin.register(CrmEvent)
class CrmEventAdmin(OwnedAdminMixin, admin.ModelAdmin):
    owner_path = "integration__agent__owner"
    editable = False
    list_display = ["received_at", "kind", "lead_id", "entity", "integration", "status", "attempts", "error_excerpt"]
    list_filter = ["status", "kind", "entity_type"]
    search_fields = ["lead_id__exact", "entity_id__exact", "error"]
    list_select_related = ["integration__agent"]
    date_hierarchy = "received_at"
    fields = [
        "integration",
        "kind",
        "entity_type",
        "entity_id",
        "lead_id",
        "status",
        "attempts",
        "error",
        "received_at",
        "processed_at",
        "data_pretty",
    ]
    readonly_fields = fields
    actions = ["process_again"]

    @admin.display(description="entity")
    def entity(self, event: CrmEvent) -> str:
        return f"{event.entity_type} {event.entity_id if event.entity_id is not None else ''}".strip()

    @admin.display(description="error")
    def error_excerpt(self, event: CrmEvent) -> str:
        return Truncator(event.error).chars(80)

    @admin.display(description="data as the CRM sent it")
    def data_pretty(self, event: CrmEvent) -> str:
        return pretty_json(event.data)

    @admin.action(description="Process the selected failed events again")
    def process_again(self, request, queryset):
        ids = list(queryset.filter(status=CrmEvent.Status.FAILED).values_list("id", flat=True))
        if not ids:
            self.message_user(request, "Only failed events can be processed again.", messages.WARNING)
            return
        CrmEvent.objects.filter(id__in=ids).update(status=CrmEvent.Status.PENDING, attempts=0, error="")
        async_task(PROCESS_TASK, ids, save=False)
        self.message_user(request, f"Queued {len(ids)} event(s) for processing.")


@admin.register(CrmSnapshot)
class CrmSnapshotAdmin(OwnedAdminMixin, admin.ModelAdmin):
    owner_path = "integration__agent__owner"
    editable = False
    list_display = ["integration", "synced_at", "field_counts"]
    list_select_related = ["integration__agent"]
    fields = [
        "integration",
        "synced_at",
        "lead_fields",
        "contact_fields",
        "pipelines",
        "users",
        "lead_tags",
        "contact_tags",
    ]
    readonly_fields = fields

    @admin.display(description="fields (leads / contacts)")
    def field_counts(self, snapshot: CrmSnapshot) -> str:
        return f"{len(snapshot.lead_fields)} / {len(snapshot.contact_fields)}"
