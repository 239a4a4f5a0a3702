"""The scenario JSON Schema (schemas/scenario.schema.json) and the wording of its errors: one line saying what was
expected at the first offending field, in file order.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from typing import Any

import jsonschema

from cosim.loading.positions import Positions
from cosim.resources import data_path

SCHEMA_PATH = data_path("schemas", "scenario.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema counts 1000.0 as an integer; a scenario's times and counts must be written as integers.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def validate(document: dict[str, Any], positions: Positions) -> None:
    """Raise the ScenarioError for the first schema violation in file order, worded for the user."""
    validator = _Validator(schema())
    errors = sorted(validator.iter_errors(document), key=_error_rank)
    if not errors:
        return
    error = _deepest(errors[0])
    path = tuple(error.absolute_path)
    line_path = path
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        unknown = sorted(set(error.instance) - set(_allowed_keys(error)), key=str)
        line_path = path + tuple(str(key) for key in unknown[:1])  # the misspelt key itself (lines has YAML's text)
    elif "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        line_path = path + (error.instance,)  # a bad key name: point at the key
    raise positions.error(_describe(error, document), path, line_at=line_path)


def _error_rank(error: jsonschema.ValidationError) -> tuple[Any, ...]:
    # Report the first problem in file order; prefer the most specific one at a place.
    path = tuple(error.absolute_path)
    return (tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in path), -len(error.absolute_schema_path))


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For if/then and allOf, the interesting error is the nested one."""
    while error.context:
        error = sorted(error.context, key=lambda e: (-len(e.absolute_path), len(e.absolute_schema_path)))[0]
    return error


def _allowed_keys(error: jsonschema.ValidationError) -> list[str]:
    return sorted(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []


def _describe(error: jsonschema.ValidationError, document: Any) -> str:
    value = error.instance
    kind = error.validator
    expected = error.validator_value
    if kind == "additionalProperties":
        allowed = _allowed_keys(error)
        extra = sorted(set(value) - set(allowed), key=str) if isinstance(value, dict) else []
        unknown = extra[0] if extra else "?"
        close = difflib.get_close_matches(str(unknown), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
        return f"unknown key {unknown!r}{hint}"
    if kind == "required":
        missing = [name for name in expected if name not in value]
        return f"missing required key {missing[0]!r}" if missing else error.message
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(_type_name(n) for n in names)}, got {_show(value)}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"expected a value {relation} {expected}, got {_show(value)}"
    if kind == "enum":
        return f"expected one of {', '.join(map(str, expected))}; got {_show(value)}"
    if kind == "const":
        return f"expected {expected!r}, got {_show(value)}"
    if kind == "pattern":
        if "propertyNames" in error.absolute_schema_path:
            return (f"{_show(value)} is not a valid environment variable name: "
                    f"letters, digits and underscores, not starting with a digit")
        if "a-z0-9-" in expected:
            return (f"{_show(value)} is not allowed here: expected lowercase letters, digits and dashes, "
                    f"starting with a letter (pattern {expected})")
        if "(==|!=)" in expected:  # a node's `placement`
            return (f"{_show(value)} is not a Swarm placement constraint: expected `<attribute> == <value>` or "
                    f"`<attribute> != <value>`, e.g. `node.labels.tier == edge`")
        if "[bkmgBKMG]" in expected:  # `resources.memory`
            return (f"{_show(value)} is not a memory size: expected a whole number of bytes with an optional unit "
                    f"b, k, m or g, e.g. 64m or 1g")
        return f"{_show(value)} does not match {expected}"
    if kind in ("minItems", "minLength", "minProperties"):
        return "must not be empty" if expected == 1 else f"needs at least {expected} items"
    if kind == "maxItems":
        return f"has more than {expected} items"
    if kind == "propertyNames":
        return f"invalid name: {error.message}"
    return error.message


def _type_name(name: str) -> str:
    return {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
            "object": "a mapping", "array": "a list", "null": "null"}.get(name, name)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return f"{value!r} (a float)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


