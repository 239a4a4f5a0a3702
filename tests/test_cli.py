"""The real command line (`python -m invoke ...` from the repository root): exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosim import compose, loading

ROOT = Path(__file__).resolve().parent.parent
GOOD = Path(__file__).resolve().parent / "scenarios" / "cli-good.yaml"
# The good scenario, to be written elsewhere and broken: its `build:` made absolute so it still finds the Dockerfile.
GOOD_ANYWHERE = GOOD.read_text().replace("../../containers/echo", str(ROOT / "containers" / "echo"))
SCENARIO_ERROR = 2


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

# (id, file content or None for "no such file", expected line, text expected after `file:line: `)
BAD: list[tuple[str, str | None, int | None, str]] = [
    ("missing-file", None, None, "no such file"),
    ("empty-file", "# nothing here\n", None, "is empty; expected a scenario mapping"),
    ("yaml-syntax", "name: t\n  seed: 1\n", 2, "YAML syntax error: mapping values are not allowed here"),
    ("python-tag", "name: !!python/object/apply:os.system ['true']\n", 1,
     "unsupported YAML tag !!python/object/apply:os.system; only plain YAML is allowed"),
    ("alias-bomb", BOMB, 5, "YAML expands to more than 100000 values (aliases/anchors); refused"),
    ("duplicate-key", "name: t\nseed: 1\nname: u\n", 3, "(top level): duplicate key 'name' (first at line 1)"),
    ("lookahead", GOOD_ANYWHERE.replace("latency_us: 2000", "latency_us: 10"), 10,
     "nodes[0].links[0].latency_us: latency 10 us is shorter than the quantum 1000 us"),
    ("unknown-node", GOOD_ANYWHERE.replace("to: [out]", "to: [otu]"), 18,
     "routes[1].to[0]: route to unknown node 'otu'; did you mean 'out'?"),
]


CALLS = [("validate", case) for case in BAD] + [("render", case) for case in BAD if case[0] in ("yaml-syntax", "lookahead")]


@pytest.mark.parametrize(("command", "case"), CALLS, ids=[f"{command}-{case[0]}" for command, case in CALLS])
def test_bad_scenario_is_one_line_and_exit_2(tmp_path: Path, command: str,
                                             case: tuple[str, str | None, int | None, str]) -> None:
    _, content, line, expected = case
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    result = invoke(command, str(path))
    assert_no_traceback(result)
    assert result.returncode == SCENARIO_ERROR, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    where = f"{path}:{line}" if line is not None else str(path)
    assert lines[0].startswith(f"cosim: error: {where}: "), lines[0]
    assert expected in lines[0]


def test_directory_is_refused(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path))
    assert_no_traceback(result)
    assert result.returncode == SCENARIO_ERROR
    assert result.stderr.strip() == f"cosim: error: {tmp_path}: is a directory, expected a scenario YAML file"


def test_up_with_a_bad_scenario_fails_before_running(tmp_path: Path) -> None:
    result = invoke("up", str(tmp_path / "missing.yaml"), "--runtime", "local", "--quiet")
    assert_no_traceback(result)
    assert result.returncode == SCENARIO_ERROR
    assert result.stderr.strip() == f"cosim: error: {tmp_path / 'missing.yaml'}: no such file"


def test_validate_good() -> None:
    result = invoke("validate", str(GOOD))
    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{GOOD}: valid scenario 'test-cli-good': 3 nodes (1 container), 2 routes, "
                             "20 steps of 1000 us\n")


@pytest.fixture
def rendered_path() -> Iterator[Path]:
    """compose/<name>.yaml of the good scenario; removed afterwards unless it was there before."""
    path = compose.compose_path(loading.load(GOOD))
    existed = path.exists()
    yield path
    if not existed:
        path.unlink(missing_ok=True)


def test_render_good_prints_the_path(rendered_path: Path) -> None:
    result = invoke("render", str(GOOD))
    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{rendered_path}\n"
    assert rendered_path.read_text(encoding="utf-8") == compose.render_text(loading.load(GOOD))


def test_validate_without_argument_uses_the_default_scenario() -> None:
    """The scenario `./inv up` runs must be valid: anything else breaks the README's first command."""
    result = invoke("validate")
    assert_no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("scenarios/default.yaml: valid scenario 'default': "), result.stdout


def test_diff_of_a_missing_trace_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = invoke("diff", str(missing), str(missing))
    assert_no_traceback(result)
    assert result.returncode == SCENARIO_ERROR
    assert result.stderr.strip() == f"cosim: error: {missing}: no such trace file"


def test_an_unwritable_trace_path_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = invoke("up", str(GOOD), "--runtime", "local", "--trace", str(blocker / "trace.jsonl"))
    assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"cosim: error: cannot write the trace {blocker / 'trace.jsonl'}: Not a directory "
                                     f"(errno 20) at {blocker}")


# -- option errors: one line naming the option, the value and what is allowed; nothing started --------------------

OPTION_ERRORS = [
    (("up", "--runtime", "podman"), "--runtime 'podman': expected one of docker, local, swarm"),
    (("up", "--runtime", "local", "--watchdog", "-1"), "--watchdog '-1': expected a number of seconds greater than 0"),
    (("up", "--runtime", "local", "--watchdog", "0"), "--watchdog '0': expected a number of seconds greater than 0"),
    (("up", "--runtime", "local", "--watchdog", "soon"), "--watchdog 'soon': expected a number of seconds greater than 0"),
    (("up", "--runtime", "local", "--watchdog", "nan"), "--watchdog 'nan': expected a number of seconds greater than 0"),
    (("determinism", "--runtime", "podman"), "--runtime 'podman': expected one of docker, local, swarm, both"),
    (("determinism", "--runtime", "local", "--runs", "1"),
     "--runs '1': expected a whole number of at least 2 (two runs to compare)"),
    (("determinism", "--runtime", "local", "--runs", "0"),
     "--runs '0': expected a whole number of at least 2 (two runs to compare)"),
    (("determinism", "--runtime", "local", "--runs", "many"),
     "--runs 'many': expected a whole number of at least 2 (two runs to compare)"),
    (("determinism", "--runtime", "both", "--runs", "0"),
     "--runs '0': expected a whole number of at least 1 (one run on each runtime)"),
    (("determinism", "--runtime", "local", "--watchdog", "-5"),
     "--watchdog '-5': expected a number of seconds greater than 0"),
    (("bench", "--local-only", "--steps", "0"), "--steps '0': expected a whole number of at least 1"),
]


@pytest.mark.parametrize(("args", "expected"), OPTION_ERRORS, ids=[" ".join(args) for args, _ in OPTION_ERRORS])
def test_an_option_error_is_one_line_before_anything_starts(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    trace = tmp_path / "trace.jsonl"
    extra = (str(GOOD), "--quiet", "--trace", str(trace)) if args[0] == "up" else (str(GOOD),) if args[0] == "determinism" else ()
    result = invoke(*args, *extra)
    assert_no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"cosim: error: {expected}\n"
    assert not trace.exists()  # rejected before the run started
