"""Scenario validation: every invalid scenario gets one specific line naming file, line, field and what was expected.

Each invalid case is a complete scenario text; the line the error must point at carries a ``# HERE`` comment, so the
expected line number is read from the text itself (and stays right when a case is edited).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cosim.errors import ScenarioError
from cosim.loading import load, reading
from cosim.model import ContainerSpec, LinkProperties, Scenario, SensorSpec, SinkSpec
from cosim.service_sources import image_name

MARK = "# HERE"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with service dirs the test scenarios build from (`build:` is relative to the scenario file)."""
    for name in ("svc", "broker"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "no-dockerfile").mkdir()
    return tmp_path


def load_error(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        load(path)
    return caught.value


def marked_line(text: str) -> int:
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(lines) == 1, "each case marks exactly one line with # HERE"
    return lines[0]


def assert_message(error: ScenarioError, source: Path, line: int | None, field: str | None, *fragments: str) -> None:
    """The one-line message: `file:line: path: message`, with the expected-what text in it."""
    text = str(error)
    assert "\n" not in text
    assert error.source == str(source)
    assert error.line == line, text
    assert error.path == field, text
    where = f"{source}:{line}" if line is not None else f"{source}"
    prefix = f"{where}: {field}: " if field else f"{where}: "
    assert text.startswith(prefix), text
    for fragment in fragments:
        assert fragment in error.message, text


# -- header shared by most cases (5 lines: the line numbers of the cases below count from here) --------------
HEAD = """\
name: t
seed: 7
duration_us: 10000
quantum_us: 1000
nodes:
"""

# One pipeline used by the node/route cases: sensor -> svc -> out. Lines 6-16.
PIPELINE = HEAD + """\
  - id: sensor
    kind: sensor
    period_us: 1000
    links:
      - to: svc
        latency_us: 2000
  - id: svc
    kind: service
    build: svc
  - id: out
    kind: sink
"""

ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]  # HERE  (9**6 values: the first node over the bound)
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""

# (id, scenario text with a `# HERE` line, field path, fragments of the message)
CASES: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    ("yaml-syntax-error", "name: t\n  seed: 7  # HERE\n", None,
     ("YAML syntax error", "mapping values are not allowed here")),
    ("yaml-tab-indent", "name: t\n\tseed: 7  # HERE\n", None, ("YAML syntax error", "'\\t'")),
    ("yaml-two-documents", "name: t\n---  # HERE\nname: u\n", None, ("YAML syntax error: expected a single document in the stream, but found another document",)),
    ("top-level-list", "- name: t  # HERE\n- seed: 7\n", None, ("top level is a list", "expected a mapping")),
    ("top-level-scalar", "just some words  # HERE\n", None, ("top level is a string", "expected a mapping")),
    ("top-level-null", "~  # HERE\n", None, ("is empty", "expected a scenario mapping")),
    ("recursive-alias", "name: &a [x, *a]  # HERE\n", None, ("refers to itself", "refused")),
    ("deep-nesting", "name: " + "[" * 150 + "  # HERE\n", None, ("YAML nesting deeper than 100 levels", "refused")),
    ("python-tag", "name: !!python/object/apply:os.system ['touch /tmp/pwned']  # HERE\n", None,
     ("unsupported YAML tag !!python/object/apply:os.system", "only plain YAML")),
    ("duplicate-top-level-key", "name: t\nseed: 7\nseed: 8  # HERE\n", "(top level)",
     ("duplicate key 'seed'", "first at line 2")),
    ("duplicate-node-key", HEAD + "  - id: a\n    kind: sink\n    kind: sensor  # HERE\n", "nodes[0]",
     ("duplicate key 'kind'", "first at line 7")),
    ("missing-required-key", "name: t  # HERE\nseed: 7\nnodes: [{id: a, kind: sink}]\n", "(top level)",
     ("missing required key 'duration_us'",)),
    ("unknown-top-level-key", PIPELINE + "sede: 3  # HERE\n", "(top level)", ("unknown key 'sede'", "did you mean 'seed'?")),
    ("unknown-top-level-key-no-match", PIPELINE + "zzz: 3  # HERE\n", "(top level)",
     ("unknown key 'zzz'", "allowed: advance, description, duration_us, name")),
    ("non-string-top-level-key", PIPELINE + "1: x  # HERE\nfoo: y\n", "(top level)", ("unknown key 1",)),
    ("misspelt-node-key", HEAD + "  - id: a\n    kind: service\n    build: svc\n    replica: 2  # HERE\n", "nodes[0]",
     ("unknown key 'replica'", "did you mean 'replicas'?")),
    ("misspelt-sensor-key", HEAD + "  - id: a\n    kind: sensor\n    perod_us: 5  # HERE\n", "nodes[0]",
     ("unknown key 'perod_us'", "did you mean 'period_us'?")),
    ("port-on-a-service", HEAD + "  - id: a\n    kind: service\n    build: svc\n    port: 80  # HERE\n", "nodes[0]",
     ("unknown key 'port'", "allowed: build, command")),
    ("seed-is-a-string", PIPELINE.replace("seed: 7", "seed: 'seven'  # HERE"), "seed",
     ("expected an integer, got 'seven'",)),
    ("seed-is-a-boolean", PIPELINE.replace("seed: 7", "seed: true  # HERE"), "seed", ("expected an integer, got true",)),
    ("seed-is-negative", PIPELINE.replace("seed: 7", "seed: -1  # HERE"), "seed", ("expected a value >= 0, got -1",)),
    ("seed-beyond-53-bits", PIPELINE.replace("seed: 7", "seed: 9007199254740992  # HERE"), "seed",
     ("expected a value <= 9007199254740991, got 9007199254740992",)),
    ("duration-is-a-float", PIPELINE.replace("duration_us: 10000", "duration_us: 10000.5  # HERE"), "duration_us",
     ("expected an integer, got 10000.5",)),
    ("duration-is-an-integral-float", PIPELINE.replace("duration_us: 10000", "duration_us: 10000.0  # HERE"),
     "duration_us", ("expected an integer, got 10000.0 (a float)",)),
    ("nodes-is-a-mapping", HEAD.replace("nodes:", "nodes: {a: 1}  # HERE"), "nodes", ("expected a list, got a mapping",)),
    ("node-is-a-string", HEAD + "  - just-a-name  # HERE\n", "nodes[0]", ("expected a mapping, got 'just-a-name'",)),
    ("node-without-kind", HEAD + "  - id: a  # HERE\n", "nodes[0]", ("missing required key 'kind'",)),
    ("negative-latency", PIPELINE.replace("latency_us: 2000", "latency_us: -5  # HERE"), "nodes[0].links[0].latency_us",
     ("expected a value >= 0, got -5",)),
    ("loss-equal-to-one", PIPELINE.replace("latency_us: 2000", "latency_us: 2000\n        loss: 1.0  # HERE"),
     "nodes[0].links[0].loss", ("expected a value < 1, got 1.0",)),
    ("loss-above-one", PIPELINE.replace("latency_us: 2000", "latency_us: 2000\n        loss: 3  # HERE"),
     "nodes[0].links[0].loss", ("expected a value < 1, got 3",)),
    ("duplicate-node-id", PIPELINE.replace("  - id: out", "  - id: svc  # HERE"), "nodes[2].id",
     ("duplicate node id 'svc' (also nodes[1])",)),
    ("link-to-unknown-node", PIPELINE.replace("- to: svc", "- to: scv  # HERE"), "nodes[0].links[0].to",
     ("link to unknown node 'scv'", "did you mean 'svc'?")),
    ("link-to-itself", PIPELINE.replace("- to: svc", "- to: sensor  # HERE"), "nodes[0].links[0].to",
     ("a node cannot link to itself",)),
    ("two-links-to-one-node", PIPELINE.replace("latency_us: 2000\n", "latency_us: 2000\n      - to: svc  # HERE\n"
                                               "        latency_us: 3000\n"), "nodes[0].links[1].to",
     ("second link to 'svc'", "one link per destination")),
    ("link-latency-below-quantum", PIPELINE.replace("latency_us: 2000", "latency_us: 500  # HERE"),
     "nodes[0].links[0].latency_us", ("latency 500 us is shorter than the quantum 1000 us", "latency_us >= quantum_us")),
    ("default-link-latency-below-quantum",
     PIPELINE + "network:\n  default_link:\n    latency_us: 10  # HERE\n", "network.default_link.latency_us",
     ("latency 10 us is shorter than the quantum 1000 us",)),
    ("quantum-does-not-divide-duration", PIPELINE.replace("quantum_us: 1000", "quantum_us: 3000  # HERE")
     .replace("latency_us: 2000", "latency_us: 3000"), "quantum_us",
     ("quantum 3000 us does not divide duration_us 10000 (remainder 1000 us)",)),
    ("default-quantum-does-not-divide-duration",
     PIPELINE.replace("quantum_us: 1000\n", "").replace("duration_us: 10000", "duration_us: 10500  # HERE"),
     "duration_us", ("quantum 1000 us does not divide duration_us 10500",)),
    ("quantum-longer-than-duration", PIPELINE.replace("quantum_us: 1000", "quantum_us: 20000  # HERE")
     .replace("latency_us: 2000", "latency_us: 20000"), "quantum_us",
     ("quantum 20000 us is longer than duration_us 10000",)),
    ("duration-shorter-than-default-quantum",
     "name: t\nseed: 7\nduration_us: 500  # HERE\nnodes: [{id: a, kind: sink}]\n", "duration_us",
     ("duration 500 us is shorter than the default quantum_us 1000",)),
    ("quantum-zero", PIPELINE.replace("quantum_us: 1000", "quantum_us: 0  # HERE"), "quantum_us",
     ("expected a value >= 1, got 0",)),
    ("route-from-unknown-node", PIPELINE + "routes:\n  - from: sensr  # HERE\n    to: [svc]\n", "routes[0].from",
     ("route from unknown node 'sensr'", "did you mean 'sensor'?")),
    ("route-to-unknown-node", PIPELINE + "routes:\n  - from: svc\n    to: [otu]  # HERE\n", "routes[0].to[0]",
     ("route to unknown node 'otu'", "did you mean 'out'?")),
    ("route-to-unknown-node-no-match", PIPELINE + "routes:\n  - from: svc\n    to: [zzz]  # HERE\n", "routes[0].to[0]",
     ("route to unknown node 'zzz'", "known nodes: out, sensor, svc")),
    ("route-to-a-sensor", PIPELINE + "routes:\n  - from: svc\n    to: [out, sensor]  # HERE\n", "routes[0].to[1]",
     ("route to 'sensor', a sensor node, which takes no events",)),
    ("route-from-a-sink", PIPELINE + "routes:\n  - from: sensor\n    to: [svc]\n  - from: out  # HERE\n    to: [svc]\n",
     "routes[1].from", ("route from 'out', a sink node, which emits no events",)),
    ("route-from-infrastructure",
     PIPELINE + "  - id: broker\n    kind: infrastructure\n    build: broker\n    port: 1883\n"
     "routes:\n  - from: broker  # HERE\n    to: [out]\n", "routes[0].from",
     ("route from 'broker', an infrastructure node, which emits no events",)),
    ("route-to-infrastructure",
     PIPELINE + "  - id: broker\n    kind: infrastructure\n    build: broker\n    port: 1883\n"
     "routes:\n  - from: svc\n    to: [broker]  # HERE\n", "routes[0].to[0]",
     ("route to 'broker', an infrastructure node, which takes no events",)),
    ("route-to-its-own-source", PIPELINE + "routes:\n  - from: svc\n    to: [svc]  # HERE\n", "routes[0].to[0]",
     ("cannot lead back to its own source",)),
    ("duplicate-destinations", PIPELINE + "routes:\n  - from: svc\n    to: [out, out]  # HERE\n", "routes[0].to",
     ("the same destination is listed twice",)),
    ("route-with-empty-destinations", PIPELINE + "routes:\n  - from: svc\n    to: []  # HERE\n", "routes[0].to",
     ("must not be empty",)),
    ("replicas-collide-with-a-node-id",
     PIPELINE.replace("    build: svc\n", "    build: svc\n    replicas: 3  # HERE\n").replace("id: out", "id: svc-2"),
     "nodes[1].replicas", ("replica id 'svc-2' of 'svc' collides with another node's id",)),
    ("too-many-replicas", PIPELINE.replace("    build: svc\n", "    build: svc\n    replicas: 65  # HERE\n"),
     "nodes[1].replicas", ("expected a value <= 64, got 65",)),
    ("anomaly-after-the-end", PIPELINE.replace("    period_us: 1000\n", "    period_us: 1000\n    anomalies:\n"
                                               "      - at_us: 20000  # HERE\n"), "nodes[0].anomalies[0].at_us",
     ("anomaly at 20000 us is not before the end of the run (10000 us)",)),
    ("node-id-uppercase", PIPELINE.replace("  - id: out", "  - id: Out  # HERE"), "nodes[2].id",
     ("'Out' is not allowed here", "expected lowercase letters, digits and dashes, starting with a letter")),
    ("node-id-underscore", PIPELINE.replace("  - id: out", "  - id: my_out  # HERE"), "nodes[2].id",
     ("'my_out' is not allowed here", "expected lowercase letters, digits and dashes")),
    ("scenario-name-pattern", PIPELINE.replace("name: t", "name: My Scenario  # HERE"), "name",
     ("'My Scenario' is not allowed here",)),
    ("unknown-kind", PIPELINE.replace("kind: sink", "kind: sinc  # HERE"), "nodes[2].kind",
     ("expected one of service, infrastructure, sensor, sink; got 'sinc'",)),
    ("service-without-build", PIPELINE.replace("    build: svc\n", "").replace("  - id: svc", "  - id: svc  # HERE"),
     "nodes[1]", ("missing required key 'build'",)),
    ("build-dir-without-dockerfile", PIPELINE.replace("build: svc", "build: no-dockerfile  # HERE"), "nodes[1].build",
     ("no Dockerfile in 'no-dockerfile'",)),
    ("build-dir-missing", PIPELINE.replace("build: svc", "build: ../nowhere  # HERE"), "nodes[1].build",
     ("no Dockerfile in '../nowhere'",)),
    ("infrastructure-without-port", HEAD + "  - id: broker  # HERE\n    kind: infrastructure\n    build: broker\n",
     "nodes[0]", ("missing required key 'port'",)),
    ("infrastructure-port-out-of-range",
     HEAD + "  - id: broker\n    kind: infrastructure\n    build: broker\n    port: 70000  # HERE\n",
     "nodes[0].port", ("expected a value <= 65535, got 70000",)),
    ("environment-value-is-a-list",
     HEAD + "  - id: a\n    kind: service\n    build: svc\n    environment:\n      LEVEL: [1, 2]  # HERE\n",
     "nodes[0].environment.LEVEL", ("expected a string or a number or true or false, got a list",)),
    ("empty-nodes-list", HEAD.replace("nodes:", "nodes: []  # HERE"), "nodes", ("must not be empty",)),
    ("environment-variable-name",
     HEAD + "  - id: a\n    kind: service\n    build: svc\n    environment:\n      1A: x  # HERE\n",
     "nodes[0].environment", ("'1A' is not a valid environment variable name",)),
    ("anomaly-exactly-at-the-end", PIPELINE.replace("    period_us: 1000\n", "    period_us: 1000\n    anomalies:\n"
                                                    "      - at_us: 10000  # HERE\n"), "nodes[0].anomalies[0].at_us",
     ("anomaly at 10000 us is not before the end of the run (10000 us)",)),
    ("first-reading-after-the-end", PIPELINE.replace("    period_us: 1000\n", "    period_us: 1000\n"
                                                     "    offset_us: 20000  # HERE\n"), "nodes[0].offset_us",
     ("first reading at 20000 us is after the end of the run (10000 us)",)),
    ("unknown-sensor-model", PIPELINE.replace("    period_us: 1000\n", "    period_us: 1000\n"
                                              "    model: thermal  # HERE\n"), "nodes[0].model",
     ("unknown sensor model 'thermal'; known: uniform, vibration",)),
    ("shared-subscription-of-another-group", PIPELINE.replace("    build: svc\n", "    build: svc\n    replicas: 2\n"
                                                             "    config:\n      subscribe:\n        - plain/#\n"
                                                             "        - $share/other/plant/#  # HERE\n"),
     "nodes[1].config.subscribe[1]", ("'$share/other/plant/#' shares among the replicas of 'other', but this node is "
                                      "'svc'; write '$share/svc/<filter>'",)),
    ("placement-not-a-constraint", PIPELINE.replace("    build: svc\n", "    build: svc\n    placement:\n"
                                                    "      - tier edge  # HERE\n"), "nodes[1].placement[0]",
     ("'tier edge' is not a Swarm placement constraint: expected `<attribute> == <value>`",)),
    ("resources-memory-not-a-size", PIPELINE.replace("    build: svc\n", "    build: svc\n    resources:\n"
                                                      "      memory: 64 MB  # HERE\n"), "nodes[1].resources.memory",
     ("'64 MB' is not a memory size: expected a whole number of bytes with an optional unit b, k, m or g",)),
    ("resources-memory-below-docker-minimum", PIPELINE.replace("    build: svc\n", "    build: svc\n    resources:\n"
                                                                "      memory: 4m  # HERE\n"),
     "nodes[1].resources.memory", ("memory '4m' is 4194304 bytes, below Docker's minimum limit of 6m",)),
    ("resources-cpus-zero", PIPELINE.replace("    build: svc\n", "    build: svc\n    resources: {cpus: 0}  # HERE\n"),
     "nodes[1].resources.cpus", ("expected a value >= 0.01, got 0",)),
    ("resources-unknown-key", PIPELINE.replace("    build: svc\n", "    build: svc\n    resources: {mem: 64m}  # HERE\n"),
     "nodes[1].resources", ("unknown key 'mem'",)),
    ("infrastructure-without-build-or-image", HEAD + "  - id: broker  # HERE\n    kind: infrastructure\n    port: 1883\n",
     "nodes[0]", ("needs `build` (a service directory with a Dockerfile) or `image` (a prebuilt image)",)),
]


@pytest.mark.parametrize(("text", "field", "fragments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_invalid_scenario(workdir: Path, text: str, field: str | None, fragments: tuple[str, ...]) -> None:
    path = workdir / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    assert_message(load_error(path), path, marked_line(text), field, *fragments)


def test_case_ids_are_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


# -- failures before any YAML is read -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert_message(load_error(path), path, None, None, "no such file")


def test_directory(tmp_path: Path) -> None:
    assert_message(load_error(tmp_path), tmp_path, None, None, "is a directory", "expected a scenario YAML file")


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n\n  # and another\n"],
                         ids=["empty", "blank-lines", "comments-only"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert_message(load_error(path), path, None, None, "is empty", "expected a scenario mapping")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: t\nseed: 7\ndescription: caf\xe9\n")
    assert_message(load_error(path), path, 3, None, "is not UTF-8 text", "byte 0xe9 at offset 32")


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (reading.MAX_FILE_BYTES + 1))
    assert_message(load_error(path), path, None, None, "is larger than 1024 KiB")


def test_utf8_bom_is_accepted(workdir: Path) -> None:
    path = workdir / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + PIPELINE.encode())
    assert load(path).name == "t"


def test_alias_bomb_is_refused_without_expanding(tmp_path: Path) -> None:
    # Bounded by construction: the size is computed on the composed node graph, never by expanding it (9**9
    # values). Loaded in a subprocess with a time limit, so that a regression fails here instead of hanging the suite.
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    loader = ("import sys; from cosim.loading import load; from cosim.errors import ScenarioError\n"
              "try:\n    load(sys.argv[1])\nexcept ScenarioError as error:\n    print(error); sys.exit(2)\n")
    try:
        done = subprocess.run([sys.executable, "-c", loader, str(path)], capture_output=True, text=True, timeout=30,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the alias bomb did not finish within 30 s: the aliases are being expanded")
    assert done.returncode == 2, done.stdout + done.stderr
    line = ALIAS_BOMB.splitlines().index(next(text for text in ALIAS_BOMB.splitlines() if "# HERE" in text)) + 1
    assert done.stdout == f"{path}:{line}: YAML expands to more than 100000 values (aliases/anchors); refused\n"


def test_python_tag_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "tag.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "unsupported YAML tag" in load_error(path).message
    assert not marker.exists()


# -- what a valid scenario turns into --------------------------------------------------------------------------

VALID = """\
name: demo
seed: 42
duration_us: 20000
nodes:
  - id: sensor
    kind: sensor
    period_us: 2000
  - id: worker
    kind: service
    build: svc
    replicas: 3
  - id: single
    kind: service
    build: svc
    image: example/single:1.0
    read_only: false
    environment: {LEVEL: 3, DEBUG: true, NAME: x}
  - id: edge
    kind: sensor
    period_us: 5000
    links:
      - to: worker
        latency_us: 3000
        jitter_us: 100
        loss: 0.25
  - id: out
    kind: sink
routes:
  - from: sensor
    to: [worker]
  - from: worker
    to: [out]
    events: [result]
"""


@pytest.fixture
def valid(workdir: Path) -> Scenario:
    path = workdir / "demo.yaml"
    path.write_text(VALID)
    return load(path)


def test_defaults(valid: Scenario, workdir: Path) -> None:
    assert valid.quantum_us == 1000
    assert valid.steps == 20
    assert valid.default_link == LinkProperties(latency_us=1000, jitter_us=0, loss=0.0)
    assert valid.trace == "traces/demo.jsonl"
    assert valid.description == ""
    assert valid.path == workdir / "demo.yaml"
    assert len(valid.sha256) == 64
    sensor = valid.node("sensor")
    assert isinstance(sensor, SensorSpec)
    assert (sensor.model, sensor.offset_us, sensor.event_type, sensor.anomalies) == (
        "vibration", 2000, "inference_request", ())


def test_replicas_are_expanded_with_their_group(valid: Scenario, workdir: Path) -> None:
    ids = [node.id for node in valid.nodes]
    assert ids == ["sensor", "worker-1", "worker-2", "worker-3", "single", "edge", "out"]
    assert valid.groups == {"worker": ("worker-1", "worker-2", "worker-3")}
    for replica_id in valid.groups["worker"]:
        replica = valid.node(replica_id)
        assert isinstance(replica, ContainerSpec)
        assert replica.group == "worker"
        assert replica.build == (workdir / "svc").resolve()
        assert replica.image == image_name(workdir / "svc")
        assert replica.read_only is True
        assert replica.command is None and replica.environment == {} and replica.config == {}
    assert valid.node("out").group is None
    with pytest.raises(KeyError):
        valid.node("worker")


def test_container_settings(valid: Scenario) -> None:
    single = valid.node("single")
    assert isinstance(single, ContainerSpec)
    assert single.image == "example/single:1.0"
    assert single.read_only is False
    assert single.environment == {"LEVEL": "3", "DEBUG": "true", "NAME": "x"}
    assert single.speaks_protocol
    assert [node.id for node in valid.containers] == ["worker-1", "worker-2", "worker-3", "single"]
    assert isinstance(valid.node("out"), SinkSpec)


def test_routes(valid: Scenario) -> None:
    assert [(r.source, r.targets, r.events) for r in valid.routes] == [
        ("sensor", ("worker",), None), ("worker", ("out",), ("result",))]


def test_link_falls_back_to_group_then_default(valid: Scenario) -> None:
    declared = LinkProperties(latency_us=3000, jitter_us=100, loss=0.25)
    assert valid.node("edge").links == {"worker": declared}
    for replica_id in valid.groups["worker"]:
        assert valid.link("edge", replica_id) == declared  # a link to the group applies to each replica
    assert valid.link("sensor", "worker-1") == valid.default_link
    assert valid.link("worker-2", "out") == valid.default_link


def test_a_link_to_one_replica_overrides_the_group_link(workdir: Path) -> None:
    path = workdir / "one-replica.yaml"
    path.write_text(VALID.replace("      - to: worker\n", "      - {to: worker-2, latency_us: 9000}\n      - to: worker\n"))
    loaded = load(path)
    assert loaded.link("edge", "worker-2") == LinkProperties(latency_us=9000)
    assert loaded.link("edge", "worker-1") == LinkProperties(latency_us=3000, jitter_us=100, loss=0.25)
    path.write_text(VALID.replace("      - to: worker\n", "      - {to: worker-4, latency_us: 9000}\n      - to: worker\n"))
    with pytest.raises(ScenarioError, match="link to unknown node 'worker-4'; did you mean"):
        load(path)


def test_explicit_values_override_defaults(workdir: Path) -> None:
    path = workdir / "explicit.yaml"
    path.write_text(PIPELINE + "trace: out/run.jsonl\ndescription: hello\n"
                    "network:\n  default_link: {latency_us: 4000, jitter_us: 7, loss: 0.5}\n")
    loaded = load(path)
    assert loaded.trace == "out/run.jsonl"
    assert loaded.description == "hello"
    assert loaded.default_link == LinkProperties(4000, 7, 0.5)
    assert loaded.link("sensor", "svc") == LinkProperties(2000, 0, 0.0)


def test_loading_is_deterministic(workdir: Path) -> None:
    path = workdir / "demo.yaml"
    path.write_text(VALID)
    assert load(path) == load(path)


def test_a_scenario_that_passed_is_not_validated_again(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document that passed the schema is remembered in cosim's cache (by its content and the schema's); the
    same document is then not validated again, and a document that fails is never remembered."""
    from cosim.loading import schema

    monkeypatch.setenv("COSIM_CACHE_DIR", str(workdir / "cache"))
    validations: list[int] = []
    original = schema._validator_class()
    monkeypatch.setattr(schema, "_validator_class", lambda: lambda *a: validations.append(1) or original(*a))
    path = workdir / "demo.yaml"
    path.write_text(VALID)
    first = load(path)
    assert load(path) == first and len(validations) == 1  # the second load: remembered
    assert len(list((workdir / "cache" / "valid-scenarios").iterdir())) == 1
    path.write_text(VALID + "\n# a comment: the same document\n")
    assert load(path).name == first.name and len(validations) == 1
    broken = VALID.replace("duration_us: ", "duration_us: -", 1)
    path.write_text(broken)
    for _ in range(2):  # an error is found (and worded) every time
        with pytest.raises(ScenarioError):
            load(path)
    assert len(validations) == 3 and len(list((workdir / "cache" / "valid-scenarios").iterdir())) == 1
