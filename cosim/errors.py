"""Every user-facing error of cosim, grouped by who is at fault. Each carries a message written for the person
running cosim, not a stack trace.

- the scenario file:            ScenarioError
- a node (a service or infrastructure container): NodeError and its kinds (start, failure, image, an action of
  the schedule it does not support); the ns-3 segment worker: SegmentWorkerFailed
- the engine (Docker, images):  EngineUnavailable, EngineLost, ImageBuildError, DockerCommandFailed, ComposeUpFailed
  (BringUpTimeout)
- a Swarm and its nodes:        SwarmError, SwarmNodeUnreachable, ClusterError (the local test cluster)
- the command line / the user:  OptionError, UsageError (SweepError), Interrupted, ToolError; SweepRunsFailed
- trace and checkpoint files:   TraceReadError, TraceWriteError, CheckpointError, TracesDiffer, NotDeterministic
- the machine (disk, paths):    OutputWriteError (and TraceWriteError)

The CLI and the invoke tasks print ``str(error)`` and exit with ``error.exit_code``; anything that is *not* a
CosimError is a bug in cosim and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class CosimError(Exception):
    """Base of every error cosim reports to the user. ``exit_code`` is what the command exits with."""

    exit_code = 1


# -- the scenario ---------------------------------------------------------------------------------------------


class ScenarioError(CosimError):
    """The scenario file cannot be read or is not a valid scenario (names the file, line and field)."""

    exit_code = 2

    def __init__(self, source: str, message: str, *, line: int | None = None, path: str | None = None) -> None:
        self.source = source
        self.line = line
        self.path = path
        self.message = message
        where = f"{source}:{line}" if line is not None else source
        field = f" {path}:" if path else ""
        super().__init__(f"{where}:{field} {message}")


# -- the engine (Docker, images) ------------------------------------------------------------------------------


class EngineUnavailable(CosimError):
    """Docker or Compose v2 is missing or not answering."""

    exit_code = 3


class EngineLost(CosimError):
    """The Docker engine stopped or restarted under a running run (its containers' streams ended with it): not the
    fault of any node. The coordinator adds the virtual time (``at``) and ends the trace with an ``engine_lost``
    record; the runtime removes the run's containers and networks once the engine is back."""

    exit_code = 3

    def __init__(self, what: str, time_us: int | None = None) -> None:
        self.what = what
        self.time_us = time_us
        when = f" at virtual time {time_us} us" if time_us is not None else ""
        super().__init__(f"the Docker engine stopped (or restarted) during the run{when}: {what}; "
                         f"the trace so far is kept")

    def at(self, time_us: int) -> EngineLost:
        return EngineLost(self.what, time_us)


class ImageBuildError(CosimError):
    """An image a scenario needs could not be built or pulled."""

    exit_code = 3


class DockerCommandFailed(CosimError):
    """The Docker CLI failed in a way cosim did not foresee: still the engine's answer, not a cosim bug. Raised at
    the Docker boundary (``cosim.runtimes.docker.engine.docker_errors``) in place of python-on-whales' exceptions."""

    exit_code = 3

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"a docker command failed:\n{detail}")


class ComposeUpFailed(CosimError):
    """``docker compose up`` could not start a scenario's project (names the scenario and the compose file)."""


class BringUpTimeout(ComposeUpFailed):
    """`compose up` did not bring the scenario's containers up within the deadline ($COSIM_BRINGUP_TIMEOUT): names
    every container that was not running and its state (created, restarting, exited, not created)."""

    def __init__(self, scenario: str, containers: int, not_up: list[tuple[str, str]], waited_s: float) -> None:
        self.not_up = not_up
        shown = ", ".join(f"{node} ({state})" for node, state in not_up[:20])
        more = f" and {len(not_up) - 20} more" if len(not_up) > 20 else ""
        super().__init__(f"bring-up of scenario {scenario!r} did not finish within {waited_s:.1f} s "
                         f"($COSIM_BRINGUP_TIMEOUT): {len(not_up)} of {containers} container(s) not up: "
                         f"{shown or 'none (compose had not returned)'}{more}; everything was removed")


class SwarmError(CosimError):
    """The Swarm cannot run the scenario: the engine is no manager, a context is missing, a task cannot be placed
    or did not start (names the node, the Swarm node and Swarm's own words)."""

    exit_code = 3


class SwarmNodeUnreachable(SwarmError):
    """The engine of a Swarm node does not answer, or the node left the Swarm (names the node and its context)."""


class ClusterError(CosimError):
    """The local test cluster (`invoke cluster up/down`) could not be set up or removed."""

    exit_code = 3


# -- a node ---------------------------------------------------------------------------------------------------


class NodeError(CosimError):
    """Something went wrong with one node of the scenario; ``node`` names it (the first, when several)."""

    def __init__(self, node: str | None, message: str) -> None:
        self.node: str | None = node
        super().__init__(message)


class UnsupportedAction(NodeError):
    """The scenario's schedule asks a node for something it did not declare it can do (e.g. reconfigure a service
    without the 'configure' capability); found after INIT, before the first step."""

    exit_code = 2


class NodeStartError(NodeError):
    """A node could not be started (missing program, bad command, infrastructure not listening)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(node, f"node {node!r} {message}")


class NodeImageError(ImageBuildError, NodeError):
    """An image could not be built or pulled; names the node(s) that needed it."""

    def __init__(self, nodes: list[str], error: ImageBuildError) -> None:
        who = f"node {nodes[0]!r}" if len(nodes) == 1 else "nodes " + ", ".join(repr(n) for n in nodes)
        NodeError.__init__(self, nodes[0], f"{who}: {error}")


class ExitStatus(int):
    """An exit code with what the runtime knows of why the process ended, e.g. that the kernel killed it for memory
    (Docker's State.OOMKilled); an int everywhere else. NodeFailure and ``describe_exit`` name the ``cause``."""

    cause: str

    def __new__(cls, code: int, cause: str) -> ExitStatus:
        status = super().__new__(cls, code)
        status.cause = cause
        return status


def out_of_memory(limit: str | None) -> str:
    """The cause of a process the kernel killed for memory, the same on every runtime."""
    at = f"its memory limit of {limit}" if limit else "the machine's memory (no limit of its own)"
    return f"killed by the kernel: out of memory at {at}"


def exit_cause(code: int | None) -> str:
    return getattr(code, "cause", "")


class NodeFailure(NodeError):
    """A node died, hung, broke the protocol or reported an error. The run stops; the trace so far is kept. An
    ``exit_code`` with a cause (``ExitStatus``: e.g. out of memory) puts the cause first: it explains the rest."""

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
        if exit_cause(exit_code):
            problem = f"{exit_cause(exit_code)}; {problem}"
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
        super().__init__(node, text)


class BrokenPromise(NodeFailure):
    """A next-event node emitted an output before the time it promised (DONE ``next_us``) that no input of its
    window explains: the coordinator would have skipped the windows it acted in, so the run cannot be trusted."""

    def __init__(self, node: str, promised_us: int, event: dict[str, object], target_us: int) -> None:
        self.promised_us = promised_us
        promise = ("to emit only in response to input" if promised_us >= 1 << 62
                   else f"nothing of its own before {promised_us} us")
        super().__init__(node, f"broke its next-event promise: it promised {promise} (DONE next_us), but emitted "
                               f"{event.get('type')!r} at {event.get('time_us')} us in the window ending {target_us} us "
                               f"with no input at or before that time to explain it")


_SIGNAL_WORDS = {6: "aborted", 9: "killed", 11: "segmentation fault", 15: "terminated"}


def describe_exit(code: int | None) -> str:
    """An exit code as people read it: ``137, killed`` (128 + signal number, as shells and Docker report it)."""
    if code is None:
        return "exit code unknown"
    cause = f": {exit_cause(code)}" if exit_cause(code) else ""
    if code > 128 and code - 128 in _SIGNAL_WORDS:
        return f"{code}, {_SIGNAL_WORDS[code - 128]}{cause}"
    if code > 128:
        return f"{code}, signal {code - 128}{cause}"
    return f"exit code {code}{cause}"


class InfrastructureExited(NodeFailure):
    """An infrastructure node (e.g. the MQTT broker) died during the run: the cause, named before the symptom (the
    failure of a service that used it)."""

    def __init__(self, infrastructure: list[tuple[str, int | None]], symptom: NodeFailure) -> None:
        self.symptom = symptom
        self.cause = "; ".join(f"infrastructure node {node!r} exited ({describe_exit(code)})"
                               for node, code in infrastructure)
        NodeError.__init__(self, infrastructure[0][0], f"{self.cause}; then {symptom}")
        self.problem = f"{self.cause}; then node {symptom.node!r}: {symptom.problem}"
        self.in_flight = symptom.in_flight
        self.process_exit_code = infrastructure[0][1]
        self.log_tail = symptom.log_tail


class SegmentWorkerFailed(CosimError):
    """The ns-3 segment worker (cosim.segments) died, hung, broke its protocol or reported an error mid-run. The run
    ends as on a node failure: an error record in the trace, the trace so far kept, everything stopped."""

    exit_code = 4

    def __init__(self, problem: str, *, exit_code: int | None = None, last_stderr: str = "") -> None:
        self.problem = problem
        self.process_exit_code = exit_code
        self.last_stderr = last_stderr
        text = f"the ns-3 segment worker {problem}"
        if exit_code is not None:
            text += f" ({describe_exit(exit_code)})"
        if last_stderr:
            text += f"; its last stderr line: {last_stderr}"
        super().__init__(text)


# -- the command line and the person running it ---------------------------------------------------------------


class OptionError(CosimError):
    """A command-line option has a value cosim cannot use: names the option, the value and what is allowed."""

    exit_code = 2

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"{option} {value!r}: expected {allowed}")


class UsageError(CosimError):
    """A command was called without what it needs (e.g. `invoke diff` without two traces)."""


class SweepError(UsageError):
    """A sweep cannot start: a bad seed list, parameter path or value, or sweep file (names which)."""

    exit_code = 2


class SweepRunsFailed(CosimError):
    """Some runs of a sweep failed (each named with its reason); the others are complete and in the results."""

    exit_code = 4


class Interrupted(CosimError):
    """The user pressed Ctrl-C or the run received SIGTERM."""

    exit_code = 130


class ToolError(CosimError):
    """A tool or optional package cosim needs for this command is missing or failed (pip-compile, pandas)."""


class MissingExtra(ToolError):
    """An optional part of cosim is not installed: the message names it and the extra that installs it."""


# -- trace files ----------------------------------------------------------------------------------------------


class TraceReadError(CosimError):
    """A trace file is missing, unreadable or not a valid cosim trace (the message names the file and line)."""

    exit_code = 2


class OutputWriteError(CosimError):
    """A file a run writes (its trace, metrics, service logs, a checkpoint) cannot be written: the disk is full, the
    directory is read-only, a path component is a file. One line naming what, the path, the system's reason and its
    errno, e.g. ``cannot write the trace traces/x.jsonl: No space left on device (errno 28)``."""

    def __init__(self, what: str, path: object, error: OSError) -> None:
        self.what = what
        self.path = path
        self.errno = error.errno
        super().__init__(cannot_write(what, path, error))


def cannot_write(what: str, path: object, error: OSError) -> str:
    """``cannot write the trace traces/x.jsonl: No space left on device (errno 28)``."""
    number, reason = error.errno, error.strerror or str(error)
    if number == errno.EEXIST:  # mkdir of a directory on the way that exists as a file: the path is not a directory
        number, reason = errno.ENOTDIR, os.strerror(errno.ENOTDIR)
    errno_text = f" (errno {number})" if number else ""
    # The system may name another path than the one cosim wanted (e.g. the component that is a regular file).
    other = f" at {error.filename}" if error.filename and str(error.filename) != str(path) else ""
    return f"cannot write {what} {path}: {reason}{errno_text}{other}"


class TraceWriteError(OutputWriteError):
    """The trace cannot be written where it should go; what was written before the failure stays, complete lines
    only."""

    def __init__(self, path: object, error: OSError) -> None:
        super().__init__("the trace", path, error)


class CheckpointError(CosimError):
    """A checkpoint cannot be resumed: missing, damaged or edited (hash mismatch), of another format or cosim
    version, of another scenario, or a fork that changes the structure (names the file and the difference)."""

    exit_code = 2


class TracesDiffer(CosimError):
    """`invoke diff`: the two traces are not identical (the first divergent record was printed above)."""


class NotDeterministic(CosimError):
    """The determinism gate: runs of one scenario gave different traces (the first divergence was printed)."""
