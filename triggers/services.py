from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from config.services import model_save

from .models import Trigger

TRIGGER_FIELDS = ("agent", "name", "active", "event", "conditions", "actions")


@transaction.atomic
def trigger_create(*, data: Mapping[str, Any]) -> Trigger:
    return model_save(Trigger(), data, allowed=TRIGGER_FIELDS)


@transaction.atomic
def trigger_update(*, trigger: Trigger, data: Mapping[str, Any]) -> Trigger:
    return model_save(trigger, data, allowed=TRIGGER_FIELDS)
