"""Checkpoints in a run: when to take one (at the end of the windows asked for, skipped ones included) and the
capabilities they need. The state itself is gathered from the parts by ``Coordinator.snapshot``; the file format is
cosim.checkpoint's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cosim.core.slots import Slots
from cosim.errors import UnsupportedAction


@dataclass(frozen=True)
class Checkpoints:
    """A run's checkpoints (cosim.checkpoint): the window ends to checkpoint at (``write`` gets each state), whether
    to stop after the last one, and the checkpoint content to resume from (with a fork's config changes)."""

    at_us: frozenset[int] = frozenset()
    write: Callable[[int, dict[str, Any]], None] | None = None
    stop_after: bool = False
    resume: Mapping[str, Any] | None = None
    config_changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # a fork's, applied at resume

    def check(self, slots: Slots) -> None:
        """Before the first step: every node must be able to checkpoint (SNAPSHOT) or be restored (RESTORE), and a
        fork's changed nodes to take CONFIGURE."""
        if not self.at_us and self.resume is None:
            return
        for slot in slots.driven:
            capabilities = slot.node.capabilities
            if not capabilities.snapshot:
                what = "--checkpoint-at" if self.at_us else "resume"
                raise UnsupportedAction(slot.id, f"{what}: service {slot.id!r} did not declare the 'snapshot' "
                                        f"capability in READY (it declared {sorted(capabilities.declared)}); it cannot "
                                        f"be checkpointed or restored")
        for node_id in self.config_changes:
            node = slots[node_id].node
            if not node.capabilities.configure:
                raise UnsupportedAction(node_id, f"fork: the variant changes the config of {node_id!r}, but the "
                                        f"service did not declare the 'configure' capability in READY")

    def skipped(self, now_us: int, target_us: int, quantum_us: int, end_us: int) -> Iterator[tuple[int, int]]:
        """Next-event: the checkpoints in the quanta skipped before the window ending at ``target_us`` (nothing
        happens in them: the state at their end is the state now), each with the number of skipped quanta after it
        (already counted as skipped: the checkpoint's count covers the gap only up to its time)."""
        for time_us in sorted(t for t in self.at_us if now_us < t < target_us):
            yield time_us, (min(target_us, end_us + quantum_us) - time_us) // quantum_us - 1

    def is_last(self, time_us: int) -> bool:
        """The run stops after this checkpoint (``--stop-after-checkpoint``)."""
        return self.stop_after and time_us == max(self.at_us)
