from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from config.services import model_save

from .models import Sequence

SEQUENCE_FIELDS = ("agent", "name", "description", "active", "trigger_config", "steps", "exit_rules")


@transaction.atomic
def sequence_create(*, data: Mapping[str, Any]) -> Sequence:
    return model_save(Sequence(), data, allowed=SEQUENCE_FIELDS)


@transaction.atomic
def sequence_update(*, sequence: Sequence, data: Mapping[str, Any]) -> Sequence:
    return model_save(sequence, data, allowed=SEQUENCE_FIELDS)
