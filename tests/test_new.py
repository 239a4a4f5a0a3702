"""`cosim new experiment DIR` and `cosim new service NAME --lang python|node`, as a new user runs them: the `cosim`
command in a temporary directory outside the checkout.

The last test is the issue's proof: an experiment with a Python and a Node service of one's own runs on Docker and
locally with the same records, and a copy of the whole directory elsewhere reproduces the trace hash.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import trace
from tests.conftest import assert_same_simulation
from tests.skip_policy import host_tool

ROOT = Path(__file__).resolve().parent.parent
COSIM = Path(sys.executable).parent / "cosim"
VERBS = {"up", "validate", "render", "images", "down", "cluster", "resume", "determinism", "diff", "report", "bench",
         "new", "conformance"}
USER_TASK = '''

@task
def hello(c):
    """A task of the experiment's own."""
    print("hello from the experiment")


namespace.add_task(hello)
'''
BOTH = """\
# A's and b's alarms and heartbeats into one sink; the sensor's readings to both.
name: both
seed: 7
duration_us: 2000000
nodes:
  - id: sensor
    kind: sensor
    model: uniform
    period_us: 50000
    links: [{to: a, latency_us: 2000}, {to: b, latency_us: 3000}]
  - {id: a, kind: service, build: ../services/a, config: {threshold: 0.7}, links: [{to: sink, latency_us: 1000}]}
  - id: b
    kind: service
    build: ../services/b
    local_command: [node, service.js]
    config: {threshold: 0.9}
    links: [{to: sink, latency_us: 1500}]
  - {id: sink, kind: sink}
routes:
  - {from: sensor, to: [a, b]}
  - {from: a, to: [sink]}
  - {from: b, to: [sink]}
"""


def cosim(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COSIM), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cosim: error: ")
    return lines[0].removeprefix("cosim: error: ")


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    assert ROOT not in tmp_path.resolve().parents
    created = cosim("new", "experiment", "x", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    return tmp_path / "x"


def test_new_experiment_creates_the_layout(tmp_path: Path) -> None:
    result = cosim("new", "experiment", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created the experiment 'x' in x/: scenarios/, services/, ")
    x = tmp_path / "x"
    assert sorted(path.name for path in x.iterdir()) == [".gitignore", "README.md", "scenarios", "services", "tasks.py"]
    ignored = (x / ".gitignore").read_text().split()
    assert {"traces/", "compose/", "checkpoints/", ".venv/"} <= set(ignored)
    assert (x / "README.md").read_text().startswith("# x\n")
    assert "from cosim.tasks import call, namespace" in (x / "tasks.py").read_text()
    assert "{{" not in (x / "README.md").read_text() + (x / "tasks.py").read_text()


def test_new_experiment_in_an_empty_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = cosim("new", "experiment", "empty", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty" / "tasks.py").is_file()


def test_new_experiment_refuses_a_directory_that_is_not_empty(experiment: Path) -> None:
    before = sorted(path.name for path in experiment.iterdir())
    message = one_error_line(cosim("new", "experiment", "x", cwd=experiment.parent))
    assert message.startswith("x: exists and is not empty; `cosim new experiment` creates a new directory")
    assert sorted(path.name for path in experiment.iterdir()) == before
    (experiment.parent / "a-file").write_text("")
    assert one_error_line(cosim("new", "experiment", "a-file", cwd=experiment.parent)).startswith(
        "a-file: is not a directory")


def test_a_users_tasks_py_extends_cosims_tasks(experiment: Path) -> None:
    """The experiment's tasks.py imports cosim's collection: `invoke --list` shows cosim's verbs and its own."""
    with (experiment / "tasks.py").open("a", encoding="utf-8") as tasks:
        tasks.write(USER_TASK)
    listed = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=experiment, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.startswith("  ")}
    assert VERBS | {"check", "test", "hello"} <= names
    hello = subprocess.run([sys.executable, "-m", "invoke", "hello"], cwd=experiment, capture_output=True, text=True,
                           timeout=60)
    assert hello.stdout == "hello from the experiment\n", hello.stderr
    helped = subprocess.run([sys.executable, "-m", "invoke", "up", "--help"], cwd=experiment, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "--runtime" in helped.stdout, helped.stderr


@pytest.mark.parametrize("name", ["Bad", "1st", "a_b", "a-", "a.b", "a b", "a" * 34, ""])
def test_a_service_name_must_be_lowercase_letters_digits_and_dashes(experiment: Path, name: str) -> None:
    message = one_error_line(cosim("new", "service", name, cwd=experiment))
    assert message == (f"service name {name!r}: expected lowercase letters, digits and dashes, starting with a letter "
                       "and not ending with a dash, at most 33 characters")
    assert not any((experiment / "services").iterdir())


def test_new_service_needs_an_experiment(tmp_path: Path) -> None:
    message = one_error_line(cosim("new", "service", "a", cwd=tmp_path))
    assert message.startswith(f"{tmp_path.resolve()} is not inside a cosim experiment (no directory with scenarios/ "
                              "and services/ from here up)")


def test_new_service_refuses_an_unknown_language_and_kind(experiment: Path) -> None:
    assert one_error_line(cosim("new", "service", "a", "--lang", "rust", cwd=experiment)) == \
        "--lang 'rust': expected one of python, node"
    assert one_error_line(cosim("new", "thing", "a", cwd=experiment)).startswith(
        "usage: cosim new experiment DIR | cosim new service NAME [--lang python|node]")


@pytest.mark.parametrize("lang", ["python", "node"])
def test_new_service_adds_code_a_scenario_and_a_test(experiment: Path, lang: str) -> None:
    """From a subdirectory of the experiment: the files land in the experiment, every {{name}} replaced, the
    scenario valid; a second time, the name is refused."""
    result = cosim("new", "service", "my-svc", "--lang", lang, cwd=experiment / "services")
    assert result.returncode == 0, result.stderr
    service = experiment / "services" / "my-svc"
    assert (service / "Dockerfile").is_file()
    tests = sorted(path.name for path in (experiment / "tests").iterdir())
    assert tests == ["test_my_svc_scenario.py", "test_my_svc_service.py"]
    for path in [*service.rglob("*"), *(experiment / "tests").iterdir()]:
        if path.is_file():
            assert "{{" not in path.read_text(encoding="utf-8"), path
            if path.suffix == ".py":
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
    validated = cosim("validate", "scenarios/my-svc.yaml", cwd=experiment)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("scenarios/my-svc.yaml: valid scenario 'my-svc': 3 nodes (1 container)")
    again = one_error_line(cosim("new", "service", "my-svc", "--lang", lang, cwd=experiment))
    assert again == "services/my-svc already exists: choose another name (or remove it)"


@pytest.mark.parametrize("lang", ["python", "node"])
def test_a_new_service_passes_its_own_test(experiment: Path, lang: str) -> None:
    """The generated test (a local run of the service's scenario; its conformance) passes on the first try."""
    if lang == "node":
        host_tool("node")
    created = cosim("new", "service", "svc", "--lang", lang, cwd=experiment)
    assert created.returncode == 0, created.stderr
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=experiment,
                            capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.docker
def test_an_experiment_of_ones_own_reproduces_its_trace_hash_from_any_directory(tmp_path: Path) -> None:
    """The issue's proof, as a new user: an experiment outside the checkout with a Python and a Node service, run
    on Docker and locally (the same records), then copied elsewhere and run again: the same trace hash, and
    `cosim diff` says identical. (Needs the SDK templates, the Node base image and path-free hashes.)"""
    host_tool("node")
    home = tmp_path / "first"
    home.mkdir()
    assert cosim("new", "experiment", "x", cwd=home).returncode == 0
    x = home / "x"
    for name, lang in (("a", "python"), ("b", "node")):
        created = cosim("new", "service", name, "--lang", lang, cwd=x)
        assert created.returncode == 0, created.stderr
    (x / "scenarios" / "both.yaml").write_text(BOTH, encoding="utf-8")

    docker = cosim("up", "scenarios/both.yaml", "--quiet", cwd=x, timeout=900)
    assert docker.returncode == 0, docker.stdout + docker.stderr
    local = cosim("up", "scenarios/both.yaml", "--runtime", "local", "--quiet", "--trace", "traces/both-local.jsonl",
                  cwd=x, timeout=300)
    assert local.returncode == 0, local.stdout + local.stderr
    first = x / "traces" / "both.jsonl"
    assert_same_simulation(first, x / "traces" / "both-local.jsonl")
    received = {record.source for record in trace.read(first).of(trace.Delivered) if record.dest == "sink"}
    assert received == {"a", "b"}

    elsewhere = tmp_path / "somewhere" / "else" / "y"
    shutil.copytree(x, elsewhere, ignore=shutil.ignore_patterns("traces", "compose"))
    again = cosim("up", "scenarios/both.yaml", "--quiet", cwd=elsewhere, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    second = elsewhere / "traces" / "both.jsonl"
    assert_same_simulation(first, second)
    compared = cosim("diff", str(first), "traces/both.jsonl", cwd=elsewhere)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "identical" in compared.stdout


def test_new_service_writes_nothing_when_one_of_its_files_exists(experiment: Path) -> None:
    (experiment / "tests").mkdir()
    (experiment / "tests" / "test_s_scenario.py").write_text("# mine\n")
    message = one_error_line(cosim("new", "service", "s", cwd=experiment))
    assert message == "tests/test_s_scenario.py already exists: choose another name (or remove it)"
    assert not (experiment / "services" / "s").exists() and not (experiment / "scenarios" / "s.yaml").exists()
    assert (experiment / "tests" / "test_s_scenario.py").read_text() == "# mine\n"
