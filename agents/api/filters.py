"""Query filters of the API: a value that is not what the filter takes is a 400 with the
parameter's name, never a filter quietly left out (django-filter's defaults drop a
boolean they cannot read and take any decimal for a whole number). An empty value is
no filter, as everywhere in the API's query strings."""
from __future__ import annotations

import django_filters
from django import forms
from django.db import models
from drf_spectacular.utils import extend_schema_field

from config.api import BIGINT_MAX, BIGINT_MIN


@extend_schema_field({"type": "integer", "minimum": BIGINT_MIN, "maximum": BIGINT_MAX})
class IntegerFilter(django_filters.NumberFilter):
    """A whole number a database column can hold: ``?crm_lead_id=1.5`` is refused, not a
    filter that finds nothing, and so is a number past 64 bits (SQLite cannot even compare
    one with a foreign key)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", BIGINT_MIN)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(*args, **kwargs)


class StrictBooleanField(forms.NullBooleanField):
    widget = forms.TextInput  # NullBooleanSelect reads anything it does not know as "unknown"
    TRUE = ("true", "True", "1")
    FALSE = ("false", "False", "0")

    def to_python(self, value):
        if value in (None, ""):
            return None
        if value in self.TRUE or value is True:
            return True
        if value in self.FALSE or value is False:
            return False
        raise forms.ValidationError("expected true or false", code="invalid")


class BooleanFilter(django_filters.BooleanFilter):
    """``?active=true`` or ``false`` (also 1 / 0); ``?active=maybe`` is refused."""

    field_class = StrictBooleanField


# ids and foreign keys are filtered by number, never by a choice of existing rows: a
# choice filter answers 400 for someone else's id and 200 for an unknown one, which
# confirms which ids exist
_WHOLE_NUMBER = {"filter_class": IntegerFilter}


class StrictFilterSet(django_filters.FilterSet):
    FILTER_DEFAULTS = {
        **django_filters.FilterSet.FILTER_DEFAULTS,
        models.BooleanField: {"filter_class": BooleanFilter},
        models.IntegerField: _WHOLE_NUMBER,
        models.BigIntegerField: _WHOLE_NUMBER,
        models.PositiveIntegerField: _WHOLE_NUMBER,
        models.PositiveSmallIntegerField: _WHOLE_NUMBER,
        models.SmallIntegerField: _WHOLE_NUMBER,
        models.AutoField: _WHOLE_NUMBER,
        models.BigAutoField: _WHOLE_NUMBER,
        models.ForeignKey: _WHOLE_NUMBER,
        models.OneToOneField: _WHOLE_NUMBER,
    }


class AgentFilter(StrictFilterSet):
    """``?agent=<id>``: a plain number, so another user's agent id and an unknown id both
    just find nothing."""

    agent = IntegerFilter(field_name="agent_id")


def strict_filterset(model, fields: list[str]) -> type[StrictFilterSet]:
    meta = type("Meta", (), {"model": model, "fields": fields})
    return type(f"{model.__name__}Filter", (StrictFilterSet,), {"Meta": meta})


def agent_filterset(model, extra: list[str]) -> type[django_filters.FilterSet]:
    meta = type("Meta", (), {"model": model, "fields": ["agent", *extra]})
    return type(f"{model.__name__}Filter", (AgentFilter,), {"Meta": meta})
