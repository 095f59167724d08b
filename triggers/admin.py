from __future__ import annotations

from django.contrib import admin

from agents.admin import OwnedAdminMixin, adopt, form_data

from .models import Trigger
from .services import TRIGGER_FIELDS, trigger_create, trigger_update


@admin.register(Trigger)
class TriggerAdmin(OwnedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "agent", "active", "condition_count", "action_count", "updated_at"]
    list_filter = ["active", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "agent__name"]
    list_select_related = ["agent"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["agent", "name", "active"]}),
        ("Rule", {"fields": ["conditions", "actions"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="conditions")
    def condition_count(self, trigger: Trigger) -> int:
        return len(trigger.conditions or [])

    @admin.display(description="actions")
    def action_count(self, trigger: Trigger) -> int:
        return len(trigger.actions or [])

    def save_model(self, request, obj, form, change):
        data = form_data(form, TRIGGER_FIELDS)
        if change:
            trigger_update(trigger=obj, data=data)
        else:
            adopt(obj, trigger_create(data=data))
