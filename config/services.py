"""Helpers shared by every app's services."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from django.db import models

M = TypeVar("M", bound=models.Model)


def model_save(instance: M, data: Mapping[str, Any], *, allowed: Iterable[str]) -> M:
    """Set the allowed fields, validate the whole object as the admin would, save it.

    Services validate even when the caller already did (API serializers, admin forms), so
    a command, a task or the shell cannot store a shape the API would refuse.
    """
    allowed = set(allowed)
    unknown = set(data) - allowed
    if unknown:
        raise TypeError(f"cannot set {', '.join(sorted(unknown))} here")
    for name, value in data.items():
        setattr(instance, name, value)
    instance.full_clean()
    instance.save()
    return instance
