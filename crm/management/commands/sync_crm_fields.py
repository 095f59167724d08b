"""Refresh the cached CRM metadata of Kommo integrations and keep a snapshot of it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.errors import IntegrationError
from integrations.models import Integration

from ...services import sync_metadata


class Command(BaseCommand):
    help = "Fetch fields, pipelines, users and tags of Kommo integrations into the cache and the snapshot."

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--integration", type=int, metavar="ID", help="one Kommo integration")
        which.add_argument("--all", action="store_true", help="every active Kommo integration")

    def handle(self, *args, **options):
        integrations = Integration.objects.filter(integration_type=Integration.Type.KOMMO).select_related("agent")
        if options["integration"] is not None:
            integrations = integrations.filter(pk=options["integration"])
            if not integrations.exists():
                raise CommandError(f"no Kommo integration with id {options['integration']}")
        else:
            integrations = integrations.filter(active=True)
        targets = list(integrations.order_by("id"))
        if not targets:
            self.stdout.write("No active Kommo integration to sync.")
            return
        failures = []
        for number, integration in enumerate(targets, 1):
            label = f"[{number}/{len(targets)}] integration {integration.id} ({integration.agent.name})"
            try:
                snapshot = sync_metadata(integration)
            except IntegrationError as exc:
                failures.append(f"integration {integration.id}: {exc}")
                self.stderr.write(f"{label}: failed: {exc}")
                continue
            counts = ", ".join(
                f"{len(getattr(snapshot, column))} {column.replace('_', ' ')}"
                for column in ("lead_fields", "contact_fields", "pipelines", "users", "lead_tags", "contact_tags")
            )
            self.stdout.write(f"{label}: {counts}")
        if failures:
            raise CommandError(f"{len(failures)} of {len(targets)} integrations failed:\n" + "\n".join(failures))
        self.stdout.write(self.style.SUCCESS(f"Synced {len(targets)} integration(s)."))
