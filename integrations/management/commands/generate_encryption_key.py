"""Print a new ENCRYPTION_KEYS entry ("id:base64 key")."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from integrations.crypto import generate_key


class Command(BaseCommand):
    help = (
        "Print a new 'id:base64key' entry for ENCRYPTION_KEYS. Put it first in the list, keep "
        "the old keys after it, restart, then run `manage.py rotate_encryption_key`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--id", dest="key_id", help="key id (letters, digits, _.-); default: k + today's date")

    def handle(self, *args, key_id: str | None = None, **options):
        key_id = key_id or f"k{timezone.localdate():%Y%m%d}"
        try:
            entry = generate_key(key_id)
        except ValueError as exc:
            raise CommandError(f"--id {key_id!r}: {exc}") from None
        # stdout carries the entry alone, so that `$(manage.py generate_encryption_key)` works
        self.stdout.write(entry)
