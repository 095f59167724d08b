"""Renew the OAuth refresh tokens that have come due now (what the daily schedule does)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from integrations.models import Integration
from integrations.rotation import Outcome, RotationResult, tokens_rotate_due

SAID = {
    Outcome.ROTATED: "rotated: a new refresh token is stored",
    Outcome.CONFIRMED: "confirmed: the refresh token works (Google keeps the same one)",
    Outcome.RENEWED_ELSEWHERE: "renewed by another process just now",
    Outcome.REFUSED: "refused: needs re-connection",
    Outcome.FAILED: "failed: the next run tries again",
    Outcome.DUE: "due: would be renewed",
    Outcome.SKIPPED: "skipped",
}


class Command(BaseCommand):
    help = (
        "Renew the refresh tokens of OAuth integrations (Kommo, Google Calendar) last renewed more than "
        "OAUTH_ROTATE_AFTER_DAYS ago, as the daily schedule does; --integration renews one now, whatever its age. "
        "Prints one line per integration; exits non-zero when any failed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--integration", type=int, metavar="ID", help="renew this integration now, however recent")
        parser.add_argument("--dry-run", action="store_true", help="list what is due, renew nothing")

    def handle(self, *args, integration: int | None, dry_run: bool, **options):
        if integration is not None:
            if not Integration.objects.filter(pk=integration).exists():
                raise CommandError(f"no integration with id {integration}")
            kinds = ", ".join(settings.OAUTH_ROTATORS)
            if not Integration.objects.filter(
                pk=integration, integration_type__in=list(settings.OAUTH_ROTATORS)
            ).exists():
                raise CommandError(f"integration {integration} is not of a type with OAuth tokens ({kinds})")
            results = tokens_rotate_due(older_than=timedelta(0), integration_id=integration, dry_run=dry_run)
        else:
            results = tokens_rotate_due(dry_run=dry_run)
        if not results:
            self.stdout.write(f"No refresh token is older than {settings.OAUTH_ROTATE_AFTER_DAYS} days.")
            return
        for result in results:
            line = self.line(result)
            (self.stderr if result.failed else self.stdout).write(line)
        failed = [result for result in results if result.failed]
        if failed:
            raise CommandError(f"{len(failed)} of {len(results)} integrations could not be renewed")
        verb = "due" if dry_run else "done"
        self.stdout.write(self.style.SUCCESS(f"{len(results)} integration(s) {verb}."))

    @staticmethod
    def line(result: RotationResult) -> str:
        text = f"integration {result.integration_id} ({result.integration_type}, agent {result.agent_id}): "
        text += SAID[result.outcome]
        if result.detail:
            text += f" ({result.detail})"
        if result.overdue:
            text += " [overdue: within OAUTH_ROTATE_ALERT_DAYS of 30 days]"
        renewed = result.renewed_at.strftime("%Y-%m-%d %H:%M UTC") if result.renewed_at else "never recorded"
        return f"{text}; refresh token renewed {renewed}"
