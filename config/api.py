"""Project-wide API plumbing: pagination, error format, strict input, documented JSON."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


def exception_handler(exc, context):
    """DRF's handler; a Django ValidationError raised by a service becomes a 400 too."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = ValidationError(detail)
    return drf_exception_handler(exc, context)


class RefusesUnknownKeys:
    """Refuses keys it does not know (``"owner": 5`` is an error, not silently dropped).

    Read-only fields are accepted and ignored, so a client may send back what it read.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise ValidationError({key: ["unknown field"] for key in sorted(unknown)})
        return super().to_internal_value(data)


class StrictSerializer(RefusesUnknownKeys, serializers.ModelSerializer):
    """A model serializer that refuses unknown keys."""


class StrictPlainSerializer(RefusesUnknownKeys, serializers.Serializer):
    """A plain serializer (request bodies of actions) that refuses unknown keys."""


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's JSON Schema with ``$defs`` references inlined (OpenAPI 3.0 has no $defs)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def model_json_field(model: type[models.Model], name: str, json_schema: dict[str, Any], **kwargs: Any):
    """A JSONField for a model's JSON column: same validators, its shape in the OpenAPI schema."""
    model_field = model._meta.get_field(name)
    field_class = type(f"{model.__name__}{name.title()}Field", (serializers.JSONField,), {})
    field_class = extend_schema_field(json_schema)(field_class)
    kwargs.setdefault("required", False)
    kwargs.setdefault("validators", list(model_field.validators))
    kwargs.setdefault("help_text", model_field.help_text or None)
    return field_class(**kwargs)
