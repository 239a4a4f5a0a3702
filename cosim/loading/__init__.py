"""Scenario files: YAML in, a validated, typed ``Scenario`` (cosim.model) out, or one clear ScenarioError.

Reading is defensive because scenario files come from users. ``load`` goes through three steps, one module each:

- ``reading``: the bytes must be UTF-8, the YAML is loaded with the safe loader and a bound on its expanded size
  (alias bombs are refused quickly), duplicate keys are errors, and the line of every field is recorded;
- ``schema``: the document is validated against schemas/scenario.schema.json, the first error worded for a person;
- ``rules``: the checks a schema cannot express (unique ids, routes and links naming existing nodes, the quantum,
  the lookahead), made while building the frozen model.

Every error names the file, the line where there is one, and the path of the field (``positions``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cosim.loading import reading, rules, schema
from cosim.model import Scenario


def load(path: str | Path) -> Scenario:
    """Read, validate and type a scenario file. Raises ScenarioError with a message for the user."""
    path = Path(path)
    source = str(path)
    data = reading.read_bytes(path, source)
    text = reading.decode(data, source)
    document, positions = reading.parse_yaml(text, source)
    schema.validate(document, positions)
    return rules.build(document, positions, path, hashlib.sha256(data).hexdigest())
