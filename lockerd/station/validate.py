"""A small JSON Schema checker for the subset the contract uses.

The daemon must not need jsonschema at run time; the tests check that this
checker and jsonschema agree on the contract's schemas.
Supported: type (one or a list), properties, required, additionalProperties
(boolean), minLength, maxLength, pattern, enum, minimum, maximum, items, minItems, maxItems.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=128)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way ``value`` fails ``schema``, each naming its path; empty when valid."""
    where = path or "payload"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[k](value) for k in kinds):
            return [f"{where}: expected {' or '.join(kinds)}, got {_name(value)}"]
    out: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: expected one of {', '.join(map(repr, schema['enum']))}, got {value!r}")
    if isinstance(value, str):
        out.extend(_string_errors(value, schema, where))
    if _TYPES["number"](value):
        out.extend(_number_errors(value, schema, where))
    if isinstance(value, dict):
        out.extend(_object_errors(value, schema, path))
    if isinstance(value, list):
        out.extend(_array_errors(value, schema, where))
    return out


def _string_errors(value: str, schema: dict[str, Any], where: str) -> list[str]:
    out = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append(f"{where}: at least {schema['minLength']} characters expected")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(f"{where}: at most {schema['maxLength']} characters expected, got {len(value)}")
    if "pattern" in schema and not _regex(schema["pattern"]).search(value):
        out.append(f"{where}: {value[:40]!r} does not match {schema['pattern']}")
    return out


def _number_errors(value: float, schema: dict[str, Any], where: str) -> list[str]:
    out = []
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{where}: at least {schema['minimum']} expected, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{where}: at most {schema['maximum']} expected, got {value}")
    return out


def _object_errors(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    out = []
    props = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            out.append(f"{_join(path, key)}: required")
    for key, v in value.items():
        if key in props:
            out.extend(errors(v, props[key], _join(path, key)))
        elif schema.get("additionalProperties") is False:
            out.append(f"{_join(path, key)}: unknown field (known: {', '.join(props) or 'none'})")
    return out


def _array_errors(value: list[Any], schema: dict[str, Any], where: str) -> list[str]:
    out = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append(f"{where}: at least {schema['minItems']} items expected, got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(f"{where}: at most {schema['maxItems']} items expected, got {len(value)}")
    if "items" in schema:
        for i, v in enumerate(value):
            out.extend(errors(v, schema["items"], f"{where}[{i}]"))
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(v: Any) -> str:
    for k in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[k](v):
            return k
    return type(v).__name__
