"""Admin for sequences: the sequence editor with a "Start for a lead" page, and the runs,
read-only, with their steps and the controls a manager needs (cancel, pause, resume,
retry).

Saves and run changes go through the services and the runner, like the API
(sequences/api/views.py); a staff member sees and controls their own agents' runs only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponseBadRequest, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from agents.admin import OwnedAdminMixin, ReadOnlyInline, adopt, form_data, pretty_json

from .models import ACTIVE_RUN_STATUSES, Sequence, SequenceRun, SequenceStep
from .runner import LIVE_RUN, AlreadyRunning, CannotStart, run_cancel, run_pause, run_resume, run_retry, run_start
from .services import SEQUENCE_FIELDS, sequence_create, sequence_update

MAX_LISTED_RUNS = 10  # refused runs named in an action's report

# --- Sequence ------------------------------------------------------------------------------


class StartForm(forms.Form):
    lead_id = forms.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        label="CRM lead id",
        help_text="The lead of the agent's Kommo account to take through the sequence; its first step runs now.",
    )


def runs_url(**filters: object) -> str:
    return reverse("admin:sequences_sequencerun_changelist") + ("?" + urlencode(filters) if filters else "")


@admin.register(Sequence)
class SequenceAdmin(OwnedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "agent", "active", "started_by", "step_count", "active_runs", "updated_at"]
    list_filter = ["active", ("agent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "description", "agent__name"]
    list_select_related = ["agent"]
    readonly_fields = ["created_at", "updated_at", "runs"]
    fieldsets = [
        (None, {"fields": ["agent", "name", "active", "description"]}),
        ("Follow-up", {"fields": ["trigger_config", "steps", "exit_rules"]}),
        ("History", {"fields": ["created_at", "updated_at", "runs"]}),
    ]

    def get_queryset(self, request):
        # a subquery, not a join: the queryset stays ungrouped for deletes and row locks
        active = (
            SequenceRun.objects.filter(sequence=OuterRef("pk"), status__in=ACTIVE_RUN_STATUSES)
            .order_by()
            .values("sequence")
            .annotate(count=Count("pk"))
            .values("count")
        )
        return super().get_queryset(request).annotate(
            active_run_count=Coalesce(Subquery(active, output_field=IntegerField()), 0)
        )

    @admin.display(description="started by")
    def started_by(self, sequence: Sequence) -> str:
        return (sequence.trigger_config or {}).get("event") or "by hand"

    @admin.display(description="steps")
    def step_count(self, sequence: Sequence) -> int:
        return len(sequence.steps or [])

    @admin.display(description="active runs", ordering="active_run_count")
    def active_runs(self, sequence: Sequence) -> str:
        count = getattr(sequence, "active_run_count", 0)
        if not count:
            return "0"
        shown = runs_url(sequence__id__exact=sequence.pk, status__in=",".join(ACTIVE_RUN_STATUSES))
        return format_html('<a href="{}">{}</a>', shown, count)

    @admin.display(description="runs")
    def runs(self, sequence: Sequence) -> str:
        if not sequence.pk:
            return "—"
        total = sequence.runs.count()
        active = getattr(sequence, "active_run_count", 0)
        shown = runs_url(sequence__id__exact=sequence.pk)
        return format_html('{} active, {} in all · <a href="{}">See the runs</a>', active, total, shown)

    def save_model(self, request, obj, form, change):
        data = form_data(form, SEQUENCE_FIELDS)
        if change:
            sequence_update(sequence=obj, data=data)
        else:
            adopt(obj, sequence_create(data=data))

    # -- starting a run by hand -----------------------------------------------------------

    def get_urls(self):
        return [
            path(
                "<path:object_id>/start/",
                self.admin_site.admin_view(self.start_view),
                name="sequences_sequence_start",
            ),
            *super().get_urls(),
        ]

    def start_view(self, request: HttpRequest, object_id: str):
        sequence = self.get_object(request, unquote(object_id))
        if sequence is None or not self.has_change_permission(request, sequence):
            raise Http404("No such sequence")
        form = StartForm(request.POST if request.method == "POST" else None)
        already: SequenceRun | None = None
        if form.is_bound and form.is_valid():
            try:
                run = run_start(
                    sequence=sequence,
                    lead_id=form.cleaned_data["lead_id"],
                    started_by="admin",
                    started_ref=f"user:{request.user.pk}",
                )
            except AlreadyRunning as exc:
                already = exc.run
            except CannotStart as exc:
                form.add_error(None, f"The sequence cannot start: {exc}.")
            else:
                self.message_user(
                    request,
                    f"“{sequence}” started for lead {run.crm_lead_id}; its first step is queued.",
                    messages.SUCCESS,
                )
                return redirect("admin:sequences_sequencerun_change", run.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": sequence,
            "form": form,
            "already": already,
            "title": f"Start “{sequence}” for a lead",
        }
        return TemplateResponse(request, "admin/sequences/sequence/start.html", context)


# --- Runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChange:
    """One control of a run: the runner function, the words for what it did, and why it
    may refuse (singular, plural)."""

    name: str
    label: str
    done: str
    change: Callable[[SequenceRun, HttpRequest], bool]
    applies: Callable[[SequenceRun], bool]
    refused: Callable[[SequenceRun], tuple[str, str]]


def _retry_refusal(run: SequenceRun) -> tuple[str, str]:
    if run.status != SequenceRun.Status.FAILED:
        return ("was not failed", "were not failed")
    return ("could not be retried: the lead is in a newer run", "could not be retried: their leads are in newer runs")


RUN_CHANGES = {
    change.name: change
    for change in (
        RunChange(
            name="cancel",
            label="Cancel",
            done="cancelled",
            change=lambda run, request: run_cancel(run, by=f"user {request.user.pk} in the admin"),
            applies=lambda run: run.is_active,
            refused=lambda run: ("was not active", "were not active"),
        ),
        RunChange(
            name="pause",
            label="Pause",
            done="paused",
            change=lambda run, request: run_pause(run),
            applies=lambda run: run.status in LIVE_RUN,
            refused=lambda run: ("was not scheduled, running or waiting", "were not scheduled, running or waiting"),
        ),
        RunChange(
            name="resume",
            label="Resume",
            done="resumed",
            change=lambda run, request: run_resume(run),
            applies=lambda run: run.status == SequenceRun.Status.PAUSED,
            refused=lambda run: ("was not paused", "were not paused"),
        ),
        RunChange(
            name="retry",
            label="Retry from the failed step",
            done="retried from the failed step",
            change=lambda run, request: run_retry(run),
            applies=lambda run: run.status == SequenceRun.Status.FAILED,
            refused=_retry_refusal,
        ),
    )
}


def run_change_report(change: RunChange, runs: Iterable[SequenceRun], request: HttpRequest) -> tuple[str, int]:
    """Apply ``change`` to each run; the report ("3 cancelled, 1 was not active (run 7:
    done).") and its message level."""
    done = 0
    refused: dict[tuple[str, str], list[SequenceRun]] = {}
    for run in runs:
        if change.change(run, request):
            done += 1
        else:
            refused.setdefault(change.refused(run), []).append(run)
    parts = [f"{done} {change.done}"] if done or not refused else []
    for (singular, plural), those in refused.items():
        named = ", ".join(f"run {run.pk}: {run.status}" for run in those[:MAX_LISTED_RUNS])
        if len(those) > MAX_LISTED_RUNS:
            named += ", …"
        parts.append(f"{len(those)} {singular if len(those) == 1 else plural} ({named})")
    return ", ".join(parts) + ".", messages.WARNING if refused else messages.SUCCESS


class SequenceStepInline(ReadOnlyInline):
    """The run's steps, one row each, as far as they got."""

    model = SequenceStep
    fields = ["index", "type", "status", "attempts", "due_at", "claimed_at", "finished_at", "output_pretty", "error"]
    readonly_fields = fields
    ordering = ["index"]

    @admin.display(description="output")
    def output_pretty(self, step: SequenceStep) -> str:
        return pretty_json(step.output) if step.output else "—"


@admin.register(SequenceRun)
class SequenceRunAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Leads going through sequences: where each run is, what its steps did, and the
    controls to stop, hold, go on or retry."""

    editable = False
    list_display = [
        "crm_lead_id",
        "sequence",
        "agent",
        "status",
        "step_shown",
        "next_due_at",
        "started_by",
        "created_at",
    ]
    list_display_links = ["crm_lead_id"]
    list_filter = [
        "status",
        ("sequence", admin.RelatedOnlyFieldListFilter),
        ("agent", admin.RelatedOnlyFieldListFilter),
        "started_by",
    ]
    search_fields = ["crm_lead_id__exact"]
    list_select_related = ["sequence", "agent"]
    date_hierarchy = "created_at"
    fieldsets = [
        (None, {"fields": ["sequence", "agent", "integration", "crm_lead_id"]}),
        ("Where it is", {"fields": ["status", "step_shown", "next_due_at", "exit_reason", "error", "finished_at"]}),
        ("Started", {"fields": ["started_by", "started_ref", "created_at", "updated_at"]}),
        ("As started", {"fields": ["steps_pretty", "context_pretty"], "classes": ["collapse"]}),
    ]
    readonly_fields = [name for _, opts in fieldsets for name in opts["fields"]]
    inlines = [SequenceStepInline]
    actions = ["cancel_runs", "pause_runs", "resume_runs", "retry_runs"]

    def has_manage_permission(self, request: HttpRequest, obj: SequenceRun | None = None) -> bool:
        """Cancel, pause, resume, retry: who may see a run may control it."""
        return self.has_view_permission(request, obj)

    @admin.display(description="current step", ordering="current_step")
    def step_shown(self, run: SequenceRun) -> str:
        steps = run.steps or []
        kind = steps[run.current_step].get("type", "?") if run.current_step < len(steps) else "?"
        return f"{run.current_step}: {kind} (of {len(steps)})"

    @admin.display(description="steps as started")
    def steps_pretty(self, run: SequenceRun) -> str:
        return pretty_json(run.steps)

    @admin.display(description="context")
    def context_pretty(self, run: SequenceRun) -> str:
        return pretty_json(run.context) if run.context else "—"

    # -- the controls ---------------------------------------------------------------------

    def _apply(self, request: HttpRequest, name: str, runs: Iterable[SequenceRun]) -> None:
        report, level = run_change_report(RUN_CHANGES[name], runs, request)
        self.message_user(request, report, level)

    @admin.action(description="Cancel the selected runs", permissions=["manage"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[SequenceRun]) -> None:
        self._apply(request, "cancel", queryset)

    @admin.action(description="Pause the selected runs", permissions=["manage"])
    def pause_runs(self, request: HttpRequest, queryset: QuerySet[SequenceRun]) -> None:
        self._apply(request, "pause", queryset)

    @admin.action(description="Resume the selected paused runs", permissions=["manage"])
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[SequenceRun]) -> None:
        self._apply(request, "resume", queryset)

    @admin.action(description="Retry the selected failed runs from their failed step", permissions=["manage"])
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[SequenceRun]) -> None:
        self._apply(request, "retry", queryset)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/control/",
                self.admin_site.admin_view(self.control_view),
                name="sequences_sequencerun_control",
            ),
            *super().get_urls(),
        ]

    def control_view(self, request: HttpRequest, object_id: str):
        """The buttons on the run page: one change, reported, then back to the run."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self.get_object(request, unquote(object_id))
        if run is None or not self.has_manage_permission(request, run):
            raise Http404("No such run")
        name = request.POST.get("change", "")
        if name not in RUN_CHANGES:
            return HttpResponseBadRequest(f"unknown change {name!r}")
        self._apply(request, name, [run])
        return redirect("admin:sequences_sequencerun_change", run.pk)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            allowed = self.has_manage_permission(request, obj)
            context["run_controls"] = [c for c in RUN_CHANGES.values() if allowed and c.applies(obj)]
            context["log_url"] = reverse("admin:agents_executionlog_changelist") + "?" + urlencode(
                {"ref_type": "sequence_run", "ref_id": obj.pk}
            )
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)
