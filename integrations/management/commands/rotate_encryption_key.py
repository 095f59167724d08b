"""Re-encrypt every encrypted column with the newest key of ENCRYPTION_KEYS."""
from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, models, router, transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from integrations import crypto
from integrations.fields import EncryptedJSONField


@dataclass
class Counts:
    label: str
    total: int = 0
    current: int = 0
    rotated: int = 0
    stale: int = 0


def encrypted_fields() -> list[tuple[type[models.Model], EncryptedJSONField]]:
    """Every EncryptedJSONField of every installed concrete model."""
    return [
        (model, field)
        for model in apps.get_models()
        if not model._meta.proxy and model._meta.managed
        for field in model._meta.local_fields
        if isinstance(field, EncryptedJSONField)
    ]


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value that is not under the newest key (the first entry of "
        "ENCRYPTION_KEYS). Afterwards the older keys can be removed from ENCRYPTION_KEYS."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="rows per transaction (default 500)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted, change nothing")

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        ring = crypto.keyring()
        fields = encrypted_fields()
        if not fields:
            self.stdout.write("No encrypted fields in the installed models.")
            return
        for model, field in fields:
            counts = self.rotate(model, field, ring=ring, batch_size=batch_size, dry_run=dry_run)
            verb = "would re-encrypt" if dry_run else "re-encrypted"
            done = counts.stale if dry_run else counts.rotated
            self.stdout.write(
                f"{counts.label}: {verb} {done}, already under key {ring.current!r} {counts.current}, "
                f"total {counts.total}"
            )

    def rotate(self, model, field, *, ring: crypto.Keyring, batch_size: int, dry_run: bool) -> Counts:
        label = f"{model._meta.label}.{field.name}"
        db = router.db_for_write(model)
        manager = model._base_manager.db_manager(db)
        # The column as stored (ciphertext): a Cast to a plain TextField skips the field's decryption.
        rows = manager.annotate(raw=Cast(field.attname, TextField())).filter(raw__isnull=False)
        current = Q(raw__startswith=f"{crypto.PREFIX}{ring.current}:")
        stale = rows.exclude(current)

        counts = Counts(label=label, total=rows.count(), current=rows.filter(current).count())
        counts.stale = counts.total - counts.current

        # Refuse before writing anything when a value names a key that is not configured.
        readable = Q()
        for key_id in ring.keys:
            readable |= Q(raw__startswith=f"{crypto.PREFIX}{key_id}:")
        unreadable = stale.exclude(readable)
        first = unreadable.order_by("pk").values_list("pk", "raw").first()
        if first is not None:
            pk, raw = first
            others = unreadable.count() - 1
            what = (
                f"is encrypted with key {crypto.key_id_of(raw)!r}, which is not in ENCRYPTION_KEYS"
                if crypto.is_ciphertext(raw)
                else "is not an encrypted value"
            )
            more = f" ({others} more rows alike)" if others else ""
            raise CommandError(
                f"{label} of row id={pk} {what}{more}; nothing was changed. "
                "Add the missing key to ENCRYPTION_KEYS (after the newest one) and run again."
            )
        if dry_run:
            return counts

        last_pk = None
        while True:
            with transaction.atomic(using=db):
                batch = stale.order_by("pk")
                if last_pk is not None:
                    batch = batch.filter(pk__gt=last_pk)
                # Locked and re-checked under the lock, so a row written meanwhile is not overwritten
                # with an older value.
                locked = list(batch.select_for_update().values_list("pk", "raw")[:batch_size])
                if not locked:
                    break
                for pk, raw in locked:
                    try:
                        value = field.from_db_value(raw, None, connections[db])
                    except crypto.DecryptionError as exc:
                        raise CommandError(
                            f"{label} of row id={pk} (key {crypto.key_id_of(raw)!r}) cannot be decrypted: {exc}. "
                            f"Its batch was rolled back; {counts.rotated} rows were re-encrypted before it."
                        ) from None
                    # get_prep_value encrypts with the current key
                    manager.filter(pk=pk).update(**{field.attname: value})
                counts.rotated += len(locked)
                last_pk = locked[-1][0]
        return counts
