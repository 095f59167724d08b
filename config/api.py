"""Project-wide API plumbing: pagination, error format, strict input, documented JSON."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.http import JsonResponse
from django.views.defaults import page_not_found
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.views import exception_handler as drf_exception_handler

# Request bodies of the API are JSON: its resources hold lists and objects (crm_access,
# conditions, steps, config) that a form cannot carry, and a garbled form would read as
# an empty one (a PATCH that changes nothing instead of a 400). Other media types get 415.
JSON_ONLY = [JSONParser]

# the range of a BigIntegerField (ids, CRM ids): a number outside it can be in no row
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request) -> int:
        """``?page_size=`` a whole number from 1; above the maximum gives the maximum. Anything
        else is a 400 (DRF's own falls back to the default size without a word)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw in (None, ""):
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["expected a whole number from 1"]})
        return min(size, self.max_page_size)

    def get_schema_operation_parameters(self, view) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = f"Results per page (default {self.page_size}; at most {self.max_page_size})."
        return parameters


def not_found(request, exception=None):
    """Django's 404 for a URL no view matches (``handler404``): JSON under /api/, like the
    API's own 404s (an id that is not a number, such as /api/agents/1.5/, matches no URL)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)


def exception_handler(exc, context):
    """DRF's handler; a Django ValidationError raised by a service becomes a 400 too."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = ValidationError(detail)
    return drf_exception_handler(exc, context)


# No docstrings on these bases: drf-spectacular shows a serializer's inherited docstring
# as the description of its schema, and these say nothing about what a client sends.


class RefusesUnknownKeys:
    # Refuses keys it does not know ("owner": 5 is an error, not silently dropped).
    # Read-only fields are accepted and ignored, so a client may send back what it read.

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise ValidationError({key: ["unknown field"] for key in sorted(unknown)})
        return super().to_internal_value(data)


class StrictSerializer(RefusesUnknownKeys, serializers.ModelSerializer):
    pass  # a model serializer that refuses unknown keys


class StrictPlainSerializer(RefusesUnknownKeys, serializers.Serializer):
    pass  # a plain serializer (request bodies of actions) that refuses unknown keys


ERROR_SCHEMAS = {
    "ErrorDetail": {
        "type": "object",
        "description": "What went wrong, in one sentence.",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    "ValidationErrors": {
        "type": "object",
        "description": "Field name (or non_field_errors, or detail for a body that is not readable) → its "
        "messages; a nested object's errors nest the same way.",
        "additionalProperties": {
            "anyOf": [
                {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
                {"type": "object"},
                {"type": "string"},
            ]
        },
    },
}
UNSAFE_METHODS = {"post", "put", "patch", "delete"}


def _error(description: str, component: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}},
    }


def document_error_responses(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the error answers every operation can give,
    and that an empty query parameter is the same as leaving it out.

    Derived from what the schema already says about each operation, so new views get them
    too; what a view documents itself (``extend_schema(responses=...)``) is kept.
    """
    result.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_SCHEMAS)
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            parameters = operation.get("parameters", [])
            names = {(p["in"], p["name"]) for p in parameters}
            for parameter in parameters:
                if parameter["in"] == "query":
                    # ?agent=&status= (what an HTML form sends for fields left empty) filters nothing
                    parameter["allowEmptyValue"] = True
            errors: dict[str, dict[str, Any]] = {}
            if operation.get("requestBody") or any(where == "query" for where, _ in names):
                errors["400"] = _error("Bad input: each field with its messages.", "ValidationErrors")
            if operation.get("requestBody"):
                errors["415"] = _error("The body is not in one of the media types above.", "ErrorDetail")
            if any("tokenAuth" in requirement for requirement in operation.get("security", [])):
                # TokenAuthentication refuses a wrong token even where no sign-in is needed
                errors["401"] = _error("Not signed in, or the token is not valid.", "ErrorDetail")
            if method in UNSAFE_METHODS and any("cookieAuth" in r for r in operation.get("security", [])):
                errors["403"] = _error("Session authentication without a valid CSRF token.", "ErrorDetail")
            if any(where == "path" for where, _ in names):
                errors["404"] = _error("Not found, or not the user's.", "ErrorDetail")
            elif ("query", "page") in names:
                errors["404"] = _error("No such page.", "ErrorDetail")
            responses = operation.setdefault("responses", {})
            for code, response in errors.items():
                responses.setdefault(code, response)
            for code, response in responses.items():
                # an error a view documents with a description only has the usual body
                if code.isdigit() and int(code) >= 400 and "content" not in response:
                    component = "ValidationErrors" if code == "400" else "ErrorDetail"
                    response["content"] = _error("", component)["content"]
            operation["responses"] = dict(sorted(responses.items()))
    return result


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
