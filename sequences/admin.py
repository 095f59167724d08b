from __future__ import annotations

from django.contrib import admin

from agents.admin import OwnedAdminMixin, adopt, form_data

from .models import Sequence
from .services import SEQUENCE_FIELDS, sequence_create, sequence_update


@admin.register(Sequence)
class SequenceAdmin(OwnedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "agent", "active", "started_by", "step_count", "updated_at"]
    list_filter = ["active", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description", "agent__name"]
    list_select_related = ["agent"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["agent", "name", "active", "description"]}),
        ("Follow-up", {"fields": ["trigger_config", "steps"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="started by")
    def started_by(self, sequence: Sequence) -> str:
        return (sequence.trigger_config or {}).get("event") or "by hand"

    @admin.display(description="steps")
    def step_count(self, sequence: Sequence) -> int:
        return len(sequence.steps or [])

    def save_model(self, request, obj, form, change):
        data = form_data(form, SEQUENCE_FIELDS)
        if change:
            sequence_update(sequence=obj, data=data)
        else:
            adopt(obj, sequence_create(data=data))
