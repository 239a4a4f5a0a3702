"""`cosim new experiment DIR` and `cosim new service NAME --lang python|node`: a project of one's own.

An experiment is a directory with ``scenarios/`` and ``services/`` (how ``new service`` recognises one, walking up
from the current directory), a ``tasks.py`` that imports cosim's tasks, a ``.gitignore`` for what runs write
(``traces/``, ``compose/``, ``checkpoints/``) and a README: the template ``cosim/templates/experiment/``.

A service is a copy of ``cosim/templates/service-<lang>/`` in ``services/NAME/``, a scenario that uses it,
``scenarios/NAME.yaml`` (a ``uniform`` sensor -> the service -> a sink), and its tests in the experiment's
``tests/``: the language template's own ``tests/`` folder (e.g. ``tests/test_{{identifier}}_service.py``, which
finds the service as ``Path(__file__).resolve().parent.parent / "services" / "{{name}}"``; a ``test_service.py``
at the template's top becomes ``tests/test_{{identifier}}.py``), and ``cosim/templates/service-test/``:
``tests/test_<NAME>_scenario.py``, a local run of the scenario through the ``cosim`` command. In every template
file (and file name) ``{{name}}`` becomes the name, ``{{identifier}}`` the name as a Python identifier (dashes
become underscores) and ``{{lang}}`` the language; a file named ``gitignore`` or ``dockerignore`` becomes its
dotted name. Nothing is written when any of these files exists already.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from cosim import options
from cosim.errors import UsageError
from cosim.paths import shown
from cosim.resources import template_path

LANGUAGES = ("python", "node")
NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,31}[a-z0-9])?")  # a node id ("-sensor" added stays one) and a folder name
NAME_RULE = "lowercase letters, digits and dashes, starting with a letter and not ending with a dash, at most 33"
DOTTED = {"gitignore": ".gitignore", "dockerignore": ".dockerignore"}
USAGE = "usage: cosim new experiment DIR | cosim new service NAME [--lang python|node]"
# How --runtime local starts each language's service in its folder (the scenario's `local_command`).
LOCAL_COMMANDS = {"python": None, "node": ["node", "service.js"]}  # python: the default, python -u service.py
LANGUAGE_TESTS = "tests"  # a language template's folder of tests: into the experiment's tests/, not the service's
LANGUAGE_TEST = "test_service.py"  # a single test at a template's top: tests/test_<identifier>.py

SCENARIO = """\
# The service {name} ({lang}) between a sensor and a sink. Run it from the experiment's directory:
#   cosim up scenarios/{name}.yaml --runtime local    # as processes on this machine
#   cosim up scenarios/{name}.yaml                    # in Docker (builds services/{name}/ on the first run)
# Paths here are relative to this file.
name: {name}
seed: 1
duration_us: 2000000   # 2 s of virtual time
quantum_us: 1000
nodes:
  - id: {name}-sensor
    kind: sensor
    model: uniform     # a seeded random value in [0, 1) per reading: events of type `reading`
    period_us: 100000
    links:
      - {{to: {name}, latency_us: 2000}}
  - id: {name}
    kind: service
    build: ../services/{name}
{local_command}    config: {{threshold: 0.8}}
    links:
      - {{to: {name}-sink, latency_us: 1000}}
  - id: {name}-sink
    kind: sink
routes:
  - {{from: {name}-sensor, to: [{name}]}}
  - {{from: {name}, to: [{name}-sink]}}
"""


def new(kind: str, name: str, *, lang: str | None = None, out: TextIO = sys.stdout) -> Path:
    """`cosim new KIND NAME`: an experiment directory, or a service in the experiment around the current directory."""
    if kind == "experiment":
        if lang is not None:
            raise UsageError(f"--lang is for `cosim new service`; {USAGE}")
        return new_experiment(Path(name), out=out)
    if kind == "service":
        return new_service(name, lang=lang or "python", out=out)
    raise UsageError(f"{USAGE} (not {kind!r})")


def new_experiment(directory: Path, *, out: TextIO = sys.stdout) -> Path:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "is not a directory" if not directory.is_dir() else "exists and is not empty"
        raise UsageError(f"{directory}: {what}; `cosim new experiment` creates a new directory (choose another)")
    name = directory.resolve().name
    for sub in ("scenarios", "services"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    written = copy_template(template_path("experiment"), directory, {"name": name})
    files = ", ".join(sorted(path.name for path in written))
    enter = "" if directory.resolve() == Path.cwd().resolve() else f"cd {directory} && "
    out.write(f"created the experiment {name!r} in {directory}/: scenarios/, services/, {files}\n"
              f"  next: {enter}cosim new service NAME --lang python (or --lang node)\n")
    return directory


def new_service(name: str, *, lang: str = "python", start: Path | None = None, out: TextIO = sys.stdout) -> Path:
    if not NAME.fullmatch(name):
        raise UsageError(f"service name {name!r}: expected {NAME_RULE} characters")
    options.choice("--lang", lang, LANGUAGES)
    root = experiment_root(start or Path.cwd())
    template = template_path(f"service-{lang}")
    if not template.is_dir():
        raise UsageError(f"--lang {lang}: this cosim has no {lang} service template ({template} is missing)")
    service_dir = root / "services" / name
    scenario = root / "scenarios" / f"{name}.yaml"
    identifier = name.replace("-", "_")
    values = {"name": name, "identifier": identifier, "lang": lang}
    service_files = template_files(template, service_dir, values, skip=(LANGUAGE_TESTS, LANGUAGE_TEST))
    tests = template_files(template / LANGUAGE_TESTS, root / "tests", values)
    if (template / LANGUAGE_TEST).is_file():
        tests.append((template / LANGUAGE_TEST, root / "tests" / f"test_{identifier}.py"))
    tests += template_files(template_path("service-test"), root / "tests", values)
    for path in (service_dir, scenario, *(destination for _, destination in tests)):
        if path.exists():
            raise UsageError(f"{shown(path)} already exists: choose another name (or remove it)")
    for source, destination in service_files + tests:
        copy_file(source, destination, values)
    command = LOCAL_COMMANDS[lang]
    local_command = f"    local_command: [{', '.join(command)}]   # run in services/{name}/\n" if command else ""
    scenario.write_text(SCENARIO.format(name=name, lang=lang, local_command=local_command), encoding="utf-8")
    files = ", ".join(destination.relative_to(service_dir).as_posix() for _, destination in service_files)
    made_tests = ", ".join(shown(destination) for _, destination in tests)
    out.write(f"created the {lang} service {name!r}: {shown(service_dir)}/ ({files}), {shown(scenario)}, "
              f"{made_tests}\n"
              f"  run it: cosim up {shown(scenario)} --runtime local   (in Docker: without --runtime)\n")
    return service_dir


def experiment_root(start: Path) -> Path:
    """The nearest directory from ``start`` up that has both ``scenarios/`` and ``services/``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / "scenarios").is_dir() and (directory / "services").is_dir():
            return directory
    raise UsageError(f"{start} is not inside a cosim experiment (no directory with scenarios/ and services/ from "
                     f"here up): create one with `cosim new experiment DIR` and run this inside it")


def template_files(template: Path, target: Path, values: dict[str, str],
                   skip: tuple[str, ...] = ()) -> list[tuple[Path, Path]]:
    """(template file, where it goes under ``target``) for every file of ``template`` (none if it does not exist),
    ``{{key}}`` substituted in the names."""
    planned = []
    for source in sorted(template.rglob("*")):
        relative = source.relative_to(template)
        if source.is_dir() or relative.parts[0] in skip or "__pycache__" in relative.parts:
            continue
        parts = [DOTTED.get(part, _substitute(part, values)) for part in relative.parts]
        planned.append((source, target.joinpath(*parts)))
    return planned


def copy_template(template: Path, target: Path, values: dict[str, str]) -> list[Path]:
    """Copy ``template``'s files into ``target``, substituting ``{{key}}`` in names and text; returns the files."""
    return [copy_file(source, destination, values) for source, destination in template_files(template, target, values)]


def copy_file(source: Path, destination: Path, values: dict[str, str]) -> Path:
    """One template file, ``{{key}}`` substituted in its text (a binary file is copied as it is)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    content = source.read_bytes()
    try:
        content = _substitute(content.decode("utf-8"), values).encode("utf-8")
    except UnicodeDecodeError:
        pass
    destination.write_bytes(content)
    destination.chmod(source.stat().st_mode & 0o777)
    return destination


def _substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
