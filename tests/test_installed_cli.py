"""cosim as an installed tool: the `cosim` command from any directory, its help, and the wheel's contents.

Every command runs in a temporary directory outside the checkout, the way a user's experiment does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cosim.resources import data_path

ROOT = Path(__file__).resolve().parent.parent
COSIM = Path(sys.executable).parent / "cosim"  # the console script of the environment running the tests
VERBS = ("up", "validate", "render", "images", "down", "cluster", "resume", "determinism", "diff", "report", "bench",
         "new", "conformance", "sweep")
SCENARIO = """\
name: outside
seed: 3
duration_us: 10000
nodes:
  - {id: sensor, kind: sensor, period_us: 5000, links: [{to: echo, latency_us: 2000}]}
  - {id: echo, kind: service, build: ../services/echo}
  - {id: out, kind: sink}
routes:
  - {from: sensor, to: [echo]}
  - {from: echo, to: [out]}
"""


def cosim(*args: str, cwd: Path, command: Path = COSIM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(command), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """An experiment-like directory outside the checkout: scenarios/outside.yaml using services/echo (a copy)."""
    assert ROOT not in tmp_path.resolve().parents
    shutil.copytree(ROOT / "containers" / "echo", tmp_path / "services" / "echo")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "outside.yaml").write_text(SCENARIO, encoding="utf-8")
    return tmp_path


def test_validate_and_render_take_paths_from_the_current_directory(outside: Path) -> None:
    validated = cosim("validate", "scenarios/outside.yaml", cwd=outside)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("scenarios/outside.yaml: valid scenario 'outside': 3 nodes (1 container)")
    rendered = cosim("render", "scenarios/outside.yaml", cwd=outside)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == "compose/outside.yaml\n"  # written here, not in the checkout
    assert (outside / "compose" / "outside.yaml").is_file()


def test_without_a_scenario_the_bundled_default_is_used(tmp_path: Path) -> None:
    default = data_path("scenarios", "default.yaml")
    validated = cosim("validate", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith(f"{default.as_posix()}: valid scenario 'default': ")
    rendered = cosim("render", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == "compose/default.yaml\n"
    assert (tmp_path / "compose" / "default.yaml").is_file()


@pytest.mark.parametrize("args", [("up", "-h"), ("up", "--help"), ("diff", "-h"), ("validate", "--help"),
                                  ("--help", "up")])
def test_help_after_a_task_name_is_the_tasks_help(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Was `cosim: error: --help: no such file` (the optional scenario took the flag for a file name)."""
    result = cosim(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    task = args[1] if args[0] == "--help" else args[0]
    assert result.stdout.startswith(f"Usage: cosim [--core-opts] {task} [--options]"), result.stdout
    assert result.stderr == ""


def test_invoke_in_the_checkout_shows_a_tasks_help_too(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "up", "-h"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Run a scenario in virtual time and write its trace." in result.stdout
    assert "--runtime" in result.stdout


def test_an_unknown_option_is_not_taken_for_the_scenario(tmp_path: Path) -> None:
    result = cosim("validate", "--nope", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "No idea what '--nope' is!\n"


def test_list_names_every_verb(tmp_path: Path) -> None:
    result = cosim("--list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.startswith("  ") and line.split()}
    assert set(VERBS) <= listed
    assert not {"test", "lock", "golden"} & listed  # the checkout's own tasks are not the tool's


def test_python_dash_m_cosim_is_the_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cosim", "--version"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cosim ")


# -- the wheel ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from the checkout (no isolated build: the pinned setuptools)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", str(ROOT), "-w", str(out)],
                   check=True, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    (built,) = out.glob("cosim-*.whl")
    return built


def test_the_wheel_carries_the_bundled_data_and_the_sdk(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("cosim/_data/schemas/scenario.schema.json", "cosim/_data/scenarios/default.yaml",
                     "cosim/_data/containers/protocol_adapter.py", "cosim/_data/containers/echo/Dockerfile",
                     "cosim/_data/containers/ml-inference/model.onnx", "cosim/templates/experiment/tasks.py",
                     "cosim/templates/experiment/gitignore", "cosim_service/__init__.py", "cosim_service/wire.py"):
        assert expected in names, expected
    assert any(name.startswith("cosim/_data/sdk/node/") for name in names)
    assert not [name for name in names if ".wheelhouse" in name or "__pycache__" in name or name.endswith(".pyc")]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "cosim = cosim.console:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_wheel_validates_and_renders_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """The wheel in a fresh venv (its dependencies taken from this environment's site-packages, not installed
    again): `cosim validate` and `cosim render` of the bundled scenario use the wheel's own data."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # A path line only: the .pth files there (this checkout's editable install of cosim) are not processed.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    installed = venv / "bin" / "cosim"
    validated = cosim("validate", cwd=work, command=installed)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith(f"{site / 'cosim' / '_data' / 'scenarios' / 'default.yaml'}: valid scenario")
    rendered = cosim("render", cwd=work, command=installed)
    assert rendered.returncode == 0, rendered.stderr
    assert (work / "compose" / "default.yaml").is_file()
    created = cosim("new", "experiment", "x", cwd=work, command=installed)
    assert created.returncode == 0, created.stderr
    assert (work / "x" / ".gitignore").is_file()


# -- extras ------------------------------------------------------------------------------------------------------


def test_the_report_needs_no_plotting_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The report's charts are hand-written SVG: with matplotlib unimportable, `up` still writes the whole report."""
    import io

    from cosim import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = io.StringIO()
    done = cli.up(str(ROOT / "tests" / "scenarios" / "cli-good.yaml"), runtime="local", progress=False,
                  trace=str(tmp_path / "run.jsonl"), out=out)
    report = tmp_path / "run.report.html"
    assert out.getvalue().endswith(f"  report:  {report}\n")
    assert report.read_text(encoding="utf-8").count("<svg") >= 3
    assert cli.report(str(done.trace_path)) == report


REMAINDER_PROBE = """
import json
from invoke import Collection, Program, task
from cosim.tasks import remainder

@task
def show(c):
    print(json.dumps(remainder(c)))

Program(namespace=Collection(show), name="probe", binary="probe").run()
"""


def test_a_task_gets_the_words_after_a_double_dash_with_their_boundaries(tmp_path: Path) -> None:
    """`cosim conformance -- python -c "import sys; ..."`: invoke's c.remainder joins the words with spaces;
    cosim.tasks.remainder gives them back as they were typed."""
    words = ["python3", "-c", "import sys; print('a  b')", ""]
    result = subprocess.run([sys.executable, "-c", REMAINDER_PROBE, "show", "--", *words], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == words
    nothing = subprocess.run([sys.executable, "-c", REMAINDER_PROBE, "show"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert json.loads(nothing.stdout) == []


def test_the_installed_bundled_data_hashes_as_the_checkouts(wheel: Path, tmp_path: Path) -> None:
    """The bundled scenario's compose hash (which covers its services' files and the SDKs) is the same from the
    wheel's package data as from the checkout: an installed cosim and a checkout name the same images and give
    the same trace hash."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import sys; from cosim import compose, loading; from cosim.resources import data_path; "
             "print(compose.sha256(loading.load(data_path('scenarios', 'default.yaml'))), data_path('scenarios'))")
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    installed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=environment, capture_output=True,
                               text=True, timeout=120, check=True).stdout.split()
    checkout = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=True).stdout.split()
    assert installed[1] == str(tmp_path / "site" / "cosim" / "_data" / "scenarios")
    assert checkout[1] == str(ROOT / "scenarios")
    assert installed[0] == checkout[0]


def test_help_and_list_import_none_of_the_commands(tmp_path: Path) -> None:
    """`cosim --help` and `cosim --list` stay quick: a task imports what it runs only when it runs."""
    probe = ("import sys; from cosim.console import program\n"
             "for argv in (['cosim', '--list'], ['cosim', '--help'], ['cosim', 'up', '--help']):\n"
             "    program.run(argv, exit=False)\n"
             "heavy = sorted(m for m in sys.modules if m in ('cosim.cli', 'cosim.run', 'cosim.loading', 'jsonschema', "
             "'python_on_whales', 'cosim.scaffold'))\n"  # (not yaml: invoke's own configuration reads it)
             "print('HEAVY', heavy, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "HEAVY []"


def test_cosim_help_lists_the_verbs_and_only_the_core_options_that_matter(tmp_path: Path) -> None:
    result = cosim("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: cosim [--core-opts] <subcommand> [--subcommand-opts] ...\n")
    for shown in ("--help", "--list", "--version"):
        assert shown in result.stdout
    for hidden in ("--pty", "--prompt-for-sudo-password", "--echo", "--hide"):
        assert hidden not in result.stdout
    assert all(f"\n  {verb} " in result.stdout for verb in VERBS)


def test_a_local_run_imports_only_what_it_uses(outside: Path) -> None:
    """`cosim up X --runtime local` with long options is read without invoke; a scenario validated before is not
    validated again (no jsonschema); no Docker client, no report (--no-report), no matplotlib."""
    probe = ("import sys; from cosim.console import main\n"
             "sys.argv = ['cosim', 'up', 'scenarios/outside.yaml', '--runtime', 'local', '--quiet', '--no-report',\n"
             "            '--trace=traces/t.jsonl']\n"
             "try:\n    main(fast_exit=False)\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
             "heavy = sorted(m for m in sys.modules if m.partition('.')[0] in ('invoke', 'jsonschema', "
             "'python_on_whales', 'matplotlib') or m in ('cosim.report', 'cosim.tasks'))\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    env = {**os.environ, "COSIM_CACHE_DIR": str(outside / "cache")}
    runs = [subprocess.run([sys.executable, "-c", probe], cwd=outside, capture_output=True, text=True, timeout=120,
                           env=env) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr
    first = runs[0].stderr.strip().rpartition("HEAVY ")[2]
    assert "'jsonschema'" in first and all(m.startswith("'jsonschema") for m in first.strip("[]").split(", "))
    assert runs[1].stderr.strip().endswith("HEAVY []"), runs[1].stderr
    assert (outside / "traces" / "t.jsonl").exists() and not (outside / "traces" / "t.report.html").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["up"], {}),
    (["up", "s.yaml", "--runtime", "local", "--quiet", "--trace=t.jsonl"],
     {"scenario": "s.yaml", "runtime": "local", "quiet": True, "trace": "t.jsonl"}),
    (["up", "--no-report", "--checkpoint-at", "5000", "s.yaml"],
     {"no_report": True, "checkpoint_at": "5000", "scenario": "s.yaml"}),
])
def test_cosim_up_with_long_options_is_read_without_invoke(argv: list[str], expected: dict[str, object]) -> None:
    from cosim.console import fast_arguments
    from cosim.verbs import up

    assert fast_arguments(argv) == (up, expected)


@pytest.mark.parametrize("argv", [
    [], ["--list"], ["validate", "s.yaml"], ["up", "-r", "local"], ["up", "--help"], ["up", "-h"], ["up", "--nope"],
    ["up", "a.yaml", "b.yaml"], ["up", "--quiet=yes"], ["up", "--runtime"], ["up", "--runtime", "--quiet"],
    ["up", "--trace", "a", "--trace", "b"], ["up", "--scenario", "s.yaml"],
])
def test_anything_else_goes_to_invoke(argv: list[str]) -> None:
    from cosim.console import fast_arguments

    assert fast_arguments(argv) is None


def test_the_invoke_task_and_the_fast_path_share_one_definition() -> None:
    from cosim import tasks, verbs

    assert tasks.up.body is verbs.up and tasks.up.help == verbs.UP_HELP
