"""The scenario JSON Schema (schemas/scenario.schema.json) and the wording of its errors: one line saying what was
expected at the first offending field, in file order.

Validation is a pure function of the schema and the document, and jsonschema's import and a validation cost a
quarter of a short local run: a document that passed is remembered (an empty file named by the hash of the schema,
this module and the document's canonical JSON, under ``<cosim cache>/valid-scenarios/``), and the same document
again is not validated, nor jsonschema imported. Only passing documents are remembered: an error is always found
and worded anew. A cache that cannot be written is no error (the next run validates again).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosim.loading.positions import Positions
from cosim.resources import data_path

if TYPE_CHECKING:
    import jsonschema

SCHEMA_PATH = data_path("schemas", "scenario.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(_schema_bytes())


@lru_cache(maxsize=1)
def _schema_bytes() -> bytes:
    return SCHEMA_PATH.read_bytes()


def _validated_marker(document: dict[str, Any]) -> Path | None:
    """Where a pass of ``document`` is remembered; None for a document without a canonical JSON form (a YAML date,
    say: never remembered)."""
    from cosim.service_sources import cache_dir

    if not _string_keys(document):
        return None  # (JSON would turn a key 1 into "1": two documents, one text)
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(_schema_bytes())
    digest.update(Path(__file__).read_bytes())  # the checks below (e.g. strict integers) are part of the verdict
    digest.update(text.encode("utf-8"))
    return cache_dir() / "valid-scenarios" / digest.hexdigest()


def _string_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(key, str) and _string_keys(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_string_keys(item) for item in value)
    return True


@lru_cache(maxsize=1)
def _validator_class() -> Any:
    """jsonschema's Draft 2020-12 validator, except that 1000.0 is no integer: JSON Schema counts it as one, but a
    scenario's times and counts must be written as integers. (Built on first use: jsonschema is imported then.)"""
    import jsonschema

    def strict_integer(checker: Any, instance: Any) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", strict_integer),
    )


def validate(document: dict[str, Any], positions: Positions) -> None:
    """Raise the ScenarioError for the first schema violation in file order, worded for the user."""
    marker = _validated_marker(document)
    if marker is not None and marker.exists():
        return  # this very document passed before
    validator = _validator_class()(schema())
    errors = sorted(validator.iter_errors(document), key=_error_rank)
    if not errors:
        if marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError:
                pass  # (a read-only or full cache: validated again next time)
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


