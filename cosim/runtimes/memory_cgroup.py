"""A local process's `resources.memory`, enforced by the kernel as Docker enforces a container's: a memory cgroup of
its own with that limit and no swap beyond it, so that the kernel kills it for memory (SIGKILL, exit 137) where its
container would be, and its OOM-kill counter tells that death from any other.

The group is made under this process's own memory cgroup (cgroup v2 with the memory controller enabled there, or
cgroup v1's memory hierarchy), which must be writable: as root, or in a delegated cgroup v2 subtree. The process
enters it before it runs anything (``wrap``: ``sh -c 'echo $$ > cgroup.procs && exec "$@"'``). Where no memory
cgroup is writable the limit cannot be enforced, and ``available`` says why. Each start of a node gets a fresh
group (a restarted node's counter starts at 0); ``remove`` deletes it once its processes are gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def own_group() -> tuple[Path, int] | None:
    """The directory of this process's memory cgroup and the cgroup version; None without one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1: its own hierarchy
            return CGROUP_ROOT / "memory" / path.lstrip("/"), 1
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if number == "0":  # v2: the unified hierarchy, if it has the memory controller
            group = CGROUP_ROOT / path.lstrip("/")
            with contextlib.suppress(OSError):
                if "memory" in (group / "cgroup.controllers").read_text().split():
                    return group, 2
    return None


def available() -> str | None:
    """None when limits can be enforced here; else why not (one clause)."""
    found = own_group()
    if found is None:
        return "this machine has no memory cgroup for its processes"
    group, _ = found
    if not os.access(group, os.W_OK):
        return f"its memory cgroup {group} is not writable (run as root, or in a delegated cgroup v2 subtree)"
    return None


class MemoryCgroup:
    """One node's memory cgroup, limited to ``limit_bytes`` (memory and swap together)."""

    def __init__(self, node_id: str, limit_bytes: int) -> None:
        found = own_group()
        assert found is not None, "check available() first"
        parent, self.version = found
        self.path = parent / f"cosim-{os.getpid()}-{node_id}-{secrets.token_hex(3)}"
        self.path.mkdir()
        try:
            if self.version == 1:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):  # (absent without swap accounting: then there is no swap to use)
                    (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
            else:
                (self.path / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (self.path / "memory.swap.max").write_text("0")
        except BaseException:
            self.path.rmdir()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv``, entering the group before it runs (the shell writes its pid, then execs)."""
        return ["/bin/sh", "-c", f'echo $$ > "{self.path / "cgroup.procs"}" && exec "$@"', "sh", *argv]

    def oom_killed(self) -> bool:
        """Whether the kernel has killed a process of the group for memory."""
        counters = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / counters).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def remove(self) -> None:
        """Delete the group (its processes are gone); a group that still has some is left for the system."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
