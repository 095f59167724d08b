"""Helpers shared by every app's services."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from django.db import DEFAULT_DB_ALIAS, connections, models

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


ROWS_UPDATE_CHUNK = 500


def rows_update(objects: Sequence[models.Model], fields: Sequence[str], *, using: str = DEFAULT_DB_ALIAS) -> None:
    """Write ``fields`` of each object to its row (what ``bulk_update`` does) in one plain
    statement: the new values joined to the table by primary key (UPDATE … FROM), as one
    JSON array on PostgreSQL, as a VALUES list of ROWS_UPDATE_CHUNK rows on SQLite
    (3.33+). Values must be what JSON can hold (text, numbers, datetimes…). Django's
    ``bulk_update`` builds a CASE expression per field and row instead, which costs more
    Python time than the database spends on the statement."""
    if not objects:
        return
    connection = connections[using]
    ops = connection.ops
    meta = objects[0]._meta
    columns = [meta.pk] + [meta.get_field(name) for name in fields]
    table = ops.quote_name(meta.db_table)
    key = f"{table}.{ops.quote_name(meta.pk.column)}"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # every row in one JSON parameter: psycopg parses a statement of over 50
            # parameters again on every execution; orjson and PostgreSQL read JSON in C
            def cell(n: int, field: models.Field) -> str:
                if isinstance(field, models.JSONField):
                    return f"v.r->{n}"
                return f"(v.r->>{n})::{field.db_type(connection)}"

            rows = [[getattr(o, field.attname) for field in columns] for o in objects]
            assignments = ", ".join(f"{ops.quote_name(f.column)} = {cell(n, f)}" for n, f in enumerate(columns) if n)
            cursor.execute(
                f"UPDATE {table} SET {assignments} FROM jsonb_array_elements(%s::jsonb) AS v(r) "
                f"WHERE {key} = {cell(0, meta.pk)}",
                [orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS).decode()],
            )
            return
        names = [f"c{n}" for n in range(len(columns))]
        row = "(" + ", ".join("%s" for _ in columns) + ")"
        assignments = ", ".join(
            f"{ops.quote_name(field.column)} = v.{name}" for field, name in zip(columns[1:], names[1:], strict=True)
        )
        for start in range(0, len(objects), ROWS_UPDATE_CHUNK):
            chunk = objects[start : start + ROWS_UPDATE_CHUNK]
            params = [field.get_db_prep_save(getattr(o, field.attname), connection) for o in chunk for field in columns]
            cursor.execute(
                f"WITH v ({', '.join(names)}) AS (VALUES {', '.join([row] * len(chunk))}) "
                f"UPDATE {table} SET {assignments} FROM v WHERE {key} = v.{names[0]}",
                params,
            )
