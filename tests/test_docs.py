"""The documentation site (mkdocs.yml, docs/): it builds strictly, so a broken link or anchor fails; every page
is in the nav; and the tutorial's shell blocks run, in order, as a new user types them, outside the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.skip_policy import host_tool

from .conftest import ROOT, cosim_resources

DOCS = ROOT / "docs"
TUTORIAL = DOCS / "your-first-service.md"
SKIP_MARK = "<!-- test: skip -->"  # before a ```sh block: the test leaves it out (it depends on the reader's machine)
BLOCK_TIMEOUT_S = 1200  # one block may build the base images from nothing


def nav_pages(nav: Any) -> list[str]:
    """Every page file named in mkdocs.yml's nav (entries are `title: page.md` or `title: [entries]`)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for entry in nav for page in nav_pages(entry)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    raise AssertionError(f"mkdocs.yml: unexpected nav entry {nav!r}")


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """The ```sh blocks of a page, as (line of the opening fence, code), without those a SKIP_MARK line precedes
    (blank lines may stand between the mark and the fence)."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    skip = False
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line == "```sh":
            start = index
            index += 1
            while lines[index].strip() != "```":
                index += 1
            if not skip:
                blocks.append((start + 1, "\n".join(lines[start + 1:index])))
            skip = False
        elif line == SKIP_MARK:
            skip = True
        elif line:
            skip = False
        index += 1
    return blocks


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mkdocs", reason="needs mkdocs (pinned in requirements.lock; ./inv installs it)")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, cwd=config.parent, timeout=300)


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = nav_pages(config["nav"])
    on_disk = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert sorted(on_disk - set(in_nav)) == [], "pages in docs/ that the nav of mkdocs.yml leaves out"
    assert sorted(set(in_nav) - on_disk) == [], "nav entries of mkdocs.yml without a page in docs/"
    assert len(in_nav) == len(set(in_nav)), "a page is in the nav twice"


def test_site_builds_strictly(tmp_path: Path) -> None:
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    assert (tmp_path / "site" / "your-first-service" / "index.html").is_file()


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    """The strict settings are what catch broken references: a copy of the site with one bad anchor must fail."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "conformance.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [nowhere](protocol.md#no-such-section).\n",
                    encoding="utf-8")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-section" in done.stdout + done.stderr


def test_readme_links_resolve() -> None:
    """The README is not part of the site, so mkdocs does not check it: its relative links must name files."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]
    assert targets, "the README links to the docs pages"
    missing = [target for target in targets if target.split("#")[0] and not (ROOT / target.split("#")[0]).exists()]
    assert missing == []


def test_tutorial_blocks_are_found() -> None:
    """What the tutorial test runs: it starts from an empty directory with `cosim new experiment`, and only the
    installation and the choice of directory are skipped."""
    text = TUTORIAL.read_text(encoding="utf-8")
    blocks = shell_blocks(text)
    assert blocks[0][1].startswith("cosim new experiment ")
    assert text.count(SKIP_MARK) == 2
    assert len(blocks) == text.count("```sh") - 2


def test_tutorial_scenario_is_valid(tmp_path: Path) -> None:
    """The scenario the tutorial writes with a heredoc, against the schema and cosim's rules."""
    from cosim import loading

    code = "\n".join(block for _, block in shell_blocks(TUTORIAL.read_text(encoding="utf-8")))
    heredoc = re.search(r"cat > scenarios/(\S+) <<'EOF'\n(.*?)\nEOF\n", code, re.S)
    assert heredoc is not None, "the tutorial writes its scenario with cat > scenarios/NAME <<'EOF'"
    (tmp_path / "scenarios").mkdir()
    for service in ("a", "b"):
        folder = tmp_path / "services" / service
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    scenario = tmp_path / "scenarios" / heredoc.group(1)
    scenario.write_text(heredoc.group(2) + "\n", encoding="utf-8")
    assert [node.id for node in loading.load(scenario).nodes] == ["sensor", "a", "b", "out"]


@pytest.mark.docker
def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    """Every tested ```sh block of the tutorial, in order, with bash, in a directory outside the checkout, with the
    installed `cosim` command on PATH; each must exit 0. The directory a block ends in is where the next starts."""
    host_tool("node")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "cosim").is_file(), f"no `cosim` command in {bin_dir}: install cosim (pip install .)"
    assert ROOT not in tmp_path.parents, "the tutorial must run outside the checkout"
    home = tmp_path / "tutorial"
    home.mkdir()
    where = tmp_path / "cwd"
    where.write_text(str(home), encoding="utf-8")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line, code in shell_blocks(TUTORIAL.read_text(encoding="utf-8")):
        script = f'set -eo pipefail\ncd "$(cat {where})"\n{code}\npwd > {where}\n'
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                              timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, (f"docs/your-first-service.md, the block at line {line} exited "
                                      f"{done.returncode}:\n{code}\n--- stdout\n{done.stdout[-3000:]}\n"
                                      f"--- stderr\n{done.stderr[-3000:]}")
    assert cosim_resources("cosim.scenario=pair") == ([], []), "containers or networks left behind"
