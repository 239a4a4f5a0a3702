"""Tasks of the experiment {{name}}: cosim's verbs and this experiment's own. Run `invoke --list`.

`invoke up scenarios/x.yaml` is `cosim up scenarios/x.yaml`: the collection is cosim's (cosim.tasks), extended
below the way invoke projects share tasks. Add your own with @task and namespace.add_task(...).
"""

import subprocess
import sys
from pathlib import Path

from invoke import Context, task
from invoke.exceptions import Exit

from cosim.tasks import call, namespace

HERE = Path(__file__).resolve().parent


@task
def check(c: Context) -> None:
    """Validate every scenario of this experiment (scenarios/*.yaml)."""
    for scenario in sorted((HERE / "scenarios").glob("*.yaml")):
        call("cli.validate", str(scenario.relative_to(HERE)))


@task(help={"k": "only tests matching this expression"})
def test(c: Context, k: str = "") -> None:
    """Run this experiment's tests (tests/, with pytest: `pip install pytest`)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "tests", *(["-k", k] if k else [])], cwd=HERE, check=False)
    if done.returncode != 0:
        raise Exit(code=done.returncode)


namespace.add_task(check)
namespace.add_task(test)
