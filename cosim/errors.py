"""User-facing errors. Each carries a message written for the person running cosim, not a stack trace.

The CLI and the invoke tasks print ``str(error)`` and exit non-zero; anything that is *not* a CosimError is a
bug in cosim and keeps its traceback.
"""

from __future__ import annotations


class CosimError(Exception):
    """Base of every error cosim reports to the user. ``exit_code`` is what the command exits with."""

    exit_code = 1


class ScenarioError(CosimError):
    """The scenario file cannot be read or is not a valid scenario."""

    exit_code = 2

    def __init__(self, source: str, message: str, *, line: int | None = None, path: str | None = None) -> None:
        self.source = source
        self.line = line
        self.path = path
        self.message = message
        where = f"{source}:{line}" if line is not None else source
        field = f" {path}:" if path else ""
        super().__init__(f"{where}:{field} {message}")


class EngineUnavailable(CosimError):
    """Docker or Compose v2 is missing or not answering."""

    exit_code = 3


class ImageBuildError(CosimError):
    """An image a scenario needs could not be built."""

    exit_code = 3


class NodeStartError(CosimError):
    """A node could not be started (missing program, bad command, infrastructure not listening)."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        super().__init__(f"node {node!r} {message}")


class NodeFailure(CosimError):
    """A node died, hung, broke the protocol or reported an error. The run stops; the trace so far is kept."""

    exit_code = 4

    def __init__(
        self,
        node: str,
        problem: str,
        *,
        in_flight: str | None = None,
        exit_code: int | None = None,
        log_tail: str = "",
    ) -> None:
        self.node = node
        self.problem = problem
        self.in_flight = in_flight
        self.process_exit_code = exit_code
        self.log_tail = log_tail
        parts = [f"node {node!r}: {problem}"]
        if in_flight:
            parts.append(f"while waiting for the reply to {in_flight}")
        if exit_code is not None:
            parts.append(f"exit code {exit_code}")
        text = "; ".join(parts)
        if log_tail.strip():
            tail = "\n".join("    " + line for line in log_tail.rstrip().splitlines())
            text += f"\n  last lines of its log:\n{tail}"
        super().__init__(text)


_SIGNAL_WORDS = {6: "aborted", 9: "killed", 11: "segmentation fault", 15: "terminated"}


def describe_exit(code: int | None) -> str:
    """An exit code as people read it: ``137, killed`` (128 + signal number, as shells and Docker report it)."""
    if code is None:
        return "exit code unknown"
    if code > 128 and code - 128 in _SIGNAL_WORDS:
        return f"{code}, {_SIGNAL_WORDS[code - 128]}"
    if code > 128:
        return f"{code}, signal {code - 128}"
    return f"exit code {code}"


class InfrastructureExited(NodeFailure):
    """An infrastructure node (e.g. the MQTT broker) died during the run: the cause, named before the symptom (the
    failure of a service that used it)."""

    def __init__(self, infrastructure: list[tuple[str, int | None]], symptom: NodeFailure) -> None:
        self.symptom = symptom
        self.cause = "; ".join(f"infrastructure node {node!r} exited ({describe_exit(code)})"
                               for node, code in infrastructure)
        CosimError.__init__(self, f"{self.cause}; then {symptom}")
        self.node = infrastructure[0][0]
        self.problem = f"{self.cause}; then node {symptom.node!r}: {symptom.problem}"
        self.in_flight = symptom.in_flight
        self.process_exit_code = infrastructure[0][1]
        self.log_tail = symptom.log_tail


class Interrupted(CosimError):
    """The user pressed Ctrl-C or the run received SIGTERM."""

    exit_code = 130


class OptionError(CosimError):
    """A command-line option has a value cosim cannot use: names the option, the value and what is allowed."""

    exit_code = 2

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"{option} {value!r}: expected {allowed}")


class TraceReadError(CosimError):
    """A trace file is missing, unreadable or not a valid cosim trace (the message names the file and line)."""

    exit_code = 2
