"""One way to validate the JSON columns, shared by the API and the admin.

Each JSON column has a *check*: a function that takes the decoded value and returns a
list of problems, each a location inside the value and a message. A model field gets
``JSONValidator("dotted.path.to.check", field="actions")`` in its validators; Django's
model forms (the admin) and DRF's model serializers (the API) both run model field
validators, so the same message reaches both, prefixed with where it is:

    actions[1].type: unknown action "sendd" (known: change_stage, create_task, send_message)

Shapes are pydantic models (strict: "5" is not a number) built on :class:`Schema`;
a schema may add checks that span fields through ``problems()``. Lists of typed items
("type": "...") are checked against a registry with :func:`check_typed_list`, so later
features register their own item types.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible
from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
Check = Callable[[Any], list[Problem]]


class Schema(BaseModel):
    """Base of every JSON shape: unknown keys are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def problems(self) -> list[Problem]:
        """Checks that span several fields; locations are relative to this object."""
        return []


def show(value: Any) -> str:
    """A value as the user wrote it, short: "sendd", 5, null, [...]."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_loc(field: str, loc: Loc) -> str:
    path = field
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_MESSAGES = {
    "missing": lambda e: "this field is required",
    "extra_forbidden": lambda e: "unknown key",
    "literal_error": lambda e: f"must be one of {e['ctx']['expected']}, got {show(e['input'])}",
    "enum": lambda e: f"must be one of {e['ctx']['expected']}, got {show(e['input'])}",
}


def _message(error: Mapping[str, Any]) -> str:
    make = _MESSAGES.get(error["type"])
    if make:
        return make(error)
    if error["type"] in {"value_error", "assertion_error"}:
        return str(error["ctx"]["error"])
    message = error["msg"]
    message = message[0].lower() + message[1:]
    if "input" in error and error["type"] not in {"missing"}:
        message += f", got {show(error['input'])}"
    return message


def check_schema(schema: type[Schema] | TypeAdapter, value: Any, loc: Loc = ()) -> tuple[Any, list[Problem]]:
    """Validate ``value`` against a pydantic model or adapter; return (object or None, problems)."""
    try:
        if isinstance(schema, TypeAdapter):
            obj = schema.validate_python(value)
        else:
            obj = schema.model_validate(value)
    except PydanticValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            err_loc = tuple(part for part in error["loc"] if not _is_pydantic_noise(part))
            problems.append((loc + err_loc, _message(error)))
        return None, problems
    nested = obj.problems() if isinstance(obj, Schema) else []
    return obj, [(loc + p_loc, msg) for p_loc, msg in nested]


def _is_pydantic_noise(part: str | int) -> bool:
    # pydantic adds the tag or function name to locations of unions and wrap validators
    return isinstance(part, str) and (part.startswith("function-") or part.startswith("tagged-union"))


def check_typed_list(
    value: Any,
    registry: Mapping[str, type[Schema]],
    *,
    noun: str,
    loc: Loc = (),
    allow_empty: bool = True,
) -> tuple[list[Schema], list[Problem]]:
    """A JSON array of objects, each with a ``type`` that names a schema in ``registry``."""
    if not isinstance(value, list):
        return [], [(loc, f"expected a list of {noun}s, got {show(value)}")]
    if not value and not allow_empty:
        return [], [(loc, f"add at least one {noun}")]
    items, problems = [], []
    for index, item in enumerate(value):
        here = loc + (index,)
        if not isinstance(item, dict):
            problems.append((here, f"expected an object, got {show(item)}"))
            continue
        kind = item.get("type")
        if kind is None:
            problems.append((here + ("type",), f"this field is required (one of: {', '.join(sorted(registry))})"))
            continue
        schema = registry.get(kind) if isinstance(kind, str) else None
        if schema is None:
            problems.append(
                (here + ("type",), f"unknown {noun} {show(kind)} (known: {', '.join(sorted(registry))})")
            )
            continue
        obj, item_problems = check_schema(schema, item, here)
        problems.extend(item_problems)
        if obj is not None:
            items.append(obj)
    return items, problems


def raise_problems(field: str, problems: Iterable[Problem]) -> None:
    messages = [f"{format_loc(field, loc)}: {message}" for loc, message in problems]
    if messages:
        raise ValidationError(messages, code="invalid")


def nul_problems(value: Any, loc: Loc = ()) -> list[Problem]:
    """Text with a NUL character (\\u0000) anywhere in the value: PostgreSQL cannot store it
    (in jsonb or text), so it is refused as input rather than failing the write."""
    if isinstance(value, str):
        return [(loc, "text may not contain the NUL character (\\u0000)")] if "\x00" in value else []
    if isinstance(value, Mapping):
        problems = []
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                problems.append((loc, "keys may not contain the NUL character (\\u0000)"))
            problems += nul_problems(item, loc + (str(key),))
        return problems
    if isinstance(value, list | tuple):
        return [problem for index, item in enumerate(value) for problem in nul_problems(item, loc + (index,))]
    return []


@deconstructible
class JSONValidator:
    """Model-field validator running a check named by dotted path (keeps migrations stable)."""

    def __init__(self, check: str, field: str) -> None:
        self.check = check
        self.field = field

    def __call__(self, value: Any) -> None:
        nul = nul_problems(value)
        if nul:
            raise_problems(self.field, nul)
        check: Check = import_string(self.check)
        raise_problems(self.field, check(value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONValidator) and (self.check, self.field) == (other.check, other.field)


def registry_json_schema(registry: Mapping[str, type[Schema]]) -> dict[str, Any]:
    """OpenAPI/JSON Schema of a typed list, for the API documentation."""
    variants = [schema.model_json_schema() for _, schema in sorted(registry.items())]
    return {"type": "array", "items": {"oneOf": variants}}


class Registry(dict[str, type[Schema]]):
    """Item types of a typed list; apps add theirs with ``@REGISTRY.register("name")``."""

    def register(self, name: str) -> Callable[[type[Schema]], type[Schema]]:
        def decorator(schema: type[Schema]) -> type[Schema]:
            if name in self and self[name] is not schema:
                raise ValueError(f"{name!r} is registered twice")
            self[name] = schema
            return schema

        return decorator


def unique_problems(values: Sequence[Any], loc: Loc = ()) -> list[Problem]:
    seen: set[Any] = set()
    problems = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append((loc + (index,), f"{show(value)} is listed twice"))
        seen.add(value)
    return problems
