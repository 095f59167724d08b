"""Admin for integrations. Credentials are write-only here too: a staff member may replace
them, and sees which keys are stored, never a value."""
from __future__ import annotations

import hashlib
import json

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, JsonResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from agents.admin import OwnedAdminMixin, adopt, form_data, keys_set
from config.validation import raise_problems

from .errors import IntegrationError
from .google import calendar as google_calendar
from .models import Integration
from .schemas import check_credentials
from .services import (
    INTEGRATION_FIELDS,
    integration_create,
    integration_regenerate_webhook_key,
    integration_update,
)

MASK = "••••••••"
GOOGLE_CALENDARS_CACHE_SECONDS = 300


def google_connected(integration: Integration | None) -> bool:
    """A saved Google Calendar integration that holds Google's tokens."""
    return bool(
        integration is not None
        and integration.pk
        and integration.integration_type == Integration.Type.GOOGLE_CALENDAR
        and (integration.credentials or {}).get("refresh_token")
    )


def google_calendar_choices(integration: Integration) -> list[tuple[str, str]]:
    """The account's calendars for the picker, fetched at most every few minutes (a new
    connection, with a new refresh token, fetches anew)."""
    grant = hashlib.sha256(integration.credentials["refresh_token"].encode()).hexdigest()[:16]
    key = f"integrations:google:calendars:{integration.pk}:{grant}"
    choices = cache.get(key)
    if choices is None:
        choices = [
            (c.id, f"{c.summary} (primary)" if c.primary else c.summary)
            for c in google_calendar.list_calendars(integration)
        ]
        cache.set(key, choices, GOOGLE_CALENDARS_CACHE_SECONDS)
    return choices


class WriteOnlyTextarea(forms.Textarea):
    """Never renders a value: secrets typed in are not sent back, not even after an error."""

    def format_value(self, value):
        return None


class IntegrationAdminForm(forms.ModelForm):
    new_credentials = forms.CharField(
        label="New credentials",
        required=False,
        widget=WriteOnlyTextarea(
            attrs={"rows": 4, "style": "font-family: monospace", "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text='A JSON object of secrets, e.g. {"bot_token": "…"}: replaces all stored credentials '
        "({} removes them). Leave blank to keep them. What you type here is never shown again, so re-enter it if the "
        "form comes back with an error.",
    )

    calendar = forms.ChoiceField(
        label="Calendar",
        required=False,
        choices=[],
        help_text="Where the agent looks for free time and adds meetings (saved as config.calendar_id).",
    )

    class Meta:
        model = Integration
        fields = ["agent", "integration_type", "active", "config"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if google_connected(self.instance):
            self._offer_calendars()

    def _offer_calendars(self) -> None:
        field = self.fields["calendar"]
        current = str((self.instance.config or {}).get("calendar_id") or "")
        field.initial = current
        choices = [("", "The account's primary calendar (default)")]
        try:
            choices += google_calendar_choices(self.instance)
        except IntegrationError as exc:
            field.disabled = True
            field.help_text = f"The calendars could not be loaded: {exc}"
        if current and current not in {value for value, _ in choices}:
            choices.append((current, f"{current} (not among the account's calendars)"))
        field.choices = choices

    def clean_new_credentials(self) -> dict[str, str] | None:
        text = self.cleaned_data["new_credentials"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            # position only: the text around the mistake is part of a secret
            raise ValidationError(
                f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                'expected an object such as {"bot_token": "…"}',
                code="invalid",
            ) from None
        raise_problems("credentials", check_credentials(value))
        return value


@admin.register(Integration)
class IntegrationAdmin(OwnedAdminMixin, admin.ModelAdmin):
    form = IntegrationAdminForm
    list_display = ["integration_type", "agent", "active", "health", "credentials_set", "updated_at"]
    list_filter = ["integration_type", "active", "status", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["agent__name", "integration_type"]
    list_select_related = ["agent"]
    readonly_fields = [
        "stored_credentials",
        "connection",
        "token_renewed",
        "status_badge",
        "last_error",
        "status_since",
        "webhook",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["agent", "integration_type", "active", "config"]}),
        ("Credentials", {"fields": ["stored_credentials", "new_credentials", "connection", "token_renewed"]}),
        ("Health", {"fields": ["status_badge", "last_error", "status_since"]}),
        ("Webhook", {"fields": ["webhook"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    actions = ["regenerate_webhook_key"]

    class Media:
        # the badges below follow integration.status events on the events socket
        css = {"all": ["observability/live.css"]}
        js = ["observability/live.js", "observability/integration_health.js"]

    # Health: each part carries the integration's id, so that integration_health.js can
    # redraw it when the socket announces a change (it asks the server for the new state).

    @admin.display(description="status", ordering="status")
    def status_badge(self, integration: Integration) -> str:
        if not integration.pk:
            return format_html('<strong class="health-badge">{}</strong>', integration.get_status_display())
        return format_html(
            '<strong class="health-badge health-{}" data-integration-health-status="{}" data-health-url="{}">'
            "{}</strong>",
            integration.status,
            integration.pk,
            reverse("admin:integrations_integration_health"),
            integration.get_status_display(),
        )

    @admin.display(description="last error")
    def last_error(self, integration: Integration, empty: str = "—") -> str:
        return format_html(
            '<span class="health-detail" data-integration-health-detail="{}" data-empty="{}">{}</span>',
            integration.pk or "",
            empty,
            integration.status_detail or empty,
        )

    @admin.display(description="since", ordering="status_changed_at")
    def status_since(self, integration: Integration) -> str:
        changed = integration.status_changed_at
        return format_html(
            '<time class="health-since" data-integration-health-since="{}" datetime="{}">{}</time>',
            integration.pk or "",
            changed.isoformat() if changed else "",
            formats.date_format(timezone.localtime(changed), "DATETIME_FORMAT") if changed else "—",
        )

    @admin.display(description="health", ordering="status")
    def health(self, integration: Integration) -> str:
        """The list's column: status, since when, and the last error under it."""
        return format_html(
            '{} <span class="help" data-integration-health-since-label="{}"{}>since</span> {}<div>{}</div>',
            self.status_badge(integration),
            integration.pk or "",
            "" if integration.status_changed_at else mark_safe(" hidden"),
            self.status_since(integration),
            self.last_error(integration, empty=""),
        )

    def get_urls(self):
        health = path("health/", self.admin_site.admin_view(self.health_view), name="integrations_integration_health")
        return [health, *super().get_urls()]

    def health_view(self, request: HttpRequest) -> JsonResponse:
        """``?id=1&id=2``: those integrations' health now, for the live badges (those the
        user may see in this admin; others are left out)."""
        try:
            ids = [int(value) for value in request.GET.getlist("id")[:500]]
        except ValueError:
            return JsonResponse({"detail": "id: expected integration ids"}, status=400)
        integrations = self.get_queryset(request).filter(pk__in=ids)
        return JsonResponse(
            {
                "integrations": [
                    {
                        "id": integration.pk,
                        "status": integration.status,
                        "label": integration.get_status_display(),
                        "detail": integration.status_detail,
                        "changed_at": integration.status_changed_at.isoformat()
                        if integration.status_changed_at
                        else None,
                    }
                    for integration in integrations.only("id", "status", "status_detail", "status_changed_at")
                ]
            }
        )

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        if google_connected(obj):
            fieldsets.insert(1, ("Google Calendar", {"fields": ["calendar"]}))
        return fieldsets

    @admin.display(description="connect")
    def connection(self, integration: Integration | None) -> str:
        if integration and integration.pk and integration.integration_type == Integration.Type.GOOGLE_CALENDAR:
            return self._google_connection(integration)
        if not integration or not integration.pk or integration.integration_type != Integration.Type.KOMMO:
            return "—"
        return format_html(
            '<a class="button" href="{}">Connect Kommo</a> '
            '<span class="help">Needs client_id and client_secret in the credentials; or paste a long-lived '
            "token as access_token instead.</span>",
            reverse("crm-oauth-start", args=[integration.pk]),
        )

    def _google_connection(self, integration: Integration) -> str:
        url = reverse("google-oauth-start", args=[integration.pk])
        if not google_connected(integration):
            return format_html(
                '<a class="button" href="{}">Connect Google</a> '
                '<span class="help">Sign in with the Google account whose calendar the agent books meetings in.'
                "</span>",
                url,
            )
        if integration.status == Integration.Status.NEEDS_RECONNECT:
            return format_html(
                '<a class="button" href="{}">Reconnect Google</a> <strong class="health-needs_reconnect">'
                "Google no longer accepts this connection: connect again.</strong>",
                url,
            )
        return format_html(
            '<a class="button" href="{}">Reconnect Google</a> '
            '<span class="help">Connected. Reconnect to use another Google account.</span>',
            url,
        )

    @admin.display(description="refresh token")
    def token_renewed(self, integration: Integration | None) -> str:
        """When the OAuth refresh token was last renewed (integrations/rotation.py)."""
        if not integration or not integration.pk or not (integration.credentials or {}).get("refresh_token"):
            return "—"  # not connected with OAuth (a long-lived token, a messenger)
        renewed = integration.refresh_token_renewed_at
        when = formats.date_format(timezone.localtime(renewed), "DATETIME_FORMAT") if renewed else "not recorded yet"
        if integration.integration_type == Integration.Type.GOOGLE_CALENDAR:
            return format_html(
                'Refresh token last confirmed {} <span class="help">Google keeps one refresh token per connection; '
                "it is checked when {} days old, and only reconnecting replaces it.</span>",
                when,
                settings.OAUTH_ROTATE_AFTER_DAYS,
            )
        return format_html(
            'Refresh token renewed {} <span class="help">Renewed automatically when {} days old.</span>',
            when,
            settings.OAUTH_ROTATE_AFTER_DAYS,
        )

    @admin.display(description="webhook URL")
    def webhook(self, integration: Integration | None) -> str:
        url = integration.webhook_url if integration and integration.pk else None
        if not url:
            return "—"
        return format_html(
            "<code>{}</code><div class='help'>Give this URL to the CRM's webhook settings. "
            "The action “Regenerate webhook URL” replaces it.</div>",
            url,
        )

    @admin.action(description="Regenerate webhook URL (the old one stops working)")
    def regenerate_webhook_key(self, request, queryset):
        for integration in queryset:
            integration_regenerate_webhook_key(integration=integration)
        self.message_user(request, f"Regenerated the webhook URL of {len(queryset)} integration(s).")

    @admin.display(description="credentials set")
    def credentials_set(self, integration: Integration) -> str:
        return keys_set(integration)

    @admin.display(description="stored credentials")
    def stored_credentials(self, integration: Integration | None) -> str:
        keys = integration.credential_keys if integration and integration.pk else []
        if not keys:
            return "—"
        return format_html_join("", "<div><code>{}: {}</code></div>", ((key, MASK) for key in keys))

    def save_model(self, request, obj, form, change):
        data = form_data(form, INTEGRATION_FIELDS)
        if form.cleaned_data.get("new_credentials") is not None:
            data["credentials"] = form.cleaned_data["new_credentials"]
        if "calendar" in form.changed_data:
            config = dict(data.get("config", obj.config) or {})
            if form.cleaned_data["calendar"]:
                config["calendar_id"] = form.cleaned_data["calendar"]
            else:
                config.pop("calendar_id", None)
            data["config"] = config
        if change:
            integration_update(integration=obj, data=data)
        else:
            adopt(obj, integration_create(data=data))
