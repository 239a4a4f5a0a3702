"""Where each field of one scenario file is, so that an error can point at its line.

``Positions`` travels through the cross-field rules in place of the file name and the line map: one object that
builds the ScenarioError for a field path (file, line, dotted path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cosim.errors import ScenarioError

FieldPath = tuple[str | int, ...]


def format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class Positions:
    """One scenario file (``source``, as the user named it) and the line of every field path in it."""

    source: str
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_for(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, message: str, at: FieldPath, *, line_at: FieldPath | None = None) -> ScenarioError:
        """The error for the field at ``at``, pointing at its line (or at ``line_at``'s, e.g. a misspelt key)."""
        return ScenarioError(self.source, message, line=self.line_for(at if line_at is None else line_at),
                             path=format_path(at))
